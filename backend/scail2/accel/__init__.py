"""GPU performance machinery for the SCAIL-2 transformer, kept apart from the model code.

`apply_performance_settings(transformer, settings, device)` is the one call the pipeline needs: it converts
linears to fp8, picks the attention backend, places the weights (resident or streamed) and compiles the
block, in the order these steps require, and returns what it resolved (for logs and `/v1/health`).
`options` holds the same settings as command-line flags and prepares a loaded pipeline with them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .attention import select_attention_backend, set_attention_backend
from .compile import BlockShapes, block_shapes, compile_blocks, freeze_block_shapes, transformer_blocks
from .fp8 import Fp8Linear, convert_blocks_to_fp8, fp8_supported
from .processor import STRIDED_BACKENDS, StridedSDPAProcessor, use_strided_attention
from .settings import ATTENTION_CHOICES, PerformanceSettings
from .streaming import (
    BlockStreamer,
    StreamedBlockList,
    enable_block_streaming,
    is_parked,
    load_module,
    park_module,
)

__all__ = [
    "ATTENTION_CHOICES",
    "AccelerationState",
    "BlockShapes",
    "BlockStreamer",
    "Fp8Linear",
    "PerformanceSettings",
    "StreamedBlockList",
    "StridedSDPAProcessor",
    "apply_performance_settings",
    "apply_to_pipeline",
    "block_shapes",
    "compile_blocks",
    "convert_blocks_to_fp8",
    "enable_block_streaming",
    "fp8_supported",
    "freeze_block_shapes",
    "is_parked",
    "load_module",
    "park_module",
    "select_attention_backend",
    "set_attention_backend",
    "transformer_blocks",
    "use_strided_attention",
]


@dataclass
class AccelerationState:
    """What `apply_performance_settings` resolved: reported in `/v1/health` under `performance`."""

    settings: PerformanceSettings
    attention_backend: str
    fp8_linears: int = 0
    compiled_blocks: int = 0
    streamer: BlockStreamer | None = field(default=None, repr=False)
    cross_attention_backend: str = ""

    def to_dict(self) -> dict[str, Any]:
        report = self.settings.to_dict()
        report.update(
            attention_backend_resolved=self.attention_backend,
            cross_attention_backend_resolved=self.cross_attention_backend or self.attention_backend,
            fp8_linears=self.fp8_linears,
            compiled_blocks=self.compiled_blocks,
            streamed_host_gib=round(self.streamer.host_bytes / 2**30, 2) if self.streamer else 0.0,
        )
        return report


def apply_performance_settings(transformer: nn.Module, settings: PerformanceSettings,
                               device: torch.device | str) -> AccelerationState:
    """Prepare `transformer` (bf16 weights, anywhere) to run on `device` as `settings` ask.

    Order: fp8 conversion first (it replaces modules and frees bf16 weights), then placement (streaming packs
    the final tensors), then attention backend, then compile (which must see the final modules).
    """
    device = torch.device(device)
    fp8_count = 0
    if settings.fp8_linear:
        if not fp8_supported(device):
            raise RuntimeError(f"fp8 matmuls need an sm89+ GPU; {device} is not one. Run without --fp8.")
        fp8_count = convert_blocks_to_fp8(nn.ModuleList(transformer_blocks(transformer)))
    streamer = None
    if settings.low_vram and device.type == "cuda":
        streamer = enable_block_streaming(transformer, device)
    else:
        transformer.to(device)
    backend = select_attention_backend(settings.attention_backend, device, eight_bit=settings.fp8_linear)
    cross = None
    if settings.cross_attention_backend != "same":
        cross = select_attention_backend(settings.cross_attention_backend, device)
    set_attention_backend(transformer, backend, cross)
    if settings.strided_attention and backend in STRIDED_BACKENDS and cross in (None, *STRIDED_BACKENDS):
        use_strided_attention(transformer, backend)
    compiled = compile_blocks(transformer) if settings.compile_blocks else 0
    return AccelerationState(settings, backend, fp8_count, compiled, streamer, cross or backend)


def apply_to_pipeline(pipe: Any, settings: PerformanceSettings) -> AccelerationState:
    """Apply `settings` to a loaded `Scail2Pipeline` (transformer, encoder parking, VAE tiling).

    Call once after `Scail2Pipeline.from_pretrained` and after fusing any LoRAs that must hold with fp8 (fp8
    layers keep no bf16 weight to re-fuse into). The returned state's `to_dict()` is what `/v1/health` shows.
    """
    state = apply_performance_settings(pipe.transformer, settings, pipe.device)
    pipe.offload_encoders = settings.offload_encoders and pipe.device.type == "cuda"
    for encoder in (pipe.text_encoder, pipe.image_encoder):
        if encoder is None:
            continue
        if pipe.offload_encoders:
            park_module(encoder.model)
        elif encoder.device != pipe.device:
            load_module(encoder.model, pipe.device)
    if settings.vae_tiling:
        pipe.vae.model.enable_tiling()
    else:
        pipe.vae.model.disable_tiling()
    return state
