"""Shots for batch renders, stored in the .blend as ``Scene.scail_batch``.

A shot is one camera and a timeline range, with its own driving clip and range, prompt, mode, preset overrides
and output target. Empty or zero fields fall back to the scene's SCAIL settings, so a shot only holds what
differs. The batch applies a shot's values onto ``Scene.scail`` for the time it runs that shot
(:func:`shot_settings`), so the panel's own rendering, submission and import code does the work.
"""

from __future__ import annotations

import uuid
from contextlib import contextmanager

import bpy
from bpy.props import (
    BoolProperty,
    CollectionProperty,
    EnumProperty,
    FloatProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)

from . import render
from .compat import path_options
from .properties import COLOR_ANCHORS, MODES, PRESETS

_PATH = path_options()

SHOT_STATUSES = ("", "rendering", "uploading", "queued", "running", "downloading", "succeeded", "skipped",
                 "failed", "canceled", "disconnected")
BUSY_STATUSES = frozenset({"rendering", "uploading", "queued", "running", "downloading"})


# The panel's driving and mask choices (``properties.py``), worded for a shot, so a shot can say anything the
# panel can; modes and presets are the panel's own lists.
DRIVING_SOURCES = [
    ("FILE", "Video File", "A video file on disk"),
    ("MOVIECLIP", "Movie Clip", "A Movie Clip datablock"),
    ("STRIP", "VSE Strip", "A movie strip in the Video Sequencer"),
    ("SEQUENCE", "Image Sequence", "Numbered images in a folder"),
    ("SCENE", "Scene Animation", "Render this scene's animation over the shot's frames, with exact identity masks"),
]
MASK_SOURCES = [
    ("AUTO", "Automatic", "The server segments the subjects"),
    ("ALPHA", "Clip Alpha", "The clip's own alpha channel"),
    ("FILE", "Mask File", "A mask video, or a numbered PNG sequence (e.g. previewed masks), in palette colours"),
    ("RENDER", "Render", "Exact identity masks rendered from the scene (scene animation only)"),
    ("FRAME", "Whole Frame", "The subject fills every frame"),
]
SHOT_PRESETS = [("SCENE", "Scene", "The scene's preset"), *PRESETS]
SHOT_COLOR_ANCHORS = [("SCENE", "Scene", "The scene's colour anchoring"), *COLOR_ANCHORS]


def _is_camera(_self, obj: bpy.types.Object) -> bool:
    return obj.type == "CAMERA"


class SCAIL_PG_shot(bpy.types.PropertyGroup):
    """One shot: where the result lands (camera, frame range) and what drives it."""

    uid: StringProperty(name="ID", description="Stable id of the shot: names its folder under //scail/shots/")
    enabled: BoolProperty(name="Enabled", default=True, description="Render this shot in the batch")
    camera: PointerProperty(name="Camera", type=bpy.types.Object, poll=_is_camera,
                            description="Renders the reference; the result goes behind this camera")
    frame_start: IntProperty(name="Start", default=1, description="First timeline frame of the shot")
    frame_end: IntProperty(name="End", default=24, description="Last timeline frame of the shot")

    # Driving
    driving_source: EnumProperty(name="Driving", items=DRIVING_SOURCES, default="FILE")
    driving_file: StringProperty(name="Video", subtype="FILE_PATH", options=_PATH)
    driving_clip: PointerProperty(name="Clip", type=bpy.types.MovieClip)
    driving_strip: StringProperty(name="Strip", description="Name of a movie strip in the Video Sequencer")
    driving_sequence: StringProperty(name="First Image", subtype="FILE_PATH", options=_PATH)
    driving_sequence_fps: FloatProperty(name="FPS", default=24.0, min=1.0, max=240.0)
    driving_camera: PointerProperty(name="Driving Camera", type=bpy.types.Object, poll=_is_camera,
                                    description="Camera for the scene's animation; empty uses the shot camera")
    driving_frame_in: IntProperty(name="In", default=1, min=1, description="First clip frame to use (1-based)")
    driving_frame_out: IntProperty(name="Out", default=0, min=0,
                                   description="Last clip frame to use; 0: as many as the shot is long")
    driving_mask_source: EnumProperty(name="Mask", items=MASK_SOURCES, default="AUTO")
    driving_mask_file: StringProperty(name="Mask File", subtype="FILE_PATH", options=_PATH,
                                      description="A mask video, or one PNG of a sequence numbered by clip frame")

    # Generate
    mode: EnumProperty(name="Mode", items=MODES, default="animation")
    prompt: StringProperty(name="Prompt", description="Empty: the scene's prompt")
    preset: EnumProperty(name="Preset", items=SHOT_PRESETS, default="SCENE")
    steps: IntProperty(name="Steps", default=0, min=0, max=200, description="0: the scene's setting")
    guidance: FloatProperty(name="Guidance", default=0.0, min=0.0, max=30.0, description="0: the scene's setting")
    shift: FloatProperty(name="Shift", default=0.0, min=0.0, max=30.0, description="0: the scene's setting")
    seed: IntProperty(name="Seed", default=-1, min=-1, description="-1: the scene's setting")
    loras: StringProperty(name="LoRAs", description='e.g. "lightx2v=0.8"; empty: the scene\'s setting')
    color_anchor: EnumProperty(name="Colour Anchor", items=SHOT_COLOR_ANCHORS, default="SCENE",
                               description="Keep colours from drifting between the windows of a long clip")

    # Output
    output_to_vse: BoolProperty(name="Sequencer Strip", default=True)
    vse_channel: IntProperty(name="Channel", default=2, min=1, max=128)
    output_to_camera: BoolProperty(name="Camera Background", default=True)

    # State of the last batch run (written by the batch, shown in the list)
    status: StringProperty(name="Status")
    message: StringProperty(name="Message")
    progress: FloatProperty(name="Progress", min=0.0, max=1.0, subtype="FACTOR")
    job_key: StringProperty(name="Job", description="Key of the shot's latest job in the job list")
    result_key: StringProperty(name="Result", description="Key of the job whose result is imported")
    content_hash: StringProperty(name="Content Hash", description="Inputs and settings of the imported result")
    reference_path: StringProperty(name="Reference", subtype="FILE_PATH", options=_PATH)
    server_url: StringProperty(name="Server")
    seconds_prepare: FloatProperty(name="Render Time", default=-1.0)
    seconds_generate: FloatProperty(name="Generation Time", default=-1.0)
    seconds_import: FloatProperty(name="Import Time", default=-1.0)


