"""Receiving, storing and validating a job's uploaded files.

A submission is checked in this order, cheapest first, so a bad upload costs as little as possible:

1. the request's ``Content-Length`` against ``--max-upload-mb`` (before any byte of the body is read);
2. the file field names against an allow-list; every file is stored under the allow-listed name (never the
   client's file name) with a suffix chosen from its first bytes (PNG/JPEG/WebP, zip, otherwise a video);
3. the media: videos are probed by ffmpeg (size, duration, frame estimate) before they are decoded, zip archives
   are checked member by member (count, uncompressed sizes) before any PNG is decoded, images by their header;
4. the whole request through the engine's own validation (``prepare_inputs``: masks, palette colours, frame
   counts, aspect ratios, sizes) and the preset/LoRA settings.

The runner later rebuilds the identical request from the stored files with ``load_request``.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .errors import ApiError, invalid
from .schemas import MAX_EXTRA_REFERENCES, JobSpec

COPY_CHUNK = 1 << 20
ZIP_MAX_MEMBER_BYTES = 256 << 20  # one decompressed PNG frame; far above any real 4K RGBA PNG
FIXED_FIELDS = ("reference", "reference_mask", "driving", "driving_mask")
_EXTRA_FIELD = re.compile(r"^extra_reference(_mask)?_(\d{1,2})$")
IMAGE_FIELDS_KIND = "image"
CLIP_FIELDS_KIND = "clip"


@dataclass(frozen=True)
class UploadLimits:
    """The worker's limits on one submission (``scail-worker serve`` flags)."""

    max_upload_bytes: int = 2 << 30
    max_frames: int = 2400
    max_seconds: float = 600.0
    max_side: int = 4096
    max_decoded_bytes: int = 8 << 30  # one decoded clip in memory (frames x height x width x channels)

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
    return CLIP_FIELDS_KIND if field in ("driving", "driving_mask") else IMAGE_FIELDS_KIND


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


def _check_zip(path: Path, field: str, limits: UploadLimits) -> None:
    """Refuse archives that would decompress to too much before any frame is decoded."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = [info for info in archive.infolist() if info.filename.lower().endswith(".png")]
    except (zipfile.BadZipFile, OSError) as exc:
        raise invalid(field, f"not a readable zip of PNG frames ({exc})") from exc
    if not members:
        raise invalid(field, "the zip contains no .png frames")
    if len(members) > limits.max_frames:
        raise invalid(field, f"{len(members)} frames is more than this worker's {limits.max_frames}-frame limit",
                      status=413)
    for info in members:
        if info.file_size > ZIP_MAX_MEMBER_BYTES:
            raise invalid(field, f"{info.filename!r} decompresses to {info.file_size} bytes; frames must be "
                          f"under {ZIP_MAX_MEMBER_BYTES >> 20} MiB each", status=413)


def _check_decoded_size(field: str, frames: int, width: int, height: int, channels: int,
                        limits: UploadLimits) -> None:
    """Refuse a clip whose decoded frames would not fit the worker's memory budget, before decoding it."""
    need = frames * width * height * channels
    if need > limits.max_decoded_bytes:
        raise invalid(field, f"{frames} frames of {width}x{height} decode to {need / 2**30:.1f} GiB, more than this "
                      f"worker's {limits.max_decoded_bytes / 2**30:.1f} GiB budget; use frame_range or a smaller "
                      "clip", status=413)


def _zip_frame_geometry(path: Path) -> tuple[int, int, int]:
    """(width, height, channels) of the first PNG of a frame archive, read from its header only."""
    from PIL import Image

    with zipfile.ZipFile(path) as archive:
        first = min((n for n in archive.namelist() if n.lower().endswith(".png")), default=None)
        if first is None:
            return 0, 0, 0
        with archive.open(first) as member, Image.open(member) as image:
            channels = 4 if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info else 3
            return image.width, image.height, channels


def _engine_field_to_api(field: str | None) -> str | None:
    """Map the engine's field names onto the API's: spec keys get 'spec.', extra references their file fields."""
    if field is None:
        return None
    match = re.match(r"^extra_references\[(\d+)\]\.(image|mask)$", field)
    if match:
        index = match.group(1)
        return f"extra_reference_{index}" if match.group(2) == "image" else f"extra_reference_mask_{index}"
    if field in ("reference", "reference_mask", "driving", "driving_mask"):
        return field
    if field.startswith("extra_references"):
        return "files"
    return f"spec.{field}"


