"""Driving masks on real clips with the tiny random SAM3 loaded through the real loader.

Whatever the untrained model detects, the output must be a valid mask clip: the clip's exact frame count, size
and fps, only palette colours plus the mode's background (black for animation, white for replacement), written
losslessly and read back bit-exact.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from backend.masks.driving import make_driving_mask, write_mask_clip
from backend.masks.settings import MaskSettings
from backend.scail2.conditioning.masks import BLACK, PALETTE_RGB, WHITE
from backend.scail2.conditioning.media import VideoClip, probe_video, read_clip

PALETTE = set(PALETTE_RGB)


def colours_in(frames: np.ndarray) -> set[tuple[int, int, int]]:
    return {tuple(int(v) for v in c) for c in np.unique(frames.reshape(-1, 3), axis=0)}


@pytest.mark.parametrize(
    ("clip_name", "mode", "background", "suffix"),
    [
        # Each clip once and each mode once (tracking dominates the runtime); both writers.
        ("carphone", "animation", BLACK, ".mkv"),
        ("bigbuckbunny", "replacement", WHITE, ""),
    ],
)
def test_driving_mask_matches_the_clip_and_the_mode(
    segmenter, short_clips, tmp_path: Path, clip_name: str, mode: str, background, suffix: str
) -> None:
    source = short_clips[clip_name]
    info = probe_video(source)
    clip = read_clip(source)
    progress: list[tuple[int, int]] = []
    result = make_driving_mask(
        segmenter, clip, MaskSettings.build(mode), lambda d, t: progress.append((d, t))
    )

    frames = result.clip.frames
    assert frames.shape == (clip.num_frames, info.height, info.width, 3) and frames.dtype == np.uint8
    assert result.clip.fps == pytest.approx(info.fps)
    found = colours_in(frames)
    opposite = WHITE if background == BLACK else BLACK
    assert found <= PALETTE | {background} and opposite not in found
    assert background in found  # subjects never fill a whole clip here, so the background shows
    assert len(result.identities) <= (2 if mode == "animation" else 1)
    assert [i.colour for i in result.identities] == ["blue", "red"][: len(result.identities)]
    assert result.check.ok and result.check.ambiguous_fraction == 0.0
    assert progress[-1] == (clip.num_frames, clip.num_frames)

    written = write_mask_clip(result.clip, tmp_path / f"driving_mask{suffix}")
    if suffix == ".mkv":
        back = read_clip(written)
    else:
        meta = json.loads((written / "mask.json").read_text())
        assert meta["frames"] == clip.num_frames and meta["fps"] == pytest.approx(info.fps)
        back = read_clip(written, fps=meta["fps"])
    assert back.fps == pytest.approx(info.fps, rel=1e-3)
    np.testing.assert_array_equal(back.frames[..., :3], frames)  # lossless
    assert not list(tmp_path.glob(".driving_mask*"))  # no temporary left behind


def test_the_tiny_model_finds_subjects_on_the_human_clip(segmenter, short_clips) -> None:
    """Guards the tests above against passing trivially on all-background masks."""
    result = make_driving_mask(segmenter, read_clip(short_clips["carphone"]), MaskSettings.build("animation"))
    assert result.identities and not result.warnings
    colours = colours_in(result.clip.frames)
    assert PALETTE_RGB[0] in colours
    # Colour overrides reach the painted frames.
    recoloured = make_driving_mask(
        segmenter, read_clip(short_clips["carphone"]), MaskSettings.build("animation", colours="green,cyan")
    )
    assert [i.colour for i in recoloured.identities] == ["green", "cyan"][: len(recoloured.identities)]
    assert colours_in(recoloured.clip.frames) <= {PALETTE_RGB[2], PALETTE_RGB[4], BLACK}


def test_rgba_driving_frames_are_accepted(segmenter) -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(2, 40, 56, 4), dtype=np.uint8)
    result = make_driving_mask(segmenter, VideoClip(frames, 12.0), MaskSettings.build("replacement"))
    assert result.clip.frames.shape == (2, 40, 56, 3) and result.clip.fps == 12.0
    assert colours_in(result.clip.frames) <= PALETTE | {WHITE}
