"""Mask preview: the worker's SAM3 masks of the current reference and driving clip, or the masks rendered from
the scene's own animation, shown and kept.

Rendered masks (``preview_rendered``, scene animation with Mask: Render) are made here on the main thread, in the
job's identity colours (``workflow.job_characters``): what Generate will send, with each character in its own
colour in every frame. They are for looking at: Generate renders them again, so Mask stays Render.

Automatic masks:

``prepare_preview`` (main thread) picks the inputs and a folder ``//scail/masks/<hash>/``; ``run_preview`` (any
thread, no ``bpy``) fetches the masks with ``WorkerClient.preview_masks``; ``apply_result`` (main thread) loads
the driving masks as a Movie Clip (and optionally a Sequencer strip) and makes them the masks Generate sends:
the driving mask source becomes that PNG sequence (file number = clip frame) and the reference mask the
external mask (each only when SAM3 found a subject in it), so edits painted into the PNGs are used as they are. Like Generate, the network part
runs in a thread drained by a timer, and synchronously in background mode.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import bpy

from ..backend.palette import mask_background
from . import connection, driving, identities, importing, paths, render, workflow
from .spec import mask_prompt_text

MASK_CLIP = "SCAIL Driving Mask"
MASK_STRIP = "SCAIL Driving Mask"
NO_SAM3 = ("the worker at {url} has no SAM3, so it cannot make masks: start the worker with --sam3 DIR (the "
           "facebook/sam3 folder); for the local worker set SAM3 Folder in the add-on preferences and start it again")
TICK_SECONDS = 0.2

_events: queue.Queue = queue.Queue()
_threads: dict[str, threading.Thread] = {}  # scene name -> preview thread


class MaskPreviewError(Exception):
    """The preview cannot be made with the current settings; the message names what to fix."""


@dataclass
class MaskPreviewTask:
    """What the preview thread needs, copied out of Blender data on the main thread."""

    scene_name: str
    target: connection.BackendTarget
    spec: dict
    files: dict[str, str]
    out_dir: str
    first_frame: int = 1  # clip frame (1-based, like In/Out) of the first driving mask
    cleanup: list[str] = field(default_factory=list)  # temporary inputs removed after the request


# ---------------------------------------------------------------------------------------------------------------
# Main thread: inputs


def _identity(path: str) -> list:
    stat = os.stat(path)
    return [os.path.abspath(path), stat.st_size, stat.st_mtime_ns]


def _driving_input(scene, spec: dict, files: dict[str, str], identity: dict, cleanup: list[str]) -> int:
    """Put the driving clip (cut to In/Out) into ``files``/``spec``; return its first clip frame (1-based)."""
    settings = scene.scail
    source = settings.driving_source
    if source == "SCENE":
        raise MaskPreviewError("the scene's animation gets exact masks from the render: pick Mask: Render instead "
                               "of previewing automatic masks")
    info = driving.probe(scene, settings)
    start, end = driving.frame_range(info, settings)
    if source == "SEQUENCE":
        frames = driving.sequence_files(settings.driving_sequence)[start:end]
        staging = tempfile.mkdtemp(prefix="scail_mask_inputs_")
        cleanup.append(staging)
        files["driving"] = os.path.join(staging, "driving.zip")
        driving.zip_frames(frames, files["driving"])
        spec["fps"] = round(float(info.fps), 6)
        identity["driving"] = [_identity(frame) for frame in frames]
    else:
        files["driving"] = info.path
        spec["frame_range"] = [start, end]
        identity["driving"] = _identity(info.path)
    return start + 1


def _reference_input(scene, files: dict[str, str], identity: dict, required: bool) -> None:
    settings = scene.scail
    if settings.reference_source != "IMAGE":
        if required:
            raise MaskPreviewError("a rendered reference gets its exact mask from its alpha: automatic masks are "
                                   "for an external image (Reference: Image)")
        return
    path = paths.absolute(settings.reference_image)
    if not os.path.isfile(path):
        raise MaskPreviewError(f"reference image not found: {path or '(no file chosen)'}")
    files["reference"] = path
    identity["reference"] = _identity(path)


def prepare_preview(scene, context=None, what: str = "DRIVING") -> MaskPreviewTask:
    """Resolve the worker and the inputs of a preview of ``what`` (DRIVING, REFERENCE or BOTH)."""
    settings = scene.scail
    target = connection.resolve_target(context)
    spec: dict = {"mode": settings.mode}
    prompts = mask_prompt_text(settings.mask_prompts)
    if prompts:
        spec["mask_prompts"] = prompts
    files: dict[str, str] = {}
    identity: dict = {}
    cleanup: list[str] = []
    first_frame = 1
    try:
        if what in {"DRIVING", "BOTH"}:
            first_frame = _driving_input(scene, spec, files, identity, cleanup)
        if what in {"REFERENCE", "BOTH"}:
            _reference_input(scene, files, identity, required=(what == "REFERENCE"))
    except BaseException:
        for folder in cleanup:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    # The same inputs and options give the same folder: previewing again replaces it rather than piling up.
    digest = hashlib.sha256(json.dumps([spec, identity], sort_keys=True).encode()).hexdigest()[:12]
    root, _warning = paths.scail_root()
    return MaskPreviewTask(scene.name, target, spec, files, os.path.join(root, "masks", digest), first_frame,
                           cleanup)


def renders_masks(scene, what: str) -> bool:
    """Whether a preview of ``what`` is rendered from the scene rather than asked of the worker."""
    return what in {"DRIVING", "BOTH"} and scene.scail.driving_source == "SCENE"


def preview_rendered(scene) -> str:
    """Render the identity masks of the scene animation's In/Out (and of the rendered reference) into
    ``//scail/masks/scene/`` in the job's colours, show them like automatic ones; return the summary."""
    settings = scene.scail
    if settings.driving_mask_source != "RENDER":
        raise MaskPreviewError("the scene's animation gets exact masks from the render: pick Mask: Render to "
                               "preview them (automatic masks of a scene render are not previewed)")
    characters = workflow.job_characters(scene)
    size = workflow.job_size(scene)
    root, _warning = paths.scail_root()
    out_dir = os.path.join(root, "masks", "scene")
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".tmp-scene-", dir=os.path.dirname(out_dir))
    try:
        animation = workflow.render_scene_driving(scene, size, os.path.join(staging, "passes"), characters,
                                                  beauty=False)
        first, _last = driving.scene_range(scene, settings)
        background = mask_background(settings.mode, "driving")
        for number, identity_frame in enumerate(animation.identity_frames, start=first):
            render.mask_from_identity_pass(identity_frame, background,
                                           os.path.join(staging, "driving_mask", f"frame_{number:05d}.png"))
        legend = workflow.reference_legend(scene)
        if legend is not None and workflow.uses_identity_colours(scene):
            identity_path = paths.absolute(settings.reference_ids_path)
            workflow.refresh_identity_pass(scene, identity_path, characters)
            render.mask_from_identity_pass(identity_path, mask_background(settings.mode, "reference"),
                                           os.path.join(staging, "reference_mask.png"))
        identities.write_assignment(os.path.join(staging, "masks.json"), characters)
        shutil.rmtree(os.path.join(staging, "passes"))
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    frames = sorted(os.path.join(out_dir, "driving_mask", name) for name in
                    os.listdir(os.path.join(out_dir, "driving_mask")))
    load_mask_clip(frames, settings.vse_frame_start)
    if settings.mask_preview_to_vse:
        importing.add_strip(scene, frames, MASK_STRIP, min(128, settings.vse_channel + 1), settings.vse_frame_start)
    message = f"rendered masks: {len(frames)} frame(s); {identities.describe(characters)}"
    settings.mask_preview_dir = paths.to_blend_path(out_dir)
    settings.mask_preview_status, settings.mask_preview_message = "done", message
    return message


