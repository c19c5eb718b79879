"""Parity of the encoders against golden fixture sets laid out like ``tests/data/parity/{t5,clip,vae}``.

Each check reads the set's ``config.json`` (official constructor arguments), loads ``state_dict.safetensors`` (official
keys) through the real loaders and key conversions, runs the encoder on the inputs in ``io.safetensors`` and
returns one record per case: ``{"set", "case", "max_rel_err", "tol", "ok"}`` with
``rel = max|yours - ref| / max(1, max|ref|)``. Shapes come from the files, so fixtures of other sizes work too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..errors import CheckpointError
from ..loaders.weights import open_state_dict, read_json
from ..models.image_encoder import ClipImageEncoder, ClipVisionConfig, preprocess_clip_image
from ..models.text_encoder import T5EncoderConfig, build_umt5, convert_official_t5_keys
from ..models.vae import WanVAEConfig, WanVideoVAE

__all__ = ["ENCODER_TOLERANCE", "check_clip_fixture", "check_t5_fixture", "check_vae_fixture"]

# The fixture README recommends rel <= 1e-4 for t5, clip and vae.
ENCODER_TOLERANCE = 1e-4


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.double(), expected.double()
    return float((actual - expected).abs().max() / max(1.0, float(expected.abs().max())))


def _record(set_dir: Path, case: str, actual: torch.Tensor, expected: torch.Tensor, tol: float) -> dict[str, Any]:
    if tuple(actual.shape) != tuple(expected.shape):
        raise CheckpointError(
            f"{set_dir}: case {case!r} produced shape {list(actual.shape)}, fixture expects {list(expected.shape)}"
        )
    error = _relative_error(actual, expected)
    return {"set": set_dir.name, "case": case, "max_rel_err": error, "tol": tol, "ok": error <= tol}


def _load_set(set_dir: str | Path) -> tuple[Path, dict, dict[str, torch.Tensor]]:
    set_dir = Path(set_dir)
    config = read_json(set_dir / "config.json")
    if "constructor_args" not in config:
        raise CheckpointError(f"{set_dir / 'config.json'}: lacks 'constructor_args'")
    io_path = set_dir / "io.safetensors"
    try:
        io = load_file(str(io_path))
    except Exception as exc:
        raise CheckpointError(f"{io_path}: cannot read fixture tensors ({exc})") from exc
    return set_dir, config, io


def _require(io: dict[str, torch.Tensor], set_dir: Path, *keys: str) -> None:
    absent = [k for k in keys if k not in io]
    if absent:
        raise CheckpointError(f"{set_dir / 'io.safetensors'}: lacks tensors {absent}")


@torch.no_grad()
def check_t5_fixture(set_dir: str | Path, tol: float = ENCODER_TOLERANCE) -> list[dict[str, Any]]:
    """umT5: ``<prefix>context_<i>`` (trimmed rows) and ``<prefix>output_full`` for each ``<prefix>ids`` /
    ``<prefix>mask`` pair in ``io.safetensors`` (prefixes "" and "long_" in the shipped set)."""
    set_dir, config, io = _load_set(set_dir)
    t5_config = T5EncoderConfig.from_official_args(config["constructor_args"])
    state = convert_official_t5_keys(open_state_dict(set_dir / "state_dict.safetensors"))
    model = build_umt5(t5_config.to_transformers(), state, dtype=torch.float32, device="cpu")

    records = []
    prefixes = sorted(k[: -len("ids")] for k in io if k.endswith("ids"))
    for prefix in prefixes:
        _require(io, set_dir, prefix + "mask")
        ids, mask = io[prefix + "ids"], io[prefix + "mask"]
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
        if prefix + "output_full" in io:
            records.append(_record(set_dir, prefix + "output_full", hidden, io[prefix + "output_full"], tol))
        lengths = mask.gt(0).sum(dim=1).tolist()
        for key in sorted(io):
            match = re.fullmatch(re.escape(prefix) + r"context_(\d+)", key)
            if match:
                row = int(match.group(1))
                records.append(_record(set_dir, key, hidden[row, : lengths[row]], io[key], tol))
    if not records:
        raise CheckpointError(f"{set_dir / 'io.safetensors'}: no ids/context tensors to compare")
    return records


@torch.no_grad()
def check_clip_fixture(set_dir: str | Path, tol: float = ENCODER_TOLERANCE) -> list[dict[str, Any]]:
    """CLIP: the official preprocessing (``preprocessed``) and the penultimate-block tokens (``output``)."""
    set_dir, config, io = _load_set(set_dir)
    _require(io, set_dir, "image", "output")
    clip_config = ClipVisionConfig.from_official_args(config["constructor_args"])
    encoder = ClipImageEncoder.from_official(set_dir / "state_dict.safetensors", clip_config, dtype=torch.float32)
    records = []
    pixels = preprocess_clip_image(io["image"], clip_config.image_size)
    if "preprocessed" in io:
        records.append(_record(set_dir, "preprocessed", pixels, io["preprocessed"], tol))
    records.append(_record(set_dir, "output", encoder.encode(io["image"]), io["output"], tol))
    return records


@torch.no_grad()
def check_vae_fixture(set_dir: str | Path, tol: float = ENCODER_TOLERANCE) -> list[dict[str, Any]]:
    """Wan VAE: ``encode`` (``video`` -> ``latent_encoded``) and ``decode`` (``latent_in`` -> ``video_decoded``)."""
    set_dir, config, io = _load_set(set_dir)
    _require(io, set_dir, "video", "latent_encoded", "latent_in", "video_decoded")
    args = dict(config["constructor_args"])
    for key in ("latent_mean", "latent_std"):
        if key in config:
            args[key] = config[key]
    vae = WanVideoVAE.from_official(set_dir / "state_dict.safetensors", WanVAEConfig.from_official_args(args))
    return [
        _record(set_dir, "encode", vae.encode(io["video"]), io["latent_encoded"], tol),
        _record(set_dir, "decode", vae.decode(io["latent_in"]), io["video_decoded"], tol),
    ]
