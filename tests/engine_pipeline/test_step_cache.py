"""Step caching through diffusers' hooks on the tiny checkpoint: applied to the quality preset's many steps, the
expected forwards skipped per CFG pass, two windows with history frames, and off when asked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.scail2 import GenerationRequest, SamplingSettings
from backend.scail2.accel.step_cache import (
    STEP_CACHE_CHOICES,
    StepCache,
    resolve_step_cache,
    taylorseer_computed_steps,
)
from backend.scail2.schedulers.presets import DEFAULT_STEP_CACHE, STEP_CACHE_NAMES

SIZE = (64, 96)
STEPS = 20  # the smallest step count "auto" caches; the quality preset has 40


def test_names_and_auto_resolution():
    assert STEP_CACHE_NAMES == STEP_CACHE_CHOICES and DEFAULT_STEP_CACHE == "auto"
    assert SamplingSettings.from_preset("quality").step_cache == "auto"
    assert resolve_step_cache("auto", 40) == "taylorseer"
    assert resolve_step_cache("auto", 8) == resolve_step_cache("auto", 6) == "off"  # balanced, fast
    assert resolve_step_cache("first_block", 6) == "first_block"
    computed = taylorseer_computed_steps(40)
    assert len(computed) == 15 and computed[:5] == [0, 1, 2, 4, 7] and computed[-1] == 37
    with pytest.raises(ValueError):
        resolve_step_cache("teacache", 40)


def _request(reference_rgba, driving_clip, mask, step_cache: str, frames: int = 11) -> GenerationRequest:
    return GenerationRequest(
        reference=reference_rgba,
        driving=type(driving_clip)(driving_clip.frames[:frames].copy(), driving_clip.fps),
        driving_mask=type(mask)(mask.frames[:frames].copy(), mask.fps),
        prompt="a man talking in a car",
        size=SIZE,
        sampling=SamplingSettings.from_preset("quality", steps=STEPS, seed=5, step_cache=step_cache),
        segment_len=9,  # two windows: the second starts from history frames
    )


def test_quality_preset_caches_both_cfg_passes_over_two_windows(
    tiny_pipeline, reference_rgba, driving_clip, animation_driving_mask
):
    cached = tiny_pipeline.generate(_request(reference_rgba, driving_clip, animation_driving_mask, "auto"))
    stats = tiny_pipeline.step_cache_stats
    full = len(taylorseer_computed_steps(STEPS))  # 9 of 20
    assert cached.settings["step_cache"] == "taylorseer"
    assert [s["forwards"] for s in stats] == [2 * STEPS, 2 * STEPS]  # cond + uncond, each window
    assert [s["computed_forwards"] for s in stats] == [2 * full, 2 * full]
    assert not tiny_pipeline.transformer.is_cache_enabled  # removed after every window

    plain = tiny_pipeline.generate(_request(reference_rgba, driving_clip, animation_driving_mask, "off"))
    assert plain.settings["step_cache"] == "off"
    assert [s["forwards"] for s in tiny_pipeline.step_cache_stats] == [0, 0]  # no cache was installed
    assert cached.frames.shape == plain.frames.shape
    difference = np.abs(cached.frames.astype(np.int16) - plain.frames.astype(np.int16))
    assert 0 < difference.mean() < 64  # lossy, but the same video


def test_first_block_cache_runs_and_counts(tiny_pipeline, reference_rgba, driving_clip, animation_driving_mask):
    result = tiny_pipeline.generate(
        _request(reference_rgba, driving_clip, animation_driving_mask, "first_block", frames=9))
    (stats,) = tiny_pipeline.step_cache_stats
    assert result.settings["step_cache"] == "first_block"
    assert stats["forwards"] == 2 * STEPS and 2 <= stats["computed_forwards"] <= 2 * STEPS


def test_taylorseer_skips_the_compiled_blocks_from_outside():
    """The cache hooks wrap the compiled block forward (compile_blocks compiles `forward`), so a skipped step
    never enters the graph, and a fullgraph compile stays one graph."""
    from backend.scail2.accel import compile_blocks
    from backend.scail2.models.transformer_scail2 import SCAIL2Transformer

    torch.manual_seed(0)
    model = SCAIL2Transformer(dim=64, ffn_dim=96, freq_dim=32, num_heads=2, num_layers=2, text_dim=32,
                              clip_dim=32).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    inputs = dict(latents=torch.randn(1, 16, 2, 4, 4, generator=g), timestep=torch.tensor([500.0]),
                  context=torch.randn(1, 3, 32, generator=g), clip_features=torch.randn(1, 5, 32, generator=g),
                  ref_latents=torch.randn(1, 16, 1, 4, 4, generator=g), ref_masks=torch.rand(1, 28, 1, 4, 4),
                  pose_latents=torch.randn(1, 16, 2, 2, 2, generator=g), driving_masks=torch.rand(1, 28, 2, 2, 2),
                  return_dict=False)
    torch._dynamo.reset()
    with torch.no_grad():
        eager = model(**inputs)[0]
        compile_blocks(model, backend="aot_eager")
        cache = StepCache(model, "taylorseer")
        outputs = []
        with cache.window():
            for _ in range(6):
                with cache.context("cond"):
                    outputs.append(model(**inputs)[0])
    assert [s for s, ran in enumerate(cache.stats.contexts["cond"]) if ran] == taylorseer_computed_steps(6)
    assert torch.allclose(outputs[0], eager, atol=1e-5)
    # Same input every step: the first-order extrapolation of a constant is that constant.
    assert torch.allclose(outputs[3], eager, atol=1e-5)
    torch._dynamo.reset()


def test_option_reaches_sampling_from_the_cli_and_the_job_spec():
    from backend.scail2.cli import build_parser
    from backend.worker.schemas import JobSpec

    parser = build_parser()
    base = ["--checkpoint", "x", "--reference", "r.png", "--driving", "d.mp4", "--out", "o"]
    assert parser.parse_args([*base, "--step-cache", "off"]).step_cache == "off"
    assert parser.parse_args(base).step_cache is None  # the preset's default: auto
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--step-cache", "teacache"])
    assert JobSpec(step_cache="first_block").step_cache == "first_block" and JobSpec().step_cache is None
    with pytest.raises(ValueError):
        JobSpec(step_cache="teacache")
