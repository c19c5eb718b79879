"""SCAIL-2 inference engine (torch, diffusers, transformers). Never imported by Blender-side code.

The contract names of docs/ARCHITECTURE.md are importable from here. They load lazily, so importing the package
(e.g. for its error types) does not import torch. The sub-packages group the engine by what each part is
(``models``, ``loaders``, ``conditioning``, ``schedulers``, ``pipelines``, ``accel``, ``parallel``, ``testing``);
docs/ARCHITECTURE.md ("Engine layout", "Layers") maps them and the order their imports follow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .errors import CheckpointError, GenerationCancelled, Scail2Error, Scail2InputError

_LAZY_EXPORTS = {
    "Scail2Pipeline": "pipelines.pipeline_scail2",
    "ProgressEvent": "pipelines.pipeline_scail2",
    "WindowResult": "pipelines.pipeline_scail2",
    "GenerationResult": "pipelines.pipeline_scail2",
    "GenerationRequest": "conditioning.request",
    "ExtraReference": "conditioning.request",
    "VideoClip": "conditioning.media",
    "SamplingSettings": "schedulers.presets",
    "PRESETS": "schedulers.presets",
    "write_frames_atomic": "pipelines.output",
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
    from .conditioning.media import VideoClip
    from .conditioning.request import ExtraReference, GenerationRequest
    from .pipelines.output import write_frames_atomic
    from .pipelines.pipeline_scail2 import GenerationResult, ProgressEvent, Scail2Pipeline, WindowResult
    from .schedulers.presets import PRESETS, SamplingSettings


def __getattr__(name: str):
    if name in _LAZY_EXPORTS:
        value = getattr(importlib.import_module(f".{_LAZY_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
