"""The worker's mask service: masks for 'auto' roles, cached for resumed jobs, clear failures, preview zips."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from backend.masks.options import MaskPreviewSpec
from backend.masks.service import MaskService, settings_from_spec, shape_only_masks, write_preview_zip
from backend.masks.settings import MaskSettings
from backend.scail2.conditioning.masks import PALETTE_RGB
from backend.scail2.conditioning.media import read_clip, read_image
from backend.scail2.conditioning.request import GenerationRequest, validate_request
from backend.scail2.errors import CheckpointError, Scail2InputError


@pytest.fixture(scope="module")
def service(tiny_sam3: Path) -> MaskService:
    return MaskService(tiny_sam3, device="cpu")


def job_request(media_root: Path, short_clips) -> GenerationRequest:
    return GenerationRequest(reference=read_image(media_root / "astronaut.png"),
                             driving=read_clip(short_clips["carphone"]), mode="animation")


def test_fill_request_makes_and_caches_auto_masks(service, tiny_sam3, media_root, short_clips, tmp_path) -> None:
    request = job_request(media_root, short_clips)
    settings = MaskSettings.build("animation", detection_threshold=0.0)
    cache = tmp_path / "masks"
    filled = service.fill_request(request, ["reference_mask", "driving_mask"], settings, cache_dir=cache)
    assert filled.driving_mask.frames.shape == (*request.driving.frames.shape[:3], 3)
    assert filled.reference_mask.shape == request.reference.shape
    validate_request(filled)  # the engine accepts them as they are
    summary = json.loads((cache / "masks.json").read_text())
    assert summary["driving"]["identities"]
    # A resumed job reads the stored masks back instead of running SAM3 again: identical pixels.
    broken = Path(shutil.copytree(tiny_sam3, tmp_path / "sam3"))
    cache_only = MaskService(broken, device="cpu")
    (broken / "model.safetensors").write_bytes(b"")  # loading SAM3 would fail now: only the cache can answer
    again = cache_only.fill_request(request, ["reference_mask", "driving_mask"], settings, cache_dir=cache)
    np.testing.assert_array_equal(again.driving_mask.frames[..., :3], filled.driving_mask.frames)
    np.testing.assert_array_equal(again.reference_mask[..., :3], filled.reference_mask)


def test_no_subject_fails_the_job_with_advice(service, media_root, short_clips) -> None:
    request = job_request(media_root, short_clips)
    settings = MaskSettings.build("animation", prompts="unicorn", detection_threshold=1.0)  # nothing scores above 1
    with pytest.raises(Scail2InputError, match="found no subject for the prompts unicorn") as caught:
        service.fill_request(request, ["driving_mask"], settings)
    assert caught.value.field == "driving_mask"


def test_shape_only_masks_let_the_rest_of_a_submission_be_checked(media_root, short_clips) -> None:
    request = job_request(media_root, short_clips)
    with pytest.raises(Scail2InputError, match="reference_mask is required"):
        validate_request(request)
    standin = shape_only_masks(request, ["reference_mask", "driving_mask"])
    validate_request(standin)
    assert standin.driving_mask.frames.shape[:3] == request.driving.frames.shape[:3]
    assert {tuple(c) for c in standin.reference_mask.reshape(-1, 3)} == {PALETTE_RGB[0]}


def test_preview_zip_and_spec(service, media_root, short_clips, tmp_path) -> None:
    spec = MaskPreviewSpec.model_validate({"mode": "replacement", "mask_colours": ["green"], "mask_threshold": 0})
    settings = settings_from_spec(spec)
    assert settings.colours == (2,) and settings.identity_limit == 1
    masks = service.make(settings, read_image(media_root / "chelsea.png"), read_clip(short_clips["bigbuckbunny"]))
    archive = zipfile.ZipFile(write_preview_zip(masks, tmp_path / "masks.zip"))
    names = archive.namelist()
    assert "reference_mask.png" in names and "masks.json" in names
    assert sum(n.startswith("driving_mask/") for n in names) == 3
    summary = json.loads(archive.read("masks.json"))
    assert summary["driving"]["frames"] == 3
    assert all(i["colour"] == "green" for i in summary["driving"]["identities"])
    assert not list(tmp_path.glob(".masks.zip*"))
    with pytest.raises(ValueError, match="frame_range"):
        MaskPreviewSpec.model_validate({"frame_range": [5, 2]})


def test_service_checks_its_folder_at_start(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        MaskService(tmp_path / "nope", device="cpu")


def test_job_specs_refuse_bad_mask_options_at_submission() -> None:
    from backend.worker.schemas import JobSpec

    spec = JobSpec.model_validate({"driving_mask": "auto", "mask_prompts": "dancer", "mask_colours": ["Red", "0"]})
    assert settings_from_spec(spec).colours == (1, 0)
    with pytest.raises(ValueError, match="unknown mask colour 'orange'"):
        JobSpec.model_validate({"driving_mask": "auto", "mask_colours": ["orange"]})
    with pytest.raises(ValueError, match="distinct"):
        JobSpec.model_validate({"mask_colours": ["red", "red"]})
    with pytest.raises(ValueError, match="mask_identities"):
        JobSpec.model_validate({"mask_identities": 9})
    with pytest.raises(ValueError, match="mask_prompt"):
        JobSpec.model_validate({"mask_prompt": "typo"})  # unknown keys are refused
