"""Small JPEG/PNG previews of a job's inputs and output windows, for the web page (``backend.worker.web``).

They are written once, where the data already is in memory: the inputs' at submission (the request was just
decoded for validation), each output window's right after the window is persisted. Serving a page therefore never
decodes a video or resizes a frame.

Layout, under ``jobs/<id>/thumbs/``::

    reference.png                 the reference image (PNG: its alpha, which marks the subject, is kept)
    driving_NNNNNN.jpg            a few driving frames, NNNNNN = the frame's index in the uploaded clip
    window_WWWW_NNNNNN.jpg        a few frames of output window WWWW, NNNNNN = the frame's index in the result
    inputs.json, window_WWWW.json what each group holds; written last, so a listed file always exists

Every file is written under a temporary name and renamed. Failing to write a preview never fails a job: the
caller logs it and the page shows the job without that preview.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .logs import get_logger

THUMBS_FOLDER = "thumbs"
MAX_SIDE = 320
DRIVING_SAMPLES = 6
WINDOW_SAMPLES = 8
JPEG_QUALITY = 85
NAME_PATTERN = re.compile(r"^(reference\.png|driving_\d{6}\.jpg|window_\d{4}_\d{6}\.jpg)$")
INPUTS_INDEX = "inputs.json"

log = get_logger("scail.worker.thumbnails")


@dataclass(frozen=True)
class Thumb:
    name: str
    frame: int  # index in the uploaded driving clip, or in the result


@dataclass(frozen=True)
class WindowThumbs:
    index: int  # 0-based window index
    first_frame: int  # the window's first frame in the result
    frames: int  # how many result frames the window contributes
    thumbs: list[Thumb]


@dataclass(frozen=True)
class InputThumbs:
    reference: str | None
    driving: list[Thumb]


def thumbs_dir(job_dir: Path) -> Path:
    return job_dir / THUMBS_FOLDER


def sample_indices(count: int, samples: int) -> list[int]:
    """``samples`` indices spread evenly over ``range(count)``, first and last included."""
    if count <= samples:
        return list(range(count))
    return sorted({round(i * (count - 1) / (samples - 1)) for i in range(samples)})


def _small(frame: np.ndarray) -> Any:
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(frame))
    image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.BILINEAR)
    return image


def _temporary(path: Path) -> Path:
    # Unique: the submission and the runner may write the same job's input previews at the same time.
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


def _save(image: Any, path: Path, **options: Any) -> None:
    temp = _temporary(path)
    image.save(temp, **options)
    os.replace(temp, path)


def _small_frame(frame: np.ndarray) -> Any:
    return _small(frame[..., :3]).convert("RGB")


def _save_frame(image: Any, path: Path) -> None:
    _save(image, path, format="JPEG", quality=JPEG_QUALITY)


def _write_index(path: Path, payload: dict[str, Any]) -> None:
    temp = _temporary(path)
    temp.write_text(json.dumps(payload))
    os.replace(temp, path)


@dataclass(frozen=True)
class InputPreview:
    """The input previews, already made small: a decoded request (whole clips) can be let go right away."""

    reference: Any  # PIL image, alpha kept
    driving: list[tuple[int, Any]]  # (frame index in the uploaded clip, PIL image)


def input_preview(request: Any, first_frame: int = 0) -> InputPreview:
    """From an engine ``GenerationRequest`` whose driving clip starts at frame ``first_frame`` of the upload."""
    frames = request.driving.frames
    return InputPreview(reference=_small(request.reference),
                        driving=[(first_frame + i, _small_frame(frames[i]))
                                 for i in sample_indices(int(frames.shape[0]), DRIVING_SAMPLES)])


def write_input_thumbnails(job_dir: Path, preview: InputPreview) -> None:
    """Previews of the reference image and a few driving frames. Does nothing if they exist (a restarted job)."""
    folder = thumbs_dir(job_dir)
    if (folder / INPUTS_INDEX).is_file():
        return
    folder.mkdir(exist_ok=True)  # not parents: a job deleted meanwhile stays deleted
    _save(preview.reference, folder / "reference.png", format="PNG")
    driving_names = []
    for frame, image in preview.driving:
        name = f"driving_{frame:06d}.jpg"
        _save_frame(image, folder / name)
        driving_names.append({"name": name, "frame": frame})
    _write_index(folder / INPUTS_INDEX, {"reference": "reference.png", "driving": driving_names})


def write_window_thumbnails(job_dir: Path, window_index: int, first_frame: int, frames: np.ndarray) -> None:
    """Previews of a few frames of one output window ([t, H, W, 3] uint8, result frames ``first_frame`` on)."""
    folder = thumbs_dir(job_dir)
    index_path = folder / f"window_{window_index:04d}.json"
    if index_path.is_file():
        return
    folder.mkdir(exist_ok=True)  # not parents: a job deleted meanwhile stays deleted
    thumbs = []
    for local in sample_indices(int(frames.shape[0]), WINDOW_SAMPLES):
        frame = first_frame + local
        name = f"window_{window_index:04d}_{frame:06d}.jpg"
        _save_frame(_small_frame(frames[local]), folder / name)
        thumbs.append({"name": name, "frame": frame})
    _write_index(index_path, {"index": window_index, "first_frame": first_frame, "frames": int(frames.shape[0]),
                              "thumbs": thumbs})


def input_thumbnails(job_dir: Path) -> InputThumbs | None:
    """The inputs' previews, or None when there are none (the files were removed, or writing them failed)."""
    try:
        payload = json.loads((thumbs_dir(job_dir) / INPUTS_INDEX).read_text())
    except (OSError, ValueError):
        return None
    return InputThumbs(reference=payload.get("reference"),
                       driving=[Thumb(item["name"], int(item["frame"])) for item in payload.get("driving", [])])


def window_thumbnails(job_dir: Path) -> list[WindowThumbs]:
    """Every output window's previews written so far, in window order."""
    windows = []
    for path in sorted(thumbs_dir(job_dir).glob("window_[0-9][0-9][0-9][0-9].json")):
        try:
            payload = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        windows.append(WindowThumbs(index=int(payload["index"]), first_frame=int(payload["first_frame"]),
                                    frames=int(payload["frames"]),
                                    thumbs=[Thumb(item["name"], int(item["frame"])) for item in payload["thumbs"]]))
    return windows


def thumbnail_file(job_dir: Path, name: str) -> Path | None:
    """The preview file called ``name``, if ``name`` is a preview name and the file exists (never a path from the
    request: the name must match the fixed pattern)."""
    if not NAME_PATTERN.match(name):
        return None
    path = thumbs_dir(job_dir) / name
    return path if path.is_file() else None


def write_quietly(write: Any, job_dir: Path, *args: Any) -> None:
    """Run one of the writers above; a failure (disk full, an odd frame) is logged, never raised: a missing preview
    must not fail a submission or a job."""
    try:
        write(job_dir, *args)
    except Exception:  # noqa: BLE001 - see the docstring
        log.warning(
            "could not write previews", exc_info=True, extra={"job": job_dir.name, "writer": write.__name__})
