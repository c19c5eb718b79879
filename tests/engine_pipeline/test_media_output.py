"""Reading the real test media, frame sequences and limits; writing results atomically."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.scail2 import GenerationResult, Scail2InputError, write_frames_atomic
from backend.scail2.conditioning.media import (
    MediaLimits,
    probe_video,
    read_clip,
    read_frame_folder,
    read_frame_zip,
    read_image,
    read_video,
    write_mp4,
)
from backend.scail2.pipelines.output import FRAMES_DIR, METADATA_FILE, VIDEO_FILE


def test_probe_real_clips(media_root: Path):
    carphone = probe_video(media_root / "carphone_pristine.mp4")
    assert (carphone.width, carphone.height, carphone.fps) == (176, 144, pytest.approx(29.97))
    assert carphone.estimated_frames == 120 and not carphone.has_alpha
    bunny = probe_video(media_root / "bigbuckbunny.mp4")
    assert (bunny.width, bunny.height, bunny.fps) == (1280, 720, 25.0)


def test_read_real_media(media_root: Path):
    clip = read_video(media_root / "carphone_pristine.mp4", max_frames=10)
    assert clip.frames.shape == (10, 144, 176, 3) and clip.frames.dtype == np.uint8 and clip.fps == pytest.approx(29.97)
    horse = read_image(media_root / "horse.png")
    assert horse.shape == (328, 400, 4)  # RGBA kept
    assert read_image(media_root / "chelsea.png").shape == (300, 451, 3)


def test_limits_are_enforced_before_decoding(media_root: Path):
    with pytest.raises(Scail2InputError, match="more than the 50-frame limit") as info:
        read_video(media_root / "bigbuckbunny.mp4", field="driving", limits=MediaLimits(max_frames=50))
    assert info.value.field == "driving"
    with pytest.raises(Scail2InputError, match="longer than the 2 s limit"):
        read_video(media_root / "bigbuckbunny.mp4", limits=MediaLimits(max_duration_s=2.0))
    with pytest.raises(Scail2InputError, match="outside the supported range"):
        read_video(media_root / "bigbuckbunny.mp4", limits=MediaLimits(max_side=1000))


def test_unreadable_media(tmp_path: Path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(Scail2InputError, match="empty"):
        read_clip(empty, field="driving")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"definitely not a video" * 100)
    with pytest.raises(Scail2InputError, match="ffmpeg"):
        read_clip(garbage, field="driving")
    broken_png = tmp_path / "ref.png"
    broken_png.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(Scail2InputError, match="not a readable image") as info:
        read_image(broken_png, field="reference")
    assert info.value.field == "reference"
    with pytest.raises(Scail2InputError, match="not found"):
        read_image(tmp_path / "missing.png")


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_frame_sequences_sort_numerically(tmp_path: Path):
    frames = [np.full((16, 24, 4), i * 20, np.uint8) for i in range(11)]
    archive = tmp_path / "frames.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for i in reversed(range(11)):  # frame_10 must come after frame_9
            handle.writestr(f"frame_{i}.png", _png_bytes(frames[i]))
    clip = read_frame_zip(archive, fps=12.0)
    assert clip.frames.shape == (11, 16, 24, 4) and clip.fps == 12.0
    assert [int(f[0, 0, 0]) for f in clip.frames] == [i * 20 for i in range(11)]

    folder = tmp_path / "folder"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(frames[i][..., :3]).save(folder / f"{i:04d}.png")
    assert read_frame_folder(folder, fps=24).frames.shape == (3, 16, 24, 3)
    with pytest.raises(Scail2InputError, match="fps"):
        read_clip(archive, fps=None)


def test_mp4_round_trip(tmp_path: Path):
    frames = np.random.default_rng(0).integers(0, 255, (7, 64, 96, 3), dtype=np.uint8)
    target = tmp_path / "out.mp4"
    write_mp4(frames, 23.976, target)
    info = probe_video(target)
    assert (info.width, info.height, info.fps) == (96, 64, pytest.approx(23.98, abs=0.01))
    assert read_video(target).frames.shape == (7, 64, 96, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]  # no temporary left behind


def _result(frames: int = 5) -> GenerationResult:
    pixels = np.random.default_rng(1).integers(0, 255, (frames, 32, 64, 3), dtype=np.uint8)
    return GenerationResult(frames=pixels, fps=29.97, seed=11, settings={"mode": "animation"})


def test_write_frames_atomic(tmp_path: Path):
    out = write_frames_atomic(_result(), tmp_path / "job")
    pngs = sorted((out / FRAMES_DIR).iterdir())
    assert [p.name for p in pngs] == [f"frame_{i:05d}.png" for i in range(5)]
    np.testing.assert_array_equal(np.asarray(Image.open(pngs[2])), _result().frames[2])
    assert probe_video(out / VIDEO_FILE).fps == pytest.approx(29.97)
    assert '"seed": 11' in (out / METADATA_FILE).read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["job"]

    with pytest.raises(FileExistsError):
        write_frames_atomic(_result(), out)
    write_frames_atomic(_result(3), out, overwrite=True)
    assert len(list((out / FRAMES_DIR).iterdir())) == 3


def test_failed_write_leaves_nothing(tmp_path: Path):
    odd = GenerationResult(frames=np.zeros((2, 33, 64, 3), np.uint8), fps=24.0, seed=0)  # odd height: no H.264
    with pytest.raises(ValueError, match="even sides"):
        write_frames_atomic(odd, tmp_path / "job")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("codec", "pix_fmt", "suffix"), [("ffv1", "bgra", ".mkv"), ("qtrle", "argb", ".mov")])
def test_videos_with_alpha_read_as_rgba(tmp_path: Path, codec: str, pix_fmt: str, suffix: str):
    # Lossless RGBA renders (Blender: FFV1 or QuickTime RLE with alpha) keep their alpha for the mask.
    import imageio_ffmpeg

    frames = np.random.default_rng(2).integers(0, 255, (4, 32, 48, 4), dtype=np.uint8)
    path = tmp_path / f"render{suffix}"
    writer = imageio_ffmpeg.write_frames(
        str(path), (48, 32), pix_fmt_in="rgba", pix_fmt_out=pix_fmt, codec=codec, fps=24, macro_block_size=1
    )
    writer.send(None)
    for frame in frames:
        writer.send(frame)
    writer.close()
    assert probe_video(path).has_alpha
    np.testing.assert_array_equal(read_video(path).frames, frames)
