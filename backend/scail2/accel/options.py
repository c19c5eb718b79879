"""The performance settings as command-line flags, and the one place a loaded pipeline is prepared with them.

Both ``scail-worker serve`` and ``scail2-generate`` add the same flags (`add_performance_arguments`); a flag left
out keeps the default of the GPU's memory class (`PerformanceSettings.for_device`, docs/PERFORMANCE.md).

fp8 linears and LoRAs: a LoRA is fused into a linear's bf16 weight, and the fp8 conversion drops that weight, so
the LoRA strengths in force at conversion are the only ones the model can ever run with. `prepare_pipeline` fuses
the chosen set first, converts, then replaces the pipeline's LoRA manager by `PinnedLoras`, which accepts exactly
that set and refuses any other with a `PinnedLorasError` naming ``loras`` (instead of failing deep inside the
fuser on weights that no longer exist).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import Scail2InputError
from . import ATTENTION_CHOICES, AccelerationState, PerformanceSettings, apply_to_pipeline

# Flag name -> PerformanceSettings field, for the flags that map one to one.
_BOOLEAN_FLAGS = {
    "strided_attention": ("--strided-attention", "hand cuDNN/SDPA strided q/k/v views (no gain measured on H100)"),
    "fp8_linear": ("--fp8", "fp8 e4m3 linears in the transformer blocks (sm89+; CPU emulates them). Pins the "
                   "LoRA strengths at start: they are fused before the conversion"),
    "compile_blocks": ("--compile", "regional torch.compile of the transformer block (GPU default; the first "
                       "window at each size pays the compile)"),
    "low_vram": ("--low-vram", "stream the transformer blocks from pinned host memory (default below 60 GiB)"),
    "vae_tiling": ("--vae-tiling", "spatially tiled VAE encode/decode (default on 24 GB cards)"),
}
PERFORMANCE_FIELDS = ("attention_backend", "cross_attention_backend", *_BOOLEAN_FLAGS, "offload_encoders")
# --dtype spellings both command lines accept: the short ones and torch's own names.
DTYPE_NAMES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16",
               "fp32": "float32", "float32": "float32"}


def add_dtype_argument(parser: argparse.ArgumentParser) -> None:
    """``--dtype``, with one spelling set for ``scail2-generate`` and ``scail-worker``."""
    parser.add_argument("--dtype", choices=list(DTYPE_NAMES), default=None,
                        help="weight dtype: bf16 (= bfloat16), fp16 (= float16) or fp32 (= float32); default bf16 "
                        "on a GPU, fp32 on the CPU")


def resolve_dtype(name: str | None, device: torch.device | str) -> str:
    """torch's name of the ``--dtype`` given (any accepted spelling), or of the device's default."""
    if name is None:
        return "bfloat16" if torch.device(device).type == "cuda" else "float32"
    return DTYPE_NAMES[name]


def add_performance_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Add the performance flags; each defaults to None, meaning "the default of this GPU's memory class"."""
    group = parser.add_argument_group(
        "performance", "defaults come from the GPU's memory (24/48/80/141 GB classes, docs/PERFORMANCE.md); the CPU "
        "runs the reference path (no compile, no streaming)")
    group.add_argument("--attention-backend", choices=ATTENTION_CHOICES, default=None,
                       help="self-attention kernel (default auto: probed at start)")
    group.add_argument("--cross-attention-backend", choices=("same", *ATTENTION_CHOICES[1:]), default=None,
                       help="kernel for the cross-attention over the 769 context tokens (default same)")
    for field, (flag, help_text) in _BOOLEAN_FLAGS.items():
        group.add_argument(flag, dest=field, action=argparse.BooleanOptionalAction, default=None, help=help_text)
    encoders = group.add_mutually_exclusive_group()
    encoders.add_argument("--offload-encoders", dest="offload_encoders", action="store_const", const=True,
                          default=None, help="park umT5 and CLIP in pinned host memory between jobs (default "
                          "below 100 GiB)")
    encoders.add_argument("--keep-encoders", dest="offload_encoders", action="store_const", const=False,
                          help="keep umT5 and CLIP on the GPU (default on 141 GB cards)")
    return group


def performance_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The performance fields the command line set explicitly."""
    return {field: getattr(args, field) for field in PERFORMANCE_FIELDS if getattr(args, field, None) is not None}


def settings_for(device: torch.device | str, args: argparse.Namespace) -> PerformanceSettings:
    """The memory class defaults of ``device`` with the command line's explicit flags on top."""
    return PerformanceSettings.for_device(device, **performance_overrides(args))


def transformer_load_device(settings: PerformanceSettings, device: torch.device | str) -> str | None:
    """Where ``Scail2Pipeline.from_pretrained`` should load the DiT (its ``transformer_device``) for ``settings``:
    the CPU when its blocks will stream from host memory (low-VRAM cards cannot hold the bf16 weights even
    briefly), else None (straight onto ``device``)."""
    return "cpu" if settings.low_vram and torch.device(device).type == "cuda" else None


# -- LoRA sets ---------------------------------------------------------------------------------------------------


