"""The GPU job loop: one thread owns the warm pipeline and runs queued jobs one at a time, oldest first.

For each job it rebuilds the engine request from the stored uploads, hands the engine the windows a previous
attempt already finished (``resume``), stores every new window as soon as the engine reports it (``on_window``:
file renamed into place, then the row committed), writes the result folder atomically, and only then commits
``succeeded``. Progress is written to the store as it comes, so status requests never talk to this thread.

Stopping the worker (SIGTERM/SIGINT) interrupts the running job between steps and puts it back in the queue; a
crash (kill -9, power loss) leaves it ``running`` in the database, which ``JobStore.recover`` requeues at the next
start. Either way the job resumes after its last stored window.

A full disk is neither the job's fault nor a crash. A job that meets one (a window, a result file or a commit
failing with ENOSPC / SQLITE_FULL) goes back to the head of the queue with phase ``waiting_for_disk``, keeping its
finished windows, and the runner starts no job while the disk under ``--data`` has less than ``--min-free-mb``
free; when there is room again the job resumes. The fourth time the disk fills up under the same job it fails
with ``error.type = "disk_full"`` (it needs more room than there is). A state the runner cannot commit (the final
status, the requeue) is retried until the store takes it; meanwhile no other job starts, so no job is ever left
``running`` while the runner has moved on.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from backend.scail2.accel.options import pinned_loras

from .logs import get_logger
from .results import write_result
from .schemas import JobSpec
from .storage import is_storage_full
from .store import MAX_STORAGE_RETRIES, JobRecord, JobStore
from .thumbnails import input_preview, write_input_thumbnails, write_quietly, write_window_thumbnails
from .uploads import UploadLimits, build_request, resolve_mask_sources
from .warmup import compiled_graph_count

log = get_logger("scail.worker.runner")

PROGRESS_WRITE_INTERVAL_S = 0.25
STORE_RETRY_S = 2.0  # how often a state the store refused (full disk, I/O error) is tried again
ROOM_CHECK_S = 5.0  # how often a runner waiting for disk space looks again
DISK_WAIT = "waiting for disk space"  # how a pause for disk space starts (``paused``, /v1/health)


class WorkerShutdown(Exception):
    """The worker is stopping: the job goes back to the queue instead of being canceled."""


# -- window files ----------------------------------------------------------------------------------------------


def save_window(window: Any, path: Path) -> int:
    """Store one engine ``WindowResult`` durably: the engine writes it atomically, then it is fsync'd so that the
    row committed next never points at a file a power loss could still take away. Returns its frame count."""
    window.save(path)
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return int(window.frames.shape[0])


# -- the loop --------------------------------------------------------------------------------------------------


class ProgressTracker:
    """Turns engine ``ProgressEvent``s into progress columns, ETA and per-phase timings."""

    def __init__(self, store: JobStore, job_id: str):
        self.store = store
        self.job_id = job_id
        self.phase_seconds: dict[str, float] = {}
        self._phase: str | None = None
        self._phase_since = time.monotonic()
        self._last_write = 0.0
        self._last_key: tuple | None = None
        self._denoise_start: tuple[float, float] | None = None  # (monotonic time, fraction) at first step

    def set_phase(self, phase: str) -> None:
        now = time.monotonic()
        if self._phase is not None:
            self.phase_seconds[self._phase] = self.phase_seconds.get(self._phase, 0.0) + now - self._phase_since
        self._phase, self._phase_since = phase, now

    def finish(self) -> None:
        self.set_phase("done")

    def __call__(self, event: Any) -> None:
        phase = str(getattr(event, "phase", "running"))
        if phase != self._phase:
            self.set_phase(phase)
        window = getattr(event, "window", None)
        num_windows = getattr(event, "num_windows", None)
        step = getattr(event, "step", None)
        num_steps = getattr(event, "num_steps", None)
        fraction = float(event.fraction) if hasattr(event, "fraction") else _fraction(window, num_windows, step,
                                                                                        num_steps)
        eta = None
        now = time.monotonic()
        if fraction is not None and phase == "step":
            if self._denoise_start is None:
                self._denoise_start = (now, fraction)
            start_time, start_fraction = self._denoise_start
            done = fraction - start_fraction
            if done > 1e-6:
                eta = (now - start_time) / done * (1.0 - fraction)
        key = (phase, window, num_windows)
        if key == self._last_key and now - self._last_write < PROGRESS_WRITE_INTERVAL_S and step != num_steps:
            return
        self._last_key, self._last_write = key, now
        columns: dict[str, Any] = {"phase": phase, "window": window, "num_windows": num_windows, "step": step,
                                   "num_steps": num_steps, "eta": eta}
        if fraction is not None:
            columns["progress"] = min(0.99, fraction)
        self.store.update_progress(self.job_id, **columns)


def _fraction(window: int | None, num_windows: int | None, step: int | None, num_steps: int | None) -> float | None:
    """Overall progress from a 1-based window i of k and step j of n (j = 0: the window is starting)."""
    if not window or not num_windows:
        return None
    within = (step or 0) / num_steps if num_steps else 0.0
    return ((window - 1) + within) / num_windows


class StorageGuard:
    """What every ``JobExecutor`` of a job store does about a disk that fills up or a store that refuses writes;
    shared by the single-machine ``JobRunner`` and the gateway's ``RayDispatcher``, which persist windows and
    results into the same kind of store.

    ``paused`` says why no job starts now (for ``/v1/health``); ``_room_to_start`` clears it once the disk under
    --data has --min-free-mb free again. ``_persist`` retries a store write until the store takes it, so a job is
    never left ``running`` behind the executor's back. ``_return_for_disk`` puts a job a full disk stopped back in
    the queue (phase ``waiting_for_disk``, its finished windows kept), or fails it after ``MAX_STORAGE_RETRIES``.
    Subclasses set ``store``, ``paused``, ``_stop`` and ``job_finished``.
    """

    store: JobStore
    paused: str | None
    _stop: threading.Event
    job_finished: threading.Event

    def _room_to_start(self) -> str | None:
        """None while the disk under --data has at least --min-free-mb free (a pause for disk space ends); else
        why no job may start."""
        short = self.store.shortage()
        if short is None:
            if self.paused is not None and self.paused.startswith(DISK_WAIT):
                log.info("the runner resumes", extra={"was_paused": self.paused})
                self.paused = None
            return None
        return f"{DISK_WAIT}: under --data {short}; no job starts until there is room"

    def _pause(self, reason: str, seconds: float = STORE_RETRY_S) -> None:
        if reason != self.paused:
            log.warning("the runner is paused", extra={"reason": reason})
        self.paused = reason
        self._stop.wait(seconds)

    def _persist(self, job_id: str, what: str, commit: Any) -> bool:
        """Run ``commit`` (a store write for ``job_id``) until the store takes it; False when the worker stops
        first (the job is then still 'running' in the store, and the next start requeues it)."""
        while True:
            try:
                commit()
            except Exception as exc:  # noqa: BLE001 - any refusal: retry, so the job is never left behind
                if self._stop.is_set():
                    log.warning("could not record a job's state before stopping; the next start requeues it",
                                extra={"job": job_id, "state": what, "error": f"{type(exc).__name__}: {exc}"})
                    return False
                self._pause(f"cannot record job {job_id} as {what} ({type(exc).__name__}: {exc}); retrying")
                continue
            if self.paused is not None and self.paused.startswith(f"cannot record job {job_id}"):
                self.paused = None
            return True

    def _return_for_disk(self, job: JobRecord, exc: BaseException) -> None:
        """Requeue a job the full disk stopped (or fail it after ``MAX_STORAGE_RETRIES`` requeues)."""
        job_dir = self.store.job_dir(job.id)
        # What the failed attempt half wrote only takes space; finished windows stay for the resume.
        shutil.rmtree(job_dir / "result.staging", ignore_errors=True)
        for stray in (job_dir / "windows").glob("*.tmp"):
            stray.unlink(missing_ok=True)
        message = f"{type(exc).__name__}: {exc}"
        if job.storage_retries >= MAX_STORAGE_RETRIES:
            error = {"type": "disk_full", "field": None,
                     "message": f"the worker's disk filled up {job.storage_retries + 1} times while this job ran "
                     f"(last: {message}); it needs more free space under --data than there is"}
            self._persist(job.id, "failed", lambda: self.store.finish(job.id, "failed", error=error))
            log.warning("job failed: the disk keeps filling up", extra={"job": job.id, "error": error})
            self.job_finished.set()
            return
        self._persist(job.id, "waiting for disk space",
                      lambda: self.store.requeue(job.id, phase="waiting_for_disk", storage_failure=True))
        log.warning("job interrupted by a full disk; requeued to resume when there is room",
                    extra={"job": job.id, "error": message, "storage_retries": job.storage_retries + 1})


class JobRunner(StorageGuard):
    """Owns the pipeline; runs one job at a time on its own thread (the single-machine ``JobExecutor``)."""

    def __init__(self, store: JobStore, pipeline: Any, limits: UploadLimits, device: str, masks: Any = None):
        self.store = store
        self.pipeline = pipeline
        self.limits = limits
        self.device = device
        self.masks = masks  # backend.masks.service.MaskService for 'auto' masks (--sam3), or None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._cancel = threading.Event()
        self._current: str | None = None
        self._lock = threading.Lock()
        # Why the runner starts no job right now (the disk is full, the store refuses writes), or None.
        self.paused: str | None = None
        self._thread = threading.Thread(target=self._loop, name="scail-gpu-runner", daemon=True)
        # Set after every finished job: the retention sweep waits on it, so a burst of jobs cannot outrun the
        # disk budget between timed sweeps.
        self.job_finished = threading.Event()

    # -- control from other threads --

    def start(self) -> None:
        self._thread.start()

    def notify(self) -> None:
        """A job was queued."""
        self._wake.set()

    def cancel(self, job_id: str) -> None:
        """Ask the running job to stop at the next step boundary (the store already has the flag)."""
        with self._lock:
            if self._current == job_id:
                self._cancel.set()

    def stop(self, timeout: float = 60.0) -> None:
        """Interrupt the running job (it is requeued) and wait for the thread to end."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def available_loras(self) -> dict[str, Path]:
        return self.pipeline.available_loras()

    def pinned_loras(self) -> dict[str, float] | None:
        return pinned_loras(self.pipeline)

    def cluster_info(self) -> None:
        return None

    # -- the loop --

    def _loop(self) -> None:
        while not self._stop.is_set():
            waiting = self._room_to_start()
            if waiting is not None:
                self._pause(waiting, ROOM_CHECK_S)
                continue
            try:
                job = self.store.claim_next()
            except Exception as exc:  # noqa: BLE001 - the store refuses writes: wait, never end the loop
                self._pause(f"the job store refuses writes ({type(exc).__name__}: {exc})")
                continue
            if self.paused is not None:  # the store took a write and there is room: nothing holds jobs back
                log.info("the runner resumes", extra={"was_paused": self.paused})
                self.paused = None
            if job is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            with self._lock:
                self._current = job.id
                self._cancel.clear()
            try:
                self._run(job)
            except Exception:  # never let one job take the loop down
                log.exception("runner error outside a job", extra={"job": job.id})
            finally:
                with self._lock:
                    self._current = None

    def _should_cancel(self) -> bool:
        if self._stop.is_set():
            raise WorkerShutdown()
        return self._cancel.is_set()

    def _auto_masks(self, job: JobRecord, spec: JobSpec, tracker: ProgressTracker) -> Any:
        """The ``fill_masks`` step of a job whose masks are 'auto': a "masks" phase run by SAM3, or None."""
        roles = [role for role, source in resolve_mask_sources(spec, job.inputs, auto_masks=True).items()
                 if source == "auto"]
        if not roles:
            return None

        def fill(request: Any) -> Any:
            from types import SimpleNamespace

            from backend.masks.service import settings_from_spec
            from backend.scail2 import CheckpointError

            if self.masks is None:
                raise CheckpointError("this job asks for 'auto' masks but the worker has no SAM3; restart it with "
                                      "--sam3 DIR or resubmit with mask files")
            tracker.set_phase("masks")
            self.store.update_progress(job.id, phase="masks")

            def progress(done: int, total: int) -> None:
                tracker(SimpleNamespace(phase="masks", window=None, num_windows=None, step=done, num_steps=total))

            return self.masks.fill_request(request, roles, settings_from_spec(spec),
                                           cache_dir=self.store.job_dir(job.id) / "masks", progress=progress)

        return fill

    def _run(self, job: JobRecord) -> None:
        started = time.monotonic()
        job_dir = self.store.job_dir(job.id)
        spec = JobSpec.model_validate(job.spec)
        tracker = ProgressTracker(self.store, job.id)
        execution, manifest = None, None
        try:
            if self.store.is_cancel_requested(job.id):
                execution = Execution("canceled")
            else:
                tracker.set_phase("decoding")
                self.store.update_progress(job.id, phase="decoding")
                resume = [window_type().load(path) for _, path in self.store.finished_windows(job.id)]
                first_frame = spec.frame_range[0] if spec.frame_range else 0
                execution = execute_job(
                    self.pipeline, spec, job.inputs, job_dir / "inputs", self.limits, self.device, progress=tracker,
                    should_cancel=self._should_cancel, on_window=WindowSink(self.store, job.id, resume),
                    resume=resume, fill_masks=self._auto_masks(job, spec, tracker),
                    # Made at submission; written here only when a crash came between the commit and the previews.
                    on_request=lambda request: write_quietly(write_input_thumbnails, job_dir,
                                                             input_preview(request, first_frame)))
                if execution.result is not None:
                    tracker.set_phase("writing")
                    self.store.update_progress(job.id, phase="writing")
                    manifest = write_result(np.asarray(execution.result.frames), float(execution.result.fps),
                                            job_dir)
        except WorkerShutdown:
            try:
                self.store.requeue(job.id)
            except Exception as exc:  # noqa: BLE001 - the next start requeues a job left 'running'
                log.warning("could not requeue the interrupted job; the next start does", extra={
                    "job": job.id, "error": f"{type(exc).__name__}: {exc}"})
            log.info("job interrupted by shutdown; requeued", extra={"job": job.id})
            return
        except Exception as exc:  # noqa: BLE001 - e.g. writing the result failed: the job fails, not the worker
            if is_storage_full(exc):
                self._return_for_disk(job, exc)
                return
            execution = replace(execution or Execution("failed"), status="failed", error=describe_failure(exc),
                                result=None)
        finally:
            tracker.finish()
        self._persist(job.id, execution.status,
                      lambda: finish_job(self.store, job, execution, manifest, tracker, started))
        self.job_finished.set()


