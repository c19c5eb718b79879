"""Version differences between Blender 4.2 LTS, 4.5 LTS and 5.0, in one place.

Feature tests (``hasattr``) are preferred over version comparisons, except for the EEVEE engine id whose
enum cannot be listed without a context.
"""

from __future__ import annotations

import bpy


def path_options() -> set[str]:
    """Path properties holding ``//`` paths must say so since 4.5 (else a warning per assignment)."""
    return {"PATH_SUPPORTS_BLEND_RELATIVE"} if bpy.app.version >= (4, 5, 0) else set()


def eevee_engine_id() -> str:
    """4.2-4.5 call the engine EEVEE Next; 5.0 renamed it back to plain EEVEE."""
    return "BLENDER_EEVEE_NEXT" if bpy.app.version < (5, 0, 0) else "BLENDER_EEVEE"


def vse_strips(scene: bpy.types.Scene, all_levels: bool = False):
    """The top-level strip collection: ``strips`` since 4.4 (only name in 5.0), ``sequences`` before."""
    editor = scene.sequence_editor or scene.sequence_editor_create()
    if hasattr(editor, "strips"):
        return editor.strips_all if all_levels else editor.strips
    return editor.sequences_all if all_levels else editor.sequences


def set_video_output(scene: bpy.types.Scene, container: str = "MPEG4", codec: str = "H264") -> None:
    """5.0 only accepts ``FFMPEG`` once ``media_type`` says video."""
    settings = scene.render.image_settings
    if hasattr(settings, "media_type"):
        settings.media_type = "VIDEO"
    settings.file_format = "FFMPEG"
    scene.render.ffmpeg.format = container
    scene.render.ffmpeg.codec = codec


def set_image_output(scene: bpy.types.Scene, color_mode: str = "RGBA") -> None:
    """PNG, 8 bit. In 5.0 the media type must be an image before ``PNG`` is a valid format."""
    settings = scene.render.image_settings
    if hasattr(settings, "media_type"):
        settings.media_type = "IMAGE"
    settings.file_format = "PNG"
    settings.color_mode = color_mode
    settings.color_depth = "8"
    settings.compression = 15


def image_output_state(scene: bpy.types.Scene) -> tuple:
    """What :func:`set_image_output` changes, so a caller can put it back."""
    settings = scene.render.image_settings
    return (
        getattr(settings, "media_type", None),
        settings.file_format,
        settings.color_mode,
        settings.color_depth,
        settings.compression,
    )


def restore_image_output(scene: bpy.types.Scene, state: tuple) -> None:
    settings = scene.render.image_settings
    media_type, file_format, color_mode, color_depth, compression = state
    if media_type is not None:
        settings.media_type = media_type
    settings.file_format = file_format
    settings.color_mode = color_mode
    if file_format not in {"FFMPEG"}:
        settings.color_depth = color_depth
    settings.compression = compression


def use_compositing(scene: bpy.types.Scene) -> bool:
    return bool(getattr(scene.render, "use_compositing", False))


def layout_progress(layout, factor: float, text: str) -> None:
    """``UILayout.progress`` exists since 4.0; keep a text fallback for safety."""
    if hasattr(layout, "progress"):
        layout.progress(factor=max(0.0, min(1.0, factor)), type="BAR", text=text)
    else:
        layout.label(text=f"{text} ({factor * 100:.0f}%)")
