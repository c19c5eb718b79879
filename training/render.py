"""Rasterise scenes in torch, on any device: backgrounds as fields over world coordinates, characters as
anti-aliased tapered capsules (signed distance per pixel) composited back to front.

Inputs are the feature rows of ``training.scene`` (``PART_FEATURES`` per part and frame,
``BACKGROUND_FEATURES`` per frame). A pixel's identity is that of the front-most part covering its centre
(signed distance <= 0, i.e. coverage >= 1/2); its colour blends every part by coverage, so edges are smooth
while identities stay exact.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .scene import BACKGROUND, BLOBS, PART, WAVES

# Elements per temporary tensor ([frames, H, W]) before frames are split into chunks: bounds the memory
# the temporaries take (about 20 of them live at once, 4 bytes per element).
CHUNK_ELEMENTS = 1 << 24
CROP_CHUNK_FRAMES = 4


def _column(features: Tensor, index: int) -> Tensor:
    """[N, F] -> [N, 1, 1] for broadcasting against pixel grids."""
    return features[:, index, None, None]


def _pixel_grid(height: int, width: int, device: torch.device) -> tuple[Tensor, Tensor]:
    ys = torch.arange(height, device=device, dtype=torch.float32) + 0.5
    xs = torch.arange(width, device=device, dtype=torch.float32) + 0.5
    return xs.view(1, 1, width), ys.view(1, height, 1)


def render_background(features: Tensor, height: int, width: int) -> Tensor:
    """[N, len(BACKGROUND_FEATURES)] -> [N, 3, H, W] in [0, 1]."""
    f = features
    px, py = _pixel_grid(height, width, f.device)
    zoom, pan, ground = (_column(f, BACKGROUND[name]) for name in ("zoom", "pan", "ground_row"))
    wx = (px - width / 2) / zoom + pan
    wy = (ground - py) / zoom
    blob_weights = f[:, [BACKGROUND[f"blob{k}_weight"] for k in range(BLOBS)]]
    wave_amplitudes = f[:, [BACKGROUND[f"wave{k}_amplitude"] for k in range(WAVES)]]
    # One host sync: which terms any frame uses (most backgrounds use one kind, or are flat).
    gradients, blobs, waves, floors = torch.stack([
        f[:, BACKGROUND["gradient_x"] : BACKGROUND["gradient_y"] + 1].ne(0).any(),
        blob_weights.ne(0).any(),
        wave_amplitudes.ne(0).any(),
        f[:, BACKGROUND["floor"]].ne(0).any(),
    ]).tolist()  # fmt: skip
    lam = _column(f, BACKGROUND["base"]) + torch.zeros_like(wx + wy)
    if gradients:
        lam = lam + _column(f, BACKGROUND["gradient_x"]) * wx + _column(f, BACKGROUND["gradient_y"]) * wy
    for k in range(BLOBS if blobs else 0):
        weight = _column(f, BACKGROUND[f"blob{k}_weight"])
        sigma = _column(f, BACKGROUND[f"blob{k}_sigma"]).clamp_min(1e-6)
        dx = wx - _column(f, BACKGROUND[f"blob{k}_x"])
        dy = wy - _column(f, BACKGROUND[f"blob{k}_y"])
        lam = lam + weight * torch.exp(-(dx * dx + dy * dy) / (2 * sigma * sigma))
    for k in range(WAVES if waves else 0):
        amplitude = _column(f, BACKGROUND[f"wave{k}_amplitude"])
        arg = _column(f, BACKGROUND[f"wave{k}_kx"]) * wx + _column(f, BACKGROUND[f"wave{k}_ky"]) * wy
        lam = lam + amplitude * torch.sin(arg + _column(f, BACKGROUND[f"wave{k}_phase"]))
    lam = lam.clamp(0.0, 1.0).unsqueeze(1)
    a = f[:, BACKGROUND["a_red"] : BACKGROUND["a_blue"] + 1, None, None]
    b = f[:, BACKGROUND["b_red"] : BACKGROUND["b_blue"] + 1, None, None]
    image = a + lam * (b - a)
    if not floors:
        return image
    # The floor covers world y < 0: the part of each pixel row below the ground row.
    floor = ((py + 0.5 - ground).clamp(0.0, 1.0) * _column(f, BACKGROUND["floor"])).unsqueeze(1)
    floor_colour = f[:, BACKGROUND["floor_red"] : BACKGROUND["floor_blue"] + 1, None, None]
    return image + floor * (floor_colour - image)


def _draw_part(image: Tensor, ids: Tensor, f: Tensor, px: Tensor, py: Tensor, stripes: bool, dots: bool) -> None:
    """Composite one part (feature rows ``f`` [N, F]) over ``image`` [N, 3, H, W] and ``ids`` [N, H, W].

    ``stripes``/``dots``: whether any row uses that texture (the other one is then not computed)."""
    x0, y0 = _column(f, PART["x0"]), _column(f, PART["y0"])
    ax, ay = _column(f, PART["x1"]) - x0, _column(f, PART["y1"]) - y0
    length_sq = ax * ax + ay * ay
    length = length_sq.sqrt()
    dx0, dy0 = px - x0, py - y0
    h = ((dx0 * ax + dy0 * ay) / length_sq.clamp_min(1e-9)).clamp(0.0, 1.0)
    dx, dy = dx0 - h * ax, dy0 - h * ay
    dist = (dx * dx + dy * dy).sqrt()
    r0 = _column(f, PART["r0"])
    radius = r0 + h * (_column(f, PART["r1"]) - r0)
    signed = dist - radius
    alpha = (0.5 - signed).clamp(0.0, 1.0) * _column(f, PART["present"])

    # Shading: the normal of a cylinder (or sphere at the caps) around the axis, lit from one direction.
    inv_radius = 1.0 / radius.clamp_min(1e-6)
    nx, ny = dx * inv_radius, dy * inv_radius
    nz = (1.0 - (nx * nx + ny * ny)).clamp_min(0.0).sqrt()
    lit = nx * _column(f, PART["light_x"]) + ny * _column(f, PART["light_y"]) + nz * _column(f, PART["light_z"])
    shade = _column(f, PART["ambient"]) + _column(f, PART["diffuse"]) * lit.clamp_min(0.0)

    # Texture in part coordinates (along the axis, across it), in periods; edges smoothed over about a pixel.
    texture = _column(f, PART["texture"])
    pattern = torch.zeros_like(alpha)
    period = _column(f, PART["period"]).clamp_min(1e-3)
    along = h * length / period + _column(f, PART["phase"])
    width = _column(f, PART["texture_width"])
    if stripes:
        wave = torch.sin(2 * math.pi * along)
        stripes = (0.5 + (wave - width) * period / (2 * math.pi)).clamp(0.0, 1.0)
        pattern = pattern + (texture == 1) * stripes
    if dots:
        across = (dx * (-ay) + dy * ax) / length.clamp_min(1e-6) / period
        fu, fv = along - along.floor() - 0.5, across - across.floor() - 0.5
        dots = (0.5 + (width - (fu * fu + fv * fv).sqrt()) * period).clamp(0.0, 1.0)
        pattern = pattern + (texture == 2) * dots
    base = f[:, PART["red"] : PART["blue"] + 1, None, None]
    accent = f[:, PART["pattern_red"] : PART["pattern_blue"] + 1, None, None]
    colour = ((base + pattern.unsqueeze(1) * (accent - base)) * shade.unsqueeze(1)).clamp(0.0, 1.0)
    image.add_(alpha.unsqueeze(1) * (colour - image))
    covered = (signed <= 0.0) & (_column(f, PART["present"]) > 0)
    ids.copy_(torch.where(covered, _column(f, PART["identity"]).to(ids.dtype), ids))


def _part_box(rows: Tensor, height: int, width: int) -> tuple[int, int, int, int]:
    """The pixel box [y0, y1) x [x0, x1) that a part covers in any of ``rows``' frames (may be empty)."""
    reach = torch.maximum(rows[:, PART["r0"]], rows[:, PART["r1"]]) + 1.0
    xs = torch.stack([rows[:, PART["x0"]], rows[:, PART["x1"]]])
    ys = torch.stack([rows[:, PART["y0"]], rows[:, PART["y1"]]])
    x0, x1 = (xs - reach).min().item(), (xs + reach).max().item()
    y0, y1 = (ys - reach).min().item(), (ys + reach).max().item()
    return (
        min(max(math.floor(y0), 0), height),
        min(max(math.ceil(y1), 0), height),
        min(max(math.floor(x0), 0), width),
        min(max(math.ceil(x1), 0), width),
    )