class WindowSink:
    """The ``on_window`` of a job: stores each finished window as it comes (file, then row, then the web page's
    previews). Made with the windows a resumed job already has, whose previews it fills in if a crash skipped
    them. Used by the runner and, for windows streamed back from cluster engines, by the gateway."""

    def __init__(self, store: JobStore, job_id: str, resume: list[Any]):
        self.store = store
        self.job_id = job_id
        self.job_dir = store.job_dir(job_id)
        self.next_frame = 0  # the next window's first frame in the result
        for window in resume:
            write_quietly(write_window_thumbnails, self.job_dir, int(window.index), self.next_frame, window.frames)
            self.next_frame += int(window.frames.shape[0])

    def __call__(self, window: Any) -> None:
        index = int(window.index)
        frames = save_window(window, self.store.window_path(self.job_id, index))
        self.store.record_window(self.job_id, index, frames)
        write_quietly(write_window_thumbnails, self.job_dir, index, self.next_frame, window.frames)
        self.next_frame += frames


@dataclass
class Execution:
    """How one run of a job on an engine ended: its status, error or result, and what it cost there."""

    status: str  # "succeeded", "canceled" or "failed"
    error: dict[str, Any] | None = None
    result: Any = None  # the engine's GenerationResult when succeeded
    summary: dict[str, Any] = field(default_factory=dict)  # the resolved settings (size, steps, LoRAs ...)
    resumed_windows: int = 0
    timings: dict[str, Any] = field(default_factory=dict)  # peak_gpu_mb, compiled_graphs, warmup_paid


