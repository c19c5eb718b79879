"""Batch render: every enabled shot rendered, submitted to the least busy worker, followed and imported.

One :class:`BatchRun` does a whole batch in small steps on the main thread (:meth:`BatchRun.step`): each step
applies the events of the jobs under way and prepares at most one more shot (render its reference, and its
driving clip when the scene's animation drives it; write its inputs; pick a worker; start it). The network work
of each job runs in its own thread through the panel's own job runner (``jobs.run_task``), which never touches
``bpy``. In the UI a timer calls ``step``, so Blender stays responsive between renders; in background mode
(``blender -b``, the ``bpy`` module) :func:`run_batch` calls it in a loop.

A shot whose inputs and settings hash to the value of its imported result (:func:`content_hash`), and whose
result is still on disk, is not submitted again. A shot that fails is reported on the shot; the others go on.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import struct
import threading
import time
import zipfile
from collections.abc import Callable

import bpy

from . import compat, connection, importing, jobs, paths, render, servers, workflow
from .shots import BUSY_STATUSES, find_shot, output_overrides, shot_settings
from .shots import input_overrides as shot_input_overrides

HASH_VERSION = "scail-batch-1"
TICK_SECONDS = 0.2
FAILED = frozenset({"failed", "canceled", "disconnected"})
DONE = FAILED | {"succeeded", "skipped"}


class BatchError(workflow.WorkflowError):
    """The batch cannot start as asked; the message says what to fix."""


# ---------------------------------------------------------------------------------------------------------------
# Content hash (no bpy)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IMAGE_CHUNKS = {b"IHDR", b"PLTE", b"IDAT", b"tRNS"}


def _png_image_digest(data: bytes) -> bytes | None:
    """SHA-256 over a PNG's image chunks only: Blender stamps render time and date into text chunks, which
    change on every render of the same pixels. None when ``data`` is not a well-formed PNG."""
    if not data.startswith(_PNG_SIGNATURE):
        return None
    digest = hashlib.sha256()
    offset = len(_PNG_SIGNATURE)
    while offset + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        body = data[offset + 8:offset + 8 + length]
        if len(body) != length:
            return None
        if kind in _PNG_IMAGE_CHUNKS:
            digest.update(kind + body)
        offset += 12 + length
        if kind == b"IEND":
            return digest.digest()
    return None


def _bytes_digest(data: bytes) -> bytes:
    return _png_image_digest(data) or hashlib.sha256(data).digest()


def file_digest(path: str) -> str:
    """What a file holds, for the content hash: PNG pixels, each member of a zip, or the raw bytes."""
    if zipfile.is_zipfile(path):
        digest = hashlib.sha256(b"zip")
        with zipfile.ZipFile(path) as archive:
            for name in sorted(archive.namelist()):
                digest.update(name.encode() + _bytes_digest(archive.read(name)))
        return digest.hexdigest()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        head = handle.read(len(_PNG_SIGNATURE))
        if head == _PNG_SIGNATURE:
            return _bytes_digest(head + handle.read()).hex()
        digest.update(head)
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def content_hash(spec: dict, files: dict[str, str]) -> str:
    """One hash of a job's settings (the spec sent to the worker) and its input files' contents."""
    digest = hashlib.sha256(HASH_VERSION.encode())
    digest.update(json.dumps(spec, sort_keys=True).encode())
    for field in sorted(files):
        digest.update(f"\n{field}=".encode() + file_digest(files[field]).encode())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Shots' results in the scene


def shot_job(scene, key: str):
    """``(index, job)`` of the job list entry with ``key``, or ``(-1, None)``."""
    for index, job in enumerate(scene.scail.jobs):
        if key and job.key == key:
            return index, job
    return -1, None


def result_present(scene, shot) -> bool:
    """The shot's imported result: a succeeded job whose downloaded folder is complete."""
    _index, job = shot_job(scene, shot.result_key)
    return (job is not None and job.status == "succeeded" and job.imported
            and jobs.result_complete(paths.absolute(job.output_dir)))


