"""Process-group setup for running one SCAIL-2 job across the GPUs (or CPU processes) of one host.

A `ParallelRuntime` says which process this is and which groups it talks through:

- the world group: every process of the job;
- the sequence-parallel group: the processes that split one transformer forward's token sequence;
- the CFG group: the processes that hold the *same* sequence shard of the conditional and the unconditional pass
  (size 1 unless CFG-parallel is on).

With ``cfg_degree == 2`` the world is laid out as ``[cond: ranks 0..S-1][uncond: ranks S..2S-1]``; rank ``r`` of the
conditional half pairs with rank ``r + S`` of the unconditional half. NCCL is used on CUDA, gloo on the CPU.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import MutableMapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

# NVLink SHARP / multicast objects are not available on the lent machines (and not needed: all-to-all over NVLink
# does not use them). Every process of a job gets these before its first collective.
NVLINK_MULTICAST_OFF = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}


def disable_nvlink_multicast(environ: MutableMapping[str, str] | None = None) -> None:
    """Turn NVLink multicast off in ``environ`` (default: this process's environment).

    Set unconditionally, not with ``setdefault``: a value inherited from a shell must not turn it back on.
    """
    target = os.environ if environ is None else environ
    target.update(NVLINK_MULTICAST_OFF)


def launched_distributed(environ: MutableMapping[str, str] | None = None) -> bool:
    """True when this process was started by torchrun (or an equivalent launcher) with more than one process."""
    env = os.environ if environ is None else environ
    return int(env.get("WORLD_SIZE", "1")) > 1


@dataclass
class ParallelRuntime:
    """This process's place in a multi-process job and the groups it uses.

    ``sp_group``/``cfg_group`` are None when their degree is 1, so a one-process runtime needs no process group.
    """

    rank: int
    world_size: int
    device: torch.device
    backend: str | None
    sp_degree: int
    cfg_degree: int
    sp_group: dist.ProcessGroup | None = None
    cfg_group: dist.ProcessGroup | None = None
    owns_process_group: bool = False

    @property
    def sp_rank(self) -> int:
        return self.rank % self.sp_degree

    @property
    def cfg_rank(self) -> int:
        """0 for the process computing the conditional pass, 1 for the unconditional one."""
        return self.rank // self.sp_degree

    @property
    def is_main(self) -> bool:
        """Rank 0 owns all I/O: reading requests, reporting progress, writing results."""
        return self.rank == 0

    def shutdown(self) -> None:
        """Destroy the process group if this runtime created it."""
        global _CURRENT
        if self.owns_process_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_process_group = False
        if _CURRENT is self:
            _CURRENT = None


# The runtime this process joined through `init_parallel`, so that code building a model (the parity checks, the
# pipeline loader) can make it parallel with one call and no plumbing: see `current_runtime`.
_CURRENT: ParallelRuntime | None = None


def current_runtime() -> ParallelRuntime | None:
    """The runtime set up by the last `init_parallel` call in this process, or None in a plain one-process run."""
    return _CURRENT


def single_process_runtime(device: str | torch.device = "cpu") -> ParallelRuntime:
    """The runtime of an ordinary one-process run: no groups, nothing to communicate."""
    return ParallelRuntime(
        rank=0, world_size=1, device=torch.device(device), backend=None, sp_degree=1, cfg_degree=1
    )


def _split_degrees(world_size: int, cfg_parallel: bool) -> tuple[int, int]:
    if cfg_parallel and world_size % 2 == 0:
        return world_size // 2, 2
    return world_size, 1


def init_parallel(
    *,
    rank: int | None = None,
    world_size: int | None = None,
    local_rank: int | None = None,
    backend: str | None = None,
    cfg_parallel: bool = False,
    timeout_s: float = 1800.0,
) -> ParallelRuntime:
    """Join (or create) the default process group and build the sequence-parallel and CFG groups.

    Arguments left as None come from the torchrun environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``/``MASTER_PORT``). The backend is NCCL when CUDA is available and gloo otherwise. With
    ``cfg_parallel`` and an even world size, half of the processes run the unconditional pass; otherwise every
    process is in one sequence-parallel group. The timeout is long because one step of a 704p window on a single
    GPU takes minutes, and ranks wait for each other at collectives.
    """
    disable_nvlink_multicast()
    rank = int(os.environ.get("RANK", "0")) if rank is None else rank
    world_size = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else world_size
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank))) if local_rank is None else local_rank
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"invalid process layout: rank {rank} of world size {world_size}")

    use_cuda = torch.cuda.is_available() and backend != "gloo"
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"local rank {local_rank} has no GPU: only {torch.cuda.device_count()} visible; "
                "start at most one process per GPU"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    backend = backend or ("nccl" if use_cuda else "gloo")

    sp_degree, cfg_degree = _split_degrees(world_size, cfg_parallel)
    runtime = ParallelRuntime(
        rank=rank,
        world_size=world_size,
        device=device,
        backend=backend,
        sp_degree=sp_degree,
        cfg_degree=cfg_degree,
    )
    global _CURRENT
    _CURRENT = runtime
    if world_size == 1:
        return runtime

    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=device if use_cuda else None,
        )
        runtime.owns_process_group = True
    elif dist.get_world_size() != world_size or dist.get_rank() != rank:
        raise RuntimeError(
            f"the default process group is rank {dist.get_rank()} of {dist.get_world_size()}, "
            f"but rank {rank} of {world_size} was asked for"
        )

    # Every process must create every group, in the same order, even the groups it is not part of.
    if cfg_degree == 1:
        runtime.sp_group = dist.group.WORLD
    else:
        for cfg_index in range(cfg_degree):
            ranks = list(range(cfg_index * sp_degree, (cfg_index + 1) * sp_degree))
            group = dist.new_group(ranks)
            if rank in ranks:
                runtime.sp_group = group
        for sp_index in range(sp_degree):
            ranks = [sp_index + cfg_index * sp_degree for cfg_index in range(cfg_degree)]
            group = dist.new_group(ranks)
            if rank in ranks:
                runtime.cfg_group = group
    if sp_degree == 1:
        runtime.sp_group = None
    return runtime
