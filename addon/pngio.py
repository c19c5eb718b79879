"""Exact 8-bit PNG writing and mask arithmetic on raw bytes, standard library only.

Blender's image writer goes through colour management and dithering; masks must hold the exact palette
values, so they are written here. All buffers are row-major, top row first, interleaved channels.
"""

from __future__ import annotations

import os
import struct
import tempfile
import zlib

_COLOUR_TYPE = {1: 0, 3: 2, 4: 6}  # channels -> PNG colour type (grey, RGB, RGBA)


def encode_png(width: int, height: int, channels: int, pixels: bytes) -> bytes:
    if channels not in _COLOUR_TYPE:
        raise ValueError(f"PNG channels must be 1, 3 or 4, not {channels}")
    stride = width * channels
    if len(pixels) != stride * height:
        raise ValueError(f"expected {stride * height} bytes for {width}x{height}x{channels}, got {len(pixels)}")
    raw = b"".join(b"\x00" + pixels[row * stride:(row + 1) * stride] for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, _COLOUR_TYPE[channels], 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def png_size(path: str) -> tuple[int, int]:
    """``(width, height)`` from a PNG's header, without decoding it."""
    with open(path, "rb") as handle:
        head = handle.read(24)
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ValueError(f"{path} is not a PNG file")
    return struct.unpack(">II", head[16:24])


def write_atomic(path: str, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_png(path: str, width: int, height: int, channels: int, pixels: bytes) -> None:
    write_atomic(path, encode_png(width, height, channels, pixels))


def interleave(planes: list[bytes]) -> bytes:
    """Join per-channel planes (R, G, B[, A]) into one interleaved buffer."""
    count = len(planes)
    out = bytearray(len(planes[0]) * count)
    for index, plane in enumerate(planes):
        out[index::count] = plane
    return bytes(out)


def threshold(plane: bytes, level: int = 128) -> bytes:
    """255 where ``value >= level``, else 0 (C speed through ``bytes.translate``)."""
    table = bytes(255 if value >= level else 0 for value in range(256))
    return plane.translate(table)


def select(on: bytes, foreground: int, background: int) -> bytes:
    """Per pixel: ``foreground`` where ``on`` is 255, ``background`` where it is 0."""
    table = bytes([background]) * 255 + bytes([foreground])
    return on.translate(table)


def merge(on: bytes, foreground: bytes, background_value: int) -> bytes:
    """Per pixel: ``foreground`` where ``on`` is 255, else ``background_value`` (bitwise, so C speed)."""
    size = len(on)
    fg = int.from_bytes(foreground, "big")
    mask = int.from_bytes(on, "big")
    full = (1 << (8 * size)) - 1
    background = int.from_bytes(bytes([background_value]) * size, "big")
    return ((fg & mask) | (background & (full ^ mask))).to_bytes(size, "big")


def solid_mask(on: bytes, colour: tuple[int, int, int], background: tuple[int, int, int]) -> bytes:
    """An RGB mask: ``colour`` where ``on``, ``background`` elsewhere."""
    return interleave([select(on, colour[c], background[c]) for c in range(3)])


def flatten_identity_mask(planes_rgba: list[bytes], background: tuple[int, int, int]) -> bytes:
    """An RGB mask from an identity pass (palette colours with alpha): transparent pixels get ``background``."""
    on = threshold(planes_rgba[3])
    return interleave([merge(on, planes_rgba[c], background[c]) for c in range(3)])
