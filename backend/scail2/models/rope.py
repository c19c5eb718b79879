"""SCAIL-2 rotary position tables: one 3D grid per token segment, with the mode-specific shifts.

The official model rotates q and k in float64 complex arithmetic with a table of ``8192`` positions per axis.
Here the same multipliers are computed in float64 and handed to diffusers' ``WanAttnProcessor`` as real
``(cos, sin)`` tables of shape ``[1, S, 1, head_dim]`` with every complex pair's real part repeated on both lanes
of the pair (``repeat_interleave`` layout). The processor computes ``out_even = x_even*cos - x_odd*sin`` and
``out_odd = x_even*sin + x_odd*cos`` using ``cos[..., 0::2]`` and ``sin[..., 1::2]``, which is exactly a complex
multiply by ``cos + i*sin``; so multipliers that are not unit-norm (the avg-pooled driving stream) work.

Token segments and their grid positions (``N`` additional references, ``replace`` = replacement mode), in
token-grid units (latent size divided by the 2x2 patch):

=================  ======  =========================  ======================  ================================
segment            frames  t                          h                       w
=================  ======  =========================  ======================  ================================
additional refs    N       0 .. N-1                   0 .. (+120 if replace)  0 ..
primary reference  1       N                          0 .. (+120 if replace)  0 ..
video              T       N + (0 if replace else 1)  0 ..                    0 ..
driving (pose)     T       as video                   0 ..                    120 .. (then 2x2 average pooled)
=================  ======  =========================  ======================  ================================

The driving stream is built at the video token resolution and average-pooled 2x2 (real and imaginary parts
separately), which leaves multipliers with magnitude below one; the official model does exactly this and the
golden fixtures depend on it, so the result is deliberately not renormalised.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

ROPE_THETA = 10000.0
# Length of the official per-axis frequency table (rope_params(8192, ...)); positions must stay below it.
ROPE_TABLE_POSITIONS = 8192
# Replacement mode puts the references 120 rows "below" the video; the driving stream always sits 120 columns
# to the right. Hard-coded in the official forward pass.
REFERENCE_ROW_SHIFT = 120
DRIVING_COLUMN_SHIFT = 120


@dataclass(frozen=True)
class TokenLayout:
    """Sizes of the token segments of one forward pass, in token-grid units.

    ``frames``, ``height`` and ``width`` describe the video token grid (latent frames, latent height / 2, latent
    width / 2). The driving stream has ``frames x height//2 x width//2`` tokens.
    """

    frames: int
    height: int
    width: int
    extra_ref_frames: int = 0
    replace: bool = False

    @property
    def frame_tokens(self) -> int:
        return self.height * self.width

    @property
    def extra_ref_tokens(self) -> int:
        return self.extra_ref_frames * self.frame_tokens

    @property
    def ref_tokens(self) -> int:
        return self.frame_tokens

    @property
    def video_tokens(self) -> int:
        return self.frames * self.frame_tokens

    @property
    def driving_tokens(self) -> int:
        return self.frames * (self.height // 2) * (self.width // 2)

    @property
    def video_offset(self) -> int:
        """Index of the first video token in the sequence ``[extra refs][ref][video][driving]``."""
        return self.extra_ref_tokens + self.ref_tokens

    @property
    def total_tokens(self) -> int:
        return self.extra_ref_tokens + self.ref_tokens + self.video_tokens + self.driving_tokens


def axis_pair_counts(head_dim: int) -> tuple[int, int, int]:
    """Complex pairs given to the (t, h, w) axes: ``[c - 2(c//3), c//3, c//3]`` with ``c = head_dim / 2``."""
    if head_dim % 2:
        raise ValueError(f"head_dim must be even for rotary embeddings, got {head_dim}")
    pairs = head_dim // 2
    return pairs - 2 * (pairs // 3), pairs // 3, pairs // 3


def _axis_inverse_frequencies(pair_count: int, device: torch.device) -> torch.Tensor:
    # Each axis has its own table rope_params(8192, 2 * pair_count): frequencies theta^(-2k / width).
    width = 2 * pair_count
    exponent = torch.arange(0, width, 2, dtype=torch.float64, device=device).div(width)
    return 1.0 / torch.pow(ROPE_THETA, exponent)


def _segment_grid(
    inverse_frequencies: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    frames: int,
    height: int,
    width: int,
    shifts: tuple[int, int, int],
) -> torch.Tensor:
    """Complex multipliers ``[frames, height, width, pairs]`` (complex128) of one segment's grid."""
    sizes = (frames, height, width)
    for axis, (size, shift) in enumerate(zip(sizes, shifts, strict=True)):
        if shift + size > ROPE_TABLE_POSITIONS:
            raise ValueError(
                f"RoPE position {shift + size - 1} on axis {'thw'[axis]} exceeds the {ROPE_TABLE_POSITIONS}-entry "
                "table; the input is too large"
            )
    parts = []
    for axis, (size, shift, inv) in enumerate(zip(sizes, shifts, inverse_frequencies, strict=True)):
        positions = torch.arange(shift, shift + size, dtype=torch.float64, device=inv.device)
        angles = torch.outer(positions, inv)
        values = torch.polar(torch.ones_like(angles), angles)
        view = [1, 1, 1, -1]
        view[axis] = size
        parts.append(values.view(*view).expand(frames, height, width, -1))
    return torch.cat(parts, dim=-1)


def scail2_rope_multipliers(
    head_dim: int, layout: TokenLayout, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Per-token complex multipliers ``[S, head_dim // 2]`` (complex128) in sequence order.

    This is the float64 reference form of the table; :func:`scail2_rope_tables` turns it into what the Wan
    attention processor consumes.
    """
    device = torch.device(device)
    inverse = tuple(_axis_inverse_frequencies(n, device) for n in axis_pair_counts(head_dim))
    n_extra = layout.extra_ref_frames
    ref_row_shift = REFERENCE_ROW_SHIFT if layout.replace else 0
    video_t = n_extra + (0 if layout.replace else 1)
    h, w = layout.height, layout.width

    segments = []
    if n_extra:
        segments.append(_segment_grid(inverse, n_extra, h, w, (0, ref_row_shift, 0)))
    segments.append(_segment_grid(inverse, 1, h, w, (n_extra, ref_row_shift, 0)))
    segments.append(_segment_grid(inverse, layout.frames, h, w, (video_t, 0, 0)))

    driving = _segment_grid(inverse, layout.frames, h, w, (video_t, 0, DRIVING_COLUMN_SHIFT))
    # [T, h, w, pairs] -> pool over (h, w) with pairs as channels; real and imaginary parts separately.
    real = F.avg_pool2d(driving.real.permute(0, 3, 1, 2), kernel_size=2, stride=2).permute(0, 2, 3, 1)
    imag = F.avg_pool2d(driving.imag.permute(0, 3, 1, 2), kernel_size=2, stride=2).permute(0, 2, 3, 1)
    segments.append(torch.complex(real, imag))

    return torch.cat([s.reshape(-1, s.shape[-1]) for s in segments], dim=0)


def scail2_rope_tables(
    head_dim: int,
    layout: TokenLayout,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)`` tables ``[1, S, 1, head_dim]`` for diffusers' ``WanAttnProcessor`` (see module docstring)."""
    multipliers = scail2_rope_multipliers(head_dim, layout, device)
    cos = multipliers.real.repeat_interleave(2, dim=-1)
    sin = multipliers.imag.repeat_interleave(2, dim=-1)
    return cos.to(dtype)[None, :, None, :], sin.to(dtype)[None, :, None, :]


class SCAIL2RotaryPosEmbed(nn.Module):
    """Module form of :func:`scail2_rope_tables` (a module so context-parallel plans can split its outputs).

    The last table is cached: every denoising step of a window reuses the same layout.
    """

    def __init__(self, attention_head_dim: int):
        super().__init__()
        axis_pair_counts(attention_head_dim)  # validates
        self.attention_head_dim = attention_head_dim
        self._cache_key: tuple | None = None
        self._cache_value: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(
        self, layout: TokenLayout, device: torch.device | str, dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        key = (layout, str(torch.device(device)), dtype)
        if key != self._cache_key or self._cache_value is None:
            self._cache_value = scail2_rope_tables(self.attention_head_dim, layout, device, dtype)
            self._cache_key = key
        return self._cache_value
