"""Running jobs without blocking Blender.

Network work happens in a thread that never touches ``bpy``: it reads a plain :class:`JobTask` snapshot and
posts plain-dict events to a queue. A ``bpy.app.timers`` function drains the queue on the main thread and
writes the job list, imports results and redraws the panel. Background mode (``blender -b``, the ``bpy``
module) has no event loop, so there the same code runs synchronously and events are applied at once.
"""

from __future__ import annotations

import datetime
import json
import os
import queue
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import bpy

from . import connection, importing, paths
from .properties import ACTIVE_STATUSES

TERMINAL = frozenset({"succeeded", "failed", "canceled"})
RECONNECT = ACTIVE_STATUSES | {"disconnected"}
POLL_SECONDS = 1.0
TICK_SECONDS = 0.2

_events: queue.Queue = queue.Queue()
_cancel_flags: dict[str, threading.Event] = {}
_threads: dict[str, threading.Thread] = {}


@dataclass
class JobTask:
    """Everything the worker thread needs, copied out of Blender data on the main thread."""

    key: str
    target: connection.BackendTarget
    output_dir: str
    job_id: str = ""
    spec: dict = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)


def new_key() -> str:
    return uuid.uuid4().hex[:12]


def now_text() -> str:
    return datetime.datetime.now().strftime("%Y-%m-%d %H:%M")


# ---------------------------------------------------------------------------------------------------------------
# Worker side (no bpy)


def describe_error(error: Exception, target: connection.BackendTarget, submitted: bool = True) -> tuple[str, str]:
    """(status, message) for an exception raised while talking to the worker.

    A submitted job that loses its worker is ``disconnected`` (the worker keeps it; Refresh follows it again);
    a job that never reached the worker is ``failed``.
    """
    from ..backend import client as client_module

    name = type(error).__name__
    if isinstance(error, client_module.AuthError):
        where = "the SCAIL_TOKEN environment variable" if connection.env_override() else "the add-on preferences"
        return "failed", f"the worker at {target.url} refused the token: check the token in {where}"
    if isinstance(error, client_module.WorkerUnreachable):
        again = "follows it again" if submitted else "submits it again"
        return "disconnected", (f"cannot reach the worker at {target.url}: is it running? ({error}). The job is "
                                f"kept: Refresh {again} once the worker is back")
    if isinstance(error, client_module.JobNotFound):
        return "failed", f"the worker at {target.url} no longer has this job (deleted, or another worker): {error}"
    if isinstance(error, client_module.BadRequest):
        return "failed", f"the worker rejected the job: {error}"
    if isinstance(error, client_module.JobFailed):
        return "failed", f"the job failed on the worker: {error}"
    return "failed", f"{name}: {error}"


def run_task(task: JobTask, emit: Callable[[dict], None], cancel: threading.Event, wait: bool = True) -> None:
    """Submit (unless already submitted), follow progress, download the result. Never raises."""
    base = {"key": task.key}
    job_id = task.job_id
    try:
        client = connection.make_client(task.target)
        if not job_id:
            if cancel.is_set():  # canceled before it reached the worker
                emit({**base, "status": "canceled", "phase": "", "message": "canceled before submission"})
                return
            emit({**base, "status": "uploading", "phase": "uploading inputs"})
            job_id = client.submit(task.spec, task.files, idempotency_key=task.key)
            emit({**base, "job_id": job_id, "status": "queued", "phase": ""})
        canceled_sent = False
        while True:
            if cancel.is_set() and not canceled_sent:
                client.cancel(job_id)
                canceled_sent = True
            state = client.status(job_id)
            emit({**base, **status_fields(state)})
            if state["status"] in TERMINAL or not wait:
                break
            cancel.wait(POLL_SECONDS)
        if state["status"] == "succeeded":
            if not result_complete(task.output_dir):
                emit({**base, "status": "downloading", "phase": "downloading result"})
                client.download(job_id, task.output_dir, what=("frames", "mp4"))
            emit({**base, "status": "succeeded", "phase": "done", "done": True})
    except Exception as error:  # noqa: BLE001 - every failure ends as a message on the job
        status, message = describe_error(error, task.target, submitted=bool(job_id))
        emit({**base, "status": status, "message": message})


def result_complete(output_dir: str) -> bool:
    """The client writes ``manifest.json`` after every file has arrived and been verified."""
    return os.path.isfile(os.path.join(output_dir, "manifest.json")) and os.path.isdir(
        os.path.join(output_dir, "frames"))


