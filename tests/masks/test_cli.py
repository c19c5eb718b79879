"""The masks CLI end to end (tiny SAM3, real media) and the ``--driving-mask auto`` hook as scail2-generate uses
it: its own argument parser and request builder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from backend.masks.arguments import AutoMaskHook
from backend.masks.cli import main
from backend.scail2.conditioning.masks import BLACK, PALETTE_RGB, WHITE
from backend.scail2.conditioning.media import probe_video, read_clip, read_image

PALETTE = set(PALETTE_RGB)


def colours_in(frames: np.ndarray) -> set[tuple[int, int, int]]:
    return {tuple(int(v) for v in c) for c in np.unique(frames.reshape(-1, 3), axis=0)}


def test_cli_writes_both_masks_and_a_summary(tiny_sam3, media_root, short_clips, tmp_path, capsys) -> None:
    out = tmp_path / "masks"
    clip = short_clips["bigbuckbunny"]
    code = main(
        [
            "--sam3",
            str(tiny_sam3),
            "--mode",
            "replacement",
            "--reference",
            str(media_root / "chelsea.png"),
            "--driving",
            str(clip),
            "--mask-prompts",
            "rabbit, character",
            "--mask-threshold",
            "0",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    summary = json.loads((out / "masks.json").read_text())
    assert summary["mode"] == "replacement" and summary["prompts"] == ["rabbit", "character"]
    reference = read_image(out / "reference_mask.png")
    assert reference.shape[:2] == read_image(media_root / "chelsea.png").shape[:2]
    assert colours_in(reference) <= PALETTE | {BLACK}
    driving = read_clip(out / "driving_mask.mkv")
    info = probe_video(clip)
    assert driving.frames.shape[:3] == (read_clip(clip).num_frames, info.height, info.width)
    assert driving.fps == pytest.approx(info.fps, rel=1e-3)
    assert colours_in(driving.frames[..., :3]) <= PALETTE | {WHITE}
    assert "driving mask: driving_mask.mkv" in capsys.readouterr().out


def test_cli_errors_name_the_missing_sam3_folder(media_root, tmp_path, capsys) -> None:
    code = main(
        [
            "--reference",
            str(media_root / "astronaut.png"),
            "--out",
            str(tmp_path / "o"),
            "--sam3",
            str(tmp_path / "no-sam3"),
        ]
    )
    assert code == 2
    assert "no-sam3 does not exist" in capsys.readouterr().err


def test_auto_hook_fills_scail2_generate_requests(tiny_sam3, media_root, short_clips) -> None:
    from backend.scail2.cli import build_parser, build_request

    parser = build_parser()  # scail2-generate adds the SAM3 options through add_auto_mask_arguments
    assert any(action.dest == "sam3" for action in parser._actions)
    args = parser.parse_args(
        [
            "--checkpoint",
            "unused",
            "--reference",
            str(media_root / "astronaut.png"),
            "--driving",
            str(short_clips["carphone"]),
            "--driving-mask",
            "auto",
            "--reference-mask",
            "auto",
            "--sam3",
            str(tiny_sam3),
            "--mask-threshold",
            "0",
            "--device",
            "cpu",
            "--out",
            "unused",
        ]
    )
    hook = AutoMaskHook.take(args)
    assert hook.reference and hook.driving and args.driving_mask is None and args.reference_mask is None
    request = hook.apply(build_request(args))
    assert request.driving_mask.frames.shape[:3] == request.driving.frames.shape[:3]
    assert request.driving_mask.fps == request.driving.fps
    assert colours_in(request.driving_mask.frames) <= PALETTE | {BLACK}
    assert request.reference_mask.shape == request.reference.shape
    assert colours_in(request.reference_mask) <= PALETTE | {WHITE}
    # Without "auto" the hook leaves the request alone and never loads SAM3.
    plain = parser.parse_args(
        ["--checkpoint", "c", "--reference", "r.png", "--driving", "d.mp4", "--out", "o"]
    )
    untouched = AutoMaskHook.take(plain)
    assert not (untouched.reference or untouched.driving)
    assert untouched.apply("request") == "request"