def placement_matches(scene, shot, job) -> bool:
    """The result sits where the shot says: its strip on the shot's channel and start, its camera background."""
    name = importing.strip_name(job.key)
    strip = compat.vse_strips(scene).get(name) if scene.sequence_editor is not None else None
    if shot.output_to_vse != (strip is not None):
        return False
    if strip is not None and (strip.channel, strip.frame_start) != (shot.vse_channel, shot.frame_start):
        return False
    on_cameras = {obj.name for obj in scene.objects if obj.type == "CAMERA"
                  for background in obj.data.background_images
                  if background.image is not None and background.image.name == name}
    wanted = {shot.camera.name} if shot.output_to_camera and shot.camera is not None else set()
    if on_cameras != wanted:
        return False
    for background in (shot.camera.data.background_images if wanted else ()):
        if background.image is not None and background.image.name == name:
            return background.image_user.frame_start == shot.frame_start
    return True


def place_result(scene, shot) -> bool:
    """Put an unchanged shot's result where the shot now says (channel, start, camera); True if it moved."""
    _index, job = shot_job(scene, shot.result_key)
    if placement_matches(scene, shot, job):
        return False
    importing.remove_placement(scene, importing.strip_name(job.key))
    with shot_settings(output_overrides(scene, shot)):
        jobs.import_job(scene, job)
    return True


def remove_job(scene, key: str) -> None:
    """Remove a job replaced by a newer result of its shot: list entry, strip, background, files, worker copy."""
    index, _job = shot_job(scene, key)
    if index >= 0:
        jobs.delete_job(scene, index, delete_files=True)


# ---------------------------------------------------------------------------------------------------------------
# One batch


def select_shots(scene, names: list[str] | None) -> list[str]:
    """The shots to run: the named ones (in the list's order) or every enabled one."""
    shots = scene.scail_batch.shots
    if names:
        known = {shot.name for shot in shots}
        unknown = [name for name in names if name not in known]
        if unknown:
            raise BatchError(f"no shot named {', '.join(map(repr, unknown))}; the shots are: "
                             f"{', '.join(shot.name for shot in shots) or '(none)'}")
        wanted = set(names)
        return [shot.name for shot in shots if shot.name in wanted]
    selected = [shot.name for shot in shots if shot.enabled]
    if not selected:
        raise BatchError("no enabled shot: add shots in the Shots panel (from cameras or markers) and tick them")
    return selected


