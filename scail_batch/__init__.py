"""``scail-batch``: render the shots of a .blend from the command line (see ``cli.py``)."""
