"""Reference masks: alpha when the image has a real cut-out, else SAM3 image segmentation (tiny random model);
palette colours on the mode's background (animation white, replacement black), colours matching the driving mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from backend.masks.auto import make_auto_masks, needs_sam3
from backend.masks.reference import has_useful_alpha, make_reference_mask
from backend.masks.settings import MaskSettings
from backend.scail2.conditioning.masks import BLACK, PALETTE_RGB, WHITE
from backend.scail2.conditioning.media import read_clip, read_image
from backend.scail2.errors import CheckpointError, Scail2InputError

PALETTE = set(PALETTE_RGB)


def colours_in(image: np.ndarray) -> set[tuple[int, int, int]]:
    return {tuple(int(v) for v in c) for c in np.unique(image.reshape(-1, 3), axis=0)}


def cut_out(image: np.ndarray) -> np.ndarray:
    """``image`` with an alpha channel: an opaque ellipse in the middle, clear around it."""
    height, width = image.shape[:2]
    yy, xx = np.mgrid[:height, :width]
    inside = ((xx - width / 2) / (width / 4)) ** 2 + ((yy - height / 2) / (height / 3)) ** 2 <= 1
    return np.dstack([image[..., :3], np.where(inside, 255, 0).astype(np.uint8)])


@pytest.mark.parametrize(("mode", "background"), [("animation", WHITE), ("replacement", BLACK)])
def test_sam3_reference_mask_polarity_and_palette(segmenter, media_root: Path, mode: str, background) -> None:
    image = read_image(media_root / "astronaut.png")
    settings = MaskSettings.build(mode, detection_threshold=0.0)  # the untrained model scores near 0.25
    result = make_reference_mask(image, settings, segmenter)
    assert result.source == "sam3"
    assert result.image.shape == image.shape and result.image.dtype == np.uint8
    found = colours_in(result.image)
    opposite = BLACK if background == WHITE else WHITE
    assert found <= PALETTE | {background} and opposite not in found and background in found
    assert 1 <= len(result.identities) <= (2 if mode == "animation" else 1)
    assert [i.colour for i in result.identities] == ["blue", "red"][: len(result.identities)]
    assert {PALETTE_RGB[0], PALETTE_RGB[1]}.intersection(found) == set(
        (PALETTE_RGB[0], PALETTE_RGB[1])[: len(result.identities)]
    )
    assert result.check.ok


@pytest.mark.parametrize(("mode", "background"), [("animation", WHITE), ("replacement", BLACK)])
def test_alpha_reference_needs_no_model(media_root: Path, mode: str, background) -> None:
    image = cut_out(read_image(media_root / "chelsea.png"))
    assert has_useful_alpha(image) and not needs_sam3(image, None)
    result = make_reference_mask(image, MaskSettings.build(mode))
    assert result.source == "alpha"
    assert colours_in(result.image) == {PALETTE_RGB[0], background}
    np.testing.assert_array_equal((result.image == PALETTE_RGB[0]).all(-1), image[..., 3] > 127)
    red = make_reference_mask(image, MaskSettings.build(mode, colours=["red"]))
    assert colours_in(red.image) == {PALETTE_RGB[1], background}


def test_nearly_opaque_alpha_goes_to_sam3(segmenter, media_root: Path) -> None:
    horse = read_image(media_root / "horse.png")  # RGBA, but only a handful of pixels are not opaque
    assert horse.shape[-1] == 4 and not has_useful_alpha(horse)
    with pytest.raises(Scail2InputError, match="--sam3 DIR"):
        make_reference_mask(horse, MaskSettings.build("animation"))
    result = make_reference_mask(horse, MaskSettings.build("animation", detection_threshold=0.0), segmenter)
    assert result.source == "sam3"


def test_job_masks_share_colours_between_reference_and_driving(
    segmenter, media_root: Path, short_clips
) -> None:
    image = read_image(media_root / "astronaut.png")
    clip = read_clip(short_clips["carphone"])
    settings = MaskSettings.build(
        "animation", prompts="person, character, astronaut", detection_threshold=0.0
    )
    masks = make_auto_masks(settings, segmenter, reference=image, driving=clip)
    ref_colours = [i.colour for i in masks.reference.identities]
    drv_colours = [i.colour for i in masks.driving.identities]
    assert ref_colours == ["blue", "red"][: len(ref_colours)]
    assert drv_colours == ["blue", "red"][: len(drv_colours)]
    mismatch = any("colours must correspond" in w for w in masks.warnings)
    assert mismatch == (ref_colours != drv_colours)
    summary = masks.as_dict()
    assert summary["driving"]["check"]["ambiguous_fraction"] == 0.0
    assert summary["reference"]["source"] == "sam3"
    with pytest.raises(CheckpointError, match="--sam3 DIR"):
        make_auto_masks(settings, None, driving=clip)


def test_settings_parse_loose_input() -> None:
    settings = MaskSettings.build("replacement", prompts=" person ,, Cat, person ", colours="red")
    assert settings.prompts == ("person", "Cat") and settings.colours == (1,) and settings.identity_limit == 1
    assert MaskSettings.build("animation").prompts == ("person", "character")
    assert MaskSettings.build("animation").identity_limit == 2
    with pytest.raises(Scail2InputError, match="unknown mask colour"):
        MaskSettings.build("animation", colours="orange")
    with pytest.raises(Scail2InputError, match="distinct"):
        MaskSettings.build("animation", colours=["red", 1])
    with pytest.raises(Scail2InputError, match="mode"):
        MaskSettings.build("dance")