def engine_error(exc: Exception, folder: Path | None = None, inputs: Mapping[str, str] | None = None) -> ApiError:
    """A ``Scail2InputError`` as a 422 naming the API field. The engine names the stored files; the client knows
    its uploads by field name, so their paths are replaced by that (server paths are never shown)."""
    message = str(exc)
    for field, name in (inputs or {}).items():
        if folder is not None:
            message = message.replace(str(folder / name), f"the uploaded '{field}'")
    return invalid(_engine_field_to_api(getattr(exc, "field", None)) or "spec", message)


def _read_image(path: Path, field: str, limits: UploadLimits):
    from backend.scail2.conditioning.media import read_image

    return read_image(path, field=field, limits=limits.media_limits())


def _read_clip(path: Path, field: str, fps: float | None, limits: UploadLimits, end: int | None = None):
    """Decode a driving clip or mask (video or zip of PNGs); ``end`` stops a video's decoding there."""
    from backend.scail2.conditioning.media import probe_video, read_frame_zip, read_video

    if path.suffix == ".zip":
        if fps is None:
            raise invalid("spec.fps", f"'{field}' is a zip of PNG frames: give its frame rate as spec.fps")
        _check_zip(path, field, limits)
        with zipfile.ZipFile(path) as archive:
            count = sum(1 for name in archive.namelist() if name.lower().endswith(".png"))
        _check_decoded_size(field, count, *_zip_frame_geometry(path), limits)
        return read_frame_zip(path, fps, field=field, limits=limits.media_limits())
    if path.suffix != ".video":
        raise invalid(field, f"{field} must be a video file or a zip of PNG frames, got a single image")
    info = probe_video(path, field=field)
    frames = info.estimated_frames if end is None else min(info.estimated_frames, end)
    if end is not None and frames > limits.max_frames:
        raise invalid(field, f"frame_range asks for {frames} frames; this worker decodes at most {limits.max_frames}",
                      status=413)
    _check_decoded_size(field, frames, info.width, info.height, 4 if info.has_alpha else 3, limits)
    clip = read_video(path, field=field, limits=limits.media_limits(), max_frames=end)
    if fps is not None:
        clip.fps = float(fps)
    return clip


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
    field on any problem; the returned request has passed the engine's own ``prepare_inputs`` checks.
    ``fill_masks`` supplies the masks of 'auto' mask sources (``backend.masks.service``) before that check.
    ``pinned_loras``: the LoRA strengths an fp8 worker was converted with (``check_job_loras``), or None.
    """
    from backend.scail2.conditioning.request import ExtraReference, GenerationRequest, prepare_inputs
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

    try:
        reference = _read_image(folder / inputs["reference"], "reference", limits)
        reference_mask = None
        if "reference_mask" in inputs:
            reference_mask = _read_image(folder / inputs["reference_mask"], "reference_mask", limits)
        end = spec.frame_range[1] if spec.frame_range else None
        driving = _slice_frames(_read_clip(folder / inputs["driving"], "driving", spec.fps, limits, end),
                                spec.frame_range, "driving")
        driving_mask = None
        if "driving_mask" in inputs:
            driving_mask = _slice_frames(
                _read_clip(folder / inputs["driving_mask"], "driving_mask", spec.fps or driving.fps, limits, end),
                spec.frame_range, "driving_mask",
            )
        extras = []
        for index in indices:
            image = _read_image(folder / inputs[f"extra_reference_{index}"], f"extra_reference_{index}", limits)
            mask_field = f"extra_reference_mask_{index}"
            mask = _read_image(folder / inputs[mask_field], mask_field, limits) if mask_field in inputs else None
            extras.append(ExtraReference(image=image, mask=mask))

        sampling = SamplingSettings.from_preset(
            spec.preset, steps=spec.steps, guidance=spec.guidance, shift=spec.shift, sampler=spec.sampler,
            seed=spec.seed,
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
        prepared = prepare_inputs(request)
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
    from backend.scail2.errors import Scail2InputError

    unknown = sorted(set(inputs) - {"reference", "driving"})
    if unknown:
        raise invalid(unknown[0], "a mask preview takes only 'reference' and/or 'driving' files")
    if not inputs:
        raise invalid("files", "send a 'reference' image and/or a 'driving' clip to mask")
    if "reference" in inputs and not inputs["reference"].endswith((".png", ".jpg", ".webp")):
        raise invalid("reference", "reference must be a PNG, JPEG or WebP image")
    try:
        reference = _read_image(folder / inputs["reference"], "reference", limits) if "reference" in inputs else None
        driving = None
        if "driving" in inputs:
            driving = _slice_frames(_read_clip(folder / inputs["driving"], "driving", spec.fps, limits),
                                    spec.frame_range, "driving")
    except Scail2InputError as exc:
        raise engine_error(exc, folder, inputs) from exc
    return reference, driving


def discard(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
