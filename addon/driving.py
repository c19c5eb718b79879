"""Driving clips: probing fps and length, and turning every supported source into files for the worker."""

from __future__ import annotations

import os
import re
import zipfile
from dataclasses import dataclass

import bpy

from . import compat, paths, pngio


class DrivingInputError(Exception):
    """The driving source is missing or unusable; the message names what to fix."""


@dataclass
class ClipInfo:
    path: str  # a video file, the first image of a sequence, or "" for the scene's animation
    fps: float
    frames: int
    width: int
    height: int
    kind: str  # "video" | "sequence" | "scene"


def probe_video(path: str) -> ClipInfo:
    path = paths.absolute(path)
    if not path or not os.path.isfile(path):
        raise DrivingInputError(f"driving video not found: {path or '(no file chosen)'}")
    clip = bpy.data.movieclips.load(path, check_existing=False)
    try:
        info = ClipInfo(path, float(clip.fps), int(clip.frame_duration), int(clip.size[0]), int(clip.size[1]), "video")
    finally:
        bpy.data.movieclips.remove(clip)
    if info.frames <= 0 or info.fps <= 0 or info.width <= 0:
        raise DrivingInputError(f"could not decode the driving video {path}: is it a video file?")
    return info


_NUMBERED = re.compile(r"^(.*?)(\d+)(\.[A-Za-z0-9]+)$")


def sequence_files(first_image: str) -> list[str]:
    """All files numbered like ``first_image`` in its folder, from its number on, in order."""
    first_image = paths.absolute(first_image)
    if not first_image or not os.path.isfile(first_image):
        raise DrivingInputError(f"first image of the sequence not found: {first_image or '(no file chosen)'}")
    name = os.path.basename(first_image)
    match = _NUMBERED.match(name)
    if not match:
        raise DrivingInputError(f"{name} has no frame number: image sequences need names like frame_0001.png")
    first = int(match.group(2))
    return [path for number, path in sorted(numbered_files(first_image).items()) if number >= first]


def numbered_files(any_image: str) -> dict[int, str]:
    """Frame number -> path of every file numbered like ``any_image`` (same prefix and extension) in its folder."""
    folder, name = os.path.split(any_image)
    match = _NUMBERED.match(name)
    if not match:
        raise DrivingInputError(f"{name} has no frame number: image sequences need names like frame_0001.png")
    prefix, _number, suffix = match.groups()
    numbered = {}
    for other in os.listdir(folder):
        found = _NUMBERED.match(other)
        if found and found.group(1) == prefix and found.group(3) == suffix:
            numbered[int(found.group(2))] = os.path.join(folder, other)
    return numbered


def is_image_sequence(path: str) -> bool:
    """A mask "file" that is one PNG of a numbered sequence rather than a video."""
    return path.lower().endswith(".png") and _NUMBERED.match(os.path.basename(path)) is not None


def zip_mask_sequence(any_image: str, first: int, last: int, padding: int, background, out_path: str) -> None:
    """The masks numbered ``first``..``last`` (clip frames, 1-based like In/Out) of the sequence ``any_image``
    belongs to, zipped in order after ``padding`` frames of plain ``background``.

    The padding stands for clip frames before In when the worker applies ``frame_range`` to the mask as well;
    it is cut off there and never used. A missing number is an error naming it, so masks never shift.
    """
    any_image = paths.absolute(any_image)
    if not os.path.isfile(any_image):
        raise DrivingInputError(f"driving mask image not found: {any_image}")
    numbered = numbered_files(any_image)
    missing = [number for number in range(first, last + 1) if number not in numbered]
    if missing:
        raise DrivingInputError(
            f"the mask sequence {os.path.basename(any_image)} lacks frame {missing[0]}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + f": it needs one PNG per clip frame {first}-{last} (file number = clip frame); Preview Masks again "
            "for the current In/Out")
    blank = b""
    if padding:
        width, height = pngio.png_size(numbered[first])
        blank = pngio.encode_png(width, height, 3, bytes(background) * (width * height))
    tmp = out_path + ".tmp"
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for index in range(padding):
            archive.writestr(f"frame_{index + 1:05d}.png", blank)
        for index, number in enumerate(range(first, last + 1), start=padding + 1):
            archive.write(numbered[number], f"frame_{index:05d}.png")
    os.replace(tmp, out_path)


