"""Masks, windows, samplers, presets and request validation: fast unit tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.scail2 import ExtraReference, GenerationRequest, SamplingSettings, Scail2InputError, VideoClip
from backend.scail2.conditioning.masks import (
    BLACK,
    PALETTE_RGB,
    WHITE,
    background_colour,
    compress_mask_to_latent,
    image_to_unit_range,
    inspect_mask,
    mask_from_alpha,
    validate_mask,
)
from backend.scail2.conditioning.request import (
    composite_over,
    prepare_inputs,
    resize_cover_crop,
    resolve_size,
)
from backend.scail2.conditioning.segments import official_windows, output_frame_count, padded_windows
from backend.scail2.pipelines.pipeline_scail2 import anchor_colours
from backend.scail2.schedulers.presets import PRESETS, check_loras_available
from backend.scail2.schedulers.samplers import build_sampler, unipc_sigmas

# ----------------------------------------------------------------------------------------------------- masks


def test_polarity_per_mode():
    assert background_colour("animation", "reference") == WHITE
    assert background_colour("animation", "driving") == BLACK
    assert background_colour("replacement", "reference") == BLACK
    assert background_colour("replacement", "driving") == WHITE
    with pytest.raises(Scail2InputError):
        background_colour("dance", "driving")


def test_threshold_is_strictly_above_225_and_maps_follow_the_official_order():
    # One pixel per palette colour, then white, plus threshold probes 225 (off) and 226 (on).
    colours = [*PALETTE_RGB, WHITE, (225, 0, 0), (226, 0, 0)]
    image = np.zeros((8, 8 * len(colours), 3), np.uint8)
    for i, colour in enumerate(colours):
        image[:, 8 * i : 8 * (i + 1)] = colour
    latent = compress_mask_to_latent(image_to_unit_range(torch.from_numpy(image).permute(2, 0, 1))[:, None])
    assert latent.shape == (28, 1, 1, len(colours))
    order = ["white", "red", "green", "blue", "yellow", "magenta", "cyan"]
    names = ["blue", "red", "green", "magenta", "cyan", "yellow", "white", None, "red"]
    for column, name in enumerate(names):
        expected = torch.zeros(7)
        if name is not None:
            expected[order.index(name)] = 1.0
        for k in range(4):  # the single frame is packed four times
            assert torch.equal(latent[7 * k : 7 * (k + 1), 0, 0, column], expected), (column, name)


def test_mask_from_alpha_and_validation():
    alpha = np.zeros((32, 48), np.uint8)
    alpha[8:24, 12:36] = 255
    mask = mask_from_alpha(alpha, "animation", "reference")
    assert tuple(mask[0, 0]) == WHITE and tuple(mask[16, 24]) == PALETTE_RGB[0]
    report = validate_mask(mask, "reference_mask", WHITE)
    assert report.unmatched_fraction == 0.0 and report.colour_fractions["blue"] == pytest.approx(16 * 24 / (32 * 48))

    noisy = mask.copy()
    noisy[::2] = (128, 128, 30)
    with pytest.raises(Scail2InputError, match=r"50\.0% of the pixels match no mask colour") as info:
        validate_mask(noisy, "reference_mask", WHITE)
    assert info.value.field == "reference_mask"
    assert inspect_mask(noisy).unmatched_fraction == pytest.approx(0.5)

    with pytest.raises(Scail2InputError, match="background is white but this mode expects black"):
        validate_mask(mask, "reference_mask", BLACK)
    with pytest.raises(Scail2InputError, match="no subject colour"):
        validate_mask(np.full_like(mask, 255), "reference_mask", WHITE)
    validate_mask(np.full_like(mask, 255), "extra", None, require_subject=False)  # a background plate


# --------------------------------------------------------------------------------------------------- windows


@pytest.mark.parametrize("frames", [1, 4, 5, 33, 81, 82, 100, 157, 158, 300])
def test_padded_windows_keep_every_frame(frames):
    windows = padded_windows(frames)
    assert output_frame_count(windows) == frames
    assert windows[-1].end == frames
    for window in windows:
        assert (window.length - 1) % 4 == 0 and window.length <= 81 and window.length >= window.end - window.start
    for previous, window in zip(windows, windows[1:], strict=False):
        assert window.start == previous.end - 5 and window.history == 5 and window.history_latent_frames == 2
    official = official_windows(frames)
    assert [(w.start, w.end) for w in windows[: len(official) - 1]] == [(w.start, w.end) for w in official[:-1]]


# -------------------------------------------------------------------------------------------------- samplers


def test_sampler_schedules():
    sampler = build_sampler("unipc", 40, 3.0)
    assert sampler.timesteps.dtype == torch.int64 and sampler.timesteps[0] == 999 and sampler.num_steps == 40
    assert sampler.sigmas[-1] == 0 and len(sampler.sigmas) == 41
    assert unipc_sigmas(1, 1.0)[0] == pytest.approx(0.999, abs=1e-6)
    assert build_sampler("DPM++", 6, 5.0).name == "dpm++" and build_sampler("uni_pc", 8, 5.0).name == "unipc"
    with pytest.raises(Scail2InputError, match="unknown sampler"):
        build_sampler("ddim", 10, 1.0)


# --------------------------------------------------------------------------------------------------- presets


def test_presets_and_overrides():
    fast = SamplingSettings.from_preset("fast")
    assert (fast.sampler, fast.steps, fast.guidance, fast.shift) == ("euler", 6, 1.0, 5.0)
    assert fast.loras == {"lightx2v": 0.8, "dpo": 1.0} and not fast.uses_cfg
    balanced = PRESETS["balanced"]
    assert (balanced.sampler, balanced.steps, balanced.guidance, balanced.shift) == ("unipc", 8, 1.0, 5.0)
    quality = SamplingSettings.from_preset("quality", steps=20, sampler="dpm++", seed=5)
    assert (quality.sampler, quality.steps, quality.guidance, quality.shift, quality.seed) == ("dpm++", 20, 5.0, 3.0, 5)
    assert quality.uses_cfg and quality.loras == {}
    assert SamplingSettings.from_preset("fast").with_seed().seed is not None
    with pytest.raises(Scail2InputError, match="unknown preset"):
        SamplingSettings.from_preset("turbo")
    with pytest.raises(Scail2InputError) as info:
        SamplingSettings.from_preset("fast", steps=0)
    assert info.value.field == "steps"
    with pytest.raises(Scail2InputError, match="the 'balanced' preset needs the LoRA") as info:
        check_loras_available(PRESETS["balanced"].loras, {"dpo": "x"}, "balanced")
    assert "lightx2v" in str(info.value) and info.value.field == "loras"


# ----------------------------------------------------------------------------------------------- conditioning


def test_named_sizes_follow_the_reference_orientation():
    assert resolve_size("512p", (300, 451)) == (512, 896)
    assert resolve_size("512p", (451, 300)) == (896, 512)
    assert resolve_size("512p", (512, 512)) == (512, 512)
    assert resolve_size("704p", (720, 1280)) == (704, 1280)
    assert resolve_size("896x512", (1, 1)) == (512, 896)
    assert resolve_size((64, 96), (1000, 10)) == (64, 96)
    for bad in ["500p", (100, 96), (64, 4096), "12x"]:
        with pytest.raises(Scail2InputError) as info:
            resolve_size(bad, (512, 512))
        assert info.value.field == "size"


def test_resize_covers_then_centre_crops():
    # A 40x80 image, left half black, right half white, resized to cover 32x32: the centre crop keeps both halves.
    image = torch.zeros((1, 40, 80, 3), dtype=torch.uint8)
    image[:, :, 40:] = 255
    out = resize_cover_crop(image, 32, 32)
    assert out.shape == (1, 32, 32, 3) and out.dtype == torch.uint8
    assert out[0, :, 0].max() == 0 and out[0, :, -1].min() == 255


def test_rgba_composites_over_the_mode_background():
    rgba = torch.zeros((2, 2, 4), dtype=torch.uint8)
    rgba[0, 0] = torch.tensor((10, 20, 30, 255))
    out = composite_over(rgba, WHITE)
    assert out[0, 0].tolist() == [10, 20, 30] and tuple(out[1, 1].tolist()) == WHITE


def _request(**overrides) -> GenerationRequest:
    reference = np.zeros((48, 64, 4), np.uint8)
    reference[12:36, 16:48] = 255
    driving = np.zeros((5, 48, 64, 4), np.uint8)
    driving[:, 12:36, 16:48] = 200
    settings = dict(reference=reference, driving=VideoClip(driving, 24.0), size=(64, 96))
    settings.update(overrides)
    return GenerationRequest(**settings)


def test_prepare_inputs_masks_from_alpha():
    prepared = prepare_inputs(_request())
    assert (prepared.height, prepared.width, prepared.num_frames, prepared.fps) == (64, 96, 5, 24.0)
    assert prepared.driving.shape == (5, 64, 96, 3) and prepared.driving_mask.shape == (5, 64, 96, 3)
    reference_mask, driving_mask = prepared.reference_mask.numpy(), prepared.driving_mask.numpy()
    assert tuple(reference_mask[0, 0]) == WHITE and tuple(reference_mask[32, 48]) == PALETTE_RGB[0]
    assert tuple(driving_mask[0, 0, 0]) == BLACK and tuple(driving_mask[0, 32, 48]) == PALETTE_RGB[0]


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"reference": np.zeros((48, 64, 3), np.uint8)}, "reference_mask", "reference_mask is required"),
        ({"reference": np.zeros((0, 64, 3), np.uint8)}, "reference", "empty"),
        ({"reference": np.zeros((48, 64, 3), np.float32)}, "reference", "uint8"),
        ({"driving": VideoClip(np.zeros((5, 48, 64, 3), np.uint8), 24.0)}, "driving_mask", "driving_mask is required"),
        ({"driving": VideoClip(np.zeros((5, 48, 64, 4), np.uint8), 0.0)}, "driving", "fps"),
        (
            {"driving_mask": VideoClip(np.zeros((4, 48, 64, 3), np.uint8), 24.0)},
            "driving_mask",
            "4 frames but the driving video has 5",
        ),
        (
            {"reference_mask": np.zeros((48, 48, 3), np.uint8)},
            "reference_mask",
            "aspect ratio",
        ),
        ({"extra_references": [ExtraReference(np.zeros((48, 64, 3), np.uint8))]}, "extra_references[0].mask", "required"),
        ({"mode": "swap"}, "mode", "animation"),
    ],
)
def test_bad_inputs_name_the_field(overrides, field, message):
    with pytest.raises(Scail2InputError, match=message) as info:
        prepare_inputs(_request(**overrides))
    assert info.value.field == field


def test_colour_anchor_matches_channel_statistics():
    generator = torch.Generator().manual_seed(0)
    video = torch.rand(3, 5, 8, 8, generator=generator) * 0.5
    anchor = torch.tensor([[0.1, -0.2, 0.0], [0.2, 0.1, 0.3]])
    out = anchor_colours(video, anchor)
    flat = out.transpose(0, 1).reshape(5, 3, -1).transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(flat.mean(1), anchor[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(flat.std(1), anchor[1], atol=1e-5, rtol=0)


def test_resume_reuses_the_saved_seed():
    from backend.scail2.pipelines.pipeline_scail2 import WindowResult, _seed_for_resume

    saved = [WindowResult(0, np.zeros((9, 64, 96, 3), np.uint8), {"seed": torch.tensor([123])})]
    assert _seed_for_resume(SamplingSettings(), saved).seed == 123
    assert _seed_for_resume(SamplingSettings(seed=123), saved).seed == 123
    assert _seed_for_resume(SamplingSettings(), None).seed is None
    with pytest.raises(Scail2InputError, match="seed 123") as info:
        _seed_for_resume(SamplingSettings(seed=5), saved)
    assert info.value.field == "resume"
