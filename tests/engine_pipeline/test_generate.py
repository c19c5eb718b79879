"""End to end on the CPU: the tiny official-layout checkpoint through the real loaders, real media, two windows."""

from __future__ import annotations

import numpy as np
import pytest

from backend.scail2 import (
    ExtraReference,
    GenerationCancelled,
    GenerationRequest,
    SamplingSettings,
    Scail2InputError,
    VideoClip,
    WindowResult,
)
from backend.scail2.conditioning.masks import BLACK, WHITE, mask_from_alpha

# With the 11 driving frames of the `driving_clip` fixture, segment_len 9 / overlap 5 gives windows [0, 9) and
# [4, 11), the second padded to 9 frames.
DRIVING_FRAMES = 11
SEGMENT_LEN = 9
SIZE = (64, 96)


class SimulatedKill(Exception):
    """Stands for the worker process dying right after it persisted a window."""


def _fast_request(reference_rgba, driving_clip, driving_mask, **overrides) -> GenerationRequest:
    settings = dict(
        reference=reference_rgba,
        driving=driving_clip,
        driving_mask=driving_mask,
        prompt="a man talking in a car",
        mode="animation",
        size=SIZE,
        sampling=SamplingSettings.from_preset("fast", steps=1, seed=7),
        segment_len=SEGMENT_LEN,
    )
    settings.update(overrides)
    return GenerationRequest(**settings)


def test_animation_two_windows_with_loras_then_resume_after_kill(
    tiny_pipeline, reference_rgba, driving_clip, animation_driving_mask, tmp_path
):
    # Reference mask from alpha, palette driving mask; the "fast" preset fuses lightx2v 0.8 + dpo 1.0.
    request = _fast_request(reference_rgba, driving_clip, animation_driving_mask)
    events, windows = [], []
    result = tiny_pipeline.generate(request, progress=events.append, on_window=windows.append)

    # Every driving frame is kept (the official code would drop the 2 frames after [4, 9+4)), at the clip's fps.
    assert result.frames.shape == (DRIVING_FRAMES, *SIZE, 3) and result.frames.dtype == np.uint8
    assert result.fps == pytest.approx(driving_clip.fps)
    assert result.seed == 7 and result.settings["windows"] == 2
    assert tiny_pipeline.lora_manager.fused == {"lightx2v": 0.8, "dpo": 1.0}
    steps = [(e.window, e.step) for e in events if e.phase == "step"]
    assert steps == [(1, 1), (2, 1)] and events[-1].phase == "done" and events[-1].num_windows == 2
    assert [w.index for w in windows] == [0, 1]
    assert [len(w.frames) for w in windows] == [
        9,
        2,
    ]  # window 2 adds frames 9..10; history and padding dropped
    assert windows[0].history["tail"].shape == (3, 5, *SIZE)

    # A killed run: the worker persisted window 0, then died.
    saved = tmp_path / "window_0000.safetensors"

    def persist_then_die(window: WindowResult) -> None:
        window.save(saved)
        raise SimulatedKill

    with pytest.raises(SimulatedKill):
        tiny_pipeline.generate(request, on_window=persist_then_die)

    resumed_events = []
    resumed = tiny_pipeline.generate(
        request, progress=resumed_events.append, resume=[WindowResult.load(saved)]
    )
    assert [(e.window, e.step) for e in resumed_events if e.phase == "step"] == [
        (2, 1)
    ]  # window 1 not redone
    np.testing.assert_array_equal(resumed.frames, result.frames)


def test_replacement_with_extra_references_cfg_and_colour_anchor(
    tiny_pipeline, reference_rgba, driving_clip, driving_alpha
):
    # Replacement: reference mask on black, driving mask on white; explicit palette masks, two extra views.
    reference_mask = mask_from_alpha(reference_rgba[..., 3], "replacement", "reference")
    driving_mask = VideoClip(mask_from_alpha(driving_alpha, "replacement", "driving"), driving_clip.fps)
    assert tuple(reference_mask[0, 0]) == BLACK and tuple(driving_mask.frames[0, 0, 0]) == WHITE
    plate = np.full_like(reference_mask, 255)  # a background plate: white over its usable area
    extras = [
        ExtraReference(reference_rgba[..., :3], reference_mask),
        ExtraReference(np.ascontiguousarray(reference_rgba[::-1, :, :3]), plate),
    ]
    request = _fast_request(
        reference_rgba[..., :3],
        driving_clip,
        driving_mask,
        reference_mask=reference_mask,
        extra_references=extras,
        mode="replacement",
        sampling=SamplingSettings.from_preset("quality", steps=1, seed=3),  # CFG 5: both passes
        color_anchor=True,
    )
    result = tiny_pipeline.generate(request)
    assert result.frames.shape == (DRIVING_FRAMES, *SIZE, 3)
    assert result.settings["extra_references"] == 2 and result.settings["guidance"] == 5.0
    assert tiny_pipeline.lora_manager.fused == {}  # the quality preset unfuses the fast preset's LoRAs
    assert result.frames.std() > 0