class SCAIL_PG_batch(bpy.types.PropertyGroup):
    shots: CollectionProperty(type=SCAIL_PG_shot)
    shot_index: IntProperty(name="Shot")
    show_details: BoolProperty(name="Details", default=True)
    status: StringProperty(name="Status", description="idle, running, done or failed")
    progress: FloatProperty(name="Progress", min=0.0, max=1.0, subtype="FACTOR")
    message: StringProperty(name="Message")


# ---------------------------------------------------------------------------------------------------------------
# Creating and editing shots


def unique_name(batch, base: str) -> str:
    names = {shot.name for shot in batch.shots}
    if base not in names:
        return base
    number = 1
    while f"{base}.{number:03d}" in names:
        number += 1
    return f"{base}.{number:03d}"


def add_shot(scene, name: str, camera=None, frame_start: int | None = None, frame_end: int | None = None,
             channel: int | None = None):
    """A new shot that starts from the scene's driving and output settings."""
    settings, batch = scene.scail, scene.scail_batch
    shot = batch.shots.add()
    shot.name = unique_name(batch, name)
    shot.uid = uuid.uuid4().hex[:10]
    shot.camera = camera
    shot.frame_start = scene.frame_start if frame_start is None else frame_start
    shot.frame_end = scene.frame_end if frame_end is None else frame_end
    for field in ("driving_source", "driving_file", "driving_clip", "driving_strip", "driving_sequence",
                  "driving_sequence_fps", "driving_mask_source", "driving_mask_file", "mode"):
        setattr(shot, field, getattr(settings, field))
    shot.driving_frame_in = settings.driving_frame_in if settings.driving_source != "SCENE" else 1
    shot.output_to_vse, shot.output_to_camera = settings.output_to_vse, settings.output_to_camera
    shot.vse_channel = settings.vse_channel if channel is None else channel
    batch.shot_index = len(batch.shots) - 1
    return shot


_STATE_FIELDS = frozenset({"uid", "status", "message", "progress", "job_key", "result_key", "content_hash",
                           "reference_path", "server_url", "seconds_prepare", "seconds_generate",
                           "seconds_import"})


def duplicate_shot(scene, index: int):
    """A copy of the shot's settings (not its results) right after it."""
    batch = scene.scail_batch
    source = batch.shots[index]
    shot = batch.shots.add()
    for name in source.bl_rna.properties.keys():
        if name in {"rna_type", "name"} or name in _STATE_FIELDS:
            continue
        setattr(shot, name, getattr(source, name))
    shot.name = unique_name(batch, source.name)
    shot.uid = uuid.uuid4().hex[:10]
    batch.shots.move(len(batch.shots) - 1, index + 1)
    batch.shot_index = index + 1
    return batch.shots[index + 1]


def cameras_from_selection(context) -> list[bpy.types.Object]:
    return sorted((obj for obj in context.selected_objects if obj.type == "CAMERA"), key=lambda obj: obj.name)


