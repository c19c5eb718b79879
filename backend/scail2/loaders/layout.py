"""Find the SCAIL-2 component files in a checkpoint folder.

Supported folder layouts (each component is looked up independently, so they mix):

* **official** — the Hugging Face repo ``zai-org/SCAIL-2``::

      model/1/fsdp2_rank_0000_checkpoint.pt      DiT, SAT keys under "module" (model/latest names the "1")
      model/bias-aware-dpo-lora.pt, model/relighting-lora.pt    SAT-format LoRAs
      Wan2.1_VAE.pth
      umt5-xxl/models_t5_umt5-xxl-enc-bf16.pth + spiece.model / tokenizer.json
      models_clip_open-clip-xlm-roberta-large-vit-huge-14-onlyvisual.pth

* **converted** — a single-file DiT in Wan key names (``convert.py`` output, any ``*.safetensors`` at the top level
  or under ``diffusion_models/``, e.g. Comfy-Org's ``wan2.1_14B_SCAIL_2_fp16.safetensors``), with or without a
  ``diffusion_model.`` / ``model.diffusion_model.`` key prefix.
* **diffusers encoders** — Wan2.1-I2V-Diffusers folders ``text_encoder/``, ``tokenizer/``, ``image_encoder/``,
  ``vae/`` as the source of the shared parts when the official encoder files are absent.

LoRAs come from ``model/*.pt|safetensors`` and ``loras/``; the canonical names ``lightx2v``, ``dpo`` and ``relight``
are recognised from file names, other files are named by their stem.

A checkpoint whose components are not the 14B ones says so in ``scail2_config.json`` (:data:`MODEL_CONFIG_FILE`):
sections ``dit``, ``t5``, ``clip``, ``vae`` hold official constructor arguments for the components stored in
official formats (diffusers/transformers folders carry their own ``config.json``), ``name`` and ``note`` describe
the model, and ``untrained: true`` marks random test weights (``python -m backend.scail2.tiny`` writes such
folders). Without the file every component has the released 14B configuration.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import CheckpointError

__all__ = [
    "CLIP_FILE",
    "ComponentSource",
    "CheckpointLayout",
    "SAT_DIT_FILE",
    "T5_FILE",
    "MODEL_CONFIG_FILE",
    "ModelConfig",
    "VAE_FILE",
    "canonical_lora_name",
    "read_model_config",
    "resolve_checkpoint",
]

SAT_DIT_FILE = "fsdp2_rank_0000_checkpoint.pt"
VAE_FILE = "Wan2.1_VAE.pth"
T5_DIR = "umt5-xxl"
T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
CLIP_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14-onlyvisual.pth"
MODEL_CONFIG_FILE = "scail2_config.json"
COMPONENT_SECTIONS = ("dit", "t5", "clip", "vae")

LORA_SUFFIXES = (".safetensors", ".pt", ".pth")
# Quantised ComfyUI DiT files carry ComfyUI-specific scale tensors; only the fp16/bf16/fp32 files load here.
_QUANTIZED_MARKERS = ("fp8", "mxfp8", "nvfp4", "int8", "gguf")
# Keys that identify a SCAIL-2 DiT file (after any prefix): the pose stream exists in no other model.
_DIT_MARKER_KEYS = ("patch_embedding_pose.weight", "pose_patch_embedding.weight")
_DIT_PREFIXES = ("", "diffusion_model.", "model.diffusion_model.")


@dataclass(frozen=True)
class ComponentSource:
    """Where one encoder comes from: an official single file, or a diffusers/transformers folder."""

    format: Literal["official", "diffusers"]
    path: Path  # the .pth/.safetensors file (official) or the folder (diffusers)


@dataclass(frozen=True)
class CheckpointLayout:
    """The resolved files of one checkpoint folder. ``configs`` maps "dit"/"t5"/"clip"/"vae" to official
    constructor arguments when ``scail2_config.json`` gives them; a missing entry means the 14B configuration.
    ``name``/``note`` describe a model that is not the released SCAIL-2; ``untrained`` marks random test weights."""

    root: Path
    dit: Path
    dit_format: Literal["sat", "wan"]  # SAT training checkpoint, or single file in Wan key names
    text_encoder: ComponentSource
    tokenizer: Path
    image_encoder: ComponentSource
    vae: ComponentSource
    loras: dict[str, Path] = field(default_factory=dict)
    configs: dict[str, dict] = field(default_factory=dict)
    untrained: bool = False
    name: str = ""
    note: str = ""

    def weight_files(self) -> list[Path]:
        """Every weights file this layout uses: the DiT, the encoders and VAE given as official single files, and
        the LoRAs (diffusers folders are read whole when they load)."""
        files = [self.dit]
        files += [s.path for s in (self.text_encoder, self.image_encoder, self.vae) if s.format == "official"]
        return files + list(self.loras.values())

    def describe(self) -> str:
        label = " (UNTRAINED test checkpoint)" if self.untrained else (f" ({self.name})" if self.name else "")
        lines = [f"checkpoint {self.root}{label}"]
        lines.append(f"  dit ({self.dit_format}): {self.dit}")
        lines.append(f"  text encoder ({self.text_encoder.format}): {self.text_encoder.path}")
        lines.append(f"  tokenizer: {self.tokenizer}")
        lines.append(f"  image encoder ({self.image_encoder.format}): {self.image_encoder.path}")
        lines.append(f"  vae ({self.vae.format}): {self.vae.path}")
        for name, path in self.loras.items():
            lines.append(f"  lora {name}: {path}")
        return "\n".join(lines)


def canonical_lora_name(path: Path) -> str:
    """``lightx2v``, ``dpo`` or ``relight`` when the file name says so, otherwise the lower-case file stem."""
    stem = path.name
    for suffix in LORA_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    lowered = stem.lower()
    if "lightx2v" in lowered:
        return "lightx2v"
    if "dpo" in lowered:
        return "dpo"
    if "relight" in lowered:
        return "relight"
    return lowered


class _Search:
    """Collects what was looked for, so a missing component's error lists every place tried."""

    def __init__(self, roots: Sequence[Path]):
        self.roots = roots
        self.tried: list[str] = []

    def file(self, *relative: str) -> Path | None:
        for root in self.roots:
            path = root.joinpath(*relative)
            self.tried.append(str(path))
            if path.is_file():
                return path
        return None

    def folder(self, relative: str, *required_any: str) -> Path | None:
        for root in self.roots:
            path = root / relative
            self.tried.append(f"{path}/ (with {' or '.join(required_any)})")
            if path.is_dir() and any((path / name).is_file() for name in required_any):
                return path
        return None

    def fail(self, component: str, hint: str) -> CheckpointError:
        tried = "\n  ".join(self.tried)
        return CheckpointError(f"{component} not found. Looked for:\n  {tried}\n{hint}")