def render(parts: Tensor, background: Tensor, height: int, width: int,
           crop: bool | None = None) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Frames [N, 3, H, W], identities [N, H, W] int64 and the bare backgrounds [N, 3, H, W].

    ``parts`` [N, K, len(PART_FEATURES)] in painter's order; ``background`` [N, len(BACKGROUND_FEATURES)].
    ``crop`` (default: on the CPU) draws each part only inside its bounding box, a few frames at a time: far
    less arithmetic, many more small operations, which suits a CPU and not a GPU. The pixels are the same.
    """
    frames = parts.shape[0]
    if crop is None:
        crop = parts.device.type == "cpu"
    chunk = CROP_CHUNK_FRAMES if crop else max(1, CHUNK_ELEMENTS // (height * width))
    px, py = _pixel_grid(height, width, parts.device)
    images, identities, backgrounds = [], [], []
    for begin in range(0, frames, chunk):
        part_rows = parts[begin : begin + chunk]
        bare = render_background(background[begin : begin + chunk], height, width)
        image = bare.clone()
        ids = torch.zeros((part_rows.shape[0], height, width), dtype=torch.int64, device=parts.device)
        texture = part_rows[..., PART["texture"]]
        # One host sync per chunk: which parts appear at all and which textures they use.
        used = torch.stack([(part_rows[..., PART["present"]] > 0).any(0), (texture == 1).any(0), (texture == 2).any(0)])
        for k, (present, stripes, dots) in enumerate(zip(*used.tolist(), strict=True)):
            if not present:
                continue
            if not crop:
                _draw_part(image, ids, part_rows[:, k], px, py, stripes, dots)
                continue
            y0, y1, x0, x1 = _part_box(part_rows[:, k], height, width)
            if y1 > y0 and x1 > x0:
                _draw_part(image[:, :, y0:y1, x0:x1], ids[:, y0:y1, x0:x1], part_rows[:, k],
                           px[..., x0:x1], py[:, y0:y1], stripes, dots)  # fmt: skip
        images.append(image)
        identities.append(ids)
        backgrounds.append(bare)
    return torch.cat(images), torch.cat(identities), torch.cat(backgrounds)