class BatchRun:
    """A batch over ``names`` of ``scene``'s shots; drive it with :meth:`step` until it returns True."""

    def __init__(self, scene, names: list[str] | None = None, context=None):
        self.names = select_shots(scene, names)
        self.pool, self.notes = servers.batch_pool(context)
        self.scene_name = scene.name
        self.context = context
        self.todo = list(self.names)
        self.events: queue.Queue = queue.Queue()
        self.cancel = threading.Event()
        self.threads: dict[str, threading.Thread] = {}
        self.shot_of: dict[str, str] = {}  # job key -> shot name
        self.hash_of: dict[str, str] = {}  # job key -> content hash of its inputs
        self.started: dict[str, float] = {}  # job key -> when it was handed to its worker
        self.unconfirmed: dict[str, str] = {}  # job key -> worker URL, until the worker has answered with an id
        self.assigned: dict[str, int] = {}  # worker URL -> shots of this batch
        self.warnings: list[str] = []
        self.started_at = time.time()
        self.finished_at = 0.0
        batch = scene.scail_batch
        for name in self.names:
            shot = find_shot(scene, name)
            shot.status, shot.message, shot.progress = "queued", "waiting for its turn", 0.0
            shot.seconds_prepare = shot.seconds_generate = shot.seconds_import = -1.0
        batch.status, batch.progress, batch.message = "running", 0.0, f"{len(self.names)} shot(s)"

    # -- driving --

    @property
    def finished(self) -> bool:
        return self.finished_at > 0

    def scene(self):
        return bpy.data.scenes.get(self.scene_name)

    def step(self) -> bool:
        """Apply job events, prepare the next shot; True once every shot has ended."""
        if self.finished:
            return True
        scene = self.scene()
        if scene is None:  # another file was opened: the jobs stay on the workers and in that file's list
            self.cancel.set()
            self.finished_at = time.time()
            return True
        self._drain(scene)
        if self.todo:
            name = self.todo.pop(0)
            shot = find_shot(scene, name)
            if shot is None:
                pass  # removed from the list meanwhile
            elif self.cancel.is_set():
                shot.status, shot.message, shot.progress = "canceled", "the batch was canceled", 0.0
            else:
                self._start_shot(scene, shot)
            self._drain(scene)
        elif not any(thread.is_alive() for thread in self.threads.values()) and self.events.empty():
            self.finished_at = time.time()
        self._summarise(scene)
        return self.finished

    def request_cancel(self) -> None:
        """Stop preparing shots and ask the workers to cancel the jobs under way."""
        self.cancel.set()

    # -- one shot --

    def _render_reference(self, scene, shot) -> tuple[str, str]:
        """The reference from the shot's camera at its first frame, into ``//scail/shots/<uid>/``. Like the
        panel's, its identity pass fixes the colours of the shot's job (its extra views and driving frames)."""
        root, warning = paths.scail_root()
        if warning and warning not in self.warnings:
            self.warnings.append(warning)
        current = scene.frame_current
        scene.frame_set(shot.frame_start)
        try:
            result = workflow.render_reference_at(scene, shot.camera,
                                                  os.path.join(root, "shots", shot.uid or shot.name))
        finally:
            scene.frame_set(current)
        shot.reference_path = paths.to_blend_path(result.image_path)
        return result.image_path, result.identity_path

    def _start_shot(self, scene, shot) -> None:
        began = time.monotonic()
        shot.status, shot.message, shot.progress = "rendering", "", 0.0
        job = None
        try:
            reference, identity = "", ""
            if scene.scail.reference_source == "RENDER":
                shot_input_overrides(scene, shot)  # checks camera and range before rendering anything
                reference, identity = self._render_reference(scene, shot)
            with shot_settings(shot_input_overrides(scene, shot, reference, identity)):
                job, task, warnings = workflow.prepare_job(scene, self.context, target=self.pool[0])
            self.warnings += [w for w in warnings if w not in self.warnings]
            if reference:  # the job keeps its own copy: the shot's reference is rendered again next time
                kept = os.path.join(task.output_dir, "inputs", "reference.png")
                shutil.copyfile(reference, kept)
                task.files["reference"] = kept
                jobs.save_submission(task)
            digest = content_hash(task.spec, task.files)
        except Exception as error:  # noqa: BLE001 - the shot fails, the batch goes on
            if job is not None:
                remove_job(scene, job.key)
            self._fail(shot, _describe(error))
            return
        shot.seconds_prepare = time.monotonic() - began
        key = job.key
        if digest == shot.content_hash and result_present(scene, shot):
            remove_job(scene, key)  # nothing new to send: drop the inputs just written
            moved = place_result(scene, shot)
            shot.status, shot.progress = "skipped", 1.0
            shot.message = "unchanged: result kept" + (" and moved to the shot's output" if moved else "")
            return
        try:
            loads = [servers.measure(target) for target in self.pool]
            pending = {}
            for url in self.unconfirmed.values():
                pending[url] = pending.get(url, 0) + 1
            target = servers.least_busy(loads, pending, self.assigned)
        except connection.BackendUnavailable as error:
            remove_job(scene, key)
            self._fail(shot, str(error))
            return
        task.target = target
        job.server_url = target.server_key
        job.label = f"{shot.name} · {job.mode}"
        shot.job_key, shot.server_url = key, target.url
        shot.status, shot.message = "uploading", f"to {target.url}"
        self.shot_of[key], self.hash_of[key] = shot.name, digest
        self.unconfirmed[key] = target.url
        self.assigned[target.url] = self.assigned.get(target.url, 0) + 1
        self.started[key] = time.monotonic()
        thread = threading.Thread(target=jobs.run_task, args=(task, self.events.put, self.cancel, True),
                                  daemon=True, name=f"scail-batch-{key}")
        self.threads[key] = thread
        thread.start()

    def _fail(self, shot, message: str) -> None:
        shot.status, shot.message, shot.progress = "failed", message, 0.0

    # -- events from the job threads --

    def _drain(self, scene) -> None:
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return
            self._apply(scene, event)

    def _apply(self, scene, event: dict) -> None:
        key = event["key"]
        if event.get("job_id") or event.get("status") in FAILED:
            self.unconfirmed.pop(key, None)
        shot = find_shot(scene, self.shot_of.get(key, ""))
        if event.get("done") and shot is not None:
            self._finish(scene, shot, event)
            return
        jobs.apply_event(event)
        _index, job = shot_job(scene, key)
        if shot is None or job is None or shot.job_key != key:
            return
        shot.progress = job.progress
        if job.status in FAILED:
            shot.status, shot.message = job.status, job.message
            shot.seconds_generate = time.monotonic() - self.started[key]
        else:
            shot.status = "downloading" if job.status == "succeeded" else job.status
            shot.message = _progress_text(job)

    def _finish(self, scene, shot, event: dict) -> None:
        """The result is downloaded: replace the shot's previous result, import this one at the shot's place."""
        key = event["key"]
        shot.seconds_generate = time.monotonic() - self.started[key]
        began = time.monotonic()
        if shot.result_key and shot.result_key != key:
            remove_job(scene, shot.result_key)
            shot.result_key = ""
        with shot_settings(output_overrides(scene, shot)):
            jobs.apply_event(event)
        _index, job = shot_job(scene, key)
        shot.seconds_import = time.monotonic() - began
        if job is None or not job.imported:
            self._fail(shot, job.message if job is not None else "the job was removed from the list")
            return
        shot.status, shot.progress, shot.message = "succeeded", 1.0, job.message
        shot.result_key, shot.content_hash = key, self.hash_of[key]

    def _summarise(self, scene) -> None:
        batch = scene.scail_batch
        shots = [shot for shot in (find_shot(scene, name) for name in self.names) if shot is not None]
        ended = [shot for shot in shots if shot.status in DONE]
        batch.progress = sum(1.0 if shot.status in DONE else shot.progress for shot in shots) / max(1, len(shots))
        failed = [shot for shot in shots if shot.status in FAILED]
        if self.finished:
            batch.status = "failed" if failed else "done"
            counts = {status: sum(shot.status == status for shot in shots) for status in ("succeeded", "skipped")}
            batch.message = (f"{counts['succeeded']} rendered, {counts['skipped']} unchanged, {len(failed)} failed"
                             f" in {self.finished_at - self.started_at:.0f} s")
        else:
            busy = [shot.name for shot in shots if shot.status in BUSY_STATUSES]
            batch.message = f"{len(ended)}/{len(shots)} shots done" + (f"; {', '.join(busy)}" if busy else "")

    # -- results --

    def failed_shots(self) -> list[str]:
        scene = self.scene()
        if scene is None:
            return list(self.names)
        return [name for name in self.names if (shot := find_shot(scene, name)) is None or shot.status in FAILED]


