"""Run each job across N GPUs of the host: one process per GPU, started and fed by the worker.

`MultiProcessPipeline` has the engine contract's ``generate``/``available_loras`` (docs/ARCHITECTURE.md), so the
worker's job runner uses it exactly like a `Scail2Pipeline`. Behind it:

- ``start`` spawns N rank processes (``torch.multiprocessing``, spawn). Each sets NVLink multicast off, joins the
  process group (NCCL on CUDA with ``cuda:<rank>``, gloo on the CPU), builds a gloo group for control messages and
  loads the pipeline, then splits its DiT across the ranks (`parallel.parallelize_transformer`).
- ``generate`` sends the same request to every rank. All ranks run the whole pipeline in lockstep (encoders, VAE
  and sampling are replicated; each DiT forward is sequence-parallel). Rank 0 owns I/O: only it reports progress,
  finished windows and the result back to this process, which calls the caller's callbacks.
- Cancellation: this process polls ``should_cancel`` and raises a shared flag; inside the ranks, the pipeline's
  ``should_cancel`` is a collective (max over the control group) so every rank stops at the same step.
- A rank that fails takes the job down; the rank processes are then restarted for the next job, because a
  half-finished collective leaves the process group unusable.
"""

from __future__ import annotations

import atexit
import logging
import os
import pickle
import queue
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from ..errors import GenerationCancelled
from ..parallel.runtime import disable_nvlink_multicast

logger = logging.getLogger(__name__)

# How often the parent checks the caller's should_cancel and the health of the rank processes.
POLL_S = 0.25


