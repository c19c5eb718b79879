"""``python -m backend.scail2.parity DIR``: check one golden fixture set (the checks are `testing.parity`)."""

from .testing.parity import main

if __name__ == "__main__":
    raise SystemExit(main())
