"""Bringing results into the scene: an image strip in the Video Sequencer and a camera background."""

from __future__ import annotations

import os

import bpy

from . import compat, paths


class ImportError_(Exception):
    """The result cannot be imported; the message says why (e.g. its folder was deleted)."""


def result_frames(frames_dir: str) -> list[str]:
    if not os.path.isdir(frames_dir):
        raise ImportError_(f"the result folder {frames_dir} is missing (deleted or moved): "
                           "download the job again or delete it from the list")
    frames = sorted(os.path.join(frames_dir, name) for name in os.listdir(frames_dir)
                    if name.lower().endswith(".png") and not name.startswith("."))
    if not frames:
        raise ImportError_(f"the result folder {frames_dir} holds no frames")
    return frames


def first_number(path: str) -> int:
    """The frame number in a file name such as ``000000.png`` or ``frame_0001.png``."""
    stem = os.path.splitext(os.path.basename(path))[0]
    digits = len(stem) - len(stem.rstrip("0123456789"))
    if digits == 0:
        raise ImportError_(f"{path}: frame files need a number in their name")
    return int(stem[-digits:])


def strip_name(job_key: str) -> str:
    return f"SCAIL {job_key}"


def remove_placement(scene, name: str) -> None:
    """Take the strip named ``name`` out of the sequencer and its image off every camera background."""
    if scene.sequence_editor is not None:
        strips = compat.vse_strips(scene)
        if strips.get(name) is not None:
            strips.remove(strips.get(name))
    for obj in scene.objects:
        if obj.type == "CAMERA":
            for background in list(obj.data.background_images):
                if background.image is not None and background.image.name == name:
                    obj.data.background_images.remove(background)


def set_scene_fps(scene: bpy.types.Scene, fps: float) -> None:
    """Integer fps with ``fps_base`` for NTSC-style rates (29.97 = 30 / 1.001)."""
    rounded = max(1, int(round(fps)))
    scene.render.fps = rounded
    scene.render.fps_base = rounded / fps


def add_strip(scene, frames: list[str], name: str, channel: int, frame_start: int):
    """An image-sequence strip holding exactly ``frames``; an older strip with the same name is replaced."""
    strips = compat.vse_strips(scene)
    old = strips.get(name)
    if old is not None:
        strips.remove(old)
    strip = strips.new_image(name=name, filepath=frames[0], channel=channel, frame_start=frame_start)
    for frame in frames[1:]:
        strip.elements.append(os.path.basename(frame))
    # Relative to a saved .blend (like the job folders), so the project folder can move with its results.
    strip.directory = os.path.join(paths.to_blend_path(os.path.dirname(frames[0])), "")
    return strip


def set_camera_background(camera_obj, frames: list[str], image_name: str, frame_start: int):
    """The frames as an image sequence behind the camera view, from ``frame_start`` for exactly their count."""
    camera = camera_obj.data
    old_image = bpy.data.images.get(image_name)
    for background in list(camera.background_images):
        if background.image is not None and background.image.name == image_name:
            camera.background_images.remove(background)
    if old_image is not None:
        bpy.data.images.remove(old_image)
    image = bpy.data.images.load(frames[0], check_existing=False)
    image.filepath = paths.to_blend_path(frames[0])
    image.name = image_name
    image.source = "SEQUENCE"
    background = camera.background_images.new()
    background.source = "IMAGE"
    background.image = image
    user = background.image_user
    user.frame_start = frame_start
    user.frame_duration = len(frames)
    user.frame_offset = first_number(frames[0]) - 1  # frame_start shows file number 1 + offset
    user.use_auto_refresh = True
    user.use_cyclic = False
    background.alpha = 1.0
    background.display_depth = "BACK"
    background.frame_method = "FIT"
    camera.show_background_images = True
    return background
