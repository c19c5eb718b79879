"""The engine actor: one SCAIL-2 pipeline held on one GPU (or one group of GPUs) of a Ray node.

The gateway creates it with ``ray.remote`` options that pin it to a node and reserve its GPUs (``dispatcher``);
this class is its body and never imports Ray at module level. ``load`` brings the pipeline up once with the
per-GPU performance settings (``engine.load_engine``, resolved for this node's GPU). ``run`` is a Ray streaming
generator: it runs one job through the same ``runner.execute_job`` as a single-machine worker and yields its
phases, progress events and finished windows as they happen, then a ``JobOutcome``. The engine keeps nothing of
a job once the run ends; the gateway persists every window, so any engine can resume any job.

It is a threaded actor: ``cancel``, ``interrupt`` and ``describe`` answer while ``run`` works. The actor is
detached and named, so a crashed gateway's successor adopts it without reloading the model; an engine no gateway
has called for ``orphan_timeout_s`` releases its GPUs by ending itself.
"""

from __future__ import annotations

import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..engine import EngineConfig, load_engine
from ..logs import get_logger
from ..runner import describe_failure, execute_job
from ..schemas import JobSpec
from ..thumbnails import input_preview
from ..uploads import UploadLimits
from .messages import JobOutcome, PhaseChange, WindowDone
from .scheduling import EngineProfile

log = get_logger("scail.worker.engine_actor")

_END = object()


