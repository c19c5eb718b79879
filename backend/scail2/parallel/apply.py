"""One call that makes a transformer parallel according to this process's `ParallelRuntime`."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .cfg import CfgParallel, enable_cfg_parallel
from .runtime import ParallelRuntime, current_runtime, init_parallel, launched_distributed
from .sequence import SequenceParallel, enable_sequence_parallel

# The output projection of the SCAIL-2 transformer: gathering its [B, S, 64] output instead of the last block's
# [B, S, dim] hidden states moves dim/64 times fewer bytes (80x for the 14B model).
HEAD_PROJECTION = "proj_out"


@dataclass
class ParallelTransformer:
    """What `parallelize_transformer` installed; ``remove()`` makes the transformer single-process again."""

    sequence: SequenceParallel | None
    cfg: CfgParallel | None

    def remove(self) -> None:
        for part in (self.cfg, self.sequence):
            if part is not None:
                part.remove()
        for part in (self.cfg, self.sequence):
            transformer = getattr(part, "transformer", None)
            if transformer is not None and getattr(transformer, "_parallel", None) is self:
                del transformer._parallel


def parallelize_transformer(
    transformer: nn.Module, runtime: ParallelRuntime | None = None
) -> ParallelTransformer | None:
    """Split ``transformer``'s forwards over the processes of ``runtime`` (default: `current_runtime()`).

    Sequence parallelism over the runtime's sequence-parallel group, CFG parallelism over its CFG group. Returns
    None in a one-process run, so callers can call this unconditionally after building a model. Every process
    must then call the transformer with the same inputs.
    """
    runtime = runtime if runtime is not None else current_runtime()
    if runtime is None or runtime.world_size == 1:
        return None
    existing = getattr(transformer, "_parallel", None)
    if existing is not None:
        return existing
    gather_after = HEAD_PROJECTION if hasattr(transformer, HEAD_PROJECTION) else None
    sequence = (
        enable_sequence_parallel(transformer, runtime.sp_group, gather_after=gather_after)
        if runtime.sp_group is not None
        else None
    )
    cfg = enable_cfg_parallel(transformer, runtime.cfg_group)
    parallel = ParallelTransformer(sequence=sequence, cfg=cfg)
    transformer._parallel = parallel
    return parallel


def parallelize_from_environment(transformer: nn.Module) -> ParallelTransformer | None:
    """Make ``transformer`` parallel when this process is one of several of a job; otherwise do nothing.

    Uses the runtime already set up by `init_parallel`, or, in a process started by torchrun (``WORLD_SIZE`` > 1)
    that has none yet, sets one up from the torchrun environment. This is what lets any entry point that loads
    the DiT (the parity command, the CLI, the worker's rank processes) run split across processes unchanged.
    """
    runtime = current_runtime()
    if runtime is None:
        if not launched_distributed():
            return None
        runtime = init_parallel()
    return parallelize_transformer(transformer, runtime)
