"""Fixtures for the mask tests: a tiny random SAM3 folder in the facebook/sam3 layout, loaded through the real
loader, and short, reduced copies of the real clips in tests/data/media."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from backend.masks.sam3_loader import Sam3Segmenter, load_sam3
from backend.masks.tiny import write_tiny_sam3

CLIP_FRAMES = 3


@pytest.fixture(scope="session")
def tiny_sam3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained SAM3 folder; read-only for tests (copy it to break it)."""
    return write_tiny_sam3(tmp_path_factory.mktemp("sam3") / "sam3", seed=0)


@pytest.fixture(scope="session")
def segmenter(tiny_sam3: Path) -> Sam3Segmenter:
    return load_sam3(tiny_sam3, device="cpu")


def _reduce_clip(source: Path, target: Path, width: int, height: int) -> Path:
    """The first ``CLIP_FRAMES`` frames of ``source`` scaled to width x height, re-encoded at the source's fps."""
    import imageio_ffmpeg

    subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-loglevel",
            "error",
            "-y",
            "-i",
            str(source),
            "-vf",
            f"scale={width}:{height}",
            "-frames:v",
            str(CLIP_FRAMES),
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            str(target),
        ],
        check=True,
    )
    return target


@pytest.fixture(scope="session")
def short_clips(media_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """carphone (human, 176x144 -> 88x72) and bigbuckbunny (non-human, 1280x720 -> 128x72), 3 frames each."""
    folder = tmp_path_factory.mktemp("clips")
    return {
        "carphone": _reduce_clip(media_root / "carphone_pristine.mp4", folder / "carphone.mp4", 88, 72),
        "bigbuckbunny": _reduce_clip(media_root / "bigbuckbunny.mp4", folder / "bigbuckbunny.mp4", 128, 72),
    }
