"""Reading rendered PNGs as raw 8-bit planes through Blender's image loader (no numpy in the add-on)."""

from __future__ import annotations

import array

import bpy


def read_rgba_planes(path: str) -> tuple[int, int, list[bytes]]:
    """Return ``(width, height, [R, G, B, A])``: 8-bit planes, top row first.

    For 8-bit files ``Image.pixels`` holds the stored bytes divided by 255 (no colour management), so
    rounding recovers them exactly.
    """
    image = bpy.data.images.load(path, check_existing=False)
    try:
        width, height = image.size
        if width == 0 or height == 0:
            raise ValueError(f"could not read image {path!r}")
        values = array.array("f", bytes(4 * width * height * 4))
        image.pixels.foreach_get(values)
    finally:
        bpy.data.images.remove(image)
    stride = width
    planes = []
    for channel in range(4):
        plane = bytes(int(v * 255.0 + 0.5) for v in values[channel::4])
        # Blender stores the bottom row first.
        planes.append(b"".join(plane[row * stride:(row + 1) * stride] for row in range(height - 1, -1, -1)))
    return width, height, planes
