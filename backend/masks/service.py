"""SAM3 masks inside the worker: a lazily loaded, shared SAM3 and the job-level operations the worker calls.

``scail-worker serve --sam3 DIR`` builds one ``MaskService``. Jobs whose ``reference_mask``/``driving_mask`` is
``"auto"`` get their masks in a ``masks`` phase right before sampling (``fill_request``), cached in the job folder
so a resumed job reuses exactly the masks its finished windows were made with. ``POST /v1/masks`` returns the
masks alone (``write_preview_zip``) so the artist can inspect and fix them before paying for a generation.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import threading
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backend.scail2.conditioning.masks import mask_from_alpha
from backend.scail2.conditioning.media import VideoClip, read_clip, read_image, write_image
from backend.scail2.errors import Scail2InputError

from .auto import AutoMasks, make_auto_masks, needs_sam3
from .driving import Progress, write_mask_clip
from .sam3_loader import Sam3Segmenter, check_sam3_folder, load_sam3
from .settings import MaskSettings

REFERENCE_FILE = "reference_mask.png"
DRIVING_FOLDER = "driving_mask"
SUMMARY_FILE = "masks.json"


def settings_from_spec(spec: Any) -> MaskSettings:
    """``MaskSettings`` from any spec carrying ``mode`` and the optional ``mask_*`` fields."""
    return MaskSettings.build(
        spec.mode,
        prompts=getattr(spec, "mask_prompts", None),
        max_identities=getattr(spec, "mask_identities", None),
        colours=getattr(spec, "mask_colours", None),
        detection_threshold=getattr(spec, "mask_threshold", None),
    )


def shape_only_masks(request: Any, roles: Iterable[str]) -> Any:
    """``request`` with an all-subject palette mask for each auto role, for checking a submission.

    Auto masks are made on the GPU just before sampling; when a job is submitted only their shape matters (the
    input's own size and frame count, which SAM3 masks always have), so the rest of the request can be validated
    in full without running SAM3 in the request.
    """
    changes: dict[str, Any] = {}
    roles = set(roles)
    if "reference_mask" in roles:
        height, width = request.reference.shape[:2]
        changes["reference_mask"] = mask_from_alpha(
            np.full((height, width), 255, np.uint8), request.mode, "reference"
        )
    if "driving_mask" in roles:
        frames = request.driving.frames
        one = mask_from_alpha(np.full(frames.shape[1:3], 255, np.uint8), request.mode, "driving")
        changes["driving_mask"] = VideoClip(
            np.broadcast_to(one, (frames.shape[0], *one.shape)), request.driving.fps
        )
    return dataclasses.replace(request, **changes) if changes else request


class MaskService:
    """One SAM3 for the whole worker: loaded on first use, one segmentation at a time."""

    def __init__(
        self, folder: str | os.PathLike[str], device: str = "cuda", dtype: torch.dtype | None = None
    ):
        self.folder = check_sam3_folder(folder)  # fail at start-up, not at the first auto job
        self.device = device
        self.dtype = dtype or (torch.bfloat16 if str(device).startswith("cuda") else torch.float32)
        self._segmenter: Sam3Segmenter | None = None
        self._lock = threading.Lock()

    def _loaded(self) -> Sam3Segmenter:
        if self._segmenter is None:
            self._segmenter = load_sam3(self.folder, device=self.device, dtype=self.dtype)
        return self._segmenter

    def make(
        self,
        settings: MaskSettings,
        reference: np.ndarray | None = None,
        driving: VideoClip | None = None,
        progress: Progress | None = None,
    ) -> AutoMasks:
        """Masks for whichever inputs are given (SAM3 is loaded only if one of them needs it)."""
        with self._lock:
            segmenter = self._loaded() if needs_sam3(reference, driving) else None
            return make_auto_masks(
                settings, segmenter, reference=reference, driving=driving, progress=progress
            )

    def fill_request(
        self,
        request: Any,
        roles: Iterable[str],
        settings: MaskSettings,
        cache_dir: Path | None = None,
        progress: Progress | None = None,
    ) -> Any:
        """``request`` with its auto masks made (or read back from ``cache_dir`` when an earlier attempt made them).

        A mask in which SAM3 found no subject fails the job with a ``Scail2InputError`` naming the role and the
        prompts, since generating with it would give the wrong mode's behaviour.
        """
        roles = set(roles)
        cached = _read_cache(cache_dir, roles, request.driving.fps) if cache_dir is not None else None
        if cached is not None:
            return dataclasses.replace(request, **cached)
        masks = self.make(
            settings,
            reference=request.reference if "reference_mask" in roles else None,
            driving=request.driving if "driving_mask" in roles else None,
            progress=progress,
        )
        changes: dict[str, Any] = {}
        for role, result in (("reference_mask", masks.reference), ("driving_mask", masks.driving)):
            if result is None:
                continue
            if not result.identities:
                raise Scail2InputError(
                    f"{role} is 'auto' but SAM3 found no subject for the prompts {', '.join(settings.prompts)}; "
                    "name the subject in mask_prompts (e.g. 'dancer', 'cat', 'robot') or send a mask file",
                    field=role,
                )
            changes[role] = result.image if role == "reference_mask" else result.clip
        if cache_dir is not None:
            _write_cache(cache_dir, changes, masks)
        return dataclasses.replace(request, **changes)


def _read_cache(folder: Path, roles: set[str], fps: float) -> dict[str, Any] | None:
    """The masks an earlier attempt stored, or None when any requested one is missing."""
    cached: dict[str, Any] = {}
    if "reference_mask" in roles:
        if not (folder / REFERENCE_FILE).is_file():
            return None
        cached["reference_mask"] = read_image(folder / REFERENCE_FILE, field="reference_mask")
    if "driving_mask" in roles:
        if not (folder / DRIVING_FOLDER / "mask.json").is_file():  # written last by write_mask_clip
            return None
        cached["driving_mask"] = read_clip(folder / DRIVING_FOLDER, field="driving_mask", fps=fps)
    return cached


def _write_cache(folder: Path, masks: dict[str, Any], summary: AutoMasks) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if "reference_mask" in masks:
        write_image(masks["reference_mask"], folder / REFERENCE_FILE)
    if "driving_mask" in masks:
        write_mask_clip(masks["driving_mask"], folder / DRIVING_FOLDER)  # mask.json marks it complete
    (folder / SUMMARY_FILE).write_text(json.dumps(summary.as_dict(), indent=2))


def write_preview_zip(masks: AutoMasks, target: Path) -> Path:
    """A zip for previews: ``reference_mask.png``, ``driving_mask/frame_00000.png``... and ``masks.json``
    (identities, checks, warnings, fps and frame count), written beside ``target`` and renamed."""
    summary = masks.as_dict()
    handle, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".zip", dir=target.parent)
    os.close(handle)
    try:
        with zipfile.ZipFile(temp, "w", compression=zipfile.ZIP_STORED) as archive:
            if masks.reference is not None:
                archive.writestr(REFERENCE_FILE, _png_bytes(masks.reference.image))
                summary["reference"]["file"] = REFERENCE_FILE
            if masks.driving is not None:
                clip = masks.driving.clip
                digits = max(5, len(str(clip.num_frames - 1)))
                for index, frame in enumerate(clip.frames):
                    archive.writestr(f"{DRIVING_FOLDER}/frame_{index:0{digits}d}.png", _png_bytes(frame))
                summary["driving"].update(folder=DRIVING_FOLDER, fps=clip.fps, frames=clip.num_frames)
            archive.writestr(SUMMARY_FILE, json.dumps(summary, indent=2))
        os.replace(temp, target)
    finally:
        Path(temp).unlink(missing_ok=True)
    return target


def _png_bytes(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG")
    return buffer.getvalue()

