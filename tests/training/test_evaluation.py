"""The motion-transfer score: a perfect prediction scores IoU 1 and no colour error; the baselines score lower."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training.evaluation import (
    BASELINES,
    boundary_band,
    driving_clip,
    evaluate,
    reference_repeated,
    score_clip,
    srgb_to_lab,
    summarize,
    target_clip,
)
from training.export import to_uint8

BATCHES = ["animation_batch", "replacement_batch", "two_character_batch"]


@pytest.mark.parametrize("fixture", BATCHES)
def test_perfect_prediction_scores_iou_one_and_no_colour_error(fixture, request):
    batch = request.getfixturevalue(fixture)
    for index in range(len(batch)):
        score = score_clip(batch.target[index], batch, index)
        assert score["iou"] == 1.0 and all(v == 1.0 for v in score["iou_frames"])
        # The same character in another pose: the mean colour moves a little (shading, visible parts).
        assert score["colour_delta_e"] < 4.0
        if batch.characters == 2 and score["iou_identity"] is not None:
            assert min(score["iou_identity"]) > 0.9


@pytest.mark.parametrize("fixture", BATCHES)
def test_baselines_score_clearly_lower(fixture, request):
    batch = request.getfixturevalue(fixture)
    perfect = summarize(evaluate(target_clip, batch))
    still = summarize(evaluate(reference_repeated, batch))
    driving = summarize(evaluate(driving_clip, batch))
    assert perfect["iou"] == 1.0
    assert still["iou"] < 0.7 and driving["iou"] < 0.7
    # The driving clip moves right but shows another character: far from the reference's colours.
    assert driving["colour_delta_e"] > perfect["colour_delta_e"] + 10
    assert set(BASELINES) == {"reference_repeated", "driving"}


def test_uint8_frames_score_like_floats(animation_batch):
    as_float = score_clip(animation_batch.target[0], animation_batch, 0)
    as_uint8 = score_clip(to_uint8(animation_batch.target[0]), animation_batch, 0)
    assert as_uint8["iou"] == as_float["iou"]
    assert abs(as_uint8["colour_delta_e"] - as_float["colour_delta_e"]) < 0.5


def test_a_partly_wrong_silhouette_lowers_iou_in_proportion(animation_batch):
    target = animation_batch.target[0].clone()
    background = animation_batch.target_background[0]
    ids = animation_batch.target_ids[0]
    # Erase the character's lower half (by rows) in every frame: about half the mask is missed.
    rows = torch.arange(ids.shape[-2])[:, None].expand_as(ids[0])
    erased = torch.zeros_like(ids, dtype=torch.bool)
    for t in range(ids.shape[0]):
        occupied = rows[ids[t] > 0]
        erased[t] = (ids[t] > 0) & (rows >= occupied.float().median())
    target = torch.where(erased[:, None], background, target)
    score = score_clip(target, animation_batch, 0)
    interior = (ids > 0) & ~boundary_band(ids > 0)
    expected = 1 - (erased & interior).sum() / interior.sum()
    assert 0.3 < score["iou"] < 0.75
    assert abs(score["iou"] - float(expected)) < 0.1


def test_background_only_scores_zero(replacement_batch):
    score = score_clip(replacement_batch.target_background[1], replacement_batch, 1)
    assert score["iou"] == 0.0


def test_wrong_clip_shape_is_refused(animation_batch):
    with pytest.raises(ValueError, match="needs"):
        score_clip(animation_batch.target[0, :-1], animation_batch, 0)
    with pytest.raises(ValueError, match="4 dimensions"):
        score_clip(animation_batch.target[0, 0], animation_batch, 0)


def test_summarize_averages_and_refuses_nothing():
    scores = [
        {"iou": 1.0, "colour_delta_e": 2.0, "iou_identity": None},
        {"iou": 0.5, "colour_delta_e": math.nan, "iou_identity": [0.4, 0.6]},
    ]
    summary = summarize(scores)
    assert summary["pairs"] == 2 and summary["iou"] == 0.75 and summary["colour_delta_e"] == 2.0
    assert summary["iou_identity"] == 0.5 and summary["identity_pairs"] == 1
    with pytest.raises(ValueError):
        summarize([])


def test_lab_conversion_known_values():
    lab = srgb_to_lab(torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64))
    np.testing.assert_allclose(lab[0].numpy(), [100.0, 0.0, 0.0], atol=0.01)
    np.testing.assert_allclose(lab[1].numpy(), [0.0, 0.0, 0.0], atol=0.01)
    np.testing.assert_allclose(lab[2].numpy(), [53.24, 80.09, 67.20], atol=0.05)


def test_score_frames_takes_ground_truth_made_elsewhere(two_character_batch):
    """The demo's path: a target rendered elsewhere, everything as uint8/int numpy arrays."""
    from training.evaluation import score_frames

    batch = two_character_batch
    score = score_frames(
        to_uint8(batch.target[1]),
        target_background=to_uint8(batch.target_background[1]),
        target_ids=batch.target_ids[1].numpy().astype(np.uint8),
        reference=to_uint8(batch.reference[1]),
        reference_ids=batch.reference_ids[1].numpy(),
    )
    assert score["iou"] == 1.0 and score["colour_delta_e"] < 4.0
    from_batch = score_clip(batch.target[1], batch, 1)
    assert score["iou_identity"] == from_batch["iou_identity"]
    assert score["colour_delta_e"] == pytest.approx(from_batch["colour_delta_e"], abs=0.5)
    with pytest.raises(ValueError, match="disagree"):
        score_frames(batch.target[1], target_background=batch.target_background[1, :-1],
                     target_ids=batch.target_ids[1], reference=batch.reference[1],
                     reference_ids=batch.reference_ids[1])  # fmt: skip
    with pytest.raises(IndexError):
        score_clip(batch.target[0], batch, 5)
