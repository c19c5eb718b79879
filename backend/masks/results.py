"""What a mask run produced: the painted mask, its identities (colour, track, position) and its check."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from backend.scail2.conditioning.masks import PALETTE_NAMES
from backend.scail2.conditioning.media import VideoClip

from .check import MaskCheck
from .tracking import Track


@dataclass
class Identity:
    """One coloured subject of a mask, for reports and for matching the reference to the driving clip."""

    colour: str
    track_id: int
    prompt: str
    first_frame: int
    centroid_x: float
    area_fraction: float

    def as_dict(self) -> dict[str, object]:
        return {
            "colour": self.colour,
            "track_id": self.track_id,
            "prompt": self.prompt,
            "first_frame": self.first_frame,
            "centroid_x": round(self.centroid_x, 4),
            "area_fraction": round(self.area_fraction, 4),
        }


@dataclass
class MaskResult:
    """A painted mask (``clip`` for driving masks, ``image`` for reference masks) and what went into it."""

    identities: list[Identity]
    check: MaskCheck
    clip: VideoClip | None = None
    image: np.ndarray | None = None
    source: str = "sam3"
    warnings: list[str] = field(default_factory=list)


def describe_identities(identities: list[Track], colours: list[int]) -> list[Identity]:
    return [
        Identity(
            PALETTE_NAMES[colour],
            track.track_id,
            track.prompt,
            track.first_frame,
            track.first_centroid_x(),
            track.mean_area_fraction(),
        )
        for track, colour in zip(identities, colours, strict=True)
    ]