# ---------------------------------------------------------------------------------------------------------------
# Any thread: the request (no bpy)


def describe_error(error: Exception, target: connection.BackendTarget) -> str:
    from ..backend import client as client_module

    if isinstance(error, client_module.BadRequest) and error.code == "auto_masks_unavailable":
        return NO_SAM3.format(url=target.url)
    if isinstance(error, client_module.BadRequest):
        return f"the worker refused the mask preview: {error}"
    if isinstance(error, client_module.WorkerUnreachable):
        return f"cannot reach the worker at {target.url}: is it running? ({error})"
    from .jobs import describe_error as describe_job_error

    return describe_job_error(error, target)[1]  # wrong token and anything else, worded as for jobs


def run_preview(task: MaskPreviewTask, emit: Callable[[dict], None]) -> None:
    """Ask the worker for the masks and unpack them into ``task.out_dir``; emit one final event. Never raises."""
    base = {"scene": task.scene_name, "out_dir": task.out_dir}
    try:
        client = connection.make_client(task.target)
        # Checked first so a worker without SAM3 answers before a long clip is uploaded.
        if not (client.health().get("features") or {}).get("auto_masks"):
            emit({**base, "status": "failed", "message": NO_SAM3.format(url=task.target.url)})
            return
        result = client.preview_masks(task.spec, task.files, task.out_dir, first_frame=task.first_frame)
        emit({**base, "status": "done", "reference_mask": str(result["reference_mask"] or ""),
              "driving_mask": [str(path) for path in result["driving_mask"]], "fps": result["fps"],
              "summary": result["summary"]})
    except Exception as error:  # noqa: BLE001 - every failure ends as a message in the panel
        emit({**base, "status": "failed", "message": describe_error(error, task.target)})
    finally:
        for folder in task.cleanup:
            shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# Main thread: results


