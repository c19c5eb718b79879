"""Rendering references and the scene's own animation, with exact masks and identity colours.

The beauty render uses a transparent film, so its alpha is the character mask (no segmentation). The identity
pass renders every character in a flat palette colour with Workbench: no anti-aliasing, no dithering and the
Standard view transform, so each pixel holds an exact palette colour or is transparent.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import bpy

from ..backend.palette import identity_colour
from . import compat, identities, pngio
from .identities import RENDERABLE_TYPES, Character
from .images import read_rgba_planes

SHORT_SIDES = {"512p": 512, "704p": 704}


class RenderInputError(Exception):
    """The scene cannot be rendered as asked; the message names what to fix."""


@contextmanager
def overridden(items: list[tuple[object, str, object]]) -> Iterator[None]:
    """Set ``(owner, attribute, value)`` in order and restore the old values in reverse order afterwards."""
    saved: list[tuple[object, str, object]] = []
    try:
        for owner, attribute, value in items:
            old = getattr(owner, attribute)
            if hasattr(old, "__len__") and not isinstance(old, str):
                old = tuple(old)  # vectors and colours are live views of the data; keep a copy
            saved.append((owner, attribute, old))
            setattr(owner, attribute, value)
        yield
    finally:
        for owner, attribute, value in reversed(saved):
            try:
                setattr(owner, attribute, value)
            except (TypeError, ValueError, AttributeError):
                pass  # e.g. an enum value that is invalid until another setting is restored


def round32(value: float) -> int:
    return max(32, int(round(value / 32.0)) * 32)


def target_size(scene: bpy.types.Scene, short_side_setting: str, custom_short_side: int) -> tuple[int, int]:
    """(width, height) with the camera's aspect (resolution x pixel aspect), both multiples of 32."""
    render = scene.render
    short = SHORT_SIDES.get(short_side_setting) or round32(custom_short_side)
    aspect = (render.resolution_x * render.pixel_aspect_x) / max(1e-6, render.resolution_y * render.pixel_aspect_y)
    if aspect >= 1.0:
        return round32(short * aspect), short
    return short, round32(short / aspect)


def engine_id(choice: str, scene: bpy.types.Scene) -> str:
    return {"WORKBENCH": "BLENDER_WORKBENCH", "EEVEE": compat.eevee_engine_id(), "CYCLES": "CYCLES"}.get(
        choice, scene.render.engine)


def resolve_camera(scene: bpy.types.Scene, camera: bpy.types.Object | None) -> bpy.types.Object:
    camera = camera or scene.camera
    if camera is None or camera.type != "CAMERA":
        raise RenderInputError("no camera: pick one in the SCAIL panel or set the scene camera")
    return camera


def _frame_settings(scene, camera, size) -> list[tuple[object, str, object]]:
    render = scene.render
    return [
        (scene, "camera", camera),
        (render, "resolution_x", size[0]),
        (render, "resolution_y", size[1]),
        (render, "resolution_percentage", 100),
        (render, "pixel_aspect_x", 1.0),
        (render, "pixel_aspect_y", 1.0),
        (render, "film_transparent", True),
        (render, "use_border", False),
        (render, "use_sequencer", False),
        (render, "use_compositing", False),
    ]


