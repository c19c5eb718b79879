"""Runs the batch tests (``bpy_batch_*.py``) in their own process: ``bpy`` and torch never share one."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_batch_suite_in_bpy_process(run_bpy_suite):
    result = run_bpy_suite(HERE, "bpy_batch_*.py", "SCAIL_BATCH_SUITE")
    assert result.returncode == 0, f"the bpy batch suite failed (exit {result.returncode}); its output is above"