def test_cancel_between_steps(tiny_pipeline, reference_rgba, driving_clip, animation_driving_mask):
    request = _fast_request(
        reference_rgba,
        driving_clip,
        animation_driving_mask,
        sampling=SamplingSettings.from_preset("fast", steps=2),
    )
    steps_done = []
    with pytest.raises(GenerationCancelled):
        tiny_pipeline.generate(
            request,
            progress=lambda e: steps_done.append(e) if e.phase == "step" else None,
            should_cancel=lambda: len(steps_done) >= 1,
        )
    assert len(steps_done) == 1


def test_bad_requests_fail_before_sampling(
    tiny_pipeline, reference_rgba, driving_clip, animation_driving_mask
):
    short_mask = VideoClip(animation_driving_mask.frames[:4], driving_clip.fps)
    with pytest.raises(Scail2InputError, match="4 frames but the driving video has 11") as info:
        tiny_pipeline.generate(_fast_request(reference_rgba, driving_clip, short_mask))
    assert info.value.field == "driving_mask"

    with pytest.raises(Scail2InputError, match="LoRA") as info:
        tiny_pipeline.generate(
            _fast_request(reference_rgba, driving_clip, animation_driving_mask, loras={"not-in-folder": 1.0})
        )
    assert info.value.field == "loras"

    wrong_polarity = VideoClip(
        mask_from_alpha(np.asarray(animation_driving_mask.frames[..., 2]), "replacement", "driving"), 25.0
    )
    with pytest.raises(Scail2InputError, match="background is white"):
        tiny_pipeline.generate(_fast_request(reference_rgba, driving_clip, wrong_polarity))

    with pytest.raises(Scail2InputError, match="resume"):
        bogus = WindowResult(0, np.zeros((3, *SIZE, 3), np.uint8), {})
        tiny_pipeline.generate(
            _fast_request(reference_rgba, driving_clip, animation_driving_mask), resume=[bogus]
        )


def test_batched_cfg_equals_two_forwards(tiny_pipeline):
    # CFG-parallel workers evaluate cond and uncond as one batch of 2 with zero-padded contexts; same velocity.
    import torch

    from backend.scail2.pipelines.pipeline_scail2 import EncodedConditions

    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g)

    conditions = EncodedConditions(
        context=rand(1, 5, 32), context_null=rand(1, 2, 32), clip_features=rand(1, 257, 32),
        ref_latent=rand(16, 1, 8, 12), ref_mask=torch.rand(28, 1, 8, 12, generator=g),
        extra_latents=rand(16, 2, 8, 12), extra_masks=torch.rand(28, 2, 8, 12, generator=g),
    )  # fmt: skip
    history_mask = torch.zeros(4, 3, 8, 12)
    history_mask[:, :1] = 1
    inputs = {
        "ref_masks": torch.cat([conditions.ref_mask, torch.zeros(28, 3, 8, 12)], 1),
        "pose_latent": rand(16, 3, 4, 6),
        "driving_masks": torch.rand(28, 3, 4, 6, generator=g),
        "history_mask": history_mask,
    }
    latent, timestep = rand(16, 3, 8, 12), torch.tensor(700)
    try:
        velocities = []
        for batch_cfg in (False, True):
            tiny_pipeline.batch_cfg = batch_cfg
            velocities.append(tiny_pipeline._velocity(latent, timestep, conditions, inputs, True, 4.0, None))
    finally:
        tiny_pipeline.batch_cfg = None
    # Equal up to fp32 summation order (batch-size dependent kernels): the fixtures' relative measure.
    scale = max(1.0, float(velocities[0].abs().max()))
    assert float((velocities[1] - velocities[0]).abs().max()) / scale < 1e-5


def test_comfy_layout_with_diffusers_encoders(tmp_path, reference_rgba, driving_clip, animation_driving_mask):
    # The Comfy-Org fp16 single-file DiT with Wan2.1-I2V diffusers encoder folders, through the same loaders.
    import torch

    from backend.scail2 import Scail2Pipeline
    from backend.scail2.testing.tiny import write_tiny_checkpoint

    folder = write_tiny_checkpoint(tmp_path / "comfy", layout="comfy", seed=1, dit_prefix="model.diffusion_model.")
    pipe = Scail2Pipeline.from_pretrained(folder, device="cpu", dtype=torch.float32)
    assert pipe.layout.dit.name == "wan2.1_14B_SCAIL_2_fp16.safetensors"
    assert pipe.layout.text_encoder.format == "diffusers" and set(pipe.available_loras()) >= {"dpo", "relight"}
    short = VideoClip(driving_clip.frames[:5], driving_clip.fps)
    mask = VideoClip(animation_driving_mask.frames[:5], driving_clip.fps)
    request = _fast_request(reference_rgba, short, mask, loras={"relight": 0.5})
    result = pipe.generate(request)
    assert result.frames.shape == (5, *SIZE, 3) and pipe.lora_manager.fused == {"relight": 0.5}
