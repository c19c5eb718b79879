"""Runs the Blender add-on tests (``bpy_*.py``) in their own process: ``bpy`` and torch never share one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def test_addon_suite_in_bpy_process():
    env = dict(os.environ, SCAIL_BPY_SUITE="1")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "python_files=bpy_*.py",
               f"--confcutdir={HERE}", str(HERE)]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    print(result.stdout[-20000:])
    print(result.stderr[-5000:], file=sys.stderr)
    assert result.returncode == 0, f"the bpy add-on suite failed (exit {result.returncode}); its output is above"
