"""SCAIL-2 inference engine (torch, diffusers, transformers). Never imported by Blender-side code."""

from .errors import CheckpointError, GenerationCancelled, Scail2Error, Scail2InputError

__all__ = ["CheckpointError", "GenerationCancelled", "Scail2Error", "Scail2InputError"]