def _describe(error: Exception) -> str:
    """A user-fixable error as its message; anything else with its type, so the cause can be found."""
    from .driving import DrivingInputError
    from .identities import IdentityError
    from .spec import SpecError

    user_errors = (connection.BackendUnavailable, DrivingInputError, IdentityError, importing.ImportError_,
                   render.RenderInputError, SpecError, workflow.WorkflowError, OSError)
    if isinstance(error, user_errors):
        return str(error)
    return f"{type(error).__name__}: {error}"


def _progress_text(job) -> str:
    parts = [job.phase or job.status]
    if job.num_windows:
        parts.append(f"window {job.window}/{job.num_windows}")
    if job.num_steps:
        parts.append(f"step {job.step}/{job.num_steps}")
    return " · ".join(parts)


def run_batch(scene, names: list[str] | None = None, context=None,
              on_step: Callable[[BatchRun], None] | None = None, poll_seconds: float = TICK_SECONDS) -> BatchRun:
    """Run a whole batch before returning (background mode, scripts, the command line)."""
    run = BatchRun(scene, names, context)
    while not run.step():
        if on_step is not None:
            on_step(run)
        if not run.todo:
            time.sleep(poll_seconds)
    if on_step is not None:
        on_step(run)
    return run


# ---------------------------------------------------------------------------------------------------------------
# The UI's batch: stepped by a timer


