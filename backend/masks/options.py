"""The SAM3 options a job spec or a mask preview request may carry (pydantic only, no torch).

The worker's ``JobSpec`` inherits these fields; ``settings.MaskSettings.build`` turns them into settings.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class MaskOptions(BaseModel):
    """How ``"auto"`` masks are made; every field is optional and the defaults follow the mode."""

    model_config = ConfigDict(extra="forbid")

    mask_prompts: str | list[str] | None = Field(
        None, description="SAM3 text prompts naming the subjects, comma-separated; default 'person, character'"
    )
    mask_identities: int | None = Field(
        None, ge=1, le=6, description="most subjects to colour; default 2 (animation) or 1 (replacement)"
    )
    mask_colours: list[str] | None = Field(
        None, max_length=6, description="colour per subject, left to right (blue, red, green, magenta, cyan, yellow)"
    )
    mask_threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="SAM3 detection threshold; default: the checkpoint's"
    )

    @field_validator("mask_colours")
    @classmethod
    def _check_colours(cls, value: list[str] | None) -> list[str] | None:
        """Known, distinct palette colours, so a typo fails at submission rather than when the job runs."""
        if value is None:
            return value
        # The palette lives with the engine (torch): loaded only when colours are given.
        from .tracking import parse_colour

        indices = [parse_colour(colour) for colour in value]  # ValueError names the unknown colour
        if len(set(indices)) != len(indices):
            raise ValueError(f"mask_colours must be distinct, got {value}")
        return value


class MaskPreviewSpec(MaskOptions):
    """The JSON ``spec`` field of ``POST /v1/masks`` (file fields: ``reference`` and/or ``driving``)."""

    mode: Literal["animation", "replacement"] = "animation"
    fps: float | None = Field(None, gt=0.0, le=240.0, description="required when 'driving' is a zip of frames")
    frame_range: tuple[int, int] | None = Field(None, description="[start, end) of the driving frames to mask")

    @field_validator("frame_range")
    @classmethod
    def _check_frame_range(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and (value[0] < 0 or value[1] <= value[0]):
            raise ValueError(f"frame_range must be [start, end) with 0 <= start < end, got {list(value)}")
        return value
