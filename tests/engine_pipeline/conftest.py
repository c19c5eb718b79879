"""Fixtures of the pipeline tests: the tiny pipeline (loaded once) and small real inputs from tests/data/media."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from backend.scail2.conditioning.masks import mask_from_alpha
from backend.scail2.conditioning.media import VideoClip, read_clip, read_image

# Eleven frames: two windows at segment_len 9 (the tests' window length), the second one padded.
DRIVING_FRAMES = 11


def ellipse_alpha(height: int, width: int, ry: float = 0.4, rx: float = 0.3) -> np.ndarray:
    """An opaque centred ellipse on a transparent background, [H, W] uint8."""
    yy, xx = np.mgrid[:height, :width]
    inside = ((yy - height / 2) / (height * ry)) ** 2 + ((xx - width / 2) / (width * rx)) ** 2 < 1
    return (inside * 255).astype(np.uint8)


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_checkpoint: Path):
    from backend.scail2 import Scail2Pipeline

    return Scail2Pipeline.from_pretrained(tiny_checkpoint, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session")
def reference_rgba(media_root: Path) -> np.ndarray:
    """The astronaut photo with an elliptical alpha matte (the subject)."""
    image = read_image(media_root / "astronaut.png")
    return np.concatenate([image[..., :3], ellipse_alpha(*image.shape[:2])[..., None]], axis=-1)


@pytest.fixture(scope="session")
def driving_clip(media_root: Path) -> VideoClip:
    """The first frames of the real 'carphone' clip (a man talking in a car), at its own fps."""
    clip = read_clip(media_root / "carphone_pristine.mp4")
    return VideoClip(clip.frames[:DRIVING_FRAMES].copy(), clip.fps)


@pytest.fixture(scope="session")
def driving_alpha(driving_clip: VideoClip) -> np.ndarray:
    frames, height, width = driving_clip.frames.shape[:3]
    return np.broadcast_to(ellipse_alpha(height, width, 0.45, 0.25), (frames, height, width))


@pytest.fixture(scope="session")
def animation_driving_mask(driving_clip: VideoClip, driving_alpha: np.ndarray) -> VideoClip:
    return VideoClip(mask_from_alpha(driving_alpha, "animation", "driving"), driving_clip.fps)