def marker_shots(scene) -> list[tuple[str, bpy.types.Object, int, int]]:
    """``(name, camera, start, end)`` for each timeline marker bound to a camera, in time order.

    A shot runs from its marker to the frame before the next bound marker; the last one to the scene's end.
    """
    bound = sorted((m for m in scene.timeline_markers if m.camera is not None and m.camera.type == "CAMERA"),
                   key=lambda m: m.frame)
    shots = []
    for number, marker in enumerate(bound):
        end = bound[number + 1].frame - 1 if number + 1 < len(bound) else scene.frame_end
        if end >= marker.frame:
            shots.append((marker.name or marker.camera.name, marker.camera, marker.frame, end))
    return shots


def find_shot(scene, name: str):
    for shot in scene.scail_batch.shots:
        if shot.name == name:
            return shot
    return None


# ---------------------------------------------------------------------------------------------------------------
# Applying a shot to the scene's settings


def shot_length(shot) -> int:
    return shot.frame_end - shot.frame_start + 1


def driving_range(shot) -> tuple[int, int]:
    """In/Out (1-based, inclusive) of the driving source: scene frames for the scene's animation, else clip
    frames, by default as many as the shot is long."""
    if shot.driving_source == "SCENE":
        return shot.frame_start, shot.frame_end
    start = shot.driving_frame_in
    end = shot.driving_frame_out if shot.driving_frame_out > 0 else start + shot_length(shot) - 1
    return start, end


def _generate_overrides(settings, shot) -> list[tuple[object, str, object]]:
    items: list[tuple[object, str, object]] = [(settings, "mode", shot.mode)]
    if shot.prompt.strip():
        items += [(settings, "prompt_text", None), (settings, "prompt", shot.prompt)]
    if shot.preset != "SCENE":
        items.append((settings, "preset", shot.preset))
    if shot.color_anchor != "SCENE":
        items.append((settings, "color_anchor", shot.color_anchor))
    for name, unset in (("steps", 0), ("guidance", 0.0), ("shift", 0.0), ("seed", -1), ("loras", "")):
        value = getattr(shot, name)
        if value != unset and not (isinstance(value, str) and not value.strip()):
            items.append((settings, name, value))
    return items


def input_overrides(scene, shot, reference_path: str = "", identity_path: str = "") -> list:
    """What the shot changes in ``Scene.scail`` for rendering and submitting its job."""
    if shot.camera is None or shot.camera.type != "CAMERA":
        raise render.RenderInputError(f"shot {shot.name!r} has no camera: pick one in the Shots panel")
    if shot.frame_end < shot.frame_start:
        raise render.RenderInputError(f"shot {shot.name!r}: its frame range {shot.frame_start}-{shot.frame_end} "
                                      "is empty")
    settings = scene.scail
    driving_in, driving_out = driving_range(shot)
    items = [
        (settings, "camera", shot.camera),
        (settings, "driving_source", shot.driving_source),
        (settings, "driving_file", shot.driving_file),
        (settings, "driving_clip", shot.driving_clip),
        (settings, "driving_strip", shot.driving_strip),
        (settings, "driving_sequence", shot.driving_sequence),
        (settings, "driving_sequence_fps", shot.driving_sequence_fps),
        (settings, "driving_camera", shot.driving_camera or shot.camera),
        (settings, "driving_frame_in", driving_in),
        (settings, "driving_frame_out", driving_out),
        (settings, "driving_mask_source", shot.driving_mask_source),
        (settings, "driving_mask_file", shot.driving_mask_file),
    ]
    if reference_path:
        items += [(settings, "reference_path", reference_path), (settings, "reference_ids_path", identity_path)]
    return items + _generate_overrides(settings, shot) + output_overrides(scene, shot)


def output_overrides(scene, shot) -> list:
    """What the shot changes in ``Scene.scail`` for importing its result."""
    settings = scene.scail
    return [
        (settings, "camera", shot.camera),
        (settings, "output_to_vse", shot.output_to_vse),
        (settings, "vse_channel", shot.vse_channel),
        (settings, "vse_frame_start", shot.frame_start),
        (settings, "output_to_camera", shot.output_to_camera),
    ]


@contextmanager
def shot_settings(items: list):
    """``Scene.scail`` with a shot's values for the duration of the block; the panel's values come back after."""
    with render.overridden(items):
        yield


classes = (SCAIL_PG_shot, SCAIL_PG_batch)


def register() -> None:
    for cls in classes:
        bpy.utils.register_class(cls)
    bpy.types.Scene.scail_batch = PointerProperty(type=SCAIL_PG_batch)


def unregister() -> None:
    del bpy.types.Scene.scail_batch
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
