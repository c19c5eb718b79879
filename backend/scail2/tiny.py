"""``python -m backend.scail2.tiny DIR``: write a tiny untrained checkpoint (the writer is `testing.tiny`)."""

from .testing.tiny import main

if __name__ == "__main__":
    raise SystemExit(main())
