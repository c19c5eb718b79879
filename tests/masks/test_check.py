"""The ambiguity check: clean palette masks pass; anti-aliased, JPEG-compressed and wrong-polarity masks warn."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from backend.masks.check import UNAMBIGUOUS_TOLERANCE, check_mask, classify_mask
from backend.scail2.masks import BLACK, PALETTE_RGB, WHITE, inspect_mask


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


def test_classification_equals_the_engines_inspect_mask() -> None:
    """The fast per-channel classification is the engine's nearest-colour one at tolerance 29."""
    rng = np.random.default_rng(0)
    # Values near the decision edges (0, 29, 30, 225, 226, 255) and anywhere else, plus clean palette patches.
    edges = np.array([0, 1, 28, 29, 30, 31, 128, 224, 225, 226, 227, 254, 255], np.uint8)
    mixed = rng.choice(edges, size=(3, 20, 24, 3))
    mixed[:, :5, :5] = PALETTE_RGB[4]
    mixed[1] = rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
    for mask in (mixed, mixed[0], np.asarray(two_subjects((40, 30), WHITE))):
        fast, engine = classify_mask(mask), inspect_mask(mask, tolerance=UNAMBIGUOUS_TOLERANCE)
        assert fast.unmatched_fraction == pytest.approx(engine.unmatched_fraction, abs=1e-12)
        assert fast.colour_fractions == pytest.approx(engine.colour_fractions, abs=1e-12)
        assert fast.border_white_fraction == pytest.approx(engine.border_white_fraction, abs=1e-12)
        assert fast.border_black_fraction == pytest.approx(engine.border_black_fraction, abs=1e-12)
