"""Fixtures of the worker tests: real input media and a real worker subprocess.

The worker runs the real engine on the untrained tiny checkpoint (the suite's ``tiny_checkpoint`` fixture),
started through the real launcher (``backend.launcher.LocalWorker``) on loopback, exactly as the add-on starts it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from worker_helpers import (  # noqa: E402
    DRIVING_FRAMES,
    DRIVING_VIDEO,
    REFERENCE_PHOTO,
    Inputs,
    start_worker,
    write_mask_zip,
)


@pytest.fixture(scope="session")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    folder = tmp_path_factory.mktemp("worker_inputs")
    photo = np.asarray(Image.open(REFERENCE_PHOTO).convert("RGB").resize((128, 128), Image.BICUBIC))
    yy, xx = np.mgrid[:128, :128]
    alpha = ((((yy - 70) / 52.0) ** 2 + ((xx - 64) / 36.0) ** 2) < 1.0).astype(np.uint8) * 255
    reference = folder / "reference.png"
    Image.fromarray(np.dstack([photo, alpha]), "RGBA").save(reference)
    driving_mask = write_mask_zip(folder / "driving_mask.zip", DRIVING_FRAMES)
    return Inputs(reference=reference, driving=DRIVING_VIDEO, driving_mask=driving_mask, folder=folder)


@pytest.fixture(scope="session")
def worker(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    """One worker shared by the tests that do not restart it."""
    folder = tmp_path_factory.mktemp("worker_shared")
    running = start_worker(tiny_checkpoint, folder / "data", folder / "worker.log")
    yield running
    running.stop()
