"""The demo's contact sheet: one labelled PNG that shows what went in and what came out.

Top row: the reference, then driving frames; bottom row: the reference mask, then the result frames made from
those driving frames. Every cell has a caption above it. Needs numpy, imageio and Pillow only (no bpy, no torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

PAD = 4
CAPTION_HEIGHT = 18
BACKGROUND = 32
TEXT = (235, 235, 235)
COLUMNS = 5  # driving/result pairs shown, spread over the clip


@dataclass(frozen=True)
class Caption:
    """A cell's label and the box (left, top, right, bottom) its text was drawn in."""

    text: str
    box: tuple[int, int, int, int]


def _fit(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize (enough for a preview sheet)."""
    ys = (np.arange(height) * image.shape[0] / height).astype(int)
    xs = (np.arange(width) * image.shape[1] / width).astype(int)
    return image[ys][:, xs]


def _driving_frames(driving: Path, frame_range: tuple[int, int]) -> list[np.ndarray]:
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(driving))
    meta = next(reader)
    src_w, src_h = meta["size"]
    frames = []
    for index, raw in enumerate(reader):
        if index >= frame_range[1]:
            break
        if index >= frame_range[0]:
            frames.append(np.frombuffer(raw, np.uint8).reshape(src_h, src_w, 3))
    reader.close()
    return frames


def contact_sheet(reference: Path, reference_mask: Path, driving: Path, frame_range: tuple[int, int],
                  frames: list[Path], out: Path) -> list[Caption]:
    """Write the sheet to ``out``; return the captions drawn. ``frame_range`` is the driving clip's [start, end)
    (0-based) that produced ``frames``; captions number frames from 1, as Blender's frame fields do."""
    import imageio.v3 as iio
    from PIL import Image, ImageDraw, ImageFont

    result = [iio.imread(f)[..., :3] for f in frames]
    height, width = result[0].shape[:2]
    picks = sorted({round(i * (len(result) - 1) / (COLUMNS - 1)) for i in range(COLUMNS)})
    driving_frames = _driving_frames(driving, frame_range)

    ref = iio.imread(reference)
    if ref.shape[-1] == 4:  # show the cut-out on grey, as the model sees the subject
        alpha = ref[..., 3:4] / 255.0
        ref = (ref[..., :3] * alpha + 128 * (1 - alpha)).astype(np.uint8)
    cells = [[("reference", ref[..., :3]), ("reference mask", iio.imread(reference_mask)[..., :3])]]
    for pick in picks:
        number = frame_range[0] + pick + 1
        shown = driving_frames[pick] if pick < len(driving_frames) else None
        cells.append([(f"driving frame {number}", shown), (f"result frame {pick + 1}", result[pick])])

    row_height = CAPTION_HEIGHT + height + PAD
    sheet = np.full((PAD + 2 * row_height, PAD + len(cells) * (width + PAD), 3), BACKGROUND, np.uint8)
    boxes = []
    for column, pair in enumerate(cells):
        x = PAD + column * (width + PAD)
        for row, (text, image) in enumerate(pair):
            top = PAD + row * row_height
            if image is not None:
                sheet[top + CAPTION_HEIGHT:top + CAPTION_HEIGHT + height, x:x + width] = _fit(image, height, width)
            boxes.append((text, (x, top, x + width, top + CAPTION_HEIGHT)))

    canvas = Image.fromarray(sheet)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=12)
    captions = []
    for text, (left, top, right, bottom) in boxes:
        while text and draw.textlength(text, font=font) > right - left - 2:  # a narrow cell shortens its label
            text = text[:-1]
        draw.text((left + 1, top + 2), text, fill=TEXT, font=font)
        captions.append(Caption(text, (left, top, right, bottom)))
    canvas.save(out)
    return captions
