"""Parity of :class:`SCAIL2Transformer` against a ``dit`` golden fixture set (layout of ``tests/data/parity/dit``).

Everything is derived from the set's files: ``config.json`` (official constructor arguments, ``clip_dim`` and
the case list), ``state_dict.safetensors`` (loaded through the real checkpoint loader) and one
``case_*.safetensors`` per case holding the inputs and the expected ``output``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..errors import CheckpointError
from ..models.transformer_scail2 import SCAIL2Transformer, config_from_official
from ..parallel import parallelize_from_environment

__all__ = ["DIT_TOLERANCE", "check_dit_fixture", "load_dit", "relative_error"]

# Recommended by the fixture README: rel <= 1e-4 (fp32 implementations land near 1e-6).
DIT_TOLERANCE = 1e-4
_REQUIRED_CASE_TENSORS = (
    "x",
    "t",
    "context",
    "clip_fea",
    "ref_latents",
    "ref_masks",
    "pose_latents",
    "driving_masks",
    "output",
)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``max|actual - expected| / max(1, max|expected|)``, the fixture README's measure."""
    actual, expected = actual.double(), expected.double()
    return float((actual - expected).abs().max() / max(1.0, float(expected.abs().max())))


def load_dit(path: Path, config: dict[str, Any]) -> SCAIL2Transformer:
    """The fixture's DiT through the real checkpoint loader, split across the processes when the parity command
    runs under torchrun (the launcher, not the model, applies the parallel plan; a no-op in one process)."""
    model = SCAIL2Transformer.from_single_file(path, config)
    parallelize_from_environment(model)
    return model


def _read_config(set_dir: Path) -> dict[str, Any]:
    path = set_dir / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: missing; a dit fixture set needs config.json") from exc
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc


def _case_inputs(case_path: Path, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | None]:
    absent = [k for k in _REQUIRED_CASE_TENSORS if k not in tensors]
    if absent:
        raise CheckpointError(f"{case_path}: lacks tensors {absent}")

    def batched(key: str) -> torch.Tensor | None:
        return tensors[key][None] if key in tensors else None

    clip = tensors["clip_fea"]
    return {
        "latents": batched("x"),
        "timestep": tensors["t"],
        "context": batched("context"),
        "clip_features": clip if clip.ndim == 3 else clip[None],
        "ref_latents": batched("ref_latents"),
        "ref_masks": batched("ref_masks"),
        "pose_latents": batched("pose_latents"),
        "driving_masks": batched("driving_masks"),
        "history_mask": batched("history_mask"),
        "extra_ref_latents": batched("additional_ref_latents"),
        "extra_ref_masks": batched("additional_ref_masks"),
    }


@torch.no_grad()
def check_dit_fixture(set_dir: str | Path, tolerance: float = DIT_TOLERANCE) -> list[dict[str, Any]]:
    """Run every case of a ``dit`` fixture set; one record per case:
    ``{"set", "case", "max_rel_err", "tol", "ok"}``."""
    set_dir = Path(set_dir)
    config = _read_config(set_dir)
    try:
        model_config = config_from_official(
            config["constructor_args"], clip_dim=int(config.get("clip_dim", 1280))
        )
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{set_dir / 'config.json'}: unusable constructor_args ({exc})") from exc
    model = load_dit(set_dir / "state_dict.safetensors", model_config)

    records = []
    for case_name, case in config.get("cases", {}).items():
        case_path = set_dir / case.get("file", f"case_{case_name}.safetensors")
        try:
            tensors = load_file(str(case_path))
        except Exception as exc:
            raise CheckpointError(f"{case_path}: cannot read case file ({exc})") from exc
        inputs = _case_inputs(case_path, tensors)
        output = model(**inputs, replace=bool(case["replace_flag"])).sample[0]
        expected = tensors["output"]
        if output.shape != expected.shape:
            raise CheckpointError(
                f"{case_path}: output shape {list(output.shape)} != expected {list(expected.shape)}"
            )
        error = relative_error(output, expected)
        records.append(
            {
                "set": set_dir.name,
                "case": case_name,
                "max_rel_err": error,
                "tol": tolerance,
                "ok": error <= tolerance,
            }
        )
    if not records:
        raise CheckpointError(f"{set_dir / 'config.json'}: lists no cases")
    return records
