"""CFG parallelism: the conditional and unconditional halves of a batched CFG forward on different processes.

When the pipeline evaluates classifier-free guidance as one forward with batch 2 (conditional and unconditional
context stacked), each CFG rank keeps its own batch element of every batched input, runs the transformer on it
(sequence-parallel within its group if that is on too), and the two outputs are exchanged so that every process
returns the full batch. Forwards with any other batch size (guidance off, sequential CFG) run unchanged on every
process, which is correct, only redundant.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .collectives import all_gather_stacked

BATCH_INPUT = "latents"


class CfgParallel:
    """Hooks on a transformer that split a batch of ``cfg_degree`` samples over the processes of ``group``."""

    def __init__(self, transformer: nn.Module, group: dist.ProcessGroup, batch_input: str = BATCH_INPUT) -> None:
        self.transformer = transformer
        self.group = group
        self.degree = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.batch_input = batch_input
        self._split_calls: list[bool] = []
        self.split_forwards = 0
        self._handles = [
            transformer.register_forward_pre_hook(self._split, with_kwargs=True),
            transformer.register_forward_hook(self._gather),
        ]

    def _batch_size(self, args: tuple, kwargs: dict) -> int | None:
        value = kwargs.get(self.batch_input, args[0] if args else None)
        return value.shape[0] if torch.is_tensor(value) and value.ndim > 0 else None

    def _split(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        batch = self._batch_size(args, kwargs)
        split = batch == self.degree
        self._split_calls.append(split)
        if not split:
            return args, kwargs
        self.split_forwards += 1

        def mine(value: Any) -> Any:
            if torch.is_tensor(value) and value.ndim > 0 and value.shape[0] == batch:
                return value[self.rank : self.rank + 1]
            return value

        return tuple(mine(a) for a in args), {k: mine(v) for k, v in kwargs.items()}

    def _gather(self, module: nn.Module, args: tuple, output: Any) -> Any:
        if not self._split_calls.pop():
            return output

        def full(sample: torch.Tensor) -> torch.Tensor:
            return all_gather_stacked(sample, self.group).flatten(0, 1)

        if isinstance(output, tuple):
            return (full(output[0]), *output[1:])
        if hasattr(output, "sample"):
            # diffusers' BaseOutput is a dataclass; rebuild it instead of mutating the caller's object.
            return replace(output, sample=full(output.sample))
        return full(output)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if getattr(self.transformer, "_cfg_parallel", None) is self:
            del self.transformer._cfg_parallel


def enable_cfg_parallel(transformer: nn.Module, group: dist.ProcessGroup | None) -> CfgParallel | None:
    """Install `CfgParallel` on ``transformer`` for ``group`` (None or a one-process group: nothing to do)."""
    if group is None or dist.get_world_size(group) == 1:
        return None
    if getattr(transformer, "_cfg_parallel", None) is not None:
        raise RuntimeError("CFG parallelism is already enabled on this transformer")
    cfg_parallel = CfgParallel(transformer, group)
    transformer._cfg_parallel = cfg_parallel
    return cfg_parallel