def probe_sequence(first_image: str, fps: float) -> ClipInfo:
    files = sequence_files(first_image)
    image = bpy.data.images.load(files[0], check_existing=False)
    try:
        width, height = image.size
    finally:
        bpy.data.images.remove(image)
    return ClipInfo(files[0], float(fps), len(files), int(width), int(height), "sequence")


def movie_strip(scene, name: str):
    strip = compat.vse_strips(scene, all_levels=True).get(name) if scene.sequence_editor else None
    if strip is None or strip.type != "MOVIE":
        raise DrivingInputError(f"no movie strip named {name!r} in the Video Sequencer")
    return strip


def probe(scene, settings) -> ClipInfo:
    """Probe the driving source chosen in the panel."""
    source = settings.driving_source
    if source == "FILE":
        return probe_video(settings.driving_file)
    if source == "MOVIECLIP":
        if settings.driving_clip is None:
            raise DrivingInputError("no Movie Clip chosen")
        return probe_video(settings.driving_clip.filepath)
    if source == "STRIP":
        return probe_video(movie_strip(scene, settings.driving_strip).filepath)
    if source == "SEQUENCE":
        return probe_sequence(settings.driving_sequence, settings.driving_sequence_fps)
    fps = scene.render.fps / scene.render.fps_base
    start, end = scene_range(scene, settings)
    return ClipInfo("", fps, end - start + 1, scene.render.resolution_x, scene.render.resolution_y, "scene")


def scene_range(scene, settings) -> tuple[int, int]:
    """Scene frames used when the scene's animation drives: In/Out when set, else the scene range."""
    if settings.driving_frame_out > 0:
        return settings.driving_frame_in, settings.driving_frame_out
    return scene.frame_start, scene.frame_end


def frame_range(info: ClipInfo, settings) -> tuple[int, int]:
    """The ``[start, end)`` range of clip frames (0-based) to send, from the 1-based In/Out fields."""
    start = settings.driving_frame_in - 1
    end = info.frames if settings.driving_frame_out <= 0 else min(info.frames, settings.driving_frame_out)
    if start >= end:
        raise DrivingInputError(f"the driving In/Out range {settings.driving_frame_in}-{settings.driving_frame_out} "
                                f"is empty for a clip of {info.frames} frames")
    return start, end


def zip_frames(frames: list[str], out_path: str) -> None:
    """A zip of PNG frames, stored in order as frame_0001.png...; written to a temp name, then renamed."""
    for frame in frames:
        if not frame.lower().endswith(".png"):
            raise DrivingInputError(f"image sequences must be PNG files to be sent as frames: {frame}")
    tmp = out_path + ".tmp"
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
        for number, frame in enumerate(frames, start=1):
            archive.write(frame, f"frame_{number:04d}.png")
    os.replace(tmp, out_path)


def zip_flattened_masks(identity_frames: list[str], background, out_path: str) -> None:
    """Identity passes flattened onto the mode's background, zipped as exact PNG masks."""
    from .images import read_rgba_planes

    tmp = out_path + ".tmp"
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
        for number, frame in enumerate(identity_frames, start=1):
            width, height, planes = read_rgba_planes(frame)
            png = pngio.encode_png(width, height, 3, pngio.flatten_identity_mask(planes, background))
            archive.writestr(f"frame_{number:04d}.png", png)
    os.replace(tmp, out_path)


def write_whole_frame_mask(info: ClipInfo, out_path: str) -> None:
    """A zip of solid identity-0 (blue) frames, one per clip frame: "the subject is everywhere"."""
    from ..backend.palette import identity_colour

    width, height = info.width, info.height
    png = pngio.encode_png(width, height, 3, bytes(identity_colour(0)) * (width * height))
    tmp = out_path + ".tmp"
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for number in range(1, info.frames + 1):
            archive.writestr(f"frame_{number:04d}.png", png)
    os.replace(tmp, out_path)
