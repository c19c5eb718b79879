"""An attention processor for the Wan blocks that hands SDPA strided views instead of contiguous copies.

diffusers' `_native_cudnn` backend makes q, k and v contiguous in [batch, heads, tokens, head_dim] order
before calling cuDNN, and the output is permuted back: three extra passes over N x 5120 activations per
attention call, which the profile of a 512p forward shows as ~2-4 ms per block of layout copies. cuDNN's
SDPA reads any strides, so this processor passes `transpose(1, 2)` views of the [batch, tokens, heads,
head_dim] tensors the projections produce; under the regional compile, RMS norm and RoPE then write their
output once, in the projections' layout.

It computes the same function as diffusers' `WanAttnProcessor` (checked in tests/perf), including the I2V
split of the context into image and text tokens, and is installed per attention module by
`use_strided_attention(model, backend)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

TEXT_CONTEXT_TOKENS = 512  # the Wan I2V cross-attention context ends with the 512 text tokens

_SDPA_BACKENDS = {
    "cudnn": [SDPBackend.CUDNN_ATTENTION],
    "torch_flash": [SDPBackend.FLASH_ATTENTION],
    "efficient": [SDPBackend.EFFICIENT_ATTENTION],
    "math": [SDPBackend.MATH],
    "native": None,  # PyTorch's own choice
}
STRIDED_BACKENDS = tuple(_SDPA_BACKENDS)


def apply_rotary_table(hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i+1) by the tables' multipliers: (x0 + i x1)(cos + i sin).

    `cos`/`sin` are [1, tokens, 1, head_dim] with each pair's value on both lanes (the layout of
    `rope.scail2_rope_tables`), so the even lanes of cos and the odd lanes of sin carry the pair's value.
    """
    pairs = hidden.unflatten(-1, (-1, 2))
    real, imag = pairs[..., 0], pairs[..., 1]
    cos_pair, sin_pair = cos[..., 0::2], sin[..., 1::2]
    rotated = torch.stack((real * cos_pair - imag * sin_pair, real * sin_pair + imag * cos_pair), dim=-1)
    return rotated.flatten(-2).type_as(hidden)


class StridedSDPAProcessor:
    """Wan attention (self, or I2V cross with image + text context) with strided SDPA inputs."""

    def __init__(self, backend: str = "cudnn") -> None:
        if backend not in _SDPA_BACKENDS:
            raise ValueError(f"strided attention backend {backend!r} is not one of {', '.join(_SDPA_BACKENDS)}")
        self.backend = backend

    def _sdpa(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        # [batch, tokens, heads, dim] -> views in [batch, heads, tokens, dim] order, no copies.
        query, key, value = (t.transpose(1, 2) for t in (query, key, value))
        backends = _SDPA_BACKENDS[self.backend]
        if backends is None:
            out = F.scaled_dot_product_attention(query, key, value)
        else:
            with sdpa_kernel(backends):
                out = F.scaled_dot_product_attention(query, key, value)
        return out.transpose(1, 2).flatten(2, 3)

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        if attention_mask is not None:
            raise ValueError("StridedSDPAProcessor does not take attention masks (the Wan blocks pass none)")
        if getattr(attn, "fused_projections", False):
            raise ValueError("StridedSDPAProcessor expects unfused q/k/v projections")
        image_context = None
        if attn.add_k_proj is not None:
            split = encoder_hidden_states.shape[1] - TEXT_CONTEXT_TOKENS
            image_context = encoder_hidden_states[:, :split]
            encoder_hidden_states = encoder_hidden_states[:, split:]
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states

        query = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(attn.to_k(context)).unflatten(2, (attn.heads, -1))
        value = attn.to_v(context).unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query = apply_rotary_table(query, *rotary_emb)
            key = apply_rotary_table(key, *rotary_emb)

        out = self._sdpa(query, key, value).type_as(query)
        if image_context is not None:
            key_image = attn.norm_added_k(attn.add_k_proj(image_context)).unflatten(2, (attn.heads, -1))
            value_image = attn.add_v_proj(image_context).unflatten(2, (attn.heads, -1))
            out = out + self._sdpa(query, key_image, value_image).type_as(query)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)


def use_strided_attention(model: nn.Module, backend: str = "cudnn") -> int:
    """Install `StridedSDPAProcessor` on every Wan attention module of `model`; returns how many."""
    count = 0
    for module in model.modules():
        if hasattr(module, "set_processor") and hasattr(module, "norm_q") and hasattr(module, "to_out"):
            module.set_processor(StridedSDPAProcessor(backend))
            count += 1
    return count