def status_fields(state: dict) -> dict:
    """The job-list fields from ``GET /v1/jobs/{id}`` (``JobStatus`` in docs/API.md)."""
    detail = state.get("detail") or {}
    error = state.get("error") or {}
    result = state.get("result") or {}
    eta = detail.get("eta_seconds")
    fields = {
        "status": state.get("status", ""),
        "phase": detail.get("phase") or "",
        "progress": float(state.get("progress") or 0.0),
        "window": int(detail.get("window") or 0),
        "num_windows": int(detail.get("num_windows") or 0),
        "step": int(detail.get("step") or 0),
        "num_steps": int(detail.get("num_steps") or 0),
        "eta_seconds": float(eta) if eta is not None else -1.0,
        "message": _error_text(error),
    }
    if result:
        fields["frame_count"] = int(result.get("frames") or 0)
        fields["fps"] = float(result.get("fps") or 0.0)
    return fields


def _error_text(error: dict) -> str:
    if not error:
        return ""
    where = f" ({error['field']})" if error.get("field") else ""
    return f"{error.get('type', 'error')} error{where}: {error.get('message', '')}"


# ---------------------------------------------------------------------------------------------------------------
# Main thread


def find_job(key: str):
    for scene in bpy.data.scenes:
        for job in scene.scail.jobs:
            if job.key == key:
                return scene, job
    return None, None


def apply_event(event: dict) -> None:
    scene, job = find_job(event["key"])
    if job is None:
        return  # deleted from the list meanwhile
    for name in ("job_id", "status", "phase", "progress", "window", "num_windows", "step", "num_steps",
                 "eta_seconds", "message", "frame_count", "fps"):
        if name in event:
            setattr(job, name, event[name])
    if event.get("status") in TERMINAL | {"disconnected"}:
        _cancel_flags.pop(job.key, None)
    if event.get("done"):
        job.progress = 1.0
        try:
            import_job(scene, job)
        except importing.ImportError_ as error:
            job.message = str(error)


def import_job(scene, job) -> None:
    """Put the job's frames on the timeline and/or behind its camera, as the Output settings say."""
    settings = scene.scail
    frames = importing.result_frames(os.path.join(paths.absolute(job.output_dir), "frames"))
    job.frame_count = len(frames)
    if job.fps > 0 and settings.set_scene_fps:
        importing.set_scene_fps(scene, job.fps)
    if settings.output_to_vse:
        importing.add_strip(scene, frames, importing.strip_name(job.key), settings.vse_channel,
                            settings.vse_frame_start)
    if settings.output_to_camera:
        camera = bpy.data.objects.get(job.camera_name) or scene.camera
        if camera is not None and camera.type == "CAMERA":
            importing.set_camera_background(camera, frames, importing.strip_name(job.key),
                                            settings.vse_frame_start)
    job.imported = True
    job.message = f"imported {len(frames)} frames" + (f" at {job.fps:g} fps" if job.fps else "")


def blender_busy() -> bool:
    """A render or bake is running: changing the Sequencer or images now can crash Blender, so wait."""
    return any(bpy.app.is_job_running(kind) for kind in ("RENDER", "OBJECT_BAKE", "COMPOSITE"))


def drain_events() -> int:
    count = 0
    while True:
        try:
            event = _events.get_nowait()
        except queue.Empty:
            return count
        if event.get("done") and blender_busy():
            _events.put(event)  # import on a later tick, once the render is over
            return count
        apply_event(event)
        count += 1


def _redraw() -> None:
    wm = bpy.context.window_manager
    if wm is None:
        return
    for window in wm.windows:
        for area in window.screen.areas:
            if area.type in {"VIEW_3D", "SEQUENCE_EDITOR", "PREFERENCES"}:
                area.tag_redraw()


_last_health = 0.0


def tick() -> float:
    """The timer: apply worker events, refresh the local worker's status now and then, redraw."""
    global _last_health
    drain_events()
    if time.monotonic() - _last_health > 5.0 and connection.LOCAL_WORKER.state == "ready":
        _last_health = time.monotonic()
        threading.Thread(target=connection.LOCAL_WORKER.refresh_health, daemon=True).start()
    _redraw()
    return TICK_SECONDS if any(t.is_alive() for t in _threads.values()) else 1.0


def ensure_timer() -> None:
    if not bpy.app.timers.is_registered(tick):
        bpy.app.timers.register(tick, first_interval=TICK_SECONDS, persistent=True)


def start(task: JobTask, wait: bool = True) -> None:
    """Run ``task``: synchronously in background mode, else in a thread followed by the timer."""
    cancel = _cancel_flags.setdefault(task.key, threading.Event())
    if bpy.app.background:
        run_task(task, apply_event, cancel, wait=wait)
        return
    running = _threads.get(task.key)
    if running is not None and running.is_alive():
        return
    thread = threading.Thread(target=run_task, args=(task, _events.put, cancel, wait), daemon=True,
                              name=f"scail-job-{task.key}")
    _threads[task.key] = thread
    thread.start()
    ensure_timer()