def _found(summary: dict, role: str) -> bool:
    """Whether the ``role`` mask marks a subject (from SAM3 identities, or the image's own alpha)."""
    part = summary.get(role) or {}
    return bool(part.get("identities")) or part.get("source") == "alpha"


def _summary_text(event: dict, used: dict[str, bool]) -> str:
    summary = event.get("summary") or {}
    parts = []
    for role, label, count in (("driving", "driving masks", len(event.get("driving_mask") or [])),
                               ("reference", "reference mask", 1 if event.get("reference_mask") else 0)):
        if not count:
            continue
        found = len((summary.get(role) or {}).get("identities") or [])
        if used[role]:
            parts.append(f"{label}: {count} frame(s), {found} subject(s), in use" if role == "driving"
                         else f"{label}: {found} subject(s), in use")
        else:
            parts.append(f"{label}: no subject found, not used (add a prompt, or paint the PNG and pick it)")
    warnings = [str(w) for w in summary.get("warnings") or []]
    return "; ".join(parts + warnings[:2])


def load_mask_clip(frames: list[str], frame_start: int) -> bpy.types.MovieClip:
    """The driving masks as an image-sequence Movie Clip starting at scene frame ``frame_start`` (replaces the
    previous one; image-sequence clips play at the scene's frame rate)."""
    old = bpy.data.movieclips.get(MASK_CLIP)
    if old is not None:
        bpy.data.movieclips.remove(old)
    clip = bpy.data.movieclips.load(frames[0], check_existing=False)
    clip.name = MASK_CLIP
    clip.frame_start = frame_start
    return clip


def apply_result(event: dict) -> None:
    """Show the masks and make them the ones Generate sends."""
    scene = bpy.data.scenes.get(event["scene"])
    if scene is None:
        return  # the scene was deleted or another file opened meanwhile
    settings = scene.scail
    settings.mask_preview_dir = paths.to_blend_path(event["out_dir"])
    if event["status"] != "done":
        settings.mask_preview_status, settings.mask_preview_message = "failed", event.get("message", "")
        return
    summary = event.get("summary") or {}
    frames = event.get("driving_mask") or []
    used = {"driving": bool(frames) and _found(summary, "driving"),
            "reference": bool(event.get("reference_mask")) and _found(summary, "reference")}
    if frames:  # shown even when empty, so the artist sees what SAM3 made of the clip
        fps = event.get("fps")
        if fps and settings.set_scene_fps:
            importing.set_scene_fps(scene, fps)  # sequence clips and strips play at the scene's rate
        load_mask_clip(frames, settings.vse_frame_start)
        if settings.mask_preview_to_vse:
            importing.add_strip(scene, frames, MASK_STRIP, min(128, settings.vse_channel + 1),
                                settings.vse_frame_start)
    # A mask without a subject would only fail the job: it is kept on disk but not switched to.
    if used["driving"]:
        settings.driving_mask_source = "FILE"
        settings.driving_mask_file = paths.to_blend_path(frames[0])
    if used["reference"]:
        settings.reference_mask_image = paths.to_blend_path(event["reference_mask"])
    settings.mask_preview_status, settings.mask_preview_message = "done", _summary_text(event, used)


def drain_events() -> None:
    from .jobs import blender_busy

    while True:
        try:
            event = _events.get_nowait()
        except queue.Empty:
            return
        if event["status"] == "done" and blender_busy():
            _events.put(event)  # load the clip once the render is over
            return
        apply_result(event)


def tick() -> float | None:
    drain_events()
    from .jobs import _redraw

    _redraw()
    if any(thread.is_alive() for thread in _threads.values()) or not _events.empty():
        return TICK_SECONDS
    return None


def is_running(scene) -> bool:
    thread = _threads.get(scene.name)
    return thread is not None and thread.is_alive()


def start(task: MaskPreviewTask, threaded: bool | None = None) -> None:
    """Run ``task``: synchronously in background mode, else (or with ``threaded``) in a thread whose result
    the timer function ``tick`` applies."""
    scene = bpy.data.scenes[task.scene_name]
    scene.scail.mask_preview_status, scene.scail.mask_preview_message = "running", ""
    if not (threaded if threaded is not None else not bpy.app.background):
        run_preview(task, apply_result)
        return
    thread = threading.Thread(target=run_preview, args=(task, _events.put), daemon=True,
                              name=f"scail-masks-{task.scene_name}")
    _threads[task.scene_name] = thread
    thread.start()
    if not bpy.app.timers.is_registered(tick):
        bpy.app.timers.register(tick, first_interval=TICK_SECONDS)


def unregister() -> None:
    if bpy.app.timers.is_registered(tick):
        bpy.app.timers.unregister(tick)
