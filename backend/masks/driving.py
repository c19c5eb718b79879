"""Driving-clip masks: SAM3 video tracking with text prompts -> one palette colour per identity, every frame.

Polarity (README "Mask Semantics"): animation paints subjects on black (the driving background must not show),
replacement on white (the driving background stays). The output has exactly the clip's frame count, size and
fps, and is written losslessly (PNG sequence or FFV1), since lossy codecs push colours below the 225 threshold.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from backend.scail2.conditioning.masks import background_colour
from backend.scail2.conditioning.media import VideoClip, write_png_sequence
from backend.scail2.errors import Scail2InputError

from .check import check_mask
from .results import MaskResult, describe_identities
from .sam3_loader import LazyFrames, Sam3Segmenter
from .settings import MaskSettings
from .tracking import Track, identity_colours, paint_frame, resolve_identities

# progress(done_frames, total_frames): called after each tracked frame.
Progress = Callable[[int, int], None]
# Objects SAM3 may track at once (its own default is 10000): enough for 6 identities found by several prompts.
MAX_TRACKED_OBJECTS = 16


@torch.inference_mode()
def track_subjects(
    segmenter: Sam3Segmenter,
    frames: np.ndarray,
    settings: MaskSettings,
    progress: Progress | None = None,
) -> list[Track]:
    """Run SAM3 video tracking over [T, H, W, 3|4] uint8 frames; every object it reports, as a ``Track``.

    Masks are kept at the tracker's low resolution (binary); objects the tracker suppressed on a frame, or
    removed during its hot-start check, are left out.
    """
    from transformers.models.sam3_video.modeling_sam3_video import Sam3VideoInferenceSession

    model = segmenter.model
    session = Sam3VideoInferenceSession(
        video_height=int(frames.shape[1]),
        video_width=int(frames.shape[2]),
        inference_device=segmenter.device,
        inference_state_device=segmenter.device,
        video_storage_device=segmenter.device,
        dtype=segmenter.dtype,
    )
    session.processed_frames = LazyFrames(
        frames, segmenter.video_preprocessing, segmenter.device, segmenter.dtype
    )
    for prompt, input_ids, attention_mask in segmenter.encode_prompts(settings.prompts):
        prompt_id = session.add_prompt(prompt)
        session.prompt_input_ids[prompt_id] = input_ids
        session.prompt_attention_masks[prompt_id] = attention_mask

    saved = (model.score_threshold_detection, model.new_det_thresh, model.max_num_objects)
    if settings.detection_threshold is not None:
        model.score_threshold_detection = model.new_det_thresh = settings.detection_threshold
    # At most 6 identities are painted; tracking a whole crowd would only cost time and memory.
    model.max_num_objects = min(model.max_num_objects, MAX_TRACKED_OBJECTS)
    tracks: dict[int, Track] = {}
    try:
        total = int(frames.shape[0])
        for done, output in enumerate(model.propagate_in_video_iterator(session), start=1):
            hidden = set(output.suppressed_obj_ids or ())
            for object_id, logits in output.obj_id_to_mask.items():
                if object_id in hidden:
                    continue
                mask = (logits[0] > 0).cpu().numpy()
                if not mask.any():
                    continue
                track = tracks.get(object_id)
                if track is None:
                    prompt_id = session.obj_id_to_prompt_id.get(object_id)
                    track = tracks[object_id] = Track(object_id, prompt=session.prompts.get(prompt_id, ""))
                track.masks[int(output.frame_idx)] = mask
                track.score = max(track.score, float(output.obj_id_to_score.get(object_id, 0.0)))
            if progress is not None:
                progress(done, total)
    finally:
        model.score_threshold_detection, model.new_det_thresh, model.max_num_objects = saved
    removed = set(session.hotstart_removed_obj_ids) | set(session.removed_obj_ids)
    return [track for object_id, track in sorted(tracks.items()) if object_id not in removed]


def paint_clip(
    identities: list[Track],
    colours: list[int],
    num_frames: int,
    size: tuple[int, int],
    background: tuple[int, int, int],
) -> np.ndarray:
    """[T, H, W, 3] uint8: every frame painted, identities in fixed colours across the whole clip."""
    return np.stack(
        [paint_frame(identities, colours, index, size, background) for index in range(num_frames)]
    )


def make_driving_mask(
    segmenter: Sam3Segmenter,
    clip: VideoClip,
    settings: MaskSettings,
    progress: Progress | None = None,
) -> MaskResult:
    """The driving mask clip for ``clip``: same frame count, size and fps; polarity from ``settings.mode``."""
    frames = np.asarray(clip.frames)
    if frames.ndim != 4 or frames.shape[-1] not in (3, 4) or frames.dtype != np.uint8 or frames.shape[0] == 0:
        raise Scail2InputError(
            f"driving: expected [T, H, W, 3|4] uint8 frames, got {frames.shape} {frames.dtype}",
            field="driving",
        )
    tracks = track_subjects(segmenter, frames, settings, progress)
    identities = resolve_identities(
        tracks, settings.mode, settings.identity_limit, settings.min_area_fraction
    )
    colours = identity_colours(len(identities), settings.colours)
    background = background_colour(settings.mode, "driving")
    painted = paint_clip(identities, colours, frames.shape[0], frames.shape[1:3], background)
    result = MaskResult(
        describe_identities(identities, colours),
        check_mask(painted, background),
        clip=VideoClip(painted, float(clip.fps)),
    )
    if not identities:
        result.warnings.append(
            f"SAM3 found no subject for the prompts {', '.join(settings.prompts)}: the driving mask is all "
            "background; add a prompt that names the subject (e.g. 'dancer', 'cat') or send a mask"
        )
    return result


def write_mask_clip(clip: VideoClip, target: str | os.PathLike[str]) -> Path:
    """Write a mask clip losslessly: ``*.mkv`` -> FFV1 (RGB) at the clip's fps; anything else -> a folder of
    PNGs plus ``mask.json`` (fps, frame count, size). Written beside the target, then renamed into place."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    frames = np.ascontiguousarray(clip.frames[..., :3])
    if target.suffix.lower() == ".mkv":
        _write_ffv1(frames, clip.fps, target)
        return target
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write_png_sequence(frames, staging)
        (staging / "mask.json").write_text(
            json.dumps(
                {
                    "fps": clip.fps,
                    "frames": int(frames.shape[0]),
                    "height": int(frames.shape[1]),
                    "width": int(frames.shape[2]),
                    "codec": "png",
                },
                indent=2,
            )
        )
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _write_ffv1(frames: np.ndarray, fps: float, target: Path) -> None:
    import imageio_ffmpeg

    handle, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".mkv", dir=target.parent)
    os.close(handle)
    try:
        writer = imageio_ffmpeg.write_frames(
            temp,
            (frames.shape[2], frames.shape[1]),
            fps=fps,
            codec="ffv1",
            pix_fmt_in="rgb24",
            pix_fmt_out="bgr0",
            quality=None,
            macro_block_size=1,
            output_params=["-f", "matroska"],
        )
        writer.send(None)
        for frame in frames:
            writer.send(frame)
        writer.close()
        os.chmod(temp, 0o644)
        os.replace(temp, target)
    finally:
        Path(temp).unlink(missing_ok=True)