class EngineActor:
    def __init__(self, config: EngineConfig, limits: UploadLimits, max_size: str | None, fingerprint: str,
                 orphan_timeout_s: float | None):
        self._config = config
        self._limits = limits
        self._max_size = max_size
        self._fingerprint = fingerprint
        self._engine: Any = None
        self._profile: EngineProfile | None = None
        self._load_lock = threading.Lock()
        self._run_lock = threading.Lock()  # one job at a time; a second run waits for the first to stop
        self._state = threading.Lock()
        self._job: str | None = None
        self._cancel = threading.Event()  # the job's own cancel: it ends canceled
        self._interrupt = threading.Event()  # the gateway stops or changed hands: the job goes back to the queue
        self._position = (0, 0, 0)  # (window, step, steps per window) of the running job
        self._cancel_asked_at: int | None = None  # global step when the cancel arrived
        self._cancel_seen_at: int | None = None  # global step when the engine stopped for it
        self._jobs_done = 0
        self._last_contact = time.monotonic()
        if orphan_timeout_s:
            threading.Thread(target=self._watch_gateway, args=(orphan_timeout_s,), name="scail-orphan-watch",
                             daemon=True).start()

    # -- control (answered while a job runs) --

    def describe(self) -> dict[str, Any]:
        """Who and where this engine is, what it runs; also the gateway's liveness ping."""
        import ray

        from backend import __version__

        self._last_contact = time.monotonic()
        return {"node_id": ray.get_runtime_context().get_node_id(), "fingerprint": self._fingerprint,
                "version": __version__, "loaded": self._profile is not None, "job": self._job,
                "jobs_done": self._jobs_done}

    def load(self) -> EngineProfile:
        """Load the pipeline once (later calls return the same profile). Raises ``EngineStartError``."""
        self._last_contact = time.monotonic()
        with self._load_lock:
            if self._profile is None:
                engine = load_engine(self._config)
                gpu_name, memory_gib = None, None
                if self._config.device.startswith("cuda"):
                    import torch

                    props = torch.cuda.get_device_properties(0)  # Ray made this engine's GPUs the visible ones
                    gpu_name, memory_gib = props.name, round(props.total_memory / 2**30, 1)
                self._engine = engine
                self._profile = EngineProfile(
                    gpus=self._config.gpus, gpu_name=gpu_name, gpu_memory_gib=memory_gib,
                    lora_names=tuple(sorted(engine.pipeline.available_loras())),
                    pinned_loras=engine.performance.get("pinned_loras"), performance=engine.performance,
                    max_size=self._max_size, load_s=engine.load_s)
                log.info("engine loaded", extra={"fingerprint": self._fingerprint, "seconds": engine.load_s})
        return self._profile

    def cancel(self, job_id: str) -> bool:
        """Stop ``job_id`` at the next step boundary if this engine runs it; True when it does."""
        self._last_contact = time.monotonic()
        with self._state:
            if self._job != job_id:
                return False
            if not self._cancel.is_set():
                self._cancel_asked_at = self._global_step()
            self._cancel.set()
            return True

    def interrupt(self) -> str | None:
        """Stop whatever job runs (it ends ``interrupted``, for the gateway to requeue); returns its id."""
        self._last_contact = time.monotonic()
        with self._state:
            if self._job is not None:
                self._interrupt.set()
            return self._job

    # -- the job --

    def run(self, job_id: str, spec: dict[str, Any], inputs: dict[str, str], files: dict[str, bytes],
            resume: list[Any]) -> Iterator[Any]:
        """Run one job; yields ``PhaseChange``, engine ``ProgressEvent``s, ``WindowDone``s, then a ``JobOutcome``.

        ``inputs`` maps file fields to stored names, ``files`` those names to their bytes; ``resume`` holds the
        windows the gateway already has (the engine skips them).
        """
        self._last_contact = time.monotonic()
        with self._run_lock:
            with self._state:
                self._job = job_id
                self._cancel.clear()
                self._interrupt.clear()
                self._position = (0, 0, 0)
                self._cancel_asked_at = self._cancel_seen_at = None
            events: queue.Queue[Any] = queue.Queue()
            worker = threading.Thread(target=self._execute, args=(job_id, spec, inputs, files, resume, events),
                                      name=f"scail-job-{job_id[:8]}", daemon=True)
            worker.start()
            try:
                while (item := events.get()) is not _END:
                    yield item
            finally:
                if worker.is_alive():  # the gateway stopped reading (it went away): stop at the next step
                    self._interrupt.set()
                    worker.join()
                with self._state:
                    self._job = None
                    self._jobs_done += 1
                self._last_contact = time.monotonic()

    def _execute(self, job_id: str, spec: dict[str, Any], inputs: dict[str, str], files: dict[str, bytes],
                 resume: list[Any], events: queue.Queue[Any]) -> None:
        scratch = Path(tempfile.mkdtemp(prefix=f"scail-{job_id[:8]}-"))
        outcome = JobOutcome("failed", {"type": "internal", "field": None, "message": "the engine stopped early"})
        try:
            for name, data in files.items():
                if Path(name).name != name:  # names come from the gateway's store; never write outside scratch
                    raise ValueError(f"unsafe input file name {name!r}")
                (scratch / name).write_bytes(data)
            events.put(PhaseChange("decoding"))

            def progress(event: Any) -> None:
                self._position = (int(event.window), int(event.step), int(event.num_steps))
                events.put(event)

            def on_window(window: Any) -> None:
                events.put(WindowDone.of(window))

            job_spec = JobSpec.model_validate(spec)
            first_frame = job_spec.frame_range[0] if job_spec.frame_range else 0
            execution = execute_job(self._engine.pipeline, job_spec, inputs, scratch, self._limits,
                                    self._config.device, progress=progress, should_cancel=self._should_cancel,
                                    on_window=on_window, resume=resume,
                                    on_request=lambda request: events.put(input_preview(request, first_frame)))
            status = execution.status
            if status == "canceled" and not self._cancel.is_set():
                status = "interrupted"
            timings = dict(execution.timings)
            if self._cancel_asked_at is not None:
                timings["cancel"] = {"asked_at_step": self._cancel_asked_at, "stopped_at_step": self._cancel_seen_at}
            result = execution.result
            outcome = JobOutcome(status, execution.error,
                                 frames=int(result.frames.shape[0]) if result is not None else None,
                                 fps=float(result.fps) if result is not None else None,
                                 summary=execution.summary, timings=timings)
        except Exception as exc:  # noqa: BLE001 - reported to the gateway as the job's failure
            outcome = JobOutcome("failed", describe_failure(exc))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            events.put(outcome)
            events.put(_END)

    def _global_step(self) -> int:
        window, step, steps = self._position
        return max(0, window - 1) * steps + step

    def _should_cancel(self) -> bool:
        if self._cancel.is_set() or self._interrupt.is_set():
            if self._cancel_seen_at is None:
                self._cancel_seen_at = self._global_step()
            return True
        return False

    def _watch_gateway(self, timeout_s: float) -> None:
        """End this (detached) actor when no gateway has called it for ``timeout_s`` while idle."""
        while True:
            time.sleep(min(60.0, timeout_s / 4))
            if self._job is None and time.monotonic() - self._last_contact > timeout_s:
                log.warning("no gateway for a while; releasing the GPU", extra={"idle_s": round(timeout_s)})
                os._exit(0)
