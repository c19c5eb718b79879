"""From raw SAM3 tracks to identities: duplicates merged, small tracks dropped, identities ordered and coloured.

Pure logic on boolean masks (no model), shared by driving clips (many frames) and reference images (one frame):

1. ``merge_duplicate_tracks``: the same subject found by two prompts ("person" and "character") becomes one track.
2. ``drop_small_tracks``: tracks whose mean coverage over the frames they appear in is under 1% of the frame go,
   as in the official preprocessing.
3. ``select_identities``: at most N identities (2 for animation, 1 for replacement), the largest kept.
4. ``order_left_to_right``: identities sorted by the x of their centroid in the first frame they appear in, so
   crossing subjects keep the colour they started with.
5. ``identity_colours``: palette index per identity, left to right, overridable per identity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from backend.scail2.conditioning.masks import PALETTE_NAMES, PALETTE_RGB, Mode

# Official SCAIL preprocessing: ``max_persons`` 2 for animation, 1 for replacement.
DEFAULT_MAX_IDENTITIES: dict[str, int] = {"animation": 2, "replacement": 1}
MIN_AREA_FRACTION = 0.01
DUPLICATE_IOU = 0.7


@dataclass
class Track:
    """One tracked subject: a boolean mask per frame it appears in, all at the tracker's mask resolution."""

    track_id: int
    masks: dict[int, np.ndarray] = field(default_factory=dict)  # frame index -> bool [h, w]
    score: float = 0.0
    prompt: str = ""

    @property
    def first_frame(self) -> int:
        return min(self.masks)

    def mean_area_fraction(self) -> float:
        """Mean fraction of the frame covered, over the frames the track appears in."""
        return float(np.mean([mask.mean() for mask in self.masks.values()])) if self.masks else 0.0

    def first_centroid_x(self) -> float:
        """Normalised x (0 = left edge, 1 = right edge) of the centroid in the first frame the track appears in."""
        mask = self.masks[self.first_frame]
        columns = np.nonzero(mask)[1]
        return float((columns.mean() + 0.5) / mask.shape[1])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


def non_empty(tracks: Sequence[Track]) -> list[Track]:
    """Tracks with their empty frames removed, and tracks that never cover a pixel dropped."""
    cleaned = []
    for track in tracks:
        masks = {frame: mask for frame, mask in track.masks.items() if mask.any()}
        if masks:
            cleaned.append(Track(track.track_id, masks, track.score, track.prompt))
    return cleaned


def merge_duplicate_tracks(tracks: Sequence[Track], iou_threshold: float = DUPLICATE_IOU) -> list[Track]:
    """Merge tracks that are the same subject: mean IoU over their shared frames at least ``iou_threshold``.

    Larger tracks absorb smaller ones (frames only the smaller one has are added), so two prompts that both
    match a subject give one identity.
    """
    ordered = sorted(tracks, key=lambda t: (-t.mean_area_fraction(), t.track_id))
    kept: list[Track] = []
    for track in ordered:
        for owner in kept:
            shared = sorted(set(owner.masks) & set(track.masks))
            if shared and np.mean([_iou(owner.masks[f], track.masks[f]) for f in shared]) >= iou_threshold:
                for frame, mask in track.masks.items():
                    owner.masks.setdefault(frame, mask)
                owner.score = max(owner.score, track.score)
                break
        else:
            kept.append(Track(track.track_id, dict(track.masks), track.score, track.prompt))
    return kept


def drop_small_tracks(tracks: Sequence[Track], min_area_fraction: float = MIN_AREA_FRACTION) -> list[Track]:
    """Tracks whose mean coverage (over the frames they appear in) is at least ``min_area_fraction``."""
    return [track for track in tracks if track.masks and track.mean_area_fraction() >= min_area_fraction]


def select_identities(tracks: Sequence[Track], max_identities: int) -> list[Track]:
    """The ``max_identities`` largest tracks (mean coverage, then detection score, then id for ties)."""
    if max_identities < 1:
        raise ValueError(f"max_identities must be at least 1, got {max_identities}")
    ranked = sorted(tracks, key=lambda t: (-t.mean_area_fraction(), -t.score, t.track_id))
    return ranked[:max_identities]


def order_left_to_right(tracks: Sequence[Track]) -> list[Track]:
    """Tracks sorted by the centroid x in their own first frame (earlier first frame, then id, break ties)."""
    return sorted(tracks, key=lambda t: (t.first_centroid_x(), t.first_frame, t.track_id))


def parse_colour(value: int | str) -> int:
    """A palette index from an index (0-5) or a colour name (``blue``, ``red``, ...)."""
    if isinstance(value, str):
        name = value.strip().lower()
        if name.isdigit():
            value = int(name)
        elif name in PALETTE_NAMES:
            return PALETTE_NAMES.index(name)
        else:
            raise ValueError(f"unknown mask colour {value!r}; use one of {', '.join(PALETTE_NAMES)} or 0-5")
    if not 0 <= int(value) < len(PALETTE_RGB):
        raise ValueError(f"palette index must be 0-{len(PALETTE_RGB) - 1}, got {value}")
    return int(value)


def identity_colours(count: int, overrides: Sequence[int | str] | None = None) -> list[int]:
    """Palette index for each of ``count`` left-to-right identities: 0, 1, 2 ... unless overridden.

    ``overrides[i]`` sets identity i's colour (index or name); identities beyond the overrides take the first
    palette colours not used yet, so the colours stay distinct.
    """
    chosen = [parse_colour(value) for value in (overrides or [])]
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"identity colours must be distinct, got {[PALETTE_NAMES[c] for c in chosen]}")
    free = [index for index in range(len(PALETTE_RGB)) if index not in chosen]
    colours = chosen[:count] + free[: max(0, count - len(chosen))]
    if len(colours) < count:
        raise ValueError(
            f"{count} identities need {count} distinct colours; the palette has {len(PALETTE_RGB)}"
        )
    return colours


def resolve_identities(
    tracks: Sequence[Track],
    mode: Mode,
    max_identities: int | None = None,
    min_area_fraction: float = MIN_AREA_FRACTION,
) -> list[Track]:
    """Raw tracks -> the identities to paint, ordered left to right."""
    limit = DEFAULT_MAX_IDENTITIES[mode] if max_identities is None else max_identities
    tracks = merge_duplicate_tracks(non_empty(tracks))
    tracks = drop_small_tracks(tracks, min_area_fraction)
    return order_left_to_right(select_identities(tracks, limit))


def paint_frame(
    identities: Sequence[Track],
    colours: Sequence[int],
    frame_index: int,
    size: tuple[int, int],
    background: tuple[int, int, int],
) -> np.ndarray:
    """One [H, W, 3] uint8 palette mask: each identity's mask upsampled (bilinear, threshold 0.5) in its colour.

    Where identities overlap, the one whose upsampled mask is more confident wins, so every pixel has exactly
    one colour: a palette colour or the background.
    """
    height, width = size
    out = np.empty((height, width, 3), dtype=np.uint8)
    out[:] = background
    present = [
        (track, colour)
        for track, colour in zip(identities, colours, strict=True)
        if frame_index in track.masks
    ]
    if not present:
        return out
    stack = torch.stack([torch.from_numpy(track.masks[frame_index]).float() for track, _ in present])
    soft = F.interpolate(stack[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    best, owner = soft.max(dim=0)
    foreground = (best > 0.5).numpy()
    owner = owner.numpy()
    palette = np.asarray([PALETTE_RGB[colour] for _, colour in present], dtype=np.uint8)
    out[foreground] = palette[owner[foreground]]
    return out