def is_running(key: str) -> bool:
    thread = _threads.get(key)
    return thread is not None and thread.is_alive()


def request_cancel(job) -> None:
    """Ask the worker to stop the job: through its runner thread if one follows it, else directly."""
    if is_running(job.key):
        _cancel_flags.setdefault(job.key, threading.Event()).set()
        return
    target = connection.resolve_target(server_key=job.server_url)
    task = JobTask(job.key, target, paths.absolute(job.output_dir), job_id=job.job_id)
    cancel = threading.Event()
    cancel.set()
    start_sync_or_thread(task, cancel)


def start_sync_or_thread(task: JobTask, cancel: threading.Event) -> None:
    if bpy.app.background:
        run_task(task, apply_event, cancel, wait=False)
        return
    thread = threading.Thread(target=run_task, args=(task, _events.put, cancel, False), daemon=True)
    _threads[task.key] = thread
    thread.start()
    ensure_timer()


SUBMISSION_FILE = "submission.json"


def save_submission(task: JobTask) -> None:
    """Keep what was sent, so a submission cut off by a dead worker can be repeated (same Idempotency-Key)."""
    from .pngio import write_atomic

    data = json.dumps({"spec": task.spec, "files": task.files}, indent=1).encode()
    write_atomic(os.path.join(task.output_dir, SUBMISSION_FILE), data)


def load_submission(job) -> tuple[dict, dict[str, str]] | None:
    path = os.path.join(paths.absolute(job.output_dir), SUBMISSION_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    return data["spec"], data["files"]


def resume(job, wait: bool | None = None) -> None:
    """Follow a job submitted earlier (after reopening the file, or after the worker came back).

    A job whose submission never got an answer is submitted again with the same Idempotency-Key, so the
    worker returns the job it may already have instead of queueing a second one.
    """
    if is_running(job.key):
        return
    target = connection.resolve_target(server_key=job.server_url)
    task = JobTask(job.key, target, paths.absolute(job.output_dir), job_id=job.job_id)
    if not job.job_id:
        submission = load_submission(job)
        if submission is None:
            job.status = "failed"
            job.message = "the job never reached a worker and its inputs are gone: generate it again"
            return
        task.spec, task.files = submission
    start(task, wait=(not bpy.app.background) if wait is None else wait)


def needs_reconnect(job) -> bool:
    if job.status == "disconnected":
        return True
    if not job.job_id:
        return False
    if job.status in RECONNECT:
        return True
    return job.status == "succeeded" and not result_complete(paths.absolute(job.output_dir))


def reconnect_all() -> list[str]:
    """Resume every unfinished job of the open file; return messages for jobs that could not be resumed."""
    problems = []
    for scene in bpy.data.scenes:
        for job in scene.scail.jobs:
            if needs_reconnect(job):
                try:
                    resume(job)
                except connection.BackendUnavailable as error:
                    job.message = str(error)
                    problems.append(f"{job.label}: {error}")
    return problems


@bpy.app.handlers.persistent
def on_load_post(*_args) -> None:
    _cancel_flags.clear()
    reconnect_all()


def delete_job(scene, index: int, delete_files: bool = True) -> str:
    """Remove a job from the list, its strip and camera background, its files, and the worker's copy."""
    job = scene.scail.jobs[index]
    note = ""
    if job.job_id:
        try:
            target = connection.resolve_target(server_key=job.server_url)
            connection.make_client(target).delete(job.job_id)
        except Exception as error:  # noqa: BLE001 - the local entry is removed anyway
            note = f" (the worker's copy was not removed: {error})"
    name = importing.strip_name(job.key)
    importing.remove_placement(scene, name)
    if bpy.data.images.get(name) is not None:
        bpy.data.images.remove(bpy.data.images[name])
    folder = paths.absolute(job.output_dir)
    if delete_files and folder and os.path.isdir(folder):
        shutil.rmtree(folder, ignore_errors=True)
    _cancel_flags.pop(job.key, None)
    scene.scail.jobs.remove(index)
    scene.scail.job_index = max(0, min(scene.scail.job_index, len(scene.scail.jobs) - 1))
    return note


def register() -> None:
    if on_load_post not in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.append(on_load_post)
    if not bpy.app.background:
        ensure_timer()


def unregister() -> None:
    if on_load_post in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.remove(on_load_post)
    if bpy.app.timers.is_registered(tick):
        bpy.app.timers.unregister(tick)
    for flag in _cancel_flags.values():
        flag.set()
