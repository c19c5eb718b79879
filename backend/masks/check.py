"""Ambiguity check for colour masks: how many pixels the model would read as a different colour than meant.

The model turns a mask into colour classes by thresholding each channel at 225/255 (``compress_mask_to_latent``).
A channel is unambiguous when it is clearly on (>= 226) or clearly off (<= 29); every on/off combination of the
three channels is a palette colour, white or black, so a pixel is ambiguous exactly when one of its channels sits
in between -- what anti-aliased edges, JPEG/H.264 compression and colour management produce.

This is the engine's ``inspect_mask`` at a tolerance of 29 over every frame: a 300-frame full-HD mask takes seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from backend.scail2.conditioning.masks import BLACK, PALETTE_NAMES, WHITE, MaskReport, inspect_mask

# Each channel within 29 of 0 or 255: on means > 225 exactly as the model thresholds, off mirrors it.
UNAMBIGUOUS_TOLERANCE = 29
# Warn when more than this fraction of the pixels is ambiguous (a clean lossless mask has none).
DEFAULT_WARN_FRACTION = 0.005


@dataclass
class MaskCheck:
    """What ``check_mask`` found; ``warnings`` is empty for a clean mask."""

    ambiguous_fraction: float
    colour_fractions: dict[str, float]
    background: str | None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.warnings

    def as_dict(self) -> dict[str, object]:
        return {
            "ambiguous_fraction": self.ambiguous_fraction,
            "colour_fractions": self.colour_fractions,
            "background": self.background,
            "warnings": list(self.warnings),
        }


def classify_mask(mask: np.ndarray) -> MaskReport:
    """The engine's ``MaskReport`` for a [H, W, 3] or [T, H, W, 3] uint8 mask at tolerance 29, every frame."""
    return inspect_mask(mask, tolerance=UNAMBIGUOUS_TOLERANCE, max_frames=None)


def check_mask(
    mask: np.ndarray,
    expected_background: tuple[int, int, int] | None = None,
    warn_fraction: float = DEFAULT_WARN_FRACTION,
    name: str = "mask",
) -> MaskCheck:
    """Check a [H, W, 3] or [T, H, W, 3] uint8 mask; warn on ambiguous pixels and on the wrong background."""
    mask = np.asarray(mask)
    if mask.dtype != np.uint8 or mask.ndim not in (3, 4) or mask.shape[-1] not in (3, 4):
        raise ValueError(
            f"{name}: expected a [H, W, 3] or [T, H, W, 3] uint8 mask, got {mask.shape} {mask.dtype}"
        )
    report = classify_mask(mask)
    warnings = []
    if report.unmatched_fraction > warn_fraction:
        warnings.append(
            f"{name}: {report.unmatched_fraction:.2%} of the pixels are neither a palette colour "
            f"({', '.join(PALETTE_NAMES)}) nor white/black (each channel must be <= 29 or >= 226); anti-aliasing "
            "or lossy compression blurred it. Save masks as PNG or FFV1, render without anti-aliasing (filter "
            "size 0, 'Standard' view transform), or threshold it."
        )
    if report.border_white_fraction > report.border_black_fraction:
        background = "white"
    elif report.border_black_fraction > 0:
        background = "black"
    else:
        background = None
    if expected_background is not None:
        expected = (
            "white"
            if tuple(expected_background) == WHITE
            else "black"
            if tuple(expected_background) == BLACK
            else None
        )
        if expected is not None and background is not None and background != expected:
            warnings.append(
                f"{name}: the background is {background} but this mode expects {expected} (animation: reference on "
                "white, driving on black; replacement: the opposite); invert the background or switch the mode."
            )
    return MaskCheck(report.unmatched_fraction, report.colour_fractions, background, warnings)
