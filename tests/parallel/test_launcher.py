"""The worker's multi-process pipeline on CPU (gloo): same frames as one process, callbacks, cancellation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.scail2 import GenerationCancelled, GenerationRequest, SamplingSettings, VideoClip
from backend.scail2.pipelines.multi_process import MultiProcessPipeline
from backend.scail2.pipelines.pipeline_scail2 import Scail2Pipeline

SIZE = (64, 96)


def _request(frames: int = 5) -> GenerationRequest:
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[: SIZE[0], : SIZE[1]]
    alpha = (((yy - 32) / 24) ** 2 + ((xx - 48) / 20) ** 2 < 1).astype(np.uint8) * 255
    reference = np.dstack([rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8), alpha])
    driving = np.stack(
        [np.dstack([rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8), np.roll(alpha, 2 * i, axis=1)])
         for i in range(frames)]
    )
    return GenerationRequest(
        reference=reference,
        driving=VideoClip(frames=driving, fps=16.0),
        prompt="a person dancing",
        size=SIZE,
        # guidance > 1: both CFG passes run, each sequence-parallel.
        sampling=SamplingSettings.from_preset("quality", steps=2, seed=5, guidance=3.0),
        loras={},
        segment_len=5,
        segment_overlap=1,
    )


def test_two_processes_give_the_one_process_frames_and_report_through_the_parent(tiny_checkpoint):
    request = _request()
    whole = Scail2Pipeline.from_pretrained(tiny_checkpoint, device="cpu", dtype=torch.float32)
    expected = whole.generate(request)

    pipeline = MultiProcessPipeline.start(tiny_checkpoint, processes=2, device="cpu", dtype=torch.float32)
    try:
        assert pipeline.available_loras() == whole.available_loras()
        assert pipeline.acceleration["compile_blocks"] is False  # the CPU defaults, applied in every rank
        events, windows = [], []
        result = pipeline.generate(request, progress=events.append, on_window=windows.append)
        assert result.frames.shape == expected.frames.shape
        # fp32 sums in another order can move a pixel across a rounding boundary, nothing more.
        assert np.abs(result.frames.astype(int) - expected.frames.astype(int)).max() <= 1
        assert [(e.window, e.step) for e in events if e.phase == "step"] == [(1, 1), (1, 2)]
        assert events[-1].phase == "done" and [w.index for w in windows] == [0]

        # Cancelled from the parent: every rank stops at the same step; the ranks stay usable.
        with pytest.raises(GenerationCancelled):
            pipeline.generate(request, should_cancel=lambda: True)
        again = pipeline.generate(request)
        np.testing.assert_array_equal(again.frames, result.frames)
    finally:
        pipeline.close()
