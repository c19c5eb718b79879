"""``scail2-generate`` on the tiny checkpoint with real media files, and its one-line errors (exit status 2)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from backend.scail2.cli import main
from backend.scail2.conditioning.media import probe_video, write_image, write_mp4
from backend.scail2.pipelines.output import FRAMES_DIR, METADATA_FILE, VIDEO_FILE


def _inputs(tmp_path: Path, reference_rgba, driving_clip, animation_driving_mask) -> dict[str, Path]:
    """The test media as files a user would have: an RGBA PNG, an mp4 and a zip of PNG masks."""
    reference = tmp_path / "reference.png"
    write_image(reference_rgba, reference)
    driving = tmp_path / "driving.mp4"
    height, width = driving_clip.frames.shape[1:3]
    write_mp4(driving_clip.frames[:, : height // 2 * 2, : width // 2 * 2], driving_clip.fps, driving)
    masks = tmp_path / "driving_mask.zip"
    with zipfile.ZipFile(masks, "w") as archive:
        for index, frame in enumerate(animation_driving_mask.frames):
            path = tmp_path / f"mask_{index}.png"
            Image.fromarray(frame).save(path)
            archive.write(path, f"mask_{index:03d}.png")
    return {"reference": reference, "driving": driving, "driving_mask": masks}


def test_generate_writes_frames_video_and_metadata(
    tiny_checkpoint, tmp_path, reference_rgba, driving_clip, animation_driving_mask, capsys
):
    files = _inputs(tmp_path, reference_rgba, driving_clip, animation_driving_mask)
    out = tmp_path / "out"
    status = main(
        [
            "--checkpoint", str(tiny_checkpoint),
            "--reference", str(files["reference"]),
            "--driving", str(files["driving"]),
            "--driving-mask", str(files["driving_mask"]),
            "--prompt", "a man talking in a car",
            "--mode", "animation",
            "--preset", "balanced",
            "--steps", "1",
            "--seed", "5",
            "--size", "96x64",
            "--segment-len", "9",
            "--device", "cpu",
            "--out", str(out),
            "--no-progress",
        ]
    )  # fmt: skip
    assert status == 0, capsys.readouterr().err
    frames = sorted((out / FRAMES_DIR).iterdir())
    assert len(frames) == len(driving_clip.frames)
    assert np.asarray(Image.open(frames[0])).shape == (64, 96, 3)
    assert probe_video(out / VIDEO_FILE).fps == probe_video(files["driving"]).fps  # the driving clip's fps, not 16
    metadata = json.loads((out / METADATA_FILE).read_text())
    assert metadata["seed"] == 5 and metadata["settings"]["preset"] == "balanced"
    assert metadata["settings"]["loras"] == {"lightx2v": 1.0}
    assert "seed 5" in capsys.readouterr().out


def test_user_errors_print_one_line_and_exit_2(tiny_checkpoint, tmp_path, capsys):
    missing = tmp_path / "missing.png"
    status = main(
        ["--checkpoint", str(tiny_checkpoint), "--reference", str(missing), "--driving", str(missing),
         "--out", str(tmp_path / "out"), "--no-progress"]
    )  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1
    assert err.startswith("scail2-generate: error:") and "missing.png: file not found" in err

    image = tmp_path / "ref.png"
    write_image(np.zeros((64, 64, 3), np.uint8), image)
    status = main(
        ["--checkpoint", str(tmp_path / "nowhere"), "--reference", str(image), "--driving", str(image), "--fps", "8",
         "--reference-mask", str(image), "--size", "100p", "--out", str(tmp_path / "out"), "--no-progress"]
    )  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1 and "size" in err
    assert not (tmp_path / "out").exists()
