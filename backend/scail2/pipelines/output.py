"""Writing a generation result: a PNG sequence, ``result.mp4`` and ``result.json``, all or nothing.

Layout of ``out_dir``::

    frames/frame_00000.png ...   lossless RGB frames
    result.mp4                   H.264 at the driving clip's fps
    result.json                  fps, frame count, size, seed and the effective settings

Everything is written into a hidden temporary folder beside ``out_dir`` and renamed into place at the end, so a
crash or a full disk never leaves a half-written result.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ..conditioning.media import write_mp4, write_png_sequence
from .pipeline_scail2 import GenerationResult

FRAMES_DIR = "frames"
VIDEO_FILE = "result.mp4"
METADATA_FILE = "result.json"


def write_frames_atomic(result: GenerationResult, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write ``result`` to ``out_dir`` (see the module docstring) and return ``out_dir``.

    ``out_dir`` must not exist or be empty unless ``overwrite`` is True; an overwritten result is replaced only
    once the new one is complete.
    """
    out_dir = Path(out_dir).expanduser().absolute()
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} is not empty; choose another output folder or allow overwriting")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
        write_png_sequence(result.frames, staging / FRAMES_DIR)
        write_mp4(result.frames, result.fps, staging / VIDEO_FILE)
        metadata = {
            "frames": result.num_frames,
            "fps": result.fps,
            "height": int(result.frames.shape[1]),
            "width": int(result.frames.shape[2]),
            "seed": result.seed,
            "settings": result.settings,
            "frames_dir": FRAMES_DIR,
            "video": VIDEO_FILE,
        }
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=1, default=str))
        _replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _replace_dir(staging: Path, target: Path) -> None:
    """Move the finished ``staging`` folder to ``target``, replacing an existing one only at the very end."""
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()
    if not target.exists():
        os.replace(staging, target)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    retired.rmdir()
    os.replace(target, retired)
    os.replace(staging, target)
    shutil.rmtree(retired, ignore_errors=True)
