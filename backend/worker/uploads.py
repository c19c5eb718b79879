"""Receiving, storing and validating a job's uploaded files.

A submission is checked in this order, cheapest first, so a bad upload costs as little as possible:

1. the body's size against ``--max-upload-mb``, counted as it arrives whatever its framing (``body_limit``);
2. the file field names against an allow-list; every file is stored under the allow-listed name (never the
   client's file name) with a suffix chosen from its first bytes (PNG/JPEG/WebP, zip, otherwise a video);
3. the media, from headers only, all inputs before any is decoded (``media_budget``): image headers, the header
   of every PNG in a frame archive, ffmpeg's probe of a video, against the side, frame, duration and decoded-
   memory limits;
4. the decode, where every failure to parse a file becomes a 4xx naming its field (``errors.reading``), then the
   whole request through the engine's own validation (``summarize_request``: masks, palette colours, frame
   counts, aspect ratios, sizes) and the preset/LoRA settings.

The runner later rebuilds the identical request from the stored files with ``load_request``.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .errors import ApiError, engine_error, invalid, reading
from .media_budget import MediaBudget, measure_inputs
from .schemas import MAX_EXTRA_REFERENCES, JobSpec

COPY_CHUNK = 1 << 20
FIXED_FIELDS = ("reference", "reference_mask", "driving", "driving_mask")
_EXTRA_FIELD = re.compile(r"^extra_reference(_mask)?_(\d{1,2})$")
IMAGE_FIELDS_KIND = "image"
CLIP_FIELDS_KIND = "clip"
CLIP_FIELDS = ("driving", "driving_mask")


@dataclass(frozen=True)
class UploadLimits:
    """The worker's limits on one submission (``scail-worker serve`` flags)."""

    max_upload_bytes: int = 2 << 30
    max_frames: int = 2400
    max_seconds: float = 600.0
    max_side: int = 4096
    max_decoded_bytes: int = 8 << 30  # all of one job's decoded inputs (frames x height x width x channels)

    def budget(self) -> MediaBudget:
        return MediaBudget(max_side=self.max_side, max_frames=self.max_frames, max_seconds=self.max_seconds,
                           max_decoded_bytes=self.max_decoded_bytes)

    def media_limits(self):
        from backend.scail2.conditioning.media import MediaLimits

        return MediaLimits(max_frames=self.max_frames, max_duration_s=self.max_seconds, max_side=self.max_side)


def canonical_field(name: str) -> str:
    """The allow-listed form of a file field name; 422 for anything else.

    The returned string is built from constants and an int, so it is safe to use as a file name.
    """
    if name in FIXED_FIELDS:
        return FIXED_FIELDS[FIXED_FIELDS.index(name)]
    match = _EXTRA_FIELD.match(name)
    if match:
        index = int(match.group(2))
        if index >= MAX_EXTRA_REFERENCES:
            raise invalid(name, f"at most {MAX_EXTRA_REFERENCES} additional references (indices 0.."
                          f"{MAX_EXTRA_REFERENCES - 1}) are supported")
        return f"extra_reference_mask_{index}" if match.group(1) else f"extra_reference_{index}"
    raise invalid(name if name.isprintable() and len(name) < 64 else "files",
                  "unknown file field; expected reference, reference_mask, driving, driving_mask, "
                  "extra_reference_<n> or extra_reference_mask_<n>")


def field_kind(field: str) -> str:
    """'clip' for the driving video and its mask (a video or a zip of PNGs), 'image' for everything else."""
    return CLIP_FIELDS_KIND if field in CLIP_FIELDS else IMAGE_FIELDS_KIND


