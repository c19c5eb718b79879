"""``make addon`` builds and validates the extension zip, into a folder that need not exist yet."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_make_addon_builds_a_valid_zip_into_a_new_folder(tmp_path: Path):
    dist = tmp_path / "not" / "yet" / "dist"
    # PY and STAMP point make at this interpreter, so the target runs as is and never sets up a venv.
    run = subprocess.run(["make", "-C", str(REPO), "addon", f"PY={sys.executable}", "STAMP=", f"DIST={dist}"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    (zip_path,) = dist.glob("scail_motion-*.zip")
    assert f"{zip_path}: built and validated" in run.stdout
    names = set(zipfile.ZipFile(zip_path).namelist())
    assert {"blender_manifest.toml", "__init__.py", "addon/importing.py", "backend/client.py"} <= names
    assert not any(name.startswith(("tests/", "backend/scail2/", "backend/worker/", "demo/", "training/")) for name in names)

