"""The SCAIL-2 block keeps the residual stream and gates in float32, as the official Wan/SCAIL-2 block does.

In float32 it computes exactly what diffusers' ``WanTransformerBlock`` computes; with bf16 weights its output is
closer to the float32 output than the old path, which rounded the stream to bf16 after every add.
"""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers.models.transformers.transformer_wan import WanTransformerBlock

from backend.scail2.models.transformer_scail2 import SCAIL2Transformer, SCAIL2TransformerBlock
from backend.scail2.testing.tiny import random_dit_inputs

CONFIG = dict(dim=64, ffn_dim=128, freq_dim=32, num_heads=2, num_layers=8, text_dim=32, clip_dim=32)


class _RoundingBlock(WanTransformerBlock):
    """The previous path: diffusers' block fed a stream in the activation dtype (rounded after every add)."""

    def forward(self, hidden_states, encoder_hidden_states, temb, rotary_emb):
        return super().forward(hidden_states.to(encoder_hidden_states.dtype), encoder_hidden_states, temb, rotary_emb)


def _model() -> SCAIL2Transformer:
    torch.manual_seed(0)
    model = SCAIL2Transformer(**CONFIG).eval().requires_grad_(False)
    with torch.no_grad():  # gates and modulation of trained size, so the blocks change the stream
        for block in model.blocks:
            block.scale_shift_table.normal_(0.0, 0.5)
    return model


def _with_blocks(model: SCAIL2Transformer, cls: type) -> SCAIL2Transformer:
    model = copy.deepcopy(model)
    for block in model.blocks:
        block.__class__ = cls
    return model


def _bf16(model: SCAIL2Transformer) -> SCAIL2Transformer:
    model = copy.deepcopy(model)
    for name, param in model.named_parameters():
        if not SCAIL2Transformer.keeps_fp32(name):
            param.data = param.data.to(torch.bfloat16)
    return model


def _inputs(seed: int = 1, frames: int = 3, height: int = 8, width: int = 8) -> dict:
    inputs = random_dit_inputs(CONFIG["text_dim"], CONFIG["clip_dim"], seed, frames, height, width)
    return {**inputs, "return_dict": False}


def _rel(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value.double() - reference.double()).norm() / reference.double().norm())


def test_model_uses_the_fp32_residual_block_with_unchanged_parameter_names():
    model = _model()
    assert all(type(block) is SCAIL2TransformerBlock for block in model.blocks)
    plain = _with_blocks(model, WanTransformerBlock)
    assert list(model.state_dict()) == list(plain.state_dict())
    assert SCAIL2Transformer._repeated_blocks == ["SCAIL2TransformerBlock"]


def test_fp32_path_equals_diffusers_block():
    model = _model()
    inputs = _inputs()
    with torch.no_grad():
        ours = model(**inputs)[0]
        theirs = _with_blocks(model, WanTransformerBlock)(**inputs)[0]
    assert torch.equal(ours, theirs), (ours - theirs).abs().max()


def test_block_returns_fp32_stream_from_bf16_weights():
    model = _bf16(_model())
    seen = []
    hook = model.blocks[0].register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    with torch.no_grad():
        out = model(**_inputs())[0]
    hook.remove()
    assert seen == [torch.float32] and out.dtype == torch.float32
    assert model.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16  # parameters stay as loaded


def test_bf16_is_closer_to_fp32_than_the_rounding_path():
    model = _model()
    inputs = _inputs()
    with torch.no_grad():
        reference = model(**inputs)[0]
        ours = _bf16(model)(**inputs)[0]
        before = _with_blocks(_bf16(model), _RoundingBlock)(**inputs)[0]
    ours_err, before_err = _rel(ours, reference), _rel(before, reference)
    assert ours_err < 0.8 * before_err, (ours_err, before_err)


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")
def test_autocast_matches_bf16_weights_path_closely():
    model = _model()
    inputs = _inputs()
    with torch.no_grad():
        reference = model(**inputs)[0]
        with torch.autocast("cpu", torch.bfloat16):
            mixed = model(**inputs)[0]
    assert mixed.dtype == torch.float32
    assert _rel(mixed, reference) < 3e-2
