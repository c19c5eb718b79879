"""FP8 (e4m3) linear layers: per-output-row weight scales, per-token activation scales, `torch._scaled_mm`.

Weights are quantised once (the bf16 copy is dropped, so the block's linears take half the memory);
activations are quantised on the fly per token. Under the regional `torch.compile` the activation
quantisation (abs-max, divide, cast) fuses into the kernel that produced the activation (LayerNorm +
modulation, GELU, attention output), so it costs no extra pass over memory.

Only the transformer blocks' large token-wise linears are converted; the cross-attention keys/values of the
769 context tokens, the embeddings and the head stay in bf16 (tiny FLOPs, more sensitive).
"""

from __future__ import annotations

import torch
from torch import nn

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8_DTYPE).max  # 448
_SCALE_FLOOR = 1e-12

# Attribute paths, inside a Wan transformer block, of the linears that see every video token.
BLOCK_LINEARS = (
    "attn1.to_q",
    "attn1.to_k",
    "attn1.to_v",
    "attn1.to_out.0",
    "attn2.to_q",
    "attn2.to_out.0",
    "ffn.net.0.proj",
    "ffn.net.2",
)


def quantize_rowwise(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise each row of a 2-D tensor to e4m3 with its own fp32 scale: tensor ≈ q * scale[:, None]."""
    amax = tensor.abs().amax(dim=-1, keepdim=True).float().clamp(min=_SCALE_FLOOR)
    scale = amax / FP8_MAX
    quantized = (tensor.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return quantized, scale


def fp8_supported(device: torch.device) -> bool:
    """`_scaled_mm` with row-wise scales runs on Hopper (sm90) and newer; Ada (sm89) supports e4m3 too."""
    if device.type == "cpu":
        return True
    if device.type != "cuda":
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


class Fp8Linear(nn.Module):
    """Drop-in replacement for `nn.Linear` computing `x @ W.T + b` with e4m3 operands and fp32 scales."""

    def __init__(self, weight_fp8: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None,
                 out_dtype: torch.dtype) -> None:
        super().__init__()
        self.out_features, self.in_features = weight_fp8.shape
        if self.in_features % 16 or self.out_features % 16:
            raise ValueError(
                f"fp8 matmuls need feature sizes divisible by 16, got {self.in_features}->{self.out_features}"
            )
        self.out_dtype = out_dtype
        self.register_buffer("weight_fp8", weight_fp8)
        # (1, out) fp32: the layout `_scaled_mm` wants for the second operand's row-wise scales.
        self.register_buffer("weight_scale", weight_scale.reshape(1, -1).float())
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Fp8Linear:
        with torch.no_grad():
            weight_fp8, scale = quantize_rowwise(linear.weight.detach())
            bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls(weight_fp8, scale, bias, out_dtype=linear.weight.dtype)

    def dequantized_weight(self) -> torch.Tensor:
        return (self.weight_fp8.float() * self.weight_scale.reshape(-1, 1)).to(self.out_dtype)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        leading = hidden_states.shape[:-1]
        flat = hidden_states.reshape(-1, self.in_features)
        act_fp8, act_scale = quantize_rowwise(flat)
        out = torch._scaled_mm(
            act_fp8,
            self.weight_fp8.t(),  # column-major view, as _scaled_mm requires for the second operand
            scale_a=act_scale,
            scale_b=self.weight_scale,
            bias=None if self.bias is None else self.bias.to(self.out_dtype),
            out_dtype=self.out_dtype,
            use_fast_accum=True,
        )
        return out.reshape(*leading, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, e4m3 row-wise"


def _get_submodule(root: nn.Module, path: str) -> nn.Module | None:
    module: nn.Module | None = root
    for part in path.split("."):
        module = getattr(module, part, None) if not isinstance(module, nn.ModuleList | nn.Sequential) else (
            module[int(part)] if part.isdigit() and int(part) < len(module) else None
        )
        if module is None:
            return None
    return module


def _set_submodule(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = _get_submodule(root, parent_path) if parent_path else root
    if isinstance(parent, nn.ModuleList | nn.Sequential):
        parent[int(name)] = new
    else:
        setattr(parent, name, new)


def convert_blocks_to_fp8(blocks: nn.ModuleList, paths: tuple[str, ...] = BLOCK_LINEARS) -> int:
    """Replace the token-wise linears of every block in place; returns how many were converted.

    Each bf16 weight is freed as soon as its fp8 copy exists, so the peak is one layer above the final size.
    """
    converted = 0
    for block in blocks:
        for path in paths:
            linear = _get_submodule(block, path)
            if isinstance(linear, nn.Linear):
                _set_submodule(block, path, Fp8Linear.from_linear(linear))
                converted += 1
    if converted == 0:
        raise ValueError(f"no linear found at {paths} in the transformer blocks; is this a Wan-style block?")
    return converted
