"""Automatic masks for one job: the reference and the driving clip made together, with matching colours.

This is the hook the worker and the CLIs call: give it what the job has (a reference image, a driving clip,
either or both), the settings, and a loaded SAM3 when any input needs segmentation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from backend.scail2.conditioning.media import VideoClip

from .driving import Progress, make_driving_mask
from .reference import has_useful_alpha, make_reference_mask
from .results import MaskResult
from .sam3_loader import Sam3Segmenter
from .settings import MaskSettings


@dataclass
class AutoMasks:
    """The masks made for a job; ``warnings`` collects every result's warnings plus cross-checks."""

    reference: MaskResult | None = None
    driving: MaskResult | None = None
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready summary (identities, checks, warnings) for previews and job logs."""

        def summary(result: MaskResult | None) -> dict[str, object] | None:
            if result is None:
                return None
            return {
                "source": result.source,
                "identities": [i.as_dict() for i in result.identities],
                "check": result.check.as_dict(),
                "warnings": list(result.warnings),
            }

        return {
            "reference": summary(self.reference),
            "driving": summary(self.driving),
            "warnings": list(self.warnings),
        }


def needs_sam3(reference: np.ndarray | None, driving: VideoClip | None) -> bool:
    """True when some input cannot be masked from alpha alone (driving clips always use SAM3)."""
    return driving is not None or (reference is not None and not has_useful_alpha(np.asarray(reference)))


def make_auto_masks(
    settings: MaskSettings,
    segmenter: Sam3Segmenter | None,
    reference: np.ndarray | None = None,
    driving: VideoClip | None = None,
    progress: Progress | None = None,
) -> AutoMasks:
    """Reference and/or driving masks with the same prompts, identity limit and colour order."""
    masks = AutoMasks()
    if reference is not None:
        masks.reference = make_reference_mask(reference, settings, segmenter)
    if driving is not None:
        if segmenter is None:
            from backend.scail2.errors import CheckpointError

            raise CheckpointError("automatic driving masks need SAM3: pass the SAM3 folder (--sam3 DIR)")
        masks.driving = make_driving_mask(segmenter, driving, settings, progress)
    for result in (masks.reference, masks.driving):
        if result is not None:
            masks.warnings.extend(result.warnings)
            masks.warnings.extend(result.check.warnings)
    if masks.reference is not None and masks.driving is not None:
        ref_colours = [i.colour for i in masks.reference.identities]
        drv_colours = [i.colour for i in masks.driving.identities]
        if ref_colours != drv_colours:
            masks.warnings.append(
                f"the reference mask has {ref_colours or 'no'} identities but the driving mask has "
                f"{drv_colours or 'none'}; colours must correspond (same subject, same colour). Adjust the prompts, "
                "max identities or colour overrides, or edit the masks."
            )
    return masks
