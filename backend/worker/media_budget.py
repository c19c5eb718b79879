"""The one place that budgets decoded pixels: every input of a job is measured from its header before any of them
is decoded.

What each stored upload will decode to is read without decoding it: the PNG ``IHDR`` chunk, the JPEG ``SOFn``
segment, the WebP ``VP8``/``VP8L``/``VP8X`` header, the ``IHDR`` of *every* PNG member of a frame archive, and
ffmpeg's probe of a video. Then the whole job is checked against the worker's limits (``--max-side``,
``--max-frames``, ``--max-seconds`` per input, ``--max-decoded-gb`` for all inputs together) and refused with a 413
naming the field before a single pixel is decoded. With the default ``--max-side`` no image reaches PIL's own
decompression-bomb check; with a larger one that check can fire while decoding, and ``errors.reading`` makes it a
413 too.

Decoded sizes are what the engine holds in memory: ``frames x height x width x channels`` bytes, with 4 channels for
images that can carry alpha (RGBA, grey+alpha, palette) and 3 otherwise.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import invalid, reading

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HEADER_READ = 1 << 16  # a JPEG's SOF follows its APPn segments (EXIF, ICC), each at most 64 KiB
JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # DHT, JPG and DAC share the range
ZIP_MAX_MEMBER_BYTES = 256 << 20  # one stored PNG frame; far above any real 4K RGBA PNG


@dataclass(frozen=True)
class Decoded:
    """What one input decodes to: ``frames`` images taking ``nbytes`` bytes in all."""

    field: str
    frames: int
    nbytes: int


class HeaderError(ValueError):
    """A file whose header cannot be read as what it claims to be (a 422 for its field)."""


# -- image headers ---------------------------------------------------------------------------------------------


def png_size(head: bytes) -> tuple[int, int, int]:
    """(width, height, channels) from the first 33 bytes of a PNG (signature + IHDR), CRC checked."""
    if len(head) < 33 or not head.startswith(PNG_SIGNATURE):
        raise HeaderError("not a PNG file (the PNG signature is missing)")
    length, kind = struct.unpack(">I4s", head[8:16])
    if kind != b"IHDR" or length != 13:
        raise HeaderError("not a valid PNG (its first chunk is not a 13-byte IHDR)")
    (crc,) = struct.unpack(">I", head[29:33])
    if zlib.crc32(head[12:29]) != crc:
        raise HeaderError("not a valid PNG (the IHDR checksum is wrong)")
    width, height, _, colour_type = struct.unpack(">IIBB", head[16:26])
    # 4: grey + alpha, 6: RGBA, 3: palette (its tRNS chunk may add alpha); 0 and 2 decode to RGB.
    return width, height, 4 if colour_type in (3, 4, 6) else 3


def jpeg_size(head: bytes) -> tuple[int, int, int]:
    """(width, height, 3) from the SOFn segment of a JPEG, walking the segments that precede it."""
    if not head.startswith(b"\xff\xd8"):
        raise HeaderError("not a JPEG file")
    position = 2
    while position + 4 <= len(head):
        if head[position] != 0xFF:
            raise HeaderError("not a valid JPEG (a segment does not start with a marker)")
        marker = head[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            position += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header came first
            break
        (length,) = struct.unpack(">H", head[position + 2:position + 4])
        if marker in JPEG_SOF_MARKERS:
            if position + 9 > len(head):
                break
            height, width = struct.unpack(">HH", head[position + 5:position + 9])
            return width, height, 3
        position += 2 + length
    raise HeaderError("not a valid JPEG (no frame header in its first 64 KiB)")


def webp_size(head: bytes) -> tuple[int, int, int]:
    """(width, height, channels) from a WebP's first chunk (lossy VP8, lossless VP8L or extended VP8X)."""
    if len(head) < 30 or head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        raise HeaderError("not a WebP file")
    kind, data = head[12:16], head[20:]
    if kind == b"VP8X":
        width = 1 + int.from_bytes(data[4:7], "little")
        height = 1 + int.from_bytes(data[7:10], "little")
        return width, height, 4 if data[0] & 0x10 else 3
    if kind == b"VP8L":
        if data[0] != 0x2F:
            raise HeaderError("not a valid WebP (bad lossless signature)")
        bits = int.from_bytes(data[1:5], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF), 4 if bits >> 28 & 1 else 3
    if kind == b"VP8 ":
        if data[3:6] != b"\x9d\x01\x2a":
            raise HeaderError("not a valid WebP (bad lossy frame start code)")
        width, height = struct.unpack("<HH", data[6:10])
        return width & 0x3FFF, height & 0x3FFF, 3
    raise HeaderError(f"not a supported WebP (first chunk {kind!r})")


def image_size(path: Path) -> tuple[int, int, int]:
    """(width, height, channels) of a stored image upload (.png, .jpg or .webp: the suffix was sniffed)."""
    with open(path, "rb") as handle:
        head = handle.read(HEADER_READ)
    reader = {".png": png_size, ".jpg": jpeg_size, ".webp": webp_size}.get(path.suffix)
    if reader is None:
        raise HeaderError("not a PNG, JPEG or WebP image")
    return reader(head)


# -- frame archives --------------------------------------------------------------------------------------------