def sniff_suffix(head: bytes) -> str:
    """A file suffix from the first bytes of an upload (the client's file name is never trusted)."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    if head.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ".webp"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return ".zip"
    return ".video"


def store_upload(source: BinaryIO, field: str, folder: Path) -> tuple[str, str, int]:
    """Copy one uploaded stream into ``folder/<field><suffix>``; returns (file name, sha256, size)."""
    head = source.read(16)
    name = field + sniff_suffix(head)
    digest = hashlib.sha256(head)
    size = len(head)
    with open(folder / name, "wb") as target:
        target.write(head)
        while chunk := source.read(COPY_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            target.write(chunk)
    if size == 0:
        raise invalid(field, "the uploaded file is empty")
    return name, digest.hexdigest(), size


def resolve_mask_sources(spec: JobSpec, files: Mapping[str, Any], auto_masks: bool = False) -> dict[str, str]:
    """'alpha' | 'file' | 'auto' for the reference and driving masks, checked against the files sent.

    'auto' is accepted only when the worker has SAM3 (``auto_masks``, from ``--sam3 DIR``)."""
    sources: dict[str, str] = {}
    for role in ("reference_mask", "driving_mask"):
        chosen = getattr(spec, role)
        sent = role in files
        if chosen is None:
            chosen = "file" if sent else "alpha"
        if chosen == "file" and not sent:
            raise invalid(f"spec.{role}", f"{role} is 'file' but no '{role}' file field was sent")
        if chosen != "file" and sent:
            raise invalid(f"spec.{role}", f"a '{role}' file was sent but {role} is {chosen!r}; set it to 'file'")
        if chosen == "auto" and not auto_masks:
            raise invalid(f"spec.{role}", "automatic masks need the worker started with --sam3 DIR (the SAM3 "
                          "checkpoint folder); send a mask file or an RGBA input whose alpha marks the subject")
        sources[role] = chosen
    return sources


def _decode_image(field: str, inputs: Mapping[str, str], folder: Path, limits: UploadLimits):
    """Decode one image upload (measured by ``media_budget`` already); any parse failure is a 4xx for ``field``."""
    from backend.scail2.conditioning.media import read_image

    with reading(field, folder, inputs):
        return read_image(folder / inputs[field], field=field, limits=limits.media_limits())


def _decode_clip(field: str, inputs: Mapping[str, str], folder: Path, limits: UploadLimits, fps: float | None,
                 frame_range: tuple[int, int] | None):
    """Decode a driving clip or mask (a video or a zip of PNGs, measured already) and cut it to ``frame_range``;
    a video is decoded only up to the range's end."""
    from backend.scail2.conditioning.media import read_frame_zip, read_video

    path = folder / inputs[field]
    with reading(field, folder, inputs):
        if path.suffix == ".zip":
            if fps is None:
                raise invalid("spec.fps", f"'{field}' is a zip of PNG frames: give its frame rate as spec.fps")
            clip = read_frame_zip(path, fps, field=field, limits=limits.media_limits())
        elif path.suffix == ".video":
            clip = read_video(path, field=field, limits=limits.media_limits(),
                              max_frames=frame_range[1] if frame_range else None)
            if fps is not None:
                clip.fps = float(fps)
        else:
            raise invalid(field, f"{field} must be a video file or a zip of PNG frames, got a single image")
        return _slice_frames(clip, frame_range, field)


def _slice_frames(clip, frame_range: tuple[int, int] | None, field: str):
    if frame_range is None:
        return clip
    start, end = frame_range
    total = clip.num_frames
    if start >= total:
        raise invalid("spec.frame_range", f"frame_range starts at {start} but '{field}' has only {total} frames")
    clip.frames = clip.frames[start:min(end, total)]
    return clip


def check_job_loras(spec: JobSpec, effective: Mapping[str, float], pinned: Mapping[str, float] | None) -> None:
    """On an fp8 worker (LoRAs pinned at start), a 422 ``loras_pinned`` naming ``spec.loras`` when the job gives
    other strengths, or ``spec.preset`` when its preset's LoRAs differ."""
    from backend.scail2.accel.options import PinnedLorasError, check_pinned_loras

    if pinned is None:
        return
    explicit = spec.loras is not None
    try:
        check_pinned_loras(effective, pinned, None if explicit else spec.preset,
                           restart_hint="use a worker started without --fp8 (or with --loras set to the strengths "
                           "you need)")
    except PinnedLorasError as exc:
        raise ApiError(422, "loras_pinned", f"{exc} This worker runs fp8 linears (--fp8).",
                       "spec.loras" if explicit else "spec.preset") from exc


