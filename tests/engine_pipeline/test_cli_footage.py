"""``scail2-generate`` with real footage as a new user has it: the README's quick start with an ordinary photo and
video, the mask and frame choices the add-on offers, memory estimates before decoding and generating, the size
range, the dtype spellings and start-up checks of the checkpoint's files. Runs on the tiny checkpoint."""

from __future__ import annotations

import json
import re
import shlex
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.scail2.cli import build_parser, main
from backend.scail2.conditioning.media import write_image
from backend.scail2.errors import CheckpointError
from backend.scail2.pipelines.output import FRAMES_DIR, METADATA_FILE

REPO = Path(__file__).resolve().parents[2]
# What makes a run tiny: options appended to the user's command line.
TINY_RUN = ["--size", "96x64", "--steps", "1", "--segment-len", "9", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def tiny_sam3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from backend.masks.tiny import write_tiny_sam3

    return write_tiny_sam3(tmp_path_factory.mktemp("sam3") / "sam3", seed=0)


@pytest.fixture(scope="module")
def photo(media_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ordinary photo: a JPEG, no alpha channel."""
    path = tmp_path_factory.mktemp("photo") / "me.jpg"
    Image.open(media_root / "astronaut.png").convert("RGB").save(path, quality=90)
    return path


@pytest.fixture(scope="module")
def cut_out(media_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The photo as a PNG with a transparent background around the subject."""
    image = np.asarray(Image.open(media_root / "astronaut.png").convert("RGB"))
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
    alpha = ((((yy - 300) / 200.0) ** 2 + ((xx - 256) / 150.0) ** 2) < 1).astype(np.uint8) * 255
    path = tmp_path_factory.mktemp("cut_out") / "me.png"
    write_image(np.dstack([image, alpha]), path)
    return path


def run(capsys, *args: str) -> tuple[int, str]:
    status = main([str(a) for a in args])
    return status, capsys.readouterr().err.strip()


def readme_command() -> list[str]:
    """The scail2-generate command of the README's quick start, as argv."""
    text = (REPO / "README.md").read_text().replace("\\\n", " ")
    line = next(line.strip() for line in text.splitlines() if line.strip().startswith("scail2-generate "))
    return shlex.split(line)[1:]


def test_readme_quick_start_runs_with_an_ordinary_photo_and_video(
    tiny_checkpoint, tiny_sam3, photo, media_root, tmp_path, capsys
):
    argv = readme_command()
    substitutions = {"~/models/SCAIL-2": tiny_checkpoint, "me.jpg": photo, "~/models/sam3": tiny_sam3,
                     "dance.mp4": media_root / "carphone_pristine.mp4", "out/": tmp_path / "out"}
    assert set(substitutions) <= set(argv), argv
    argv = [str(substitutions.get(arg, arg)) for arg in argv]
    argv[argv.index("--frames") + 1] = "1:13"  # two 9-frame windows are enough here
    # The untrained tiny SAM3 scores everything low: it only finds a subject with no detection threshold.
    status, err = run(capsys, *argv, *TINY_RUN, "--mask-threshold", "0")
    assert status == 0, err
    metadata = json.loads((tmp_path / "out" / METADATA_FILE).read_text())
    assert metadata["settings"]["frames"] == 13
    assert metadata["settings"]["color_anchor"] is True  # two windows: the second one is anchored


def test_whole_frame_mask_and_a_frame_range(tiny_checkpoint, cut_out, media_root, tmp_path, capsys):
    out = tmp_path / "out"
    status, err = run(capsys, "--checkpoint", tiny_checkpoint, "--reference", cut_out,
                      "--driving", media_root / "carphone_pristine.mp4", "--driving-mask", "frame",
                      "--frames", "3:7", "--out", out, *TINY_RUN)
    assert status == 0, err
    assert len(list((out / FRAMES_DIR).iterdir())) == 5
    settings = json.loads((out / METADATA_FILE).read_text())["settings"]
    assert settings["frames"] == 5 and settings["color_anchor"] is False  # one window: nothing to anchor


@pytest.mark.parametrize(("options", "words"), [
    (["--reference-mask", "alpha"], ["--reference-mask alpha", "no alpha channel", "--reference-mask auto"]),
    (["--reference-mask", "{cut_out}"], ["--driving-mask alpha", "--driving-mask frame"]),
    (["--reference-mask", "{cut_out}", "--driving-mask", "frame", "--frames", "0:5"], ["--frames '0:5'", "1:81"]),
    (["--reference-mask", "{cut_out}", "--driving-mask", "frame", "--frames", "200:"], ["only 120 frames"]),
    (["--size", "32x32"], ["height 32 is below the smallest allowed side", "from 64 to 2048", "nearest: 64"]),
    (["--size", "100x64"], ["width 100 is not a multiple of 32", "from 64 to 2048", "nearest: 96"]),
])
def test_choices_that_cannot_work_say_what_to_do(tiny_checkpoint, photo, cut_out, media_root, tmp_path, capsys,
                                                  options, words):
    options = [o.replace("{cut_out}", str(cut_out)) for o in options]
    status, err = run(capsys, "--checkpoint", tiny_checkpoint, "--reference", photo,
                      "--driving", media_root / "carphone_pristine.mp4", "--out", tmp_path / "out", *options)
    assert status == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("scail2-generate: error:")
    for word in words:
        assert word in err, err
    assert not (tmp_path / "out").exists()


def test_decoding_that_would_not_fit_fails_before_decoding(tiny_checkpoint, cut_out, media_root, tmp_path, capsys):
    started = time.monotonic()
    status, err = run(capsys, "--checkpoint", tiny_checkpoint, "--reference", cut_out,
                      "--driving", media_root / "bigbuckbunny.mp4", "--driving-mask", "frame",
                      "--max-decoded-gb", "0.1", "--out", tmp_path / "out", *TINY_RUN)
    assert status == 2 and len(err.splitlines()) == 1, err
    assert re.search(r"\d+ driving frames of 1280x720 decode to \d+\.\d GiB, more than --max-decoded-gb 0\.1", err)
    assert "--frames" in err and time.monotonic() - started < 30
    # With fewer frames it fits.
    status, err = run(capsys, "--checkpoint", tiny_checkpoint, "--reference", cut_out,
                      "--driving", media_root / "bigbuckbunny.mp4", "--driving-mask", "frame", "--frames", "1:9",
                      "--max-decoded-gb", "0.1", "--out", tmp_path / "out", *TINY_RUN)
    assert status == 0, err


def test_a_generation_that_would_not_fit_fails_before_it_starts(tiny_checkpoint, cut_out, media_root, tmp_path,
                                                                capsys):
    # 2048x2048 over 120 frames: the resized inputs, the result and one window's decoded video alone are ~15 GiB.
    args = ["--checkpoint", tiny_checkpoint, "--reference", cut_out, "--driving", media_root / "carphone_pristine.mp4",
            "--driving-mask", "frame", "--out", tmp_path / "out", "--device", "cpu", "--steps", "1", "--no-progress"]
    started = time.monotonic()
    status, err = run(capsys, *args, "--size", "2048x2048", "--max-memory-gb", "8")
    assert status == 2 and len(err.splitlines()) == 1, err
    assert re.search(r"--size 2048x2048 with 120 frames needs about \d+\.\d GiB of memory for frames and "
                     r"activations, more than the 8\.0 GiB the given limit; use a smaller --size, fewer --frames", err)
    assert time.monotonic() - started < 60 and not (tmp_path / "out").exists()
    status, err = run(capsys, *args, "--size", "96x64", "--frames", "1:9", "--max-memory-gb", "8")
    assert status == 0, err


def test_both_commands_take_every_dtype_spelling():
    from backend.worker.cli import build_parser as worker_parser

    for spelling, name in (("bf16", "bfloat16"), ("bfloat16", "bfloat16"), ("fp16", "float16"),
                           ("float16", "float16"), ("fp32", "float32"), ("float32", "float32")):
        generate = build_parser().parse_args(["--checkpoint", "c", "--reference", "r", "--driving", "d",
                                              "--out", "o", "--dtype", spelling])
        worker = worker_parser().parse_args(["serve", "--checkpoint", "c", "--data", "d", "--dtype", spelling])
        from backend.scail2.accel.options import resolve_dtype

        assert resolve_dtype(generate.dtype, "cuda") == resolve_dtype(worker.dtype, "cuda") == name


@pytest.mark.parametrize("lora", ["loras/*.safetensors", "model/bias-aware-dpo-lora.pt"])
def test_a_truncated_lora_fails_at_start_naming_the_file(tiny_checkpoint_copy, cut_out, media_root, tmp_path,
                                                         capsys, lora):
    from backend.scail2 import Scail2Pipeline

    (path,) = tiny_checkpoint_copy.glob(lora)
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        Scail2Pipeline.from_pretrained(tiny_checkpoint_copy, device="cpu")
    # The command line stops before generating (the quality preset would never use this LoRA).
    status, err = run(capsys, "--checkpoint", tiny_checkpoint_copy, "--reference", cut_out,
                      "--driving", media_root / "carphone_pristine.mp4", "--driving-mask", "frame", "--frames", "1:5",
                      "--preset", "quality", "--out", tmp_path / "out", *TINY_RUN)
    assert status == 2 and str(path) in err and "truncated" in err, err
    assert not (tmp_path / "out").exists()
