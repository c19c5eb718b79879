"""SCAIL-2 inference engine (torch, diffusers, transformers). Never imported by Blender-side code.

The contract names of docs/ARCHITECTURE.md are importable from here. They load lazily, so importing the package
(e.g. for its error types) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .errors import CheckpointError, GenerationCancelled, Scail2Error, Scail2InputError

_LAZY_EXPORTS = {
    "Scail2Pipeline": "pipeline",
    "ProgressEvent": "pipeline",
    "WindowResult": "pipeline",
    "GenerationResult": "pipeline",
    "GenerationRequest": "conditioning",
    "ExtraReference": "conditioning",
    "VideoClip": "media",
    "SamplingSettings": "presets",
    "PRESETS": "presets",
    "write_frames_atomic": "output",
}

__all__ = [
    "CheckpointError",
    "ExtraReference",
    "GenerationCancelled",
    "GenerationRequest",
    "GenerationResult",
    "PRESETS",
    "ProgressEvent",
    "SamplingSettings",
    "Scail2Error",
    "Scail2InputError",
    "Scail2Pipeline",
    "VideoClip",
    "WindowResult",
    "write_frames_atomic",
]

if TYPE_CHECKING:
    from .conditioning import ExtraReference, GenerationRequest
    from .media import VideoClip
    from .output import write_frames_atomic
    from .pipeline import GenerationResult, ProgressEvent, Scail2Pipeline, WindowResult
    from .presets import PRESETS, SamplingSettings


def __getattr__(name: str):
    if name in _LAZY_EXPORTS:
        value = getattr(importlib.import_module(f".{_LAZY_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
