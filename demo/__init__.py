"""``make demo``: the headless end-to-end run (``python -m demo.run_demo``)."""
