"""Runs the Blender add-on tests (``bpy_*.py``) in their own process: ``bpy`` and torch never share one."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_addon_suite_in_bpy_process(run_bpy_suite):
    result = run_bpy_suite(HERE, "bpy_*.py", "SCAIL_BPY_SUITE")
    assert result.returncode == 0, f"the bpy add-on suite failed (exit {result.returncode}); its output is above"