def active_loras(loras: Mapping[str, float]) -> dict[str, float]:
    """Name -> strength of the LoRAs that change the weights (strength 0 means "not fused")."""
    return {name: float(strength) for name, strength in loras.items() if float(strength) != 0.0}


def format_loras(loras: Mapping[str, float]) -> str:
    """``lightx2v=0.8,dpo=1.0`` (the ``--loras`` syntax), or ``none``."""
    active = active_loras(loras)
    return ",".join(f"{name}={strength:g}" for name, strength in sorted(active.items())) or "none"


def parse_loras(text: str) -> dict[str, float]:
    """``--loras`` value: ``NAME=STRENGTH[,NAME=STRENGTH...]`` or ``none``; ValueError naming the bad part."""
    if text.strip().lower() in ("none", ""):
        return {}
    loras: dict[str, float] = {}
    for part in text.split(","):
        name, sep, strength = part.partition("=")
        name = name.strip()
        try:
            value = float(strength)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise ValueError(f"{part!r} is not NAME=STRENGTH (e.g. lightx2v=0.8,dpo=1.0, or none)")
        if not -4.0 <= value <= 4.0:
            raise ValueError(f"LoRA {name!r} strength {value:g} is outside [-4, 4]")
        loras[name] = value
    return loras


class PinnedLorasError(Scail2InputError):
    """A request asks for LoRA strengths other than the ones fused before the fp8 conversion."""

    def __init__(self, message: str, requested: Mapping[str, float], pinned: Mapping[str, float]):
        super().__init__(message, field="loras")
        self.requested = dict(requested)
        self.pinned = dict(pinned)


def check_pinned_loras(requested: Mapping[str, float], pinned: Mapping[str, float], preset: str | None = None,
                       restart_hint: str = "restart without --fp8 to change LoRAs per job") -> None:
    """Raise `PinnedLorasError` unless ``requested`` fuses exactly the ``pinned`` strengths (zeros ignored).

    ``preset``: the preset that filled ``requested`` in (no explicit LoRAs), named in the message.
    """
    wanted, fixed = active_loras(requested), active_loras(pinned)
    if wanted == fixed:
        return
    source = f"the {preset!r} preset's LoRAs" if preset else "the requested LoRAs"
    raise PinnedLorasError(
        f"{source} ({format_loras(wanted)}) differ from the ones this model was converted to fp8 with "
        f"({format_loras(fixed)}): fp8 layers keep no bf16 weight to fuse other strengths into. Ask for exactly "
        f"{format_loras(fixed)} (loras {dict(sorted(fixed.items()))}), or {restart_hint}.",
        requested=wanted, pinned=fixed,
    )


class PinnedLoras:
    """The pipeline's LoRA manager once the fp8 conversion has frozen the fused weights.

    ``Scail2Pipeline.set_loras`` calls ``apply({name: (file, strength)})`` before every generation; this accepts
    the pinned set (nothing to do: it is already in the weights) and raises `PinnedLorasError` for anything else.
    """

    def __init__(self, strengths: Mapping[str, float]):
        self.strengths = active_loras(strengths)

    @property
    def fused(self) -> dict[str, float]:
        return dict(self.strengths)

    def apply(self, loras: Mapping[str, tuple[Any, float]]) -> None:
        check_pinned_loras({name: strength for name, (_, strength) in loras.items()}, self.strengths)


def prepare_pipeline(pipe: Any, settings: PerformanceSettings, loras: Mapping[str, float] | None = None,
                     preset: str | None = None) -> AccelerationState:
    """Fuse ``loras`` (None: leave the fused set as it is), then apply ``settings`` (`apply_to_pipeline`).

    With ``settings.fp8_linear`` the LoRAs fused at conversion are pinned (`PinnedLoras`); read them back from
    ``pinned_loras(pipe)``. Raises `Scail2InputError` for a LoRA the checkpoint lacks (``preset``: the preset
    that chose ``loras``, for the message).
    """
    if loras is not None:
        pipe.set_loras(dict(loras), preset)
    fused = dict(pipe.lora_manager.fused) if pipe.lora_manager is not None else {}
    state = apply_to_pipeline(pipe, settings)
    if settings.fp8_linear:
        pipe.lora_manager = PinnedLoras(fused)
    return state


def performance_report(pipe: Any, state: AccelerationState) -> dict[str, Any]:
    """``state.to_dict()`` plus ``pinned_loras``, with the two switches the device can overrule shown as they
    took effect: on the CPU nothing is parked or streamed, whatever the settings say."""
    report = state.to_dict()
    report["offload_encoders"] = bool(pipe.offload_encoders)
    report["low_vram"] = state.streamer is not None
    report["pinned_loras"] = pinned_loras(pipe)
    return report


def pinned_loras(pipe: Any) -> dict[str, float] | None:
    """The LoRA strengths ``pipe`` is pinned to (fp8), or None when jobs may change them."""
    manager = getattr(pipe, "lora_manager", None)
    return manager.fused if isinstance(manager, PinnedLoras) else None
