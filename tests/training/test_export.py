"""Pairs leave the generator the way the engine takes inputs: uint8 arrays, a GenerationRequest run by the real
pipeline, and files that ``scail2-generate`` reads."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from backend.palette import PALETTE
from backend.scail2 import SamplingSettings, Scail2Pipeline
from backend.scail2.cli import main as scail2_generate
from training.evaluation import evaluate, pipeline_generator, score_clip, summarize
from training.export import generation_request, pair_arrays, to_uint8, write_pair


@pytest.mark.parametrize(
    ("fixture", "reference_background", "driving_background"),
    [("animation_batch", 255, 0), ("replacement_batch", 0, 255)],
)
def test_pair_arrays_are_uint8_with_the_mode_polarity(fixture, reference_background, driving_background, request):
    batch = request.getfixturevalue(fixture)
    arrays = pair_arrays(batch, 1)
    height, width = batch.size
    assert arrays.reference.shape == arrays.reference_mask.shape == (height, width, 3)
    assert arrays.driving.shape == arrays.driving_mask.shape == (batch.frames, height, width, 3)
    for array in (arrays.reference, arrays.reference_mask, arrays.driving, arrays.driving_mask, arrays.target):
        assert array.dtype == np.uint8
    blue = np.array(PALETTE[0], dtype=np.uint8)
    assert (arrays.reference_mask[batch.reference_ids[1].numpy() == 0] == reference_background).all()
    assert (arrays.reference_mask[batch.reference_ids[1].numpy() == 1] == blue).all()
    assert (arrays.driving_mask[batch.driving_ids[1].numpy() == 0] == driving_background).all()
    assert (arrays.driving_mask[batch.driving_ids[1].numpy() == 1] == blue).all()
    np.testing.assert_array_equal(arrays.driving, to_uint8(batch.driving[1]))
    with pytest.raises(IndexError):
        pair_arrays(batch, 3)


def test_generation_request_carries_the_pair(two_character_batch):
    request = generation_request(two_character_batch, 0, prompt="two toys")
    assert request.mode == "animation" and request.prompt == "two toys"
    assert request.size == two_character_batch.size
    assert request.driving.fps == two_character_batch.fps
    assert request.driving.frames.shape == request.driving_mask.frames.shape
    colours = {tuple(c) for c in request.reference_mask.reshape(-1, 3)}
    assert colours == {(255, 255, 255), PALETTE[0], PALETTE[1]}


@pytest.fixture(scope="module")
def tiny_pipeline_cpu(tiny_checkpoint):
    return Scail2Pipeline.from_pretrained(tiny_checkpoint, device="cpu", dtype=torch.float32)


def test_pairs_run_through_the_public_pipeline_and_score(tiny_pipeline_cpu, replacement_batch):
    """The untrained tiny checkpoint as a generator: real frames back, scored like any baseline."""
    generate = pipeline_generator(
        tiny_pipeline_cpu, sampling=SamplingSettings.from_preset("fast", steps=1, seed=3), segment_len=9
    )
    scores = evaluate(generate, replacement_batch)
    summary = summarize(scores)
    assert summary["pairs"] == len(replacement_batch)
    assert 0.0 <= summary["iou"] < 0.7  # an untrained model does not transfer motion
    assert all(len(s["iou_frames"]) == replacement_batch.frames for s in scores)


def test_written_pair_feeds_scail2_generate(tmp_path, tiny_checkpoint, animation_batch):
    folder = write_pair(animation_batch, 2, tmp_path / "pair")
    description = json.loads((folder / "pair.json").read_text())
    assert description["mode"] == "animation" and description["frames"] == animation_batch.frames
    reference_mask = np.asarray(Image.open(folder / "reference_mask.png"))
    np.testing.assert_array_equal(reference_mask, pair_arrays(animation_batch, 2).reference_mask)
    with zipfile.ZipFile(folder / "driving_mask.zip") as archive:
        assert len(archive.namelist()) == animation_batch.frames
    assert len(list((folder / "target").iterdir())) == animation_batch.frames

    arguments = [str(folder / a) if (folder / a).exists() else a for a in description["scail2_generate_args"]]
    out = tmp_path / "out"
    status = scail2_generate(
        ["--checkpoint", str(tiny_checkpoint), *arguments, "--steps", "1", "--segment-len", "9",
         "--preset", "fast", "--seed", "1", "--device", "cpu", "--out", str(out), "--no-progress"]
    )  # fmt: skip
    assert status == 0
    frames = np.stack([np.asarray(Image.open(p)) for p in sorted((out / "frames").glob("*.png"))])
    assert frames.shape == (animation_batch.frames, *animation_batch.size, 3)
    score = score_clip(frames, animation_batch, 2)
    assert 0.0 <= score["iou"] <= 1.0


def test_write_pair_refuses_to_overwrite_unless_asked(tmp_path, animation_batch):
    folder = write_pair(animation_batch, 0, tmp_path / "pair")
    with pytest.raises(FileExistsError, match="overwrite"):
        write_pair(animation_batch, 0, folder)
    write_pair(animation_batch, 1, folder, overwrite=True)
    assert json.loads((folder / "pair.json").read_text())["item"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["pair"]  # no staging folders left behind
