"""Motion pairs as the engine and the worker take their inputs: uint8 arrays, a ``GenerationRequest``, files.

    arrays = pair_arrays(batch, 0)                   # reference, masks, driving: uint8 numpy
    request = generation_request(batch, 0, prompt="", sampling=SamplingSettings.from_preset("fast"))
    folder = write_pair(batch, 0, "pairs/p0")       # PNGs + zips + pair.json, ready for scail2-generate / curl
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor

from .pairs import MotionPairBatch, palette_masks


@dataclass
class PairArrays:
    """One pair as uint8 arrays (RGB, [H, W, 3] and [T, H, W, 3]); masks in the mode's palette polarity."""

    mode: str
    fps: float
    reference: np.ndarray
    reference_mask: np.ndarray
    driving: np.ndarray
    driving_mask: np.ndarray
    target: np.ndarray
    target_mask: np.ndarray  # identity colours on black (the ground truth; not an engine input)


def to_uint8(images: Tensor) -> np.ndarray:
    """[..., 3, H, W] float in [0, 1] -> [..., H, W, 3] uint8 (rounded)."""
    return (images.detach().float().clamp(0, 1) * 255).round().to("cpu").movedim(-3, -1).numpy().astype(np.uint8)


def pair_arrays(batch: MotionPairBatch, index: int) -> PairArrays:
    if not 0 <= index < len(batch):
        raise IndexError(f"pair index {index} is outside the batch of {len(batch)}")
    mode = batch.mode
    return PairArrays(
        mode=mode,
        fps=batch.fps,
        reference=to_uint8(batch.reference[index]),
        reference_mask=to_uint8(palette_masks(batch.reference_ids[index], mode=mode, role="reference")),
        driving=to_uint8(batch.driving[index]),
        driving_mask=to_uint8(palette_masks(batch.driving_ids[index], mode=mode, role="driving")),
        target=to_uint8(batch.target[index]),
        # Identity colours on black, whatever the mode: the target is compared, never fed to the model.
        target_mask=to_uint8(palette_masks(batch.target_ids[index], mode="animation", role="driving")),
    )


def generation_request(batch: MotionPairBatch, index: int, **options):
    """A ``backend.scail2.GenerationRequest`` for pair ``index`` at the pair's own size; ``options`` override
    or add request fields (``prompt``, ``sampling``, ``segment_len``, ``size`` ...)."""
    from backend.scail2 import GenerationRequest, VideoClip

    arrays = pair_arrays(batch, index)
    fields = {
        "reference": arrays.reference,
        "reference_mask": arrays.reference_mask,
        "driving": VideoClip(arrays.driving, arrays.fps),
        "driving_mask": VideoClip(arrays.driving_mask, arrays.fps),
        "mode": arrays.mode,
        "size": batch.size,
        **options,
    }
    return GenerationRequest(**fields)


def _write_png(image: np.ndarray, path: Path) -> None:
    Image.fromarray(np.ascontiguousarray(image)).save(path, format="PNG")


def _write_frames(frames: np.ndarray, folder: Path) -> None:
    """``folder/frame_00000.png`` ... and ``folder.zip`` holding the same files (stored, for the worker)."""
    folder.mkdir()
    with zipfile.ZipFile(folder.with_suffix(".zip"), "w", compression=zipfile.ZIP_STORED) as archive:
        for t, frame in enumerate(frames):
            name = f"frame_{t:05d}.png"
            _write_png(frame, folder / name)
            archive.write(folder / name, name)


def write_pair(batch: MotionPairBatch, index: int, folder: str | Path, *, overwrite: bool = False) -> Path:
    """Write pair ``index`` to ``folder`` (written beside it, then renamed into place) and return it:

    ``reference.png``, ``reference_mask.png``, ``driving/`` + ``driving.zip``, ``driving_mask/`` +
    ``driving_mask.zip`` (PNG frames), ``target/``, ``target_mask/`` (the ground truth) and ``pair.json``
    (mode, fps, seed, and the ``scail2-generate`` arguments that run it).
    """
    folder = Path(folder)
    if folder.exists():
        if not overwrite:
            raise FileExistsError(f"{folder} exists; pass overwrite=True to replace it")
        if not folder.is_dir():
            raise FileExistsError(f"{folder} exists and is not a folder")
    arrays = pair_arrays(batch, index)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        _write_png(arrays.reference, staging / "reference.png")
        _write_png(arrays.reference_mask, staging / "reference_mask.png")
        _write_frames(arrays.driving, staging / "driving")
        _write_frames(arrays.driving_mask, staging / "driving_mask")
        _write_frames(arrays.target, staging / "target")
        _write_frames(arrays.target_mask, staging / "target_mask")
        height, width = batch.size
        description = {
            "mode": arrays.mode,
            "fps": arrays.fps,
            "frames": batch.frames,
            "height": height,
            "width": width,
            "characters": batch.characters,
            "seed": batch.seed,
            "item": batch.first_index + index,
            "scail2_generate_args": [
                "--reference", "reference.png", "--reference-mask", "reference_mask.png",
                "--driving", "driving", "--driving-mask", "driving_mask", "--fps", f"{arrays.fps:g}",
                "--mode", arrays.mode, "--size", f"{width}x{height}",
            ],
            "worker_files": {"reference": "reference.png", "reference_mask": "reference_mask.png",
                             "driving": "driving.zip", "driving_mask": "driving_mask.zip"},
            "worker_spec": {"mode": arrays.mode, "fps": arrays.fps},
        }  # fmt: skip
        (staging / "pair.json").write_text(json.dumps(description, indent=2))
        os.chmod(staging, 0o755)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return folder
