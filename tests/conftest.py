"""Fixtures shared by the whole suite: the golden parity fixtures, the test media and a tiny checkpoint.

``parity_root`` and ``media_root`` are the team's shared folders next to the repository (``../shared``); they are
part of the test contract, so a missing folder fails loudly instead of skipping tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_ROOT = REPO_ROOT.parent / "shared"


def _shared_folder(name: str) -> Path:
    folder = (SHARED_ROOT / name).resolve()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder} is missing: the tests need the shared {name} folder next to the repository (../shared/{name})"
        )
    return folder


@pytest.fixture(scope="session")
def parity_root() -> Path:
    """``../shared/parity``: one sub-folder per golden fixture set (dit, t5, clip, vae, masks, ...)."""
    return _shared_folder("parity")


@pytest.fixture(scope="session")
def media_root() -> Path:
    """``../shared/media``: real images and videos for end-to-end tests."""
    return _shared_folder("media")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained checkpoint folder in the official ``zai-org/SCAIL-2`` layout, written once per session.

    Treat it as read-only: tests that damage files must copy it first (see ``tiny_checkpoint_copy``).
    """
    from backend.scail2.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "SCAIL-2", layout="official", seed=0)


@pytest.fixture
def tiny_checkpoint_copy(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    """A private copy of :func:`tiny_checkpoint` that a test may modify or break."""
    import shutil

    return Path(shutil.copytree(tiny_checkpoint, tmp_path / "SCAIL-2"))
