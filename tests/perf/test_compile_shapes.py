"""The warm-up gap (issue #15, item 4): after the worker's warm-up no job shape compiles a new graph.

Compiled blocks keep a static graph per warmed shape; once frozen, any other token count (a clip's shorter last
window, another segment_len, extra references) takes one graph with a dynamic token axis, compiled by the warm-up.
Graphs are counted with dynamo's ``unique_graphs`` counter, as the worker's ``compiled_graphs`` timing does.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from diffusers.models.transformers.transformer_wan import WanTransformer3DModel

from backend.scail2.accel import block_shapes, compile_blocks, freeze_block_shapes
from backend.scail2.models.rope import TokenLayout, scail2_rope_tables
from backend.worker.warmup import WarmupSize, compiled_graph_count, warm_up

_SLOW = pytest.mark.skipif(not os.environ.get("SCAIL_SLOW_TESTS"), reason="set SCAIL_SLOW_TESTS=1")


def _tiny_wan() -> WanTransformer3DModel:
    torch.manual_seed(0)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=32, ffn_dim=128, num_layers=2, cross_attn_norm=True, image_dim=None,
    ).eval()


def _block_inputs(frames: int, height: int = 4, width: int = 6):
    layout = TokenLayout(frames=frames, height=height, width=width)
    generator = torch.Generator().manual_seed(frames * 100 + height * 10 + width)
    hidden = torch.randn(1, layout.total_tokens, 64, generator=generator)
    context = torch.randn(1, 7, 64, generator=generator)
    temb = torch.randn(1, 6, 64, generator=generator) * 0.1
    return hidden, context, temb, scail2_rope_tables(32, layout)


def _run(model, inputs) -> list[torch.Tensor]:
    with torch.no_grad():
        return [block(*inputs) for block in model.blocks]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_frozen_shapes_send_new_token_counts_to_one_dynamic_graph():
    model = _tiny_wan()
    cases = {"full": _block_inputs(5), "short": _block_inputs(2), "other": _block_inputs(3),
             "other_size": _block_inputs(2, 8, 4)}
    eager = {name: _run(model, inputs) for name, inputs in cases.items()}
    assert compile_blocks(model, backend="aot_eager") == 2
    shapes = block_shapes(model)
    start = compiled_graph_count()
    outputs = {"full": _run(model, cases["full"])}  # the warm-up size: a static graph
    assert compiled_graph_count() - start == 1 and shapes.dynamic_calls == 0
    assert freeze_block_shapes(model)
    outputs["short"] = _run(model, cases["short"])  # the warm-up's short window: the dynamic graph
    assert compiled_graph_count() - start == 2 and shapes.dynamic_calls == 2
    for name in ("other", "other_size", "full"):  # what jobs bring: nothing new compiles
        outputs[name] = _run(model, cases[name])
    assert compiled_graph_count() - start == 2
    assert shapes.dynamic_calls == 6  # "full" stayed on its static graph
    for name, values in outputs.items():
        for output, reference in zip(values, eager[name], strict=True):
            assert torch.allclose(output, reference, rtol=1e-4, atol=1e-5), name


def test_unfrozen_blocks_compile_a_static_graph_per_shape_as_before():
    model = _tiny_wan()
    compile_blocks(model, backend="aot_eager")
    start = compiled_graph_count()
    for frames in (2, 3):
        _run(model, _block_inputs(frames))
    assert compiled_graph_count() - start == 2 and block_shapes(model).dynamic_calls == 0
    assert not freeze_block_shapes(_tiny_wan())  # not compiled: nothing to freeze


@_SLOW
def test_dynamic_graph_gives_the_static_graphs_output_with_inductor():
    """The short window's output through the dynamic-token graph equals a static graph compiled for its shape
    (the same operations; only index arithmetic is symbolic). ~2 min of C++ compilation on two cores."""
    model = _tiny_wan()
    short = _block_inputs(2)
    compile_blocks(model, backend="inductor")
    static = _run(model, short)
    torch._dynamo.reset()
    compile_blocks(model, backend="inductor")
    _run(model, _block_inputs(5))
    freeze_block_shapes(model)
    dynamic = _run(model, short)
    assert block_shapes(model).dynamic_calls == 2
    for a, b in zip(dynamic, static, strict=True):
        assert torch.equal(a, b), (a - b).abs().max()


def test_worker_warm_up_covers_a_jobs_short_last_window(tiny_checkpoint):
    """Through the pipeline and the worker's warm-up: a job whose last window is shorter compiles nothing."""
    from backend.scail2 import GenerationRequest, SamplingSettings, Scail2Pipeline, VideoClip
    from backend.scail2.conditioning.segments import padded_windows

    pipe = Scail2Pipeline.from_pretrained(tiny_checkpoint, device="cpu", dtype=torch.float32)
    compile_blocks(pipe.transformer, backend="aot_eager")
    report = warm_up(pipe, [WarmupSize("96x64:17", 64, 96, 17)])  # then a 9-frame window for the dynamic graph
    assert report["dynamic_tokens_s"] is not None and report["compiled_graphs"] >= 2
    frames = 24
    assert [w.length for w in padded_windows(frames, 17, 5)] == [17, 13]  # the last window is shorter
    rng = np.random.default_rng(0)
    driving = rng.integers(0, 256, (frames, 64, 96, 4), dtype=np.uint8)
    driving[..., 3] = 0
    driving[:, 16:48, 24:72, 3] = 255
    request = GenerationRequest(
        reference=driving[0].copy(), driving=VideoClip(driving, 16.0), size=(64, 96), segment_len=17, loras={},
        sampling=SamplingSettings.from_preset("fast", steps=1, guidance=1.0, seed=0),
    )
    start, dynamic_calls = compiled_graph_count(), block_shapes(pipe.transformer).dynamic_calls
    result = pipe.generate(request)
    assert result.num_frames == frames
    assert compiled_graph_count() == start
    assert block_shapes(pipe.transformer).dynamic_calls > dynamic_calls  # the 13-frame window took the dynamic graph
