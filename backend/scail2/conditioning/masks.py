"""Colour masks: the palette, validation, masks from alpha, and the official 28-channel compression.

Mask semantics (SCAIL-2 README): black = background that must not show, white = background that should show, a
palette colour = one identity, the same colour in the reference and driving masks. Polarity depends on the mode:

| mode        | reference mask             | driving mask               |
|-------------|----------------------------|----------------------------|
| animation   | subject colour on white    | subject colour on black    |
| replacement | subject colour on black    | subject colour on white    |

The model never sees the colours directly: ``compress_mask_to_latent`` thresholds each channel above 225/255,
builds seven binary maps, area-downsamples them to the latent grid and packs 4 frames into 28 channels, exactly as
the official ``extract_and_compress_mask_to_latent``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ...palette import BLACK, PALETTE, PALETTE_NAMES, WHITE, mask_background
from ..errors import Scail2InputError

Mode = Literal["animation", "replacement"]
MaskRole = Literal["reference", "driving"]

# Identity i gets PALETTE_RGB[i % 6]; a single subject is blue. Order from the official SAM3 tracker.
PALETTE_RGB = PALETTE

# A channel is "on" iff its [-1, 1] value is strictly above this, compared in float32: uint8 225 is off, 226 on.
MASK_THRESHOLD = (225 - 127.5) / 127.5
# The seven maps in channel order; black lights none.
MAP_ORDER = ("white", "red", "green", "blue", "yellow", "magenta", "cyan")
TEMPORAL_PACK = 4
SPATIAL_DOWNSAMPLE_STEPS = 3  # the latent grid is H, W ceil-halved three times (= /8)


def background_colour(mode: Mode, role: MaskRole) -> tuple[int, int, int]:
    """The background colour a mask of ``role`` must use in ``mode`` (see the table in the module docstring)."""
    try:
        return mask_background(mode, role)
    except ValueError as error:
        raise Scail2InputError(str(error), field="mode") from None


def image_to_unit_range(image_u8: torch.Tensor) -> torch.Tensor:
    """uint8 -> [-1, 1] the way the official code maps images (``ToTensor() * 2 - 1``)."""
    return image_u8.to(torch.float32) / 255.0 * 2.0 - 1.0


def video_to_unit_range(video_u8: torch.Tensor) -> torch.Tensor:
    """uint8 -> [-1, 1] the way the official code maps videos (``(x - 127.5) / 127.5``)."""
    return (video_u8.to(torch.float32) - 127.5) / 127.5


def latent_grid_size(height: int, width: int) -> tuple[int, int]:
    """The (h, w) the 28-channel maps are area-downsampled to: each side ceil-halved three times."""
    for _ in range(SPATIAL_DOWNSAMPLE_STEPS):
        height, width = (height + 1) // 2, (width + 1) // 2
    return height, width


def compress_mask_to_latent(mask: torch.Tensor) -> torch.Tensor:
    """[3, T, H, W] colour mask in [-1, 1] -> [28, T_lat, H/8, W/8] coverage maps, T_lat = (T - 1) // 4 + 1.

    Channel ``7*k + c`` holds colour ``c`` (``MAP_ORDER``) of packed sub-frame ``k``; frame 0 is repeated 4 times
    so it fills the first latent frame alone, as the VAE's causal first frame does.
    """
    if mask.ndim != 4 or mask.shape[0] != 3:
        raise ValueError(f"expected a [3, T, H, W] mask, got shape {tuple(mask.shape)}")
    frames = mask.shape[1]
    if (frames - 1) % TEMPORAL_PACK != 0:
        raise ValueError(f"mask frame count must be 4k+1, got {frames}")
    on = mask.to(torch.float32) > MASK_THRESHOLD
    red, green, blue = on[0], on[1], on[2]
    maps = torch.stack(
        [
            red & green & blue,
            red & ~green & ~blue,
            ~red & green & ~blue,
            ~red & ~green & blue,
            red & green & ~blue,
            red & ~green & blue,
            ~red & green & blue,
        ],
        dim=1,
    ).to(torch.float32)  # [T, 7, H, W]
    maps = F.interpolate(maps, size=latent_grid_size(*maps.shape[-2:]), mode="area")
    maps = torch.cat([maps[:1].repeat(TEMPORAL_PACK, 1, 1, 1), maps[1:]], dim=0)
    latent_frames = maps.shape[0] // TEMPORAL_PACK
    height, width = maps.shape[-2:]
    packed = maps.reshape(latent_frames, TEMPORAL_PACK * len(MAP_ORDER), height, width)
    return packed.permute(1, 0, 2, 3).contiguous()


def halve_bilinear(frames: torch.Tensor) -> torch.Tensor:
    """Bilinear x0.5 over the last two dims (``align_corners=False``), as the pipeline does for driving inputs."""
    return F.interpolate(frames, scale_factor=0.5, mode="bilinear", align_corners=False)


def compress_driving_mask(mask: torch.Tensor) -> torch.Tensor:
    """[3, T, H, W] driving mask in [-1, 1] -> [28, T_lat, H/16, W/16]: halved bilinearly, then compressed."""
    return compress_mask_to_latent(halve_bilinear(mask))


def compress_reference_mask(mask: torch.Tensor) -> torch.Tensor:
    """[3, H, W] reference mask in [-1, 1] -> [28, 1, H/8, W/8]."""
    return compress_mask_to_latent(mask[:, None])


def mask_from_alpha(
    alpha: np.ndarray | torch.Tensor, mode: Mode, role: MaskRole, colour_index: int = 0
) -> np.ndarray | torch.Tensor:
    """Palette mask from an alpha channel ([..., H, W] uint8): the subject colour where alpha > 127, else the
    mode's background for this role. Returns [..., H, W, 3] uint8: a tensor on the tensor's device for a tensor,
    a numpy array for anything else."""
    tensor = alpha if isinstance(alpha, torch.Tensor) else torch.from_numpy(np.array(alpha, copy=True))
    subject = torch.tensor(PALETTE_RGB[colour_index % len(PALETTE_RGB)], dtype=torch.uint8, device=tensor.device)
    background = torch.tensor(background_colour(mode, role), dtype=torch.uint8, device=tensor.device)
    mask = torch.where((tensor > 127)[..., None], subject, background)
    return mask if isinstance(alpha, torch.Tensor) else mask.numpy()


@dataclass(frozen=True)
class MaskReport:
    """What ``inspect_mask`` found: fractions of pixels per class, and the border's dominant background."""

    unmatched_fraction: float
    colour_fractions: dict[str, float]
    border_white_fraction: float
    border_black_fraction: float


