"""The demo's contact sheet is labelled: every cell has a caption naming what it shows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from demo.contact_sheet import CAPTION_HEIGHT, contact_sheet


def test_every_cell_has_a_caption_above_it(media_root: Path, tmp_path: Path):
    height, width = 96, 128
    photo = np.asarray(Image.open(media_root / "astronaut.png").convert("RGB").resize((width, height)))
    reference = tmp_path / "reference.png"
    Image.fromarray(np.dstack([photo, np.full((height, width), 255, np.uint8)]), "RGBA").save(reference)
    mask = tmp_path / "reference_mask.png"
    Image.fromarray(np.full((height, width, 3), (0, 0, 255), np.uint8)).save(mask)
    frames = []
    for index in range(9):  # each result frame a flat colour of its own, to find it on the sheet
        frames.append(tmp_path / f"{index:06d}.png")
        Image.fromarray(np.full((height, width, 3), (20 * index, 100, 50), np.uint8)).save(frames[-1])

    out = tmp_path / "sheet.png"
    captions = contact_sheet(reference, mask, media_root / "carphone_pristine.mp4", (10, 19), frames, out)

    expected = ["reference", "reference mask"]
    for pick in (0, 2, 4, 6, 8):  # five columns spread over the nine frames
        expected += [f"driving frame {10 + pick + 1}", f"result frame {pick + 1}"]
    assert [c.text for c in captions] == expected
    sheet = np.asarray(Image.open(out).convert("RGB"))
    for caption in captions:
        left, top, right, bottom = caption.box
        assert bottom - top == CAPTION_HEIGHT
        band = sheet[top:bottom, left:right]
        assert (band.min(axis=-1) > 200).sum() > 20, f"no text drawn for {caption.text!r}"
        cell = sheet[bottom:bottom + height, left:right]
        if caption.text.startswith("result frame"):
            number = int(caption.text.rsplit(" ", 1)[1])
            assert (cell == (20 * (number - 1), 100, 50)).all(), caption.text
        elif caption.text == "reference mask":
            assert (cell == (0, 0, 255)).all()
        else:
            assert cell.std() > 10, f"{caption.text}: the cell under the caption is empty"
