"""Constants and helpers of the worker tests (imported by the test modules; conftest adds this folder to sys.path)."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.launcher import LocalWorker

MEDIA = Path(__file__).resolve().parents[2] / "tests" / "data" / "media"
DRIVING_VIDEO = MEDIA / "carphone_pristine.mp4"  # 176x144, 120 frames at 29.97 fps: a real person talking
REFERENCE_PHOTO = MEDIA / "astronaut.png"
OTHER_PHOTO = MEDIA / "chelsea.png"
DRIVING_FRAMES = 120
# Tiny generations: 96x64 output, 2 steps. Short jobs use 9 driving frames (one window); long ones all 120
# (two windows of the engine's 81-frame windowing).
SHORT_SPEC = {"mode": "animation", "preset": "quality", "steps": 2, "guidance": 1.0, "size": "96x64", "seed": 7,
              "frame_range": [0, 9], "prompt": "a person talking"}
LONG_SPEC = {**SHORT_SPEC, "frame_range": [0, DRIVING_FRAMES], "steps": 3}
UPLOAD_LIMIT_MB = 8
DECODE_BUDGET_GB = 0.25  # the carphone clip decodes to 9 MB, Big Buck Bunny's 720p frames to 367 MB
BUNNY_VIDEO = MEDIA / "bigbuckbunny.mp4"


@dataclass(frozen=True)
class Inputs:
    """Paths of the files a job sends."""

    reference: Path  # RGBA astronaut: alpha marks the subject (so no reference mask file is needed)
    driving: Path  # the real carphone clip
    driving_mask: Path  # zip of 120 palette masks (blue subject on black), one per driving frame
    folder: Path

    def files(self) -> dict[str, Path]:
        return {"reference": self.reference, "driving": self.driving, "driving_mask": self.driving_mask}


def write_mask_zip(path: Path, frames: int, size: tuple[int, int] = (144, 176), colour=(0, 0, 255),
                   background=(0, 0, 0)) -> Path:
    height, width = size
    with zipfile.ZipFile(path, "w") as archive:
        for index in range(frames):
            mask = np.empty((height, width, 3), np.uint8)
            mask[:] = background
            left = width // 4 + (index % 8)  # the subject moves a little, as a real matte does
            mask[height // 5 : height - 4, left : left + width // 2] = colour
            image_path = path.with_name(f"{path.stem}_{index}.png")
            Image.fromarray(mask).save(image_path)
            archive.write(image_path, arcname=f"mask_{index:04d}.png")
            image_path.unlink()
    return path


def start_worker(checkpoint: Path, data_dir: Path, log_path: Path, *extra: str) -> LocalWorker:
    worker = LocalWorker(sys.executable, checkpoint, data_dir, device="cpu", log_path=log_path,
                         extra_args=["--max-upload-mb", str(UPLOAD_LIMIT_MB), "--max-side", "1024", "--min-free-mb", "64",
                                     "--max-decoded-gb", str(DECODE_BUDGET_GB), *extra],
                         ready_timeout=180)
    return worker.start()




@contextmanager
def small_tmpfs(mount_point: Path, size_mb: int = 48, files: int | None = None) -> Iterator[Path]:
    """A tmpfs of ``size_mb`` (holding at most ``files`` files, if given) at ``mount_point``, for a disk that can
    really fill up; skips the test where it cannot be mounted (it needs root and mount permission)."""
    if os.geteuid() != 0:
        pytest.skip("the disk-full test mounts a tmpfs, which needs root")
    mount_point.mkdir(parents=True, exist_ok=True)
    options = f"size={size_mb}m" + (f",nr_inodes={files}" if files else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); the disk-full test needs one")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill_disk(folder: Path) -> Path:
    """Write zeros into ``folder/filler`` until the file system says ENOSPC."""
    filler = folder / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for block in (1 << 20, 4096, 1):
            while True:
                try:
                    os.write(descriptor, b"\0" * block)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    finally:
        os.close(descriptor)
    return filler


def fill_files(folder: Path) -> Path:
    """Create empty files in ``folder`` until the file system can hold no more (ENOSPC: out of inodes)."""
    folder.mkdir()
    for index in range(10**7):
        try:
            (folder / str(index)).touch()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
            return folder
    raise AssertionError(f"{folder}: the file system takes files without end")


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def wait_until(predicate, timeout: float = 60.0, interval: float = 0.05):
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not reached within {timeout} s")
