"""The ambiguity check: clean palette masks pass; anti-aliased, JPEG-compressed and wrong-polarity masks warn."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from backend.masks.check import UNAMBIGUOUS_TOLERANCE, check_mask, classify_mask
from backend.scail2.conditioning.masks import BLACK, PALETTE_RGB, WHITE, inspect_mask


def two_subjects(
    size: tuple[int, int], background: tuple[int, int, int], supersample: int = 1
) -> Image.Image:
    """A blue ellipse and a red one on ``background``, drawn ``supersample`` times larger."""
    width, height = size[0] * supersample, size[1] * supersample
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    draw.ellipse((0.1 * width, 0.2 * height, 0.45 * width, 0.9 * height), fill=PALETTE_RGB[0])
    draw.ellipse((0.55 * width, 0.1 * height, 0.9 * width, 0.85 * height), fill=PALETTE_RGB[1])
    return image


def test_clean_mask_passes() -> None:
    mask = np.asarray(two_subjects((160, 96), BLACK))
    report = check_mask(mask, BLACK)
    assert report.ok and report.ambiguous_fraction == 0.0
    assert report.background == "black"
    assert report.colour_fractions["blue"] > 0.1 and report.colour_fractions["red"] > 0.1


def test_anti_aliased_mask_warns() -> None:
    # Drawn 4x larger and downsampled with a smooth filter, like a render with a pixel filter.
    mask = np.asarray(
        two_subjects((160, 96), BLACK, supersample=4).resize((160, 96), Image.Resampling.LANCZOS)
    )
    report = check_mask(mask, BLACK, name="driving_mask")
    assert report.ambiguous_fraction > 0.005
    assert not report.ok and "driving_mask" in report.warnings[0] and "anti-aliasing" in report.warnings[0]


@pytest.mark.parametrize("quality", [75, 95])
def test_jpeg_compressed_mask_warns(quality: int) -> None:
    buffer = io.BytesIO()
    two_subjects((160, 96), WHITE).save(buffer, format="JPEG", quality=quality)
    mask = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    report = check_mask(mask, WHITE)
    assert report.ambiguous_fraction > 0.005
    assert not report.ok


def test_video_masks_are_checked_over_all_frames() -> None:
    clean = np.asarray(two_subjects((64, 48), BLACK))
    clip = np.stack([clean, clean, clean])
    assert check_mask(clip, BLACK).ok
    blurred = clip.copy()
    blurred[1, 10:30, 10:30] = (0, 0, 180)  # one frame with a dim patch: below the 225 threshold
    report = check_mask(blurred, BLACK)
    assert report.ambiguous_fraction == pytest.approx(400 / (3 * 64 * 48))
    assert not report.ok


def test_wrong_polarity_warns() -> None:
    on_white = np.asarray(two_subjects((64, 48), WHITE))
    report = check_mask(on_white, BLACK, name="driving_mask")
    assert report.background == "white"
    assert any("expects black" in warning for warning in report.warnings)
    assert check_mask(on_white, WHITE).ok


def test_rejects_non_masks() -> None:
    with pytest.raises(ValueError, match="uint8"):
        check_mask(np.zeros((4, 4, 3), np.float32))


def nearest_colour_fractions(mask: np.ndarray, tolerance: int) -> tuple[float, list[float]]:
    """Brute force: each pixel's nearest colour of palette + white + black by max channel distance."""
    colours = np.asarray([*PALETTE_RGB, WHITE, BLACK], np.int16)
    pixels = np.asarray(mask)[..., :3].reshape(-1, 3).astype(np.int16)
    distance = np.abs(pixels[:, None, :] - colours).max(axis=-1)
    matched = distance.min(axis=-1) <= tolerance
    counts = np.bincount(distance.argmin(axis=-1)[matched], minlength=len(colours))
    return 1.0 - matched.mean(), list(counts / len(pixels))


@pytest.mark.parametrize("tolerance", [0, 29, 60, 127])
def test_per_channel_classification_equals_a_nearest_colour_search(tolerance: int) -> None:
    """The per-channel test in ``inspect_mask`` is exactly a nearest-colour search with a tolerance."""
    rng = np.random.default_rng(tolerance)
    # Values near every decision edge and anywhere else, plus clean palette patches.
    edges = np.array([0, 1, 28, 29, 30, 31, 59, 60, 61, 127, 128, 194, 195, 196, 224, 225, 226, 254, 255], np.uint8)
    mixed = rng.choice(edges, size=(3, 20, 24, 3))
    mixed[:, :5, :5] = PALETTE_RGB[4]
    mixed[1] = rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
    for mask in (mixed, mixed[0], np.asarray(two_subjects((40, 30), WHITE))):
        report = inspect_mask(mask, tolerance=tolerance, max_frames=None)
        unmatched, fractions = nearest_colour_fractions(mask, tolerance)
        assert report.unmatched_fraction == pytest.approx(unmatched, abs=1e-12)
        assert list(report.colour_fractions.values()) == pytest.approx(fractions, abs=1e-12)
    expected = nearest_colour_fractions(mixed, UNAMBIGUOUS_TOLERANCE)[0]
    assert classify_mask(mixed).unmatched_fraction == pytest.approx(expected, abs=1e-12)
