"""The add-on's bpy-free logic: spec building, palette polarity and exact PNG masks (runs without Blender)."""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from backend import palette

ADDON = Path(__file__).resolve().parents[2] / "addon"


def load(name: str):
    """Load one module of the add-on package by path (the package itself imports bpy in other modules)."""
    spec = importlib.util.spec_from_file_location(f"scail_addon_logic_{name}", ADDON / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


spec_module, pngio = load("spec"), load("pngio")


def test_spec_sends_only_overrides():
    settings = spec_module.GenerateSettings(mode="animation", prompt="walk", negative_prompt="", preset="fast",
                                            size=(896, 512))
    assert spec_module.build_spec(settings) == {
        "mode": "animation", "prompt": "walk", "negative_prompt": "", "preset": "fast", "size": "896x512",
        "reference_mask": "alpha", "driving_mask": "auto"}
    settings.steps, settings.guidance, settings.shift, settings.seed = 8, 3.5, 5.0, 0
    settings.sampler, settings.loras, settings.frame_range, settings.fps = "euler", "lightx2v=0.8; dpo = 1", (2, 9), 29.97
    spec = spec_module.build_spec(settings)
    assert (spec["steps"], spec["guidance"], spec["shift"], spec["seed"], spec["sampler"]) == (8, 3.5, 5.0, 0, "euler")
    assert spec["loras"] == {"lightx2v": 0.8, "dpo": 1.0}
    assert spec["frame_range"] == [2, 9] and spec["fps"] == 29.97


def test_step_cache_is_sent_only_when_chosen():
    settings = spec_module.GenerateSettings("animation", "", "", "quality", size=(512, 512))
    assert "step_cache" not in spec_module.build_spec(settings)  # Auto: the worker's default
    settings.step_cache = "off"
    assert spec_module.build_spec(settings)["step_cache"] == "off"


def test_colour_anchoring_is_sent_only_when_chosen():
    settings = spec_module.GenerateSettings("animation", "", "", "fast", size=(512, 512))
    assert "color_anchor" not in spec_module.build_spec(settings)  # Auto: the worker's default, on past one window
    settings.color_anchor = "ON"
    assert spec_module.build_spec(settings)["color_anchor"] is True
    settings.color_anchor = "OFF"
    assert spec_module.build_spec(settings)["color_anchor"] is False


@pytest.mark.parametrize(("loras", "message"), [("lightx2v", "must look like name=strength"),
                                                ("dpo=high", "strength of 'dpo' is not a number"),
                                                ("=1", "must look like name=strength")])
def test_bad_loras_name_the_problem(loras, message):
    with pytest.raises(spec_module.SpecError, match=message):
        spec_module.parse_loras(loras)


def test_sizes_must_be_multiples_of_32():
    settings = spec_module.GenerateSettings("animation", "", "", "fast", size=(500, 512))
    with pytest.raises(spec_module.SpecError, match="500x512"):
        spec_module.build_spec(settings)


def test_mask_polarity_follows_the_mode():
    white, black = (255, 255, 255), (0, 0, 0)
    assert palette.mask_background("animation", "reference") == white
    assert palette.mask_background("animation", "driving") == black
    assert palette.mask_background("replacement", "reference") == black
    assert palette.mask_background("replacement", "driving") == white
    assert palette.identity_colour(0) == (0, 0, 255) and palette.identity_colour(7) == (255, 0, 0)
    with pytest.raises(ValueError, match="mode"):
        palette.mask_background("dance", "reference")


def test_png_masks_are_exact(tmp_path):
    rng = np.random.default_rng(0)
    rgba = np.zeros((5, 7, 4), np.uint8)
    ids = rng.integers(0, 3, (5, 7))
    for index, colour in enumerate([(0, 0, 255), (255, 0, 0)], start=1):
        rgba[ids == index] = (*colour, 255)
    rgba[ids == 0, :3] = rng.integers(0, 256, ((ids == 0).sum(), 3))  # junk colour under alpha 0
    planes = [rgba[..., c].tobytes() for c in range(4)]
    flat = np.frombuffer(pngio.flatten_identity_mask(planes, (255, 255, 255)), np.uint8).reshape(5, 7, 3)
    assert np.array_equal(flat[ids == 0], np.full(((ids == 0).sum(), 3), 255))
    assert np.array_equal(flat[ids > 0], rgba[ids > 0, :3])
    path = tmp_path / "mask.png"
    pngio.write_png(str(path), 7, 5, 3, flat.tobytes())
    assert np.array_equal(iio.imread(path), flat)
    alpha_mask = pngio.solid_mask(pngio.threshold(bytes([0, 127, 128, 255])), (0, 0, 255), (0, 0, 0))
    assert alpha_mask == bytes([0, 0, 0, 0, 0, 0, 0, 0, 255, 0, 0, 255])
    rgba_png = pngio.encode_png(7, 5, 4, rgba.tobytes())
    assert np.array_equal(iio.imread(io.BytesIO(rgba_png)), rgba)
    with pytest.raises(ValueError, match="expected 105 bytes"):
        pngio.encode_png(7, 5, 3, b"\0" * 10)
    assert list(tmp_path.iterdir()) == [path]  # no temp files left behind


def test_mask_prompts_go_only_into_specs_with_automatic_masks():
    settings = spec_module.GenerateSettings(mode="animation", prompt="walk", negative_prompt="", preset="fast",
                                            size=(512, 512), mask_prompts=" person,, cat ;bear ")
    assert spec_module.build_spec(settings)["mask_prompts"] == "person, cat, bear"  # driving mask "auto"
    settings.driving_mask = "file"
    assert "mask_prompts" not in spec_module.build_spec(settings)
    settings.reference_mask, settings.mask_prompts = "auto", " , "
    assert "mask_prompts" not in spec_module.build_spec(settings)  # empty: the worker's default prompts


def test_png_size_reads_the_header(tmp_path):
    path = tmp_path / "mask.png"
    path.write_bytes(pngio.encode_png(7, 3, 3, bytes(7 * 3 * 3)))
    assert pngio.png_size(str(path)) == (7, 3)
    (tmp_path / "not.png").write_bytes(b"GIF89a" + bytes(30))
    with pytest.raises(ValueError, match="not a PNG"):
        pngio.png_size(str(tmp_path / "not.png"))