def build_request(spec: JobSpec, inputs: Mapping[str, str], folder: Path, limits: UploadLimits,
                  available_loras: Mapping[str, object] | None, fill_masks: Callable[[Any], Any] | None = None,
                  pinned_loras: Mapping[str, float] | None = None):
    """Decode the stored files of a job and build the engine's ``GenerationRequest``, validated.

    ``inputs`` maps file fields to their stored names in ``folder``. Raises ``ApiError`` (422/413) naming the
    field on any problem; the returned request has passed the engine's own checks (``summarize_request``, the
    validation of ``prepare_inputs`` without its pixel work, which the engine does on its device). Returns the
    request and its ``InputSummary``.
    ``fill_masks`` supplies the masks of 'auto' mask sources (``backend.masks.service``) before that check.
    ``pinned_loras``: the LoRA strengths an fp8 worker was converted with (``check_job_loras``), or None.
    """
    from backend.scail2.conditioning.request import ExtraReference, GenerationRequest, summarize_request
    from backend.scail2.errors import Scail2InputError
    from backend.scail2.pipelines.pipeline_scail2 import Scail2Pipeline
    from backend.scail2.schedulers.presets import SamplingSettings, check_loras_available

    if "reference" not in inputs:
        raise invalid("reference", "a 'reference' image file is required")
    if "driving" not in inputs:
        raise invalid("driving", "a 'driving' video (or zip of PNG frames) is required")
    for field, name in inputs.items():
        kind = field_kind(field)
        if kind == IMAGE_FIELDS_KIND and not name.endswith((".png", ".jpg", ".webp")):
            raise invalid(field, f"{field} must be a PNG, JPEG or WebP image")
    indices = sorted(int(f.rsplit("_", 1)[1]) for f in inputs if f.startswith("extra_reference_") and "mask" not in f)
    for field in inputs:
        if field.startswith("extra_reference_mask_") and f"extra_reference_{field.rsplit('_', 1)[1]}" not in inputs:
            raise invalid(field, f"{field} was sent without its image extra_reference_{field.rsplit('_', 1)[1]}")
    if indices != list(range(len(indices))):
        raise invalid(f"extra_reference_{len(indices)}", "additional references must be numbered 0, 1, 2 ... "
                      f"without gaps, got {indices}")

    end = spec.frame_range[1] if spec.frame_range else None
    measure_inputs(limits.budget(), inputs, folder, CLIP_FIELDS, end)  # every input's header, before any decode
    reference = _decode_image("reference", inputs, folder, limits)
    reference_mask = _decode_image("reference_mask", inputs, folder, limits) if "reference_mask" in inputs else None
    driving = _decode_clip("driving", inputs, folder, limits, spec.fps, spec.frame_range)
    driving_mask = None
    if "driving_mask" in inputs:
        driving_mask = _decode_clip("driving_mask", inputs, folder, limits, spec.fps or driving.fps, spec.frame_range)
    extras = []
    for index in indices:
        mask_field = f"extra_reference_mask_{index}"
        extras.append(ExtraReference(image=_decode_image(f"extra_reference_{index}", inputs, folder, limits),
                                     mask=_decode_image(mask_field, inputs, folder, limits)
                                     if mask_field in inputs else None))
    try:
        sampling = SamplingSettings.from_preset(
            spec.preset, steps=spec.steps, guidance=spec.guidance, shift=spec.shift, sampler=spec.sampler,
            seed=spec.seed, step_cache=spec.step_cache,
        )
        request = GenerationRequest(
            reference=reference,
            driving=driving,
            prompt=spec.prompt,
            mode=spec.mode,
            reference_mask=reference_mask,
            driving_mask=driving_mask,
            extra_references=extras,
            negative_prompt=spec.negative_prompt,
            size=spec.explicit_size() or spec.size,
            sampling=sampling,
            loras=dict(spec.loras) if spec.loras is not None else None,
        )
        if spec.segment_len is not None:
            request.segment_len = spec.segment_len
        if fill_masks is not None:
            request = fill_masks(request)
        if available_loras is not None:  # None: a gateway before any engine reported; checked when it runs
            check_loras_available(request.effective_loras, available_loras,
                                  spec.preset if spec.loras is None else None)
        check_job_loras(spec, request.effective_loras, pinned_loras)
        prepared = summarize_request(request)
        windows = Scail2Pipeline.plan_windows(prepared.num_frames, request)  # window lengths are checked here
        request.color_anchor = len(windows) > 1 if spec.color_anchor is None else spec.color_anchor
    except Scail2InputError as exc:
        raise engine_error(exc, folder, inputs) from exc
    if max(prepared.height, prepared.width) > limits.max_side:
        raise invalid("spec.size", f"{prepared.width}x{prepared.height} exceeds this worker's {limits.max_side}-"
                      "pixel side limit")
    return request, prepared


def load_preview_inputs(spec: Any, inputs: Mapping[str, str], folder: Path, limits: UploadLimits):
    """(reference image or None, driving clip or None) for ``POST /v1/masks``, checked like job uploads."""
    unknown = sorted(set(inputs) - {"reference", "driving"})
    if unknown:
        raise invalid(unknown[0], "a mask preview takes only 'reference' and/or 'driving' files")
    if not inputs:
        raise invalid("files", "send a 'reference' image and/or a 'driving' clip to mask")
    if "reference" in inputs and not inputs["reference"].endswith((".png", ".jpg", ".webp")):
        raise invalid("reference", "reference must be a PNG, JPEG or WebP image")
    measure_inputs(limits.budget(), inputs, folder, CLIP_FIELDS, None)
    reference = _decode_image("reference", inputs, folder, limits) if "reference" in inputs else None
    driving = None
    if "driving" in inputs:
        driving = _decode_clip("driving", inputs, folder, limits, spec.fps, spec.frame_range)
    return reference, driving


def discard(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
