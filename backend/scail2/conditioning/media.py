"""Reading and writing images, videos and frame sequences.

Videos are decoded with the ffmpeg binary that ``imageio-ffmpeg`` ships. A video is probed first (size, fps,
duration, pixel format) and the limits are enforced before anything is decoded, so an oversized upload fails fast
instead of filling memory. Frame sequences come as a zip of PNGs or a folder of PNGs (what Blender renders).
Writers are atomic: they write next to the target and rename.
"""

from __future__ import annotations

import io
import math
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import Scail2InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


@dataclass
class VideoClip:
    """Frames ``[T, H, W, 3|4]`` uint8 (RGBA allowed: alpha can give the mask) and their frame rate."""

    frames: np.ndarray
    fps: float

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


@dataclass(frozen=True)
class MediaLimits:
    """Upper bounds on what the engine accepts; checked before decoding whole videos."""

    max_frames: int = 2400
    max_duration_s: float = 600.0
    max_side: int = 4096
    min_side: int = 16


DEFAULT_LIMITS = MediaLimits()


@dataclass(frozen=True)
class VideoInfo:
    """What ffmpeg reports about a video without decoding it."""

    width: int
    height: int
    fps: float
    duration_s: float
    pix_fmt: str

    @property
    def has_alpha(self) -> bool:
        # ffmpeg pixel formats with an alpha plane: yuva420p, rgba, bgra, argb, ya8, gbrap ...
        name = self.pix_fmt.split("(")[0]
        return name.startswith(("yuva", "rgba", "bgra", "argb", "abgr", "ya", "gbrap", "pal8"))

    @property
    def estimated_frames(self) -> int:
        return int(math.ceil(self.duration_s * self.fps)) if self.duration_s > 0 else 0


def _check_size(width: int, height: int, field: str, source: str, limits: MediaLimits) -> None:
    if min(width, height) < limits.min_side or max(width, height) > limits.max_side:
        raise Scail2InputError(
            f"{source}: {width}x{height} pixels is outside the supported range "
            f"({limits.min_side}..{limits.max_side} per side)",
            field=field,
        )