def execute_job(pipeline: Any, spec: JobSpec, inputs: dict[str, Any], folder: Path, limits: UploadLimits,
                device: str, *, progress: Any, should_cancel: Any, on_window: Any, resume: list[Any],
                fill_masks: Any = None, on_request: Any = None) -> Execution:
    """Run one job on a loaded engine: decode its stored inputs from ``folder``, generate (skipping the ``resume``
    windows), and classify the outcome. The callbacks are the engine's (``progress``, ``should_cancel``,
    ``on_window``), plus ``on_request`` with the decoded request; whatever ``should_cancel`` raises other than a
    cancel (``WorkerShutdown``) propagates.

    Shared by the single-machine runner and the engine actors of a Ray gateway; the caller persists windows and
    the result.
    """
    from backend.scail2 import GenerationCancelled

    cuda = device.startswith("cuda")
    if cuda:
        import torch

        torch.cuda.reset_peak_memory_stats(device)
    # Graphs compiled in this process during the job: > 0 means the job paid a compile (a size or window
    # length that neither --warmup nor an earlier job covered). Multi-GPU ranks compile in their own processes.
    in_process = hasattr(pipeline, "transformer")
    graphs_before = compiled_graph_count()
    execution = Execution("failed", resumed_windows=len(resume))
    try:
        request, prepared = build_request(spec, inputs, folder, limits, pipeline.available_loras(),
                                          fill_masks=fill_masks, pinned_loras=pinned_loras(pipeline))
        execution.summary = _settings_summary(spec, request, prepared)
        if on_request is not None:
            on_request(request)
        execution.result = pipeline.generate(request, progress=progress, should_cancel=should_cancel,
                                             on_window=on_window, resume=resume)
        execution.status = "succeeded"
    except GenerationCancelled:
        execution.status = "canceled"
    except WorkerShutdown:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure must end the job, not the worker
        if is_storage_full(exc):
            raise  # not the job's failure: the caller requeues it to resume when there is room
        execution.error = describe_failure(exc)
    if cuda:
        import torch

        execution.timings["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
    if in_process:
        execution.timings["compiled_graphs"] = compiled_graph_count() - graphs_before
        execution.timings["warmup_paid"] = execution.timings["compiled_graphs"] > 0
    return execution


def finish_job(store: JobStore, job: JobRecord, execution: Execution, manifest: dict[str, Any] | None,
               tracker: ProgressTracker, started: float, extra_timings: dict[str, Any] | None = None) -> None:
    """Commit a job's final status with its timings and result metadata, and log it."""
    timings = {
        "phases_s": {name: round(seconds, 3) for name, seconds in tracker.phase_seconds.items()},
        "run_s": round(time.monotonic() - started, 3),
        "queued_s": round((job.started_at or time.time()) - job.created_at, 3),
        "peak_gpu_mb": None,
        "resumed_windows": execution.resumed_windows,
        **execution.timings,
        **(extra_timings or {}),
    }
    result_info = None
    if manifest is not None:
        result_info = {key: manifest[key] for key in ("frames", "fps", "width", "height")}
    store.finish(job.id, execution.status, error=execution.error, result=result_info, timings=timings)
    log.info(
        "job finished",
        extra={"job": job.id, "status": execution.status, "attempt": job.attempts, "settings": execution.summary,
               "timings": timings, "error": execution.error},
    )


def window_type() -> type:
    from backend.scail2 import WindowResult

    return WindowResult


def _settings_summary(spec: JobSpec, request: Any, prepared: Any) -> dict[str, Any]:
    from backend.scail2.accel.step_cache import resolve_step_cache

    sampling = request.sampling
    return {
        "mode": spec.mode,
        "preset": spec.preset,
        "sampler": sampling.sampler,
        "steps": sampling.steps,
        "guidance": sampling.guidance,
        "shift": sampling.shift,
        "seed": sampling.seed,
        "step_cache": resolve_step_cache(sampling.step_cache, sampling.steps),
        "loras": request.effective_loras,
        "size": f"{prepared.width}x{prepared.height}",
        "frames": prepared.num_frames,
        "fps": prepared.fps,
        "extra_references": prepared.extra_references,
        # Which image the engine got at each index, so a log shows extra views arrived in the client's order.
        "extra_reference_digests": [pixel_digest(extra.image) for extra in request.extra_references],
        "color_anchor": request.color_anchor,
    }


def pixel_digest(image: Any) -> str:
    """The first 16 hex digits of the SHA-256 of an image's decoded pixels (shape and dtype included)."""
    import hashlib

    import numpy as np

    array = np.ascontiguousarray(image)
    header = f"{array.shape}{array.dtype}".encode()
    return hashlib.sha256(header + array.tobytes()).hexdigest()[:16]


def describe_failure(exc: Exception) -> dict[str, Any]:
    """A job's ``error`` for an exception: input (names the field), checkpoint, or internal (logged)."""
    from backend.scail2 import CheckpointError, Scail2InputError

    from .errors import engine_error

    if is_storage_full(exc):  # a cluster engine's scratch disk (the single-machine runner requeues instead)
        return {"type": "disk_full", "field": None, "message": f"{type(exc).__name__}: {exc}"}

    if isinstance(exc, Scail2InputError):
        api = engine_error(exc)
        return {"type": "input", "field": api.field, "message": api.message}
    if isinstance(exc, CheckpointError):
        return {"type": "checkpoint", "field": None, "message": str(exc)}
    from .errors import ApiError

    if isinstance(exc, ApiError):
        return {"type": "input", "field": exc.field, "message": exc.message}
    log.error("job failed with an internal error", extra={"traceback": traceback.format_exc()})
    return {"type": "internal", "field": None, "message": f"{type(exc).__name__}: {exc}"}
