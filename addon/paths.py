"""Where outputs go: ``//scail/<job>/`` beside the .blend, or an absolute folder while the file is unsaved."""

from __future__ import annotations

import os
import tempfile

import bpy

from . import ADDON_PACKAGE

UNSAVED_WARNING = ("the .blend file is not saved, so outputs go to {path}; "
                   "save the file first to keep them in //scail/ beside it")


def scail_root() -> tuple[str, str | None]:
    """Absolute output root and, when the file is unsaved, a warning naming where outputs go instead."""
    if bpy.data.filepath:
        return bpy.path.abspath("//scail"), None
    try:
        root = bpy.utils.extension_path_user(ADDON_PACKAGE, path="unsaved", create=True)
    except (ValueError, RuntimeError):  # not loaded as an extension (e.g. scripted use)
        root = os.path.join(tempfile.gettempdir(), "scail_unsaved")
    os.makedirs(root, exist_ok=True)
    return root, UNSAVED_WARNING.format(path=root)


def job_dir(name: str) -> tuple[str, str | None]:
    root, warning = scail_root()
    return os.path.join(root, name), warning


def to_blend_path(path: str) -> str:
    """Store paths relative to the .blend when it is saved, so the folder can move with it."""
    if bpy.data.filepath:
        try:
            return bpy.path.relpath(path)
        except ValueError:  # another drive on Windows
            return path
    return path


def absolute(path: str) -> str:
    return os.path.normpath(bpy.path.abspath(path)) if path else ""