@dataclass(frozen=True)
class LaunchSettings:
    checkpoint: str
    processes: int
    device_type: str  # "cuda" or "cpu"
    dtype: str  # torch dtype name, e.g. "bfloat16"
    cfg_parallel: bool
    master_port: int
    # Applied in every rank after loading (accel.apply_to_pipeline); None: the defaults for the GPU's memory.
    performance: Any = None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _portable(exc: BaseException) -> BaseException:
    """The exception itself when it survives pickling (engine errors do), else a RuntimeError describing it."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _rank_main(
    rank: int,
    settings: LaunchSettings,
    commands: list[mp.Queue],
    events: mp.Queue,
    cancel_flag: Any,
) -> None:
    """Body of one rank process (the first argument comes from ``mp.start_processes``)."""
    disable_nvlink_multicast()
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(settings.master_port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(settings.processes),
    )
    import torch.distributed as dist

    from ..parallel import init_parallel, parallelize_transformer
    from .pipeline_scail2 import Scail2Pipeline

    try:
        runtime = init_parallel(
            rank=rank,
            world_size=settings.processes,
            local_rank=rank,
            backend="nccl" if settings.device_type == "cuda" else "gloo",
            cfg_parallel=settings.cfg_parallel,
        )
        control = dist.new_group(backend="gloo")
        pipeline = Scail2Pipeline.from_pretrained(
            settings.checkpoint, device=runtime.device, dtype=getattr(torch, settings.dtype)
        )
        parallelize_transformer(pipeline.transformer, runtime)
        # The same per-GPU settings as a one-GPU worker (attention backend, regional compile, encoder parking),
        # applied after the DiT was split so that the compiled blocks include the sequence-parallel path.
        from ..accel import PerformanceSettings, apply_to_pipeline

        performance = settings.performance
        if performance is None:
            total_gib = (
                torch.cuda.get_device_properties(runtime.device).total_memory / 2**30
                if runtime.device.type == "cuda"
                else None
            )
            performance = PerformanceSettings.for_memory(total_gib)
        acceleration = apply_to_pipeline(pipeline, performance).to_dict()
        events.put(("ready", rank, (pipeline.available_loras(), acceleration) if rank == 0 else None))
    except BaseException as exc:
        events.put(("error", rank, None, _portable(exc)))
        return

    def should_cancel() -> bool:
        # A collective: every rank must stop at the same step or the others would wait forever.
        flag = torch.tensor([1 if cancel_flag.value else 0], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=control)
        return bool(flag.item())

    is_main = rank == 0
    while True:
        command = commands[rank].get()
        if command is None:
            break
        job, request, resume = command
        try:
            result = pipeline.generate(
                request,
                progress=(lambda event, job=job: events.put(("progress", rank, job, event))) if is_main else None,
                should_cancel=should_cancel,
                on_window=(lambda window, job=job: events.put(("window", rank, job, window))) if is_main else None,
                resume=resume,
            )
            events.put(("result", rank, job, result if is_main else None))
        except BaseException as exc:
            events.put(("error", rank, job, _portable(exc)))
    runtime.shutdown()


class MultiProcessPipeline:
    """A pipeline whose every job runs on ``processes`` processes (one per GPU). Create with `start`."""

    def __init__(self, settings: LaunchSettings, start_timeout_s: float) -> None:
        self.settings = settings
        self.start_timeout_s = start_timeout_s
        self._context = mp.get_context("spawn")
        self._loras: dict[str, Path] = {}
        # What rank 0 applied (accel's AccelerationState.to_dict()), for the worker's health report.
        self.acceleration: dict[str, Any] = {}
        self._jobs = 0
        self._processes: mp.ProcessContext | None = None

    @classmethod
    def start(
        cls,
        checkpoint: str | Path,
        *,
        processes: int,
        device: str = "cuda",
        dtype: torch.dtype = torch.bfloat16,
        cfg_parallel: bool = False,
        performance: Any = None,
        start_timeout_s: float = 1800.0,
    ) -> MultiProcessPipeline:
        """Spawn the rank processes and wait until every one has loaded the model.

        ``device`` is "cuda" (rank r uses ``cuda:r``; needs ``processes`` visible GPUs) or "cpu" (gloo; for tests).
        ``cfg_parallel`` runs the conditional and unconditional halves of batched CFG forwards on different ranks.
        ``performance``: the `accel.PerformanceSettings` every rank applies (None: defaults for its GPU).
        """
        device_type = torch.device(device).type
        if processes < 2:
            raise ValueError("a multi-process pipeline needs at least 2 processes; use Scail2Pipeline for one")
        if device_type == "cuda" and torch.cuda.device_count() < processes:
            raise ValueError(
                f"--gpus {processes}: only {torch.cuda.device_count()} CUDA devices are visible "
                "(check CUDA_VISIBLE_DEVICES)"
            )
        if device_type not in ("cuda", "cpu"):
            raise ValueError(f"device must be cuda or cpu for a multi-process pipeline, got {device!r}")
        settings = LaunchSettings(
            checkpoint=str(Path(checkpoint).resolve()),
            processes=processes,
            device_type=device_type,
            dtype=str(dtype).removeprefix("torch."),
            cfg_parallel=cfg_parallel,
            master_port=_free_port(),
            performance=performance,
        )
        pipeline = cls(settings, start_timeout_s)
        pipeline._launch()
        return pipeline

    # ----------------------------------------------------------------------------------------- processes

    def _launch(self) -> None:
        disable_nvlink_multicast()  # inherited by the spawned processes as well as set by them
        context = self._context
        self._commands = [context.Queue() for _ in range(self.settings.processes)]
        self._events = context.Queue()
        self._cancel = context.Value("b", 0)
        self._processes = mp.start_processes(
            _rank_main,
            args=(self.settings, self._commands, self._events, self._cancel),
            nprocs=self.settings.processes,
            join=False,
            daemon=True,  # never outlive the worker
            start_method="spawn",
        )
        atexit.register(self.close)
        ready: set[int] = set()
        deadline = time.monotonic() + self.start_timeout_s
        while len(ready) < self.settings.processes:
            kind, rank, *payload = self._next_event(deadline, "loading the model")
            if kind == "error":
                self.close()
                raise payload[-1]
            if kind == "ready":
                ready.add(rank)
                if rank == 0:
                    self._loras, self.acceleration = payload[0]
        logger.info("%d rank processes ready", self.settings.processes)

    def _alive(self) -> bool:
        return self._processes is not None and all(p.is_alive() for p in self._processes.processes)

    def _next_event(self, deadline: float | None, doing: str) -> tuple:
        while True:
            try:
                return self._events.get(timeout=POLL_S)
            except queue.Empty:
                pass
            if not self._alive():
                codes = [p.exitcode for p in self._processes.processes] if self._processes else []
                self.close()
                raise RuntimeError(f"a rank process exited while {doing} (exit codes {codes})")
            if deadline is not None and time.monotonic() > deadline:
                self.close()
                raise TimeoutError(f"rank processes did not finish {doing} in {self.start_timeout_s:.0f} s")

    def close(self) -> None:
        """Stop the rank processes (waits for a running job to finish its current command)."""
        if self._processes is None:
            return
        for commands in self._commands:
            try:
                commands.put(None)
            except (OSError, ValueError):
                pass
        for process in self._processes.processes:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
                process.join(timeout=10)
        self._processes = None

    # ------------------------------------------------------------------------------------- engine contract

    def available_loras(self) -> dict[str, Path]:
        return dict(self._loras)

    def generate(
        self,
        request: Any,
        progress: Callable[[Any], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
        on_window: Callable[[Any], None] | None = None,
        resume: Sequence[Any] | None = None,
    ) -> Any:
        """`Scail2Pipeline.generate` across the rank processes; callbacks run in this process."""
        if self._processes is None:
            self._launch()  # restarted after a failed job
        self._jobs += 1
        job = self._jobs
        self._cancel.value = 0
        for commands in self._commands:
            commands.put((job, request, list(resume or [])))
        finished: set[int] = set()
        result = None
        first_error: BaseException | None = None
        callback_error: BaseException | None = None
        while len(finished) < self.settings.processes:
            if should_cancel is not None and not self._cancel.value and should_cancel():
                self._cancel.value = 1
            kind, rank, event_job, *payload = self._next_event(None, "running a job")
            if event_job != job:
                continue
            if kind in ("progress", "window"):
                callback = progress if kind == "progress" else on_window
                if callback is None or callback_error is not None:
                    continue
                try:
                    callback(payload[0])
                except BaseException as exc:
                    # Stop the ranks at their next step, let them all finish, then raise this.
                    callback_error = exc
                    self._cancel.value = 1
            elif kind == "result":
                finished.add(rank)
                if rank == 0:
                    result = payload[0]
            elif kind == "error":
                finished.add(rank)
                if first_error is None or rank == 0:
                    first_error = payload[0]
                if not isinstance(payload[0], (GenerationCancelled, ValueError)):
                    # Other ranks may be stuck in a collective: restart them all before the next job.
                    self.close()
                    raise payload[0]
        if callback_error is not None:
            raise callback_error
        if first_error is not None:
            raise first_error
        return result
