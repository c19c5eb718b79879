"""Load SAM3 from a local folder in the ``facebook/sam3`` layout, never from the network.

The folder holds what ``hf download facebook/sam3 --local-dir DIR`` fetches:

* ``config.json`` -- a ``sam3_video`` config (detector + tracker),
* ``model.safetensors`` (or sharded ``model-0000x-of-0000y.safetensors`` with ``model.safetensors.index.json``),
* ``processor_config.json`` -- image/video preprocessing (size, mean, std),
* the CLIP tokenizer: ``tokenizer.json`` (or ``vocab.json`` + ``merges.txt``) and ``tokenizer_config.json``.

One ``Sam3VideoModel`` serves both jobs: video tracking for driving clips, and its ``detector_model`` (a
``Sam3Model``) for single reference images, so the weights are loaded once.

Frames are preprocessed here instead of through ``Sam3VideoProcessor``/``Sam3Processor``: those require
torchvision, and the preprocessing is three documented steps (bilinear resize to the configured square,
rescale, normalise) read from the folder's ``processor_config.json``, so the GPU worker does not need a
torchvision build that matches its torch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError

from backend.scail2.errors import CheckpointError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
TOKENIZER_FILE_SETS = (("tokenizer.json",), ("vocab.json", "merges.txt"))
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json")
# The SAM3 text encoder sees 32 tokens per prompt (Sam3VideoProcessor.add_text_prompt pads to this length).
PROMPT_TOKENS = 32
WEIGHTS_HINT = (
    "get them with: hf download facebook/sam3 --local-dir DIR (accept the licence first)"
)


@dataclass(frozen=True)
class FramePreprocessing:
    """Resize to ``size`` (bilinear, antialiased), rescale and normalise, as the SAM3 processors do."""

    size: tuple[int, int]
    rescale_factor: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    do_rescale: bool = True
    do_normalize: bool = True

    @classmethod
    def from_config(cls, config: dict[str, Any], source: str) -> FramePreprocessing:
        size = config.get("size") or {"height": 1008, "width": 1008}
        if "height" not in size or "width" not in size:
            raise CheckpointError(f"{source}: 'size' must give height and width, got {size!r}")
        mean = config.get("image_mean", [0.5, 0.5, 0.5])
        std = config.get("image_std", [0.5, 0.5, 0.5])
        return cls(
            size=(int(size["height"]), int(size["width"])),
            rescale_factor=float(config.get("rescale_factor", 1 / 255)),
            mean=tuple(float(v) for v in mean),
            std=tuple(float(v) for v in std),
            do_rescale=bool(config.get("do_rescale", True)),
            do_normalize=bool(config.get("do_normalize", True)),
        )

    def __call__(self, frame: np.ndarray, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
        """[H, W, 3|4] uint8 -> [3, size_h, size_w] model input."""
        pixels = (
            torch.from_numpy(np.ascontiguousarray(frame[..., :3])).to(device).permute(2, 0, 1)[None].float()
        )
        pixels = F.interpolate(pixels, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        pixels = pixels.round().clamp(0, 255)  # the processors resize uint8 images and stay in uint8
        if self.do_rescale:
            pixels = pixels * self.rescale_factor
        if self.do_normalize:
            mean = torch.tensor(self.mean, device=pixels.device).view(1, 3, 1, 1)
            std = torch.tensor(self.std, device=pixels.device).view(1, 3, 1, 1)
            pixels = (pixels - mean) / std
        return pixels[0].to(dtype)


class LazyFrames:
    """The ``processed_frames`` of a SAM3 video session, preprocessed on demand from the uint8 clip.

    The session only indexes frames and asks for their count; preprocessing each frame when the model reaches
    it keeps memory at the clip's own size instead of T x 3 x 1008 x 1008 floats.
    """

    def __init__(
        self, frames: np.ndarray, preprocess: FramePreprocessing, device: torch.device, dtype: torch.dtype
    ):
        self._frames = frames
        self._preprocess = preprocess
        self._device = device
        self._dtype = dtype

    def __len__(self) -> int:
        return int(self._frames.shape[0])

    def __getitem__(self, index: int) -> torch.Tensor:
        return self._preprocess(self._frames[index], self._device, self._dtype)


@dataclass
class Sam3Segmenter:
    """A loaded SAM3: the video model (whose detector also segments single images), tokenizer and preprocessing."""

    folder: Path
    model: Any  # transformers.Sam3VideoModel
    tokenizer: Any  # transformers.CLIPTokenizer
    video_preprocessing: FramePreprocessing
    image_preprocessing: FramePreprocessing
    device: torch.device
    dtype: torch.dtype

    def encode_prompts(self, prompts: Sequence[str]) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """(prompt, input_ids [1, 32], attention_mask [1, 32]) per prompt, padded like the SAM3 processors."""
        encoded = []
        for prompt in prompts:
            tokens = self.tokenizer(
                prompt, return_tensors="pt", padding="max_length", max_length=PROMPT_TOKENS, truncation=True
            )
            encoded.append((prompt, tokens.input_ids.to(self.device), tokens.attention_mask.to(self.device)))
        return encoded


def _missing_files(folder: Path) -> list[str]:
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        missing.append("model.safetensors")
    if not any(all((folder / name).is_file() for name in group) for group in TOKENIZER_FILE_SETS):
        missing.append("tokenizer.json (or vocab.json + merges.txt)")
    if not any((folder / name).is_file() for name in PROCESSOR_FILES):
        missing.append("processor_config.json")
    return missing


def check_sam3_folder(folder: str | os.PathLike[str] | None) -> Path:
    """The resolved SAM3 folder, or a ``CheckpointError`` naming the folder and the files it lacks."""
    if folder is None or str(folder) == "":
        raise CheckpointError(
            f"automatic masks need the SAM3 weights folder (the facebook/sam3 layout); {WEIGHTS_HINT}"
        )
    path = Path(folder).expanduser().resolve()
    if not path.is_dir():
        raise CheckpointError(f"SAM3 folder {path} does not exist; {WEIGHTS_HINT}")
    missing = _missing_files(path)
    if missing:
        raise CheckpointError(f"SAM3 folder {path} lacks {', '.join(missing)}; {WEIGHTS_HINT}")
    return path


def _read_preprocessing(folder: Path) -> tuple[FramePreprocessing, FramePreprocessing]:
    """(video, image) preprocessing from ``processor_config.json`` or the older per-processor files."""
    combined = folder / "processor_config.json"
    if combined.is_file():
        config = _read_json(combined)
        image = config.get("image_processor", {})
        video = config.get("video_processor", image)
        return (
            FramePreprocessing.from_config(video, str(combined)),
            FramePreprocessing.from_config(image, str(combined)),
        )
    image_file = folder / "preprocessor_config.json"
    video_file = folder / "video_preprocessor_config.json"
    image = _read_json(image_file) if image_file.is_file() else {}
    video = _read_json(video_file) if video_file.is_file() else image
    return (
        FramePreprocessing.from_config(video, str(video_file)),
        FramePreprocessing.from_config(image, str(image_file)),
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not readable JSON ({exc})") from exc


def load_sam3(
    folder: str | os.PathLike[str] | None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Sam3Segmenter:
    """Load SAM3 from ``folder`` onto ``device``; only local files are read (``local_files_only``, hub offline)."""
    path = check_sam3_folder(folder)
    # Nothing here may reach the network: the folder is all there is.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer, Sam3VideoConfig, Sam3VideoModel

    try:
        config = Sam3VideoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{path / 'config.json'}: not a SAM3 video config ({exc})") from exc
    if getattr(config, "model_type", None) != "sam3_video":
        raise CheckpointError(
            f"{path / 'config.json'}: model_type is {config.model_type!r}, expected 'sam3_video'"
        )
    try:
        model = Sam3VideoModel.from_pretrained(path, config=config, local_files_only=True, dtype=dtype)
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise CheckpointError(f"{path}: the SAM3 weights do not load ({str(exc).splitlines()[0]})") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: the SAM3 tokenizer does not load ({exc})") from exc
    video_preprocessing, image_preprocessing = _read_preprocessing(path)
    device = torch.device(device)
    model = model.to(device).eval()
    return Sam3Segmenter(path, model, tokenizer, video_preprocessing, image_preprocessing, device, dtype)
