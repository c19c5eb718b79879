"""Runs the batch tests (``bpy_batch_*.py``) in their own process: ``bpy`` and torch never share one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def test_batch_suite_in_bpy_process():
    env = dict(os.environ, SCAIL_BATCH_SUITE="1")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "python_files=bpy_batch_*.py",
               f"--confcutdir={HERE}", str(HERE)]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    print(result.stdout[-20000:])
    print(result.stderr[-5000:], file=sys.stderr)
    assert result.returncode == 0, f"the bpy batch suite failed (exit {result.returncode}); its output is above"
