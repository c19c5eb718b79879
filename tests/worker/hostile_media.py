"""Hand-built hostile files for the worker tests: PNG headers that lie, decompression bombs, broken zips.

Everything is made here from bytes (``struct``/``zlib``) or with the ffmpeg that imageio-ffmpeg ships, so each
file is exactly as bad as its name says and costs milliseconds to make.
"""

from __future__ import annotations

import io
import struct
import subprocess
import zipfile
import zlib
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int, colour_type: int = 6, bit_depth: int = 8) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` and whose pixel data is a few bytes (it cannot decode)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + png_chunk(b"IEND", b""))


def png_bomb(width: int, height: int) -> bytes:
    """A complete, valid 1-bit greyscale PNG of ``width`` x ``height`` black pixels: kilobytes on disk, an image of
    width*height pixels (times 3 bytes as RGB) once decoded."""
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


def png_image(width: int, height: int, mode: str = "RGB", value: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), value).save(buffer, format="PNG")
    return buffer.getvalue()


def png_with_text_bomb(base: bytes, decompressed: int = 64 << 20) -> bytes:
    """``base`` with a zTXt chunk that inflates to ``decompressed`` bytes of text, inserted after the IHDR."""
    text = zlib.compress(b"a" * decompressed, 9)
    chunk = png_chunk(b"zTXt", b"Comment\0\0" + text)
    ihdr_end = 8 + 8 + 13 + 4
    return base[:ihdr_end] + chunk + base[ihdr_end:]


def png_broken_ihdr_crc(base: bytes) -> bytes:
    data = bytearray(base)
    data[29] ^= 0xFF  # the IHDR CRC
    return bytes(data)


def jpeg_header_only(width: int, height: int) -> bytes:
    """SOI, a baseline SOF0 claiming ``width`` x ``height`` (3 components), EOI: a header with no image."""
    sof = struct.pack(">BHHB", 8, height, width, 3) + b"".join(bytes([i, 0x11, 0]) for i in (1, 2, 3))
    return b"\xff\xd8" + b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof + b"\xff\xd9"


def zip_of(members: list[tuple[str, bytes]], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


def _patch_zip_headers(archive: bytes, name: str, patch) -> bytes:
    """Apply ``patch(buffer, local_offset, central_offset)`` to the headers of member ``name``."""
    data = bytearray(archive)
    with zipfile.ZipFile(io.BytesIO(archive)) as parsed:
        info = parsed.getinfo(name)
        local = info.header_offset
    central = data.find(b"PK\x01\x02")
    while struct.unpack_from("<I", data, central + 42)[0] != local:  # the entry's local header offset
        central = data.find(b"PK\x01\x02", central + 4)
        assert central > 0, name
    patch(data, local, central)
    return bytes(data)


def zip_with_bad_crc(archive: bytes, name: str) -> bytes:
    """Flip one byte of a stored member's data (its headers still carry the old CRC-32)."""
    data = bytearray(archive)
    with zipfile.ZipFile(io.BytesIO(archive)) as parsed:
        info = parsed.getinfo(name)
        start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
        data[start + info.compress_size // 2] ^= 0xFF
    return bytes(data)


def zip_marked_encrypted(archive: bytes, name: str) -> bytes:
    def patch(data: bytearray, local: int, central: int) -> None:
        data[local + 6] |= 0x01
        data[central + 8] |= 0x01

    return _patch_zip_headers(archive, name, patch)


def zip_with_unknown_method(archive: bytes, name: str) -> bytes:
    def patch(data: bytearray, local: int, central: int) -> None:
        struct.pack_into("<H", data, local + 8, 97)
        struct.pack_into("<H", data, central + 10, 97)

    return _patch_zip_headers(archive, name, patch)


def zip_bomb_member(name: str, size: int) -> bytes:
    """A zip with one deflated member of ``size`` zero bytes (a few hundred KB compressed)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        entry = zipfile.ZipInfo(name)
        entry.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(entry, "w", force_zip64=True) as member:
            block = b"\0" * (1 << 20)
            for _ in range(size >> 20):
                member.write(block)
    return buffer.getvalue()


def ffmpeg_video(path: Path, *args: str) -> Path:
    """Encode a lavfi test source with ffmpeg (``args`` are the input and output options)."""
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-y", *args, str(path)], check=True,
                   timeout=120)
    return path


def noise_png(width: int, height: int, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()
