"""Run the parity command's entry point on several fixture sets in one torchrun launch (saves a start-up per set).

    torchrun --nproc-per-node 2 tests/parallel/parity_sets.py DIR [DIR ...]

Same as ``python -m backend.scail2.parity DIR`` once per DIR, in the same processes; exits non-zero if any fails.
"""

from __future__ import annotations

import sys

from backend.scail2.testing.parity import main as parity_main

if __name__ == "__main__":
    sys.exit(max(parity_main([set_dir]) for set_dir in sys.argv[1:]))