def _class_table() -> tuple[list[str], np.ndarray]:
    """Class names (palette, white, black) and, for each channel on/off code R*4 + G*2 + B, its class index."""
    names = [*PALETTE_NAMES, "white", "black"]
    code_to_class = np.empty(8, dtype=np.int64)
    for index, (red, green, blue) in enumerate([*PALETTE_RGB, WHITE, BLACK]):
        code_to_class[(red > 0) * 4 + (green > 0) * 2 + (blue > 0)] = index
    return names, code_to_class


def inspect_mask(mask: np.ndarray, tolerance: int = 60, max_frames: int | None = 32) -> MaskReport:
    """Classify every pixel of a [H, W, 3] or [T, H, W, 3] uint8 mask against the palette plus white and black.

    A pixel matches a colour when each channel lies within ``tolerance`` of it; anti-aliased edges and codec
    noise beyond that count as unmatched. Because every on/off combination of the three channels is a palette
    colour, white or black, that is a per-channel test (each channel <= tolerance or >= 255 - tolerance), which
    is far cheaper than a nearest-colour search. The border statistics tell which background the mask uses.
    Frames are classified one at a time so long videos need no large temporaries; a video longer than
    ``max_frames`` is judged on that many evenly spaced frames (``None``: every frame).
    """
    if not 0 <= tolerance < 128:
        raise ValueError(f"tolerance must be in [0, 128), got {tolerance}")
    frames = np.asarray(mask)[..., :3]
    if frames.ndim == 3:
        frames = frames[None]
    if max_frames is not None and frames.shape[0] > max_frames:
        frames = frames[np.linspace(0, frames.shape[0] - 1, max_frames).round().astype(int)]
    names, code_to_class = _class_table()
    white_index, black_index = names.index("white"), names.index("black")
    counts = np.zeros(len(names), dtype=np.int64)
    border_white = border_black = border_total = 0
    low, high = tolerance, 255 - tolerance
    for frame in frames:
        on = frame >= high
        matched = (on | (frame <= low)).all(axis=-1)
        classes = code_to_class[on[..., 0] * 4 + on[..., 1] * 2 + on[..., 2]]
        counts += np.bincount(classes[matched], minlength=len(names))
        edge = np.concatenate([classes[0], classes[-1], classes[:, 0], classes[:, -1]])
        edge_matched = np.concatenate([matched[0], matched[-1], matched[:, 0], matched[:, -1]])
        border_white += int(np.count_nonzero(edge_matched & (edge == white_index)))
        border_black += int(np.count_nonzero(edge_matched & (edge == black_index)))
        border_total += edge.size
    total = frames.shape[0] * frames.shape[1] * frames.shape[2]
    return MaskReport(
        unmatched_fraction=1.0 - float(counts.sum()) / total,
        colour_fractions={name: float(counts[i]) / total for i, name in enumerate(names)},
        border_white_fraction=border_white / border_total,
        border_black_fraction=border_black / border_total,
    )