def frame_members(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """The PNG frames of an archive, as the engine selects them (macOS resource forks left out)."""
    return [info for info in archive.infolist()
            if info.filename.lower().endswith(".png") and not info.filename.startswith("__MACOSX")]


def _member_head(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    with archive.open(info) as member:  # decompresses only what the 33 bytes need
        return member.read(33)


# -- the budget ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MediaBudget:
    """The limits one job's inputs are measured against (from ``UploadLimits``)."""

    max_side: int
    max_frames: int
    max_seconds: float
    max_decoded_bytes: int

    def _side(self, field: str, what: str, width: int, height: int) -> None:
        if max(width, height) > self.max_side:
            raise invalid(field, f"{what} is {width}x{height} pixels; this worker accepts at most {self.max_side} "
                          "pixels on a side (--max-side)", 413)

    def image(self, field: str, path: Path) -> Decoded:
        try:
            width, height, channels = image_size(path)
        except HeaderError as exc:
            raise invalid(field, f"the uploaded '{field}' is {exc}") from exc
        self._side(field, f"the uploaded '{field}'", width, height)
        return Decoded(field, 1, width * height * channels)

    def frame_archive(self, field: str, path: Path) -> Decoded:
        """Every PNG member's header is read (not only the first): a small first frame proves nothing."""
        try:
            with zipfile.ZipFile(path) as archive:
                members = frame_members(archive)
                if not members:
                    raise invalid(field, "the zip contains no .png frames")
                if len(members) > self.max_frames:
                    raise invalid(field, f"{len(members)} frames is more than this worker's {self.max_frames}-frame "
                                  "limit (--max-frames)", 413)
                total = 0
                for info in members:
                    if info.file_size > ZIP_MAX_MEMBER_BYTES:
                        raise invalid(field, f"{info.filename!r} decompresses to {info.file_size} bytes; frames must "
                                      f"be under {ZIP_MAX_MEMBER_BYTES >> 20} MiB each", 413)
                    try:
                        width, height, channels = png_size(_member_head(archive, info))
                    except HeaderError as exc:
                        raise invalid(field, f"frame {info.filename!r} of the zip is {exc}") from exc
                    self._side(field, f"frame {info.filename!r} of the zip", width, height)
                    total += width * height * channels
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, RuntimeError, NotImplementedError, EOFError,
                zlib.error) as exc:
            # RuntimeError: an encrypted member; NotImplementedError: a compression method zipfile lacks.
            raise invalid(field, f"not a readable zip of PNG frames ({exc})") from exc
        return Decoded(field, len(members), total)

    def video(self, field: str, path: Path, end: int | None) -> Decoded:
        """From ffmpeg's header probe; ``end`` (the spec's frame range end) caps the frames that are decoded."""
        from backend.scail2.conditioning.media import probe_video

        info = probe_video(path, field=field)  # a Scail2InputError for an unreadable video: the caller maps it
        self._side(field, f"the '{field}' video", info.width, info.height)
        if info.duration_s > self.max_seconds:
            raise invalid(field, f"the '{field}' video is {info.duration_s:.1f} s long; this worker accepts at most "
                          f"{self.max_seconds:.0f} s (--max-seconds): trim it first", 413)
        frames = info.estimated_frames if end is None else min(info.estimated_frames, end)
        if frames > self.max_frames:
            what = "frame_range asks for" if end is not None else f"the '{field}' video has about"
            raise invalid(field, f"{what} {frames} frames; this worker decodes at most {self.max_frames} "
                          "(--max-frames): trim it or give a frame_range", 413)
        return Decoded(field, frames, frames * info.width * info.height * (4 if info.has_alpha else 3))

    def check_total(self, decoded: Iterable[Decoded]) -> None:
        """All inputs of one job together must fit ``max_decoded_bytes``; the 413 names the largest."""
        decoded = list(decoded)
        need = sum(item.nbytes for item in decoded)
        if need <= self.max_decoded_bytes or not decoded:
            return
        largest = max(decoded, key=lambda item: item.nbytes)
        parts = ", ".join(f"{item.field} {item.nbytes / 2**20:.0f} MiB" for item in decoded)
        raise invalid(largest.field, f"the inputs decode to {need / 2**30:.2f} GiB ({parts}), more than this "
                      f"worker's {self.max_decoded_bytes / 2**30:.2f} GiB budget (--max-decoded-gb); use a "
                      "frame_range, fewer frames or smaller images", 413)


def measure_inputs(budget: MediaBudget, inputs: Mapping[str, str], folder: Path, clip_fields: Iterable[str],
                   end: int | None) -> list[Decoded]:
    """Measure every stored input (field -> file name in ``folder``) from its header and check the total.

    ``clip_fields`` are the fields holding clips (a video, or a zip of PNG frames); the rest are single images.
    Files of the wrong kind for their field are left to the decoding step, which refuses them by name. Raises a
    413/422 ``ApiError`` naming the field; decodes nothing.
    """
    clips = set(clip_fields)
    decoded: list[Decoded] = []
    for field, name in inputs.items():
        path = folder / name
        with reading(field, folder, inputs):
            if field not in clips:
                if path.suffix in (".png", ".jpg", ".webp"):
                    decoded.append(budget.image(field, path))
            elif path.suffix == ".zip":
                decoded.append(budget.frame_archive(field, path))
            elif path.suffix == ".video":
                decoded.append(budget.video(field, path, end))
    budget.check_total(decoded)
    return decoded