_active: BatchRun | None = None


def active_run() -> BatchRun | None:
    return _active


def start_in_background(scene, names: list[str] | None = None, context=None) -> BatchRun:
    """Start a batch that a timer steps while Blender stays responsive."""
    global _active
    if _active is not None and not _active.finished:
        raise BatchError("a batch is already running: wait for it or cancel it")
    _active = BatchRun(scene, names, context)
    if not bpy.app.timers.is_registered(_tick):
        bpy.app.timers.register(_tick, first_interval=0.0)
    return _active


def _tick() -> float | None:
    run = _active
    if run is None:
        return None
    try:
        done = run.step()
    except Exception as error:  # noqa: BLE001 - a timer that raises is dropped silently by Blender
        scene = run.scene()
        run.request_cancel()
        run.finished_at = time.time()
        if scene is not None:
            scene.scail_batch.status, scene.scail_batch.message = "failed", _describe(error)
        done = True
    _redraw()
    return None if done else TICK_SECONDS


def _redraw() -> None:
    wm = bpy.context.window_manager
    for window in (wm.windows if wm is not None else ()):
        for area in window.screen.areas:
            if area.type in {"VIEW_3D", "SEQUENCE_EDITOR"}:
                area.tag_redraw()


def stop_active(cancel_jobs: bool = True) -> None:
    """End the UI's batch (on unregister or a new file); ``cancel_jobs`` also cancels its jobs on the workers."""
    global _active
    if _active is not None and cancel_jobs:
        _active.request_cancel()
    if bpy.app.timers.is_registered(_tick):
        bpy.app.timers.unregister(_tick)
    _active = None


# ---------------------------------------------------------------------------------------------------------------
# Report


def shot_report(scene, shot) -> dict:
    """Plain data about a shot and its result, for the command line's JSON report and contact sheet."""
    _index, job = shot_job(scene, shot.result_key if shot.status in {"succeeded", "skipped"} else shot.job_key)
    record = {
        "name": shot.name,
        "enabled": shot.enabled,
        "camera": shot.camera.name if shot.camera is not None else "",
        "frame_start": shot.frame_start,
        "frame_end": shot.frame_end,
        "status": shot.status,
        "message": shot.message,
        "server": shot.server_url,
        "content_hash": shot.content_hash,
        "reference": paths.absolute(shot.reference_path) if shot.reference_path else "",
        "output": {"vse_channel": shot.vse_channel if shot.output_to_vse else None,
                   "camera_background": shot.output_to_camera},
        "seconds": {"render": _seconds(shot.seconds_prepare), "generate": _seconds(shot.seconds_generate),
                    "import": _seconds(shot.seconds_import)},
        "job": None,
        "settings": None,
        "frames": [],
        "video": "",
    }
    if job is None:
        return record
    folder = paths.absolute(job.output_dir)
    record["job"] = {"key": job.key, "id": job.job_id, "status": job.status, "frames": job.frame_count,
                     "fps": job.fps, "folder": folder}
    submission = jobs.load_submission(job)
    if submission is not None:
        record["settings"] = submission[0]
    frames_dir = os.path.join(folder, "frames")
    if os.path.isdir(frames_dir):
        record["frames"] = sorted(os.path.join(frames_dir, name) for name in os.listdir(frames_dir)
                                  if name.lower().endswith(".png"))
    video = os.path.join(folder, "result.mp4")
    record["video"] = video if os.path.isfile(video) else ""
    return record


def _seconds(value: float) -> float | None:
    return round(value, 3) if value >= 0 else None


@bpy.app.handlers.persistent
def _on_load_pre(*_args) -> None:
    """Opening another file ends the UI's batch: its shots belong to the file being closed (the jobs under way
    stay on their workers and in that file's job list, where Refresh follows them)."""
    stop_active(cancel_jobs=False)


def register() -> None:
    if _on_load_pre not in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.append(_on_load_pre)


def unregister() -> None:
    stop_active()
    if _on_load_pre in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(_on_load_pre)