def _safetensors_keys(path: Path) -> list[str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return list(handle.keys())
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc}); download it again") from exc


def _is_dit_file(path: Path) -> bool:
    keys = set(_safetensors_keys(path))
    return any(prefix + marker in keys for prefix in _DIT_PREFIXES for marker in _DIT_MARKER_KEYS)


def _find_dit(roots: Sequence[Path]) -> tuple[Path, Literal["sat", "wan"]]:
    search = _Search(roots)
    for root in roots:
        model_dir = root / "model"
        latest = model_dir / "latest"
        iterations: list[str] = []
        if latest.is_file():
            iterations.append(latest.read_text().strip())
        iterations.append("1")
        for iteration in dict.fromkeys(iterations):
            found = search.file("model", iteration, SAT_DIT_FILE)
            if found:
                return found, "sat"
        if model_dir.is_dir():
            for candidate in sorted(model_dir.glob(f"*/{SAT_DIT_FILE}")):
                return candidate, "sat"
    skipped_quantized: list[Path] = []
    for root in roots:
        for folder in (root, root / "diffusion_models"):
            search.tried.append(f"{folder}/*.safetensors (a SCAIL-2 DiT in Wan key names)")
            if not folder.is_dir():
                continue
            for candidate in sorted(folder.glob("*.safetensors")):
                if any(marker in candidate.name.lower() for marker in _QUANTIZED_MARKERS):
                    skipped_quantized.append(candidate)
                    continue
                if _is_dit_file(candidate):
                    return candidate, "wan"
    hint = (
        "Download the official checkpoint (hf download zai-org/SCAIL-2 --local-dir DIR) or put a "
        "converted DiT (convert.py output, or Comfy-Org's wan2.1_14B_SCAIL_2_fp16.safetensors) in DIR/diffusion_models/."
    )
    if skipped_quantized:
        hint += f" Quantised ComfyUI files are not supported: {[p.name for p in skipped_quantized]}."
    raise search.fail("SCAIL-2 DiT", hint)