def _as_rgb_or_rgba(image: Image.Image) -> np.ndarray:
    """PIL image -> [H, W, 3] or [H, W, 4] uint8; palette/greyscale transparency becomes alpha."""
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale (e.g. a matte): scale to 8 bits rather than clipping.
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if array.max() > 255 else 255.0
        grey = np.clip(np.round(array / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    return np.asarray(image.convert("RGBA" if has_alpha else "RGB"), dtype=np.uint8).copy()


def read_image(path: str | Path, field: str = "image", limits: MediaLimits = DEFAULT_LIMITS) -> np.ndarray:
    """An image file -> [H, W, 3|4] uint8 (alpha kept when the file has it)."""
    path = Path(path)
    if not path.is_file():
        raise Scail2InputError(f"{path}: file not found", field=field)
    try:
        with Image.open(path) as image:
            _check_size(image.width, image.height, field, str(path), limits)
            image.load()
            return _as_rgb_or_rgba(image)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise Scail2InputError(f"{path}: not a readable image ({exc})", field=field) from exc


def decode_image_bytes(
    data: bytes, name: str, field: str, limits: MediaLimits = DEFAULT_LIMITS
) -> np.ndarray:
    """Encoded image bytes (PNG, JPEG ...) -> [H, W, 3|4] uint8."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            _check_size(image.width, image.height, field, name, limits)
            image.load()
            return _as_rgb_or_rgba(image)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise Scail2InputError(f"{name}: not a readable image ({exc})", field=field) from exc


def probe_video(path: str | Path, field: str = "video") -> VideoInfo:
    """Size, fps, duration and pixel format of a video, read from ffmpeg's header parse (no decoding)."""
    import imageio_ffmpeg

    path = Path(path)
    if not path.is_file():
        raise Scail2InputError(f"{path}: file not found", field=field)
    if path.stat().st_size == 0:
        raise Scail2InputError(f"{path}: the file is empty", field=field)
    reader = imageio_ffmpeg.read_frames(str(path))
    try:
        meta = next(reader)
    except (OSError, RuntimeError, StopIteration) as exc:
        raise Scail2InputError(
            f"{path}: ffmpeg cannot read this video ({_first_line(exc)})", field=field
        ) from exc
    finally:
        reader.close()
    width, height = meta.get("size") or (0, 0)
    fps = float(meta.get("fps") or 0.0)
    if width <= 0 or height <= 0:
        raise Scail2InputError(f"{path}: no video stream found", field=field)
    if not fps > 0:
        raise Scail2InputError(
            f"{path}: the video reports no frame rate; re-encode it at a constant rate", field=field
        )
    return VideoInfo(
        int(width), int(height), fps, float(meta.get("duration") or 0.0), str(meta.get("pix_fmt", ""))
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_video(
    path: str | Path,
    field: str = "video",
    limits: MediaLimits = DEFAULT_LIMITS,
    max_frames: int | None = None,
) -> VideoClip:
    """A video file -> ``VideoClip`` (RGBA when the stream has alpha), refusing oversized videos before decoding.

    ``max_frames`` stops decoding early (for previews); it never exceeds ``limits.max_frames``.
    """
    import imageio_ffmpeg

    info = probe_video(path, field)
    _check_size(info.width, info.height, field, str(path), limits)
    if info.duration_s > limits.max_duration_s:
        raise Scail2InputError(
            f"{path}: {info.duration_s:.1f} s is longer than the {limits.max_duration_s:.0f} s limit; trim it first",
            field=field,
        )
    cap = limits.max_frames if max_frames is None else min(max_frames, limits.max_frames)
    if max_frames is None and info.estimated_frames > limits.max_frames + 1:
        raise Scail2InputError(
            f"{path}: about {info.estimated_frames} frames is more than the {limits.max_frames}-frame limit; "
            "trim it first",
            field=field,
        )
    channels = 4 if info.has_alpha else 3
    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgba" if channels == 4 else "rgb24", bpp=channels)
    frames: list[np.ndarray] = []
    try:
        next(reader)  # the metadata dict again
        for raw in reader:
            if len(frames) >= cap:
                if max_frames is None:
                    raise Scail2InputError(
                        f"{path}: more than {limits.max_frames} frames; trim it first", field=field
                    )
                break
            frames.append(np.frombuffer(raw, dtype=np.uint8).reshape(info.height, info.width, channels))
    except (OSError, RuntimeError) as exc:
        raise Scail2InputError(
            f"{path}: ffmpeg failed while decoding ({_first_line(exc)})", field=field
        ) from exc
    finally:
        reader.close()
    if not frames:
        raise Scail2InputError(f"{path}: the video has no decodable frames", field=field)
    return VideoClip(np.stack(frames), info.fps)


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _stack_frames(frames: list[np.ndarray], source: str, field: str) -> np.ndarray:
    if not frames:
        raise Scail2InputError(f"{source}: no PNG frames found", field=field)
    shapes = {frame.shape[:2] for frame in frames}
    if len(shapes) > 1:
        raise Scail2InputError(
            f"{source}: frames differ in size ({sorted(shapes)}); render them all alike", field=field
        )
    channels = max(frame.shape[2] for frame in frames)
    if channels == 4:
        frames = [
            f if f.shape[2] == 4 else np.concatenate([f, np.full_like(f[..., :1], 255)], -1) for f in frames
        ]
    return np.stack(frames)


def _zip_frame_names(archive: zipfile.ZipFile) -> list[str]:
    return sorted(
        (n for n in archive.namelist() if n.lower().endswith(".png") and not n.startswith("__MACOSX")),
        key=_natural_key,
    )


def _folder_frame_names(path: Path) -> list[str]:
    return sorted((p.name for p in path.iterdir() if p.suffix.lower() == ".png"), key=_natural_key)


def read_frame_zip(
    path: str | Path, fps: float, field: str = "video", limits: MediaLimits = DEFAULT_LIMITS,
    end: int | None = None,
) -> VideoClip:
    """A zip of PNG frames (sorted by name, numbers compared numerically) -> ``VideoClip`` at ``fps``;
    ``end`` reads only the first ``end`` frames."""
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise Scail2InputError(f"{path}: not a readable zip of PNG frames ({exc})", field=field) from exc
    with archive:
        names = _zip_frame_names(archive)[:end]
        if len(names) > limits.max_frames:
            raise Scail2InputError(
                f"{path}: {len(names)} frames is more than the {limits.max_frames}-frame limit", field=field
            )
        frames = [decode_image_bytes(archive.read(name), f"{path}:{name}", field, limits) for name in names]
    return VideoClip(_stack_frames(frames, str(path), field), _check_fps(fps, field))


def read_frame_folder(
    path: str | Path, fps: float, field: str = "video", limits: MediaLimits = DEFAULT_LIMITS,
    end: int | None = None,
) -> VideoClip:
    """A folder of PNG frames (sorted like ``read_frame_zip``) -> ``VideoClip`` at ``fps``; ``end`` as there."""
    path = Path(path)
    names = _folder_frame_names(path)[:end]
    if len(names) > limits.max_frames:
        raise Scail2InputError(
            f"{path}: {len(names)} frames is more than the {limits.max_frames}-frame limit", field=field
        )
    frames = [read_image(path / name, field, limits) for name in names]
    return VideoClip(_stack_frames(frames, str(path), field), _check_fps(fps, field))


def _check_fps(fps: float, field: str) -> float:
    if not (isinstance(fps, int | float) and 0 < fps <= 240):
        raise Scail2InputError(f"fps must be in (0, 240] for a frame sequence, got {fps!r}", field=field)
    return float(fps)


def _check_clip_source(path: Path, field: str, fps: float | None, needs_fps: bool = True) -> None:
    if not path.exists():
        raise Scail2InputError(f"{path}: file not found", field=field)
    suffix = path.suffix.lower()
    if needs_fps and (path.is_dir() or suffix == ".zip" or suffix in IMAGE_SUFFIXES) and fps is None:
        raise Scail2InputError(
            f"{path}: frame sequences and images carry no frame rate; give one (--fps on the command line)",
            field=field,
        )


def read_clip(
    path: str | Path, field: str = "video", fps: float | None = None, limits: MediaLimits = DEFAULT_LIMITS,
    end: int | None = None,
) -> VideoClip:
    """Any supported driving source: a video file, a zip or folder of PNGs, or a single image (one frame).

    ``fps`` is required for frame sequences and images, and overrides nothing for video files. ``end`` stops
    decoding after that many frames (the rest of a long clip is never held in memory).
    """
    path = Path(path)
    _check_clip_source(path, field, fps)
    suffix = path.suffix.lower()
    if path.is_dir():
        return read_frame_folder(path, fps, field, limits, end)
    if suffix == ".zip":
        return read_frame_zip(path, fps, field, limits, end)
    if suffix in IMAGE_SUFFIXES:
        return VideoClip(read_image(path, field, limits)[None], _check_fps(fps, field))
    return read_video(path, field, limits, max_frames=end)


@dataclass(frozen=True)
class ClipGeometry:
    """What decoding a clip will hold in memory, known from headers only."""

    frames: int
    width: int
    height: int
    channels: int

    @property
    def decoded_bytes(self) -> int:
        return self.frames * self.width * self.height * self.channels


def _image_header(source: str, stream, field: str) -> tuple[int, int, int]:
    """(width, height, channels) of an image file or stream, from its header."""
    try:
        with Image.open(stream) as image:
            has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
            return image.width, image.height, 4 if has_alpha else 3
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise Scail2InputError(f"{source}: not a readable image ({exc})", field=field) from exc


def clip_geometry(path: str | Path, field: str = "video", end: int | None = None) -> ClipGeometry:
    """Frames (up to ``end``), size and channels of what ``read_clip`` would decode, from headers alone: a video
    is probed by ffmpeg, a frame sequence counted and its first frame's header read."""
    path = Path(path)
    _check_clip_source(path, field, None, needs_fps=False)
    suffix = path.suffix.lower()
    if path.is_dir():
        names = _folder_frame_names(path)
        first = path / names[0] if names else None
    elif suffix == ".zip":
        try:
            with zipfile.ZipFile(path) as archive:
                names = _zip_frame_names(archive)
                first = io.BytesIO(archive.read(names[0])) if names else None
        except (zipfile.BadZipFile, OSError) as exc:
            raise Scail2InputError(f"{path}: not a readable zip of PNG frames ({exc})", field=field) from exc
    elif suffix in IMAGE_SUFFIXES:
        return ClipGeometry(1, *_image_header(str(path), path, field))
    else:
        names = first = None
    if names is not None:
        if first is None:
            raise Scail2InputError(f"{path}: no PNG frames found", field=field)
        return ClipGeometry(len(names[:end]), *_image_header(f"{path}:{names[0]}", first, field))
    info = probe_video(path, field)
    frames = info.estimated_frames if end is None else min(info.estimated_frames, end)
    return ClipGeometry(frames, info.width, info.height, 4 if info.has_alpha else 3)


def _atomic_target(path: Path) -> Path:
    """A fresh temporary file beside ``path`` (same file system, so the final rename is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    os.chmod(temp, 0o644)  # mkstemp creates 0600; results are meant to be shared like any written file
    return Path(temp)


def write_image(image: np.ndarray, path: str | Path) -> None:
    """[H, W, 3|4] uint8 -> PNG, written to a temporary file and renamed."""
    path = Path(path)
    temp = _atomic_target(path)
    try:
        Image.fromarray(np.ascontiguousarray(image)).save(temp, format="PNG")
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def write_png_sequence(frames: np.ndarray, folder: str | Path, prefix: str = "frame_") -> list[Path]:
    """[T, H, W, 3] uint8 -> ``folder/<prefix>00000.png`` ... (numbered from 0, 5 digits or more)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    digits = max(5, len(str(len(frames) - 1)))
    paths = []
    for index, frame in enumerate(frames):
        target = folder / f"{prefix}{index:0{digits}d}.png"
        Image.fromarray(np.ascontiguousarray(frame)).save(target, format="PNG")
        paths.append(target)
    return paths


def write_mp4(frames: np.ndarray, fps: float, path: str | Path, crf: int = 15) -> None:
    """[T, H, W, 3] uint8 -> H.264 mp4 (yuv420p, CRF ``crf``), written to a temporary file and renamed."""
    import imageio_ffmpeg

    path = Path(path)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected [T, H, W, 3] uint8 frames, got {frames.shape} {frames.dtype}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"H.264 yuv420p needs even sides, got {width}x{height}")
    temp = _atomic_target(path.with_suffix(".mp4"))
    try:
        writer = imageio_ffmpeg.write_frames(
            str(temp),
            (width, height),
            fps=fps,
            codec="libx264",
            pix_fmt_out="yuv420p",
            quality=None,
            macro_block_size=2,
            output_params=["-crf", str(crf), "-f", "mp4"],
        )
        writer.send(None)
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
