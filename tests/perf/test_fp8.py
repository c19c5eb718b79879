"""fp8 linears against the bf16/fp32 reference on CPU (torch's `_scaled_mm` runs there too)."""

import torch
from diffusers.models.transformers.transformer_wan import WanTransformerBlock
from torch import nn

from backend.scail2.accel.fp8 import BLOCK_LINEARS, Fp8Linear, convert_blocks_to_fp8, quantize_rowwise


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm())


def test_rowwise_quantisation_round_trips_within_e4m3_precision():
    x = torch.randn(64, 96) * torch.logspace(-2, 2, 64)[:, None]  # rows of very different magnitude
    q, scale = quantize_rowwise(x)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (64, 1)
    # e4m3 keeps 3 mantissa bits: relative rounding error at most 2^-4 per element, ~3% RMS.
    assert _rel(q.float() * scale, x) < 0.04


def test_fp8_linear_matches_its_emulation_and_stays_close_to_bf16():
    torch.manual_seed(0)
    linear = nn.Linear(128, 96).to(torch.bfloat16)
    x = torch.randn(3, 50, 128, dtype=torch.bfloat16)
    fp8 = Fp8Linear.from_linear(linear)
    with torch.no_grad():
        out = fp8(x)
        reference = linear(x)
    assert out.shape == (3, 50, 96) and out.dtype == torch.bfloat16

    # Same quantised operands multiplied in fp32: only accumulation order and the bf16 output differ.
    act_q, act_scale = quantize_rowwise(x.reshape(-1, 128))
    emulated = (act_q.float() * act_scale) @ fp8.dequantized_weight().float().t() + linear.bias.float()
    assert _rel(out.reshape(-1, 96), emulated) < 1e-2

    error = _rel(out, reference)
    assert 1e-3 < error < 0.06, error  # measurably quantised, within the stated fp8 tolerance


def test_block_conversion_replaces_token_linears_and_keeps_the_output_close():
    torch.manual_seed(0)
    block = WanTransformerBlock(dim=64, ffn_dim=128, num_heads=2, cross_attn_norm=True, added_kv_proj_dim=64)
    block = block.to(torch.bfloat16)
    hidden = torch.randn(1, 40, 64, dtype=torch.bfloat16)
    context = torch.randn(1, 257 + 512, 64, dtype=torch.bfloat16)
    temb = torch.randn(1, 6, 64, dtype=torch.bfloat16) * 0.1
    rope = (torch.ones(1, 40, 1, 32), torch.zeros(1, 40, 1, 32))
    with torch.no_grad():
        reference = block(hidden, context, temb, rope)
        blocks = nn.ModuleList([block])
        assert convert_blocks_to_fp8(blocks) == len(BLOCK_LINEARS)
        out = blocks[0](hidden, context, temb, rope)
    assert isinstance(blocks[0].ffn.net[2], Fp8Linear)
    assert isinstance(blocks[0].attn2.to_k, nn.Linear)  # context-side projections stay bf16
    assert not any(p.dtype == torch.float32 for p in blocks[0].attn1.parameters())
    assert _rel(out - hidden, reference - hidden) < 0.08
