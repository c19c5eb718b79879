"""The SAM3 loader: the facebook/sam3 layout from a local folder, and errors that name what is missing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.masks.sam3_loader import check_sam3_folder, load_sam3
from backend.masks.tiny import IMAGE_SIZE
from backend.scail2.errors import CheckpointError


def test_loads_the_tiny_folder_with_its_preprocessing(segmenter) -> None:
    assert type(segmenter.model).__name__ == "Sam3VideoModel"
    assert type(segmenter.model.detector_model).__name__ == "Sam3Model"
    assert segmenter.video_preprocessing.size == (IMAGE_SIZE, IMAGE_SIZE)
    assert segmenter.image_preprocessing.mean == (0.5, 0.5, 0.5)
    frame = np.zeros((30, 50, 3), np.uint8)
    frame[:, 25:] = 255
    pixels = segmenter.video_preprocessing(frame, "cpu", torch.float32)
    assert pixels.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    assert pixels.min() == -1.0 and pixels.max() == 1.0  # rescaled to [0, 1], then (x - 0.5) / 0.5
    ((prompt, ids, attention),) = segmenter.encode_prompts(["person"])
    assert prompt == "person" and ids.shape == attention.shape == (1, 32)


def test_missing_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(
        CheckpointError, match=r"nowhere.*does not exist.*hf download facebook/sam3"
    ):
        check_sam3_folder(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="--local-dir"):
        check_sam3_folder(None)


def test_missing_files_are_named(tiny_sam3: Path, tmp_path: Path) -> None:
    broken = Path(shutil.copytree(tiny_sam3, tmp_path / "sam3"))
    (broken / "model.safetensors").unlink()
    (broken / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match=r"lacks model\.safetensors, tokenizer\.json") as caught:
        load_sam3(broken)
    assert str(broken) in str(caught.value)


def test_truncated_weights_and_wrong_config_fail_clearly(tiny_sam3: Path, tmp_path: Path) -> None:
    truncated = Path(shutil.copytree(tiny_sam3, tmp_path / "truncated"))
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="weights do not load"):
        load_sam3(truncated)
    wrong = Path(shutil.copytree(tiny_sam3, tmp_path / "wrong"))
    config = json.loads((wrong / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps(config["detector_config"]))  # a plain sam3 image config
    with pytest.raises(CheckpointError, match="sam3_video"):
        load_sam3(wrong)
