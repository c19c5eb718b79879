"""Regional torch.compile: compile the transformer block once, reuse the graph for all 40 blocks.

With dynamo's default of treating built-in module parameters as graph inputs, every block instance hits the
same compiled graph, so the compile costs about one block's worth (seconds) per input shape instead of the
whole model's. Shapes change per resolution and frame count; the worker warms each allowed size up once.
"""

from __future__ import annotations

import torch
from torch import nn

# One graph per (resolution, frames, cond/uncond context length) combination; allow plenty before dynamo
# gives up and falls back to eager.
_RECOMPILE_LIMIT = 64


def _configure_dynamo() -> None:
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), _RECOMPILE_LIMIT))


def transformer_blocks(model: nn.Module, blocks_attr: str = "blocks") -> list[nn.Module]:
    """The model's transformer blocks (the modules themselves, also where low-VRAM streaming is on)."""
    blocks = getattr(model, blocks_attr, None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise ValueError(f"model.{blocks_attr} must be a non-empty nn.ModuleList of transformer blocks")
    return list(blocks._modules.values())


def compile_blocks(model: nn.Module, mode: str | None = None, fullgraph: bool = True,
                   backend: str = "inductor", blocks_attr: str = "blocks") -> int:
    """Compile each transformer block in place (`nn.Module.compile`); returns how many were compiled.

    `fullgraph=True` makes any graph break an error, so a host synchronisation sneaking into the block is
    caught at warm-up instead of silently costing time.
    """
    _configure_dynamo()
    blocks = transformer_blocks(model, blocks_attr)
    for block in blocks:
        block.compile(mode=mode, fullgraph=fullgraph, dynamic=False, backend=backend)
    return len(blocks)
