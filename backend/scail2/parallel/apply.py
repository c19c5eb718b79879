"""One call that makes a transformer parallel according to this process's `ParallelRuntime`."""

from __future__ import annotations

import atexit
import json
import os
from dataclasses import dataclass
from typing import Any

import torch.distributed as dist
from torch import nn

from .cfg import CfgParallel, enable_cfg_parallel
from .runtime import ParallelRuntime, current_runtime, init_parallel, launched_distributed
from .sequence import SequenceParallel, enable_sequence_parallel

# The output projection of the SCAIL-2 transformer: gathering its [B, S, 64] output instead of the last block's
# [B, S, dim] hidden states moves dim/64 times fewer bytes (80x for the 14B model).
HEAD_PROJECTION = "proj_out"
# When set, every process writes `rank<r>.json` there at exit: how many forwards it split and how. Lets a test (or
# an operator) confirm that a run launched under torchrun really was split, not run N times whole.
REPORT_DIR_ENV = "SCAIL_PARALLEL_REPORT_DIR"
# Under torchrun: "1" splits the processes into a conditional and an unconditional half (see init_parallel).
CFG_PARALLEL_ENV = "SCAIL_CFG_PARALLEL"


@dataclass
class ParallelTransformer:
    """What `parallelize_transformer` installed; ``remove()`` makes the transformer single-process again."""

    sequence: SequenceParallel | None
    cfg: CfgParallel | None

    def summary(self) -> dict[str, Any]:
        return {
            "sequence": None if self.sequence is None else self.sequence.state.summary(),
            "cfg": None
            if self.cfg is None
            else {"degree": self.cfg.degree, "rank": self.cfg.rank, "split_forwards": self.cfg.split_forwards},
        }

    def write_report(self, report_dir: str, global_rank: int) -> None:
        os.makedirs(report_dir, exist_ok=True)
        path = os.path.join(report_dir, f"rank{global_rank}.json")
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as handle:
            json.dump({"global_rank": global_rank, **self.summary()}, handle)
        os.replace(tmp, path)

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
    report_dir = os.environ.get(REPORT_DIR_ENV)
    if report_dir:
        atexit.register(parallel.write_report, report_dir, dist.get_rank())
    return parallel


def parallelize_from_environment(transformer: nn.Module) -> ParallelTransformer | None:
    """Make ``transformer`` parallel when this process is one of several of a job; otherwise do nothing.

    Uses the runtime already set up by `init_parallel`, or, in a process started by torchrun (``WORLD_SIZE`` > 1)
    that has none yet, sets one up from the torchrun environment (with CFG-parallel when ``SCAIL_CFG_PARALLEL=1``
    and the process count is even). The entry points torchrun may launch (``scail2-generate``, the parity
    command) call this on the DiT they loaded; the model never sets itself up from the environment.
    """
    runtime = current_runtime()
    if runtime is None:
        if not launched_distributed():
            return None
        runtime = init_parallel(cfg_parallel=os.environ.get(CFG_PARALLEL_ENV, "0") == "1")
        # Nobody else will tear this group down: leave it in step at interpreter exit, since a rank that exits
        # with gloo's threads still alive while its peer finishes a collective aborts ("terminate called ...").
        atexit.register(_leave_group, runtime)
    return parallelize_transformer(transformer, runtime)


def _leave_group(runtime: ParallelRuntime) -> None:
    if runtime.owns_process_group and dist.is_initialized():
        dist.barrier()
    runtime.shutdown()