def _render_still(scene: bpy.types.Scene, path: str) -> None:
    """Render the current frame to an 8-bit RGBA PNG at ``path`` (written to a temp name, then renamed)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = os.path.join(os.path.dirname(path), ".tmp-" + os.path.basename(path))
    state = compat.image_output_state(scene)
    try:
        compat.set_image_output(scene, "RGBA")
        with overridden([(scene.render, "filepath", tmp), (scene.render, "use_file_extension", False)]):
            bpy.ops.render.render(write_still=True, scene=scene.name)
    finally:
        compat.restore_image_output(scene, state)
    if not os.path.isfile(tmp):
        raise RenderInputError(f"the render did not produce {path}; check the render engine and camera")
    os.replace(tmp, path)


def render_beauty(scene, camera, engine_choice: str, size: tuple[int, int], path: str) -> None:
    items = _frame_settings(scene, camera, size)
    engine = engine_id(engine_choice, scene)
    items.append((scene.render, "engine", engine))
    with overridden(items):
        _render_still(scene, path)


# ---------------------------------------------------------------------------------------------------------------
# Identity passes: each character flat in its own palette colour


def render_identity_pass(scene, camera, characters: Sequence[Character], size, path: str,
                         legend: bool = True) -> None:
    """Render each character in its palette colour on a transparent background (and the pass's legend).

    The colours come from ``characters`` (see ``identities``), never from where the characters are on screen.
    """
    if not characters:
        raise RenderInputError("nothing to render: the character collection has no visible objects")
    shading = scene.display.shading
    view = scene.view_settings
    worn = {o.name for character in characters for o in character.objects}
    items = _frame_settings(scene, camera, size) + [
        (scene.render, "engine", "BLENDER_WORKBENCH"),
        (scene.render, "dither_intensity", 0.0),
        (scene.display, "render_aa", "OFF"),
        (shading, "light", "FLAT"),
        (shading, "color_type", "OBJECT"),
        (shading, "show_cavity", False),
        (shading, "show_shadows", False),
        (shading, "show_object_outline", False),
        (shading, "show_specular_highlight", False),
        (shading, "show_xray", False),
        (shading, "use_dof", False),
        (scene.display_settings, "display_device", "sRGB"),
        (view, "view_transform", "Standard"),
        (view, "look", "None"),
        (view, "exposure", 0.0),
        (view, "gamma", 1.0),
        (view, "use_curve_mapping", False),
    ]
    for character in characters:
        red, green, blue = (channel / 255.0 for channel in character.rgb)
        items += [(obj, "color", (red, green, blue, 1.0)) for obj in character.objects]
    items += [(obj, "hide_render", True) for obj in scene.objects
              if obj.type in RENDERABLE_TYPES and obj.name not in worn and not obj.hide_render]
    with overridden(items):
        _render_still(scene, path)
    if legend:
        identities.write_legend(path, identities.Legend(camera.name, scene.frame_current, tuple(size),
                                                    identities.colour_table(characters)))


@dataclass
class ReferenceRender:
    image_path: str
    identity_path: str  # "" when the mask comes from the beauty render's alpha
    characters: list[Character]
    size: tuple[int, int]


def render_reference(scene, camera, engine_choice: str, size, out_dir: str, stem: str,
                     characters: Sequence[Character] | None = None) -> ReferenceRender:
    """The beauty render ``<stem>.png`` and, given ``characters``, their identity pass ``<stem>_ids.png``."""
    camera = resolve_camera(scene, camera)
    image_path = os.path.join(out_dir, f"{stem}.png")
    render_beauty(scene, camera, engine_choice, size, image_path)
    identity_path = ""
    if characters is not None:
        identity_path = os.path.join(out_dir, f"{stem}_ids.png")
        render_identity_pass(scene, camera, characters, size, identity_path)
    return ReferenceRender(image_path, identity_path, list(characters or []), size)


# ---------------------------------------------------------------------------------------------------------------
# Masks for the worker


def mask_from_alpha(image_path: str, background: tuple[int, int, int], out_path: str) -> None:
    """Blue (identity 0) where the render's alpha is at least one half, ``background`` elsewhere."""
    width, height, planes = read_rgba_planes(image_path)
    on = pngio.threshold(planes[3])
    pngio.write_png(out_path, width, height, 3, pngio.solid_mask(on, identity_colour(0), background))


def mask_from_identity_pass(identity_path: str, background: tuple[int, int, int], out_path: str) -> None:
    width, height, planes = read_rgba_planes(identity_path)
    pngio.write_png(out_path, width, height, 3, pngio.flatten_identity_mask(planes, background))


def write_mask(image_path: str, identity_path: str, background, out_path: str) -> None:
    if identity_path:
        mask_from_identity_pass(identity_path, background, out_path)
    else:
        mask_from_alpha(image_path, background, out_path)


# ---------------------------------------------------------------------------------------------------------------
# The scene's own animation as a driving clip


@dataclass
class AnimationRender:
    frames: list[str]
    identity_frames: list[str]
    fps: float
    size: tuple[int, int]


def scene_fps(scene) -> float:
    return scene.render.fps / scene.render.fps_base


def render_animation(scene, camera, engine_choice: str, size, frame_start: int, frame_end: int, out_dir: str,
                     characters: Sequence[Character] | None = None, beauty: bool = True) -> AnimationRender:
    """Render frames ``frame_start..frame_end`` (inclusive) and, given ``characters``, their identity masks
    (only those with ``beauty=False``).

    Every frame uses the same ``characters``, so each keeps its colour in every frame, wherever it moves and
    even after leaving the frame and coming back.
    """
    camera = resolve_camera(scene, camera)
    if frame_end < frame_start:
        raise RenderInputError(f"the frame range {frame_start}-{frame_end} is empty")
    frames, identity_frames = [], []
    current = scene.frame_current
    try:
        for number, frame in enumerate(range(frame_start, frame_end + 1), start=1):
            scene.frame_set(frame)
            if beauty:
                path = os.path.join(out_dir, "frames", f"frame_{number:04d}.png")
                render_beauty(scene, camera, engine_choice, size, path)
                frames.append(path)
            if characters is not None:
                id_path = os.path.join(out_dir, "ids", f"frame_{number:04d}.png")
                render_identity_pass(scene, camera, characters, size, id_path, legend=False)
                identity_frames.append(id_path)
    finally:
        scene.frame_set(current)
    return AnimationRender(frames, identity_frames, scene_fps(scene), size)
