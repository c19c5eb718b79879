"""Regional torch.compile: compile the transformer block once, reuse the graph for all 40 blocks.

With dynamo's default of treating built-in module parameters as graph inputs, every block instance hits the
same compiled graph, so the compile costs about one block's worth (seconds) per input shape instead of the
whole model's. The block sees the window as a flat token sequence, so its shape changes with the resolution,
the window length (``segment_len``, and a clip's short last window) and the number of extra references.

Two graphs per shape policy, so no job compiles mid-run once the worker warmed up (issue #15):

- until ``freeze_block_shapes`` is called every shape gets its own static graph (``dynamic=False``), as before:
  what the worker's warm-up sizes and the benchmarks run;
- after it, a shape that has no static graph runs a second graph compiled with the token dimension dynamic
  (``mark_dynamic`` on the hidden states' and RoPE tables' token axis, nothing else), which the warm-up compiles
  once for every other token count. The full windows keep their static graphs (same kernels, same speed);
  the dynamic graph computes the same operations, only its index arithmetic is symbolic
  (``tests/perf/test_compile_shapes.py`` checks its output against the static graph's).

Padding the short last window to the full length would also avoid the compile, but it changes the output: the
model attends over the padded frames and the noise draw has another shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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


@dataclass
class BlockShapes:
    """Which hidden-state shapes ([B, tokens, dim]) run a static graph; once ``frozen``, no new one is added."""

    static: set[tuple[int, ...]] = field(default_factory=set)
    frozen: bool = False
    dynamic_calls: int = 0  # block calls that took the dynamic-token graph


def _static_forward(forward: Any, block: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """The static graphs' entry: ``forward`` is the block class's function (one code object for every block)."""
    return forward(block, *args, **kwargs)


def _dynamic_forward(forward: Any, block: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """The dynamic-token graph's entry: its own code object, so its dynamo cache is apart from the static one's."""
    return forward(block, *args, **kwargs)


class _BlockCall:
    """A compiled block's ``forward``: the static graph for known shapes, the dynamic-token graph for others."""

    def __init__(self, block: nn.Module, static: Any, dynamic: Any, shapes: BlockShapes) -> None:
        self.block, self.static, self.dynamic, self.shapes = block, static, dynamic, shapes

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        hidden = args[0] if args else kwargs["hidden_states"]
        key = tuple(hidden.shape)
        if not self.shapes.frozen or key in self.shapes.static:
            self.shapes.static.add(key)
            return self.static(type(self.block).forward, self.block, *args, **kwargs)
        tokens = key[1]
        torch._dynamo.mark_dynamic(hidden, 1)
        rotary = args[3] if len(args) > 3 else kwargs.get("rotary_emb")
        for table in rotary if isinstance(rotary, tuple | list) else (rotary,):
            if isinstance(table, torch.Tensor) and table.ndim > 1 and table.shape[1] == tokens:
                torch._dynamo.mark_dynamic(table, 1)
        self.shapes.dynamic_calls += 1
        return self.dynamic(type(self.block).forward, self.block, *args, **kwargs)


def compile_blocks(model: nn.Module, mode: str | None = None, fullgraph: bool = True,
                   backend: str = "inductor", blocks_attr: str = "blocks") -> int:
    """Compile each transformer block's ``forward`` in place; returns how many were compiled.

    Each block's ``forward`` becomes a ``_BlockCall`` (see the module docstring); ``model._block_shapes`` is the
    ``BlockShapes`` the blocks share. The ``forward`` is compiled, not the module call, so hooks that replace
    ``forward`` afterwards (diffusers' step caches, `step_cache`) and the module's own forward hooks run outside the
    graph: a step cache decides in Python whether a block runs at all. Compiling again (after the blocks changed,
    e.g. fp8) replaces the graphs; remove step-cache hooks first. `fullgraph=True` makes any graph break an error,
    so a host synchronisation sneaking into the block is caught at warm-up instead of silently costing time.
    """
    _configure_dynamo()
    blocks = transformer_blocks(model, blocks_attr)
    for block in blocks:
        if "forward" in block.__dict__ and not isinstance(block.forward, _BlockCall):
            raise RuntimeError("a hook replaced a block's forward (step cache?): remove it before compiling")
    shapes = BlockShapes()
    static = torch.compile(_static_forward, mode=mode, fullgraph=fullgraph, dynamic=False, backend=backend)
    dynamic = torch.compile(_dynamic_forward, mode=mode, fullgraph=fullgraph, dynamic=None, backend=backend)
    for block in blocks:
        block.forward = _BlockCall(block, static, dynamic, shapes)
    model._block_shapes = shapes
    return len(blocks)


def uncompile_blocks(model: nn.Module, blocks_attr: str = "blocks") -> None:
    """Undo `compile_blocks`: the blocks run their class's forward eagerly again."""
    for block in transformer_blocks(model, blocks_attr):
        if isinstance(block.__dict__.get("forward"), _BlockCall):
            del block.forward
    if hasattr(model, "_block_shapes"):
        del model._block_shapes


def block_shapes(model: nn.Module) -> BlockShapes | None:
    """The shape policy of a model whose blocks ``compile_blocks`` compiled, else None."""
    return getattr(model, "_block_shapes", None)


def freeze_block_shapes(model: nn.Module) -> bool:
    """From now on, a block shape without a static graph takes the dynamic-token graph instead of compiling a
    static one. Returns False when the model's blocks are not compiled."""
    shapes = block_shapes(model)
    if shapes is None:
        return False
    shapes.frozen = True
    return True
