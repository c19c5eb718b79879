"""Fixtures shared by the whole suite: the golden parity fixtures, the test media and a tiny checkpoint.

``parity_root`` and ``media_root`` are the repository's own test data (``tests/data``, origins and licences in its
README); they are part of the test contract, so a missing folder fails loudly instead of skipping tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_ROOT = REPO_ROOT / "tests" / "data"


def _data_folder(name: str) -> Path:
    folder = DATA_ROOT / name
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is missing: the tests need the repository's tests/data/{name} folder")
    return folder


@pytest.fixture(scope="session")
def parity_root() -> Path:
    """``tests/data/parity``: one sub-folder per golden fixture set (dit, t5, clip, vae, masks, ...)."""
    return _data_folder("parity")


@pytest.fixture(scope="session")
def media_root() -> Path:
    """``tests/data/media``: real images and videos for end-to-end tests."""
    return _data_folder("media")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained checkpoint folder in the official ``zai-org/SCAIL-2`` layout, written once per session.

    Treat it as read-only: tests that damage files must copy it first (see ``tiny_checkpoint_copy``).
    """
    from backend.scail2.testing.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "SCAIL-2", layout="official", seed=0)


@pytest.fixture
def tiny_checkpoint_copy(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    """A private copy of :func:`tiny_checkpoint` that a test may modify or break."""
    import shutil

    return Path(shutil.copytree(tiny_checkpoint, tmp_path / "SCAIL-2"))


@pytest.fixture(scope="session")
def run_bpy_suite() -> Callable[[Path, str, str], subprocess.CompletedProcess]:
    """Runs one folder's ``bpy`` tests in their own pytest process: ``bpy`` and torch never share one.

    Call it with the folder, the file pattern of its ``bpy`` tests and the environment variable its
    ``conftest.py`` checks to import ``bpy``; the inner output is printed so a failure shows why.
    """

    def run(folder: Path, file_pattern: str, inner_flag: str) -> subprocess.CompletedProcess:
        env = dict(os.environ, **{inner_flag: "1"})
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o",
                   f"python_files={file_pattern}", f"--confcutdir={folder}", str(folder)]
        result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
        print(result.stdout[-20000:])
        print(result.stderr[-5000:], file=sys.stderr)
        return result

    return run