def _find_t5(roots: Sequence[Path]) -> tuple[ComponentSource, Path]:
    search = _Search(roots)
    weights = search.file(T5_DIR, T5_FILE)
    source: ComponentSource | None = ComponentSource("official", weights) if weights else None
    if source is None:
        folder = search.folder("text_encoder", "config.json")
        if folder:
            source = ComponentSource("diffusers", folder)
    if source is None:
        raise search.fail(
            "umT5 text encoder",
            f"Expected the official {T5_DIR}/{T5_FILE} (zai-org/SCAIL-2) or a diffusers text_encoder/ folder "
            "(Wan-AI/Wan2.1-I2V-14B-480P-Diffusers).",
        )
    tokenizer_search = _Search(roots)
    for relative in (T5_DIR, "tokenizer", "google/umt5-xxl"):
        tokenizer = tokenizer_search.folder(relative, "tokenizer.json", "spiece.model")
        if tokenizer:
            return source, tokenizer
    raise tokenizer_search.fail(
        "umT5 tokenizer", f"The tokenizer files (spiece.model, tokenizer.json) ship in {T5_DIR}/ of zai-org/SCAIL-2."
    )


def _find_official_or_diffusers(
    roots: Sequence[Path], official_file: str, diffusers_folder: str, what: str, hint: str
) -> ComponentSource:
    """The official single-file weights, else a diffusers sub-folder with its ``config.json``."""
    search = _Search(roots)
    weights = search.file(official_file)
    if weights:
        return ComponentSource("official", weights)
    folder = search.folder(diffusers_folder, "config.json")
    if folder:
        return ComponentSource("diffusers", folder)
    raise search.fail(what, hint)


def _lora_files(folder: Path) -> Iterable[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(LORA_SUFFIXES))


def _find_loras(roots: Sequence[Path], dit: Path) -> dict[str, Path]:
    loras: dict[str, Path] = {}
    for root in roots:
        for folder in (root / "model", root / "loras"):
            for path in _lora_files(folder):
                if path == dit:
                    continue
                name = canonical_lora_name(path)
                if name in loras:  # a second file for the same role keeps its own stem as name
                    name = path.stem.lower()
                loras.setdefault(name, path)
    return loras


@dataclass(frozen=True)
class ModelConfig:
    """What ``scail2_config.json`` declares (all empty when the folder has none)."""

    configs: dict[str, dict] = field(default_factory=dict)
    untrained: bool = False
    name: str = ""
    note: str = ""


def read_model_config(root: Path) -> ModelConfig:
    """Parse ``root/scail2_config.json``; a malformed file fails with what to fix."""
    path = root / MODEL_CONFIG_FILE
    if not path.is_file():
        return ModelConfig()
    try:
        data = json.loads(path.read_text())
    except Exception as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: must hold a JSON object")
    configs = {}
    for section in COMPONENT_SECTIONS:
        if section in data:
            if not isinstance(data[section], dict):
                raise CheckpointError(f"{path}: '{section}' must be an object of constructor arguments")
            configs[section] = data[section]
    untrained = data.get("untrained", False)
    if not isinstance(untrained, bool):
        raise CheckpointError(f"{path}: 'untrained' must be true or false, got {untrained!r}")
    name, note = data.get("name", ""), data.get("note", "")
    if not isinstance(name, str) or not isinstance(note, str):
        raise CheckpointError(f"{path}: 'name' and 'note' must be strings")
    return ModelConfig(configs, untrained, name, note)


def resolve_checkpoint(root: str | Path, extra_roots: Sequence[str | Path] = ()) -> CheckpointLayout:
    """Resolve every component of the checkpoint folder ``root``.

    ``extra_roots`` are further folders searched, after ``root``, for components ``root`` lacks (e.g. a
    Wan2.1-I2V-Diffusers download for the encoders). Raises :class:`CheckpointError` listing, for a missing
    component, every path that was looked at.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise CheckpointError(f"{root}: checkpoint folder not found")
    roots = [root, *(Path(r).expanduser() for r in extra_roots)]
    dit, dit_format = _find_dit(roots)
    text_encoder, tokenizer = _find_t5(roots)
    model = read_model_config(root)
    return CheckpointLayout(
        root=root,
        dit=dit,
        dit_format=dit_format,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        image_encoder=_find_official_or_diffusers(
            roots,
            CLIP_FILE,
            "image_encoder",
            "CLIP image encoder",
            f"Expected the official {CLIP_FILE} (zai-org/SCAIL-2) or a diffusers image_encoder/ folder.",
        ),
        vae=_find_official_or_diffusers(
            roots, VAE_FILE, "vae", "Wan2.1 VAE", f"Expected the official {VAE_FILE} or a diffusers vae/ folder."
        ),
        loras=_find_loras(roots, dit),
        configs=model.configs,
        untrained=model.untrained,
        name=model.name,
        note=model.note,
    )
