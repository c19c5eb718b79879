"""The header readers of the decoded-memory budget agree with a full decoder, and refuse what is no image."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from backend.worker.media_budget import HeaderError, jpeg_size, png_size, webp_size

PIXELS = np.random.default_rng(1).integers(0, 256, (37, 53, 4), np.uint8)


def encoded(mode: str, format: str, **options) -> bytes:
    image = Image.fromarray(PIXELS[..., :4] if mode == "RGBA" else PIXELS[..., :3]).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


@pytest.mark.parametrize(("mode", "channels"), [("RGB", 3), ("RGBA", 4), ("L", 3), ("LA", 4), ("P", 4), ("I;16", 3)])
def test_png_header_gives_the_decoded_size(mode, channels):
    assert png_size(encoded(mode, "PNG")[:33]) == (53, 37, channels)


def test_jpeg_header_is_found_behind_exif_and_icc_segments():
    exif = Image.Exif()
    exif[0x010E] = "x" * 20_000  # a 20 KB APP1 segment before the frame header
    assert jpeg_size(encoded("RGB", "JPEG", exif=exif.tobytes())) == (53, 37, 3)
    assert jpeg_size(encoded("RGB", "JPEG", progressive=True)) == (53, 37, 3)


@pytest.mark.parametrize(("options", "channels"), [({"lossless": False}, 3), ({"lossless": True}, 3)])
def test_webp_header_gives_the_size(options, channels):
    assert webp_size(encoded("RGB", "WEBP", **options)) == (53, 37, channels)


def test_webp_with_alpha_counts_four_channels():
    width, height, channels = webp_size(encoded("RGBA", "WEBP", lossless=True))
    assert (width, height, channels) == (53, 37, 4)


@pytest.mark.parametrize("data", [b"", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, b"GIF89a" + b"\0" * 40,
                                  b"\xff\xd8\xff\xd9", b"RIFF\0\0\0\0WEBPJUNK" + b"\0" * 40])
def test_what_is_no_image_header_is_refused(data):
    for reader in (png_size, jpeg_size, webp_size):
        with pytest.raises(HeaderError):
            reader(data)