def validate_mask(
    mask: np.ndarray,
    field: str,
    expected_background: tuple[int, int, int] | None,
    max_unmatched_fraction: float = 0.05,
    tolerance: int = 60,
    require_subject: bool = True,
) -> MaskReport:
    """Fail with a ``Scail2InputError(field=...)`` if the mask is not a palette mask on the expected background.

    Checks: the fraction of pixels matching no palette colour (nor white or black) must stay at most
    ``max_unmatched_fraction``; with an ``expected_background``, a border that is mostly the opposite background
    means the mask has the wrong polarity for the mode (the model's output is garbage then). Additional
    reference masks may be a plain white background plate: pass ``require_subject=False`` for those.
    """
    report = inspect_mask(mask, tolerance=tolerance)
    if report.unmatched_fraction > max_unmatched_fraction:
        raise Scail2InputError(
            f"{field}: {report.unmatched_fraction:.1%} of the pixels match no mask colour (allowed "
            f"{max_unmatched_fraction:.0%}). Use pure palette colours ({', '.join(PALETTE_NAMES)}) on a white or "
            "black background, saved losslessly (PNG), without anti-aliasing or colour management.",
            field=field,
        )
    subject = sum(report.colour_fractions[name] for name in PALETTE_NAMES)
    if require_subject and subject == 0.0:
        raise Scail2InputError(
            f"{field}: the mask contains no subject colour; paint the subject in a palette colour "
            f"({', '.join(PALETTE_NAMES)}).",
            field=field,
        )
    if expected_background is not None:
        expected_white = expected_background == WHITE
        right = report.border_white_fraction if expected_white else report.border_black_fraction
        wrong = report.border_black_fraction if expected_white else report.border_white_fraction
        if wrong > 0.5 and right < 0.1:
            raise Scail2InputError(
                f"{field}: the mask background is {'black' if expected_white else 'white'} but this mode expects "
                f"{'white' if expected_white else 'black'} (animation: reference on white, driving on black; "
                "replacement: the opposite). Check the mode or invert the mask background.",
                field=field,
            )
    return report
