"""Performance settings of the engine: one dataclass, defaults chosen from the GPU's memory.

The worker exposes every field as a command-line flag and reports the resolved values in `/v1/health`.
Nothing here changes what the model computes, except `fp8_linear` (8-bit matmuls, reported error vs bf16).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

ATTENTION_CHOICES = ("auto", "cudnn", "flash3", "flash", "torch_flash", "sage", "efficient", "native", "math")

# GPU memory class (GiB as torch reports it; an "80 GB" H100 reports ~79.2) -> defaults. Measured on one
# H100 80GB: the bf16 DiT weights are 30.6 GiB, a 704p forward's activations ~12 GiB, umT5-XXL 10.6 GiB.
_SMALL_CARD_GIB = 30.0  # 24 GB class: stream blocks, tile the VAE, encoders visit the GPU one at a time
_MEDIUM_CARD_GIB = 60.0  # 48 GB class: stream blocks (weights + 704p activations do not fit), no tiling
_LARGE_CARD_GIB = 100.0  # 80 GB class: everything resident except the text encoder between jobs


@dataclass(frozen=True)
class PerformanceSettings:
    """How the engine runs on the GPU. Defaults for a device come from `PerformanceSettings.for_device`.

    Fields (worker flag in brackets):
        attention_backend [--attention-backend]: one of ATTENTION_CHOICES; "auto" picks per GPU at start-up
            (cuDNN SDPA on Hopper and newer, FlashAttention-3 when installed, torch's SDPA choice elsewhere).
        cross_attention_backend [--cross-attention-backend]: "same" or a name from ATTENTION_CHOICES for the
            cross-attention over the 769 context tokens only.
        strided_attention [--strided-attention]: hand SDPA strided views instead of the contiguous copies
            diffusers' cuDNN backend makes (torch SDPA backends only: cudnn, torch_flash, efficient, native).
        fp8_linear [--fp8]: run the transformer blocks' big linears as fp8 e4m3 matmuls with per-output-row
            weight scales and per-token activation scales (Hopper/Ada and newer). Off by default: it changes
            the output by a few percent relative error.
        compile_blocks [--compile/--no-compile]: regional torch.compile of the transformer block (one graph
            shared by all 40 blocks); the first job at each resolution pays the compile once.
        low_vram [--low-vram]: keep the transformer blocks in pinned host memory and stream them to the GPU one
            block ahead of compute on a side stream.
        offload_encoders [--offload-encoders/--keep-encoders]: move umT5 and CLIP off the GPU after encoding.
        vae_tiling [--vae-tiling]: spatially tiled VAE encode/decode for small cards.
    """

    attention_backend: str = "auto"
    cross_attention_backend: str = "same"
    strided_attention: bool = False
    fp8_linear: bool = False
    compile_blocks: bool = True
    low_vram: bool = False
    offload_encoders: bool = True
    vae_tiling: bool = False

    def __post_init__(self) -> None:
        if self.attention_backend not in ATTENTION_CHOICES:
            raise ValueError(
                f"attention_backend={self.attention_backend!r} is not one of {', '.join(ATTENTION_CHOICES)}"
            )
        if self.cross_attention_backend not in ("same", *ATTENTION_CHOICES[1:]):
            raise ValueError(
                f"cross_attention_backend={self.cross_attention_backend!r} is not 'same' or one of "
                f"{', '.join(ATTENTION_CHOICES[1:])}"
            )

    @classmethod
    def for_memory(cls, total_memory_gib: float | None, **overrides: Any) -> PerformanceSettings:
        """Defaults for a card with `total_memory_gib` of memory (None: no GPU, the CPU reference path)."""
        if total_memory_gib is None:
            defaults = cls(compile_blocks=False)
        elif total_memory_gib < _SMALL_CARD_GIB:
            defaults = cls(low_vram=True, vae_tiling=True)
        elif total_memory_gib < _MEDIUM_CARD_GIB:
            defaults = cls(low_vram=True)
        elif total_memory_gib < _LARGE_CARD_GIB:
            defaults = cls()
        else:
            defaults = cls(offload_encoders=False)
        return dataclasses.replace(defaults, **overrides)

    @classmethod
    def for_device(cls, device: torch.device | str | None = None, **overrides: Any) -> PerformanceSettings:
        """Defaults for `device` (the current CUDA device when None and CUDA is available)."""
        device = torch.device(device) if device is not None else None
        if device is None and torch.cuda.is_available():
            device = torch.device("cuda", torch.cuda.current_device())
        if device is None or device.type != "cuda":
            return cls.for_memory(None, **overrides)
        total = torch.cuda.get_device_properties(device).total_memory / 2**30
        return cls.for_memory(total, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
