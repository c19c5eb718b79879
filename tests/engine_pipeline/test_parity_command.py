"""``python -m backend.scail2.parity DIR`` over every golden fixture set, as a user would run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
EXPECTED_SETS = {"dit", "t5", "clip", "vae", "masks", "segments", "scheduler", "pipeline"}


def _run(set_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "backend.scail2.parity", str(set_dir)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_every_fixture_set_passes(parity_root: Path):
    set_dirs = sorted(p for p in parity_root.iterdir() if p.is_dir())
    assert EXPECTED_SETS <= {p.name for p in set_dirs}
    # Two at a time: the sets are independent and the CI machine has two cores.
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = dict(zip(set_dirs, pool.map(_run, set_dirs), strict=True))
    for set_dir, run in runs.items():
        assert run.returncode == 0, (
            f"{set_dir.name}: exit {run.returncode}\n{run.stdout}\n{run.stderr[-3000:]}"
        )
        records = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
        assert records, f"{set_dir.name}: no cases reported"
        for record in records:
            assert set(record) >= {"set", "case", "max_rel_err", "tol", "ok"}
            assert record["set"] == set_dir.name and record["ok"] is True
            assert record["max_rel_err"] <= record["tol"]


def test_a_failing_case_exits_nonzero(parity_root: Path, tmp_path: Path):
    # A copy of the segments set with one expected window changed must be reported as not ok, exit 1.
    data = json.loads((parity_root / "segments" / "segments.json").read_text())
    data["cases"][0]["windows"] = [[0, 2]]
    broken = tmp_path / "segments"
    broken.mkdir()
    (broken / "segments.json").write_text(json.dumps(data))
    run = _run(broken)
    assert run.returncode == 1
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert [r["ok"] for r in records].count(False) == 1


@pytest.mark.parametrize("content", [None, "not a fixture"])
def test_unknown_folder_is_a_clear_error(tmp_path: Path, content):
    if content is not None:
        (tmp_path / "notes.txt").write_text(content)
    run = _run(tmp_path)
    assert run.returncode == 1
    record = json.loads(run.stdout.splitlines()[-1])
    assert record["ok"] is False and ("cannot tell" in record["error"] or "not a folder" in record["error"])


def _pipeline_variant(parity_root: Path, folder: Path, inputs: dict, generate_args: dict,
                      files: dict | None = None) -> Path:
    """A copy of the pipeline set whose inputs are stored under other names, as another producer might."""
    import shutil

    from safetensors.torch import save_file

    shutil.copytree(parity_root / "pipeline", folder)
    save_file({k: v.contiguous() for k, v in inputs.items()}, str(folder / "inputs.safetensors"))
    for stem, tensors in (files or {}).items():
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / f"{stem}.safetensors"))
    config = json.loads((folder / "config.json").read_text())
    config["generate_args"].update(generate_args)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _official_inputs(parity_root: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(parity_root / "pipeline" / "inputs.safetensors"))


def test_inputs_are_found_by_the_names_generate_args_gives(parity_root: Path, tmp_path: Path):
    inputs = _official_inputs(parity_root)
    renamed = {"reference": inputs.pop("img"), "reference_mask": inputs.pop("ref_mask_img"), **inputs}
    pose = {"frames": renamed.pop("pose_video")}
    variant = _pipeline_variant(parity_root, tmp_path / "pipeline", renamed,
                                {"img": "inputs:reference", "ref_mask_img": "inputs:reference_mask",
                                 "pose_video": "pose:frames"}, files={"pose": pose})
    run = _run(variant)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert all(json.loads(line)["ok"] for line in run.stdout.splitlines())


def test_additional_references_stored_one_key_per_image_are_used(parity_root: Path, tmp_path: Path):
    """Two extra views (the reference mirrored, and shifted) stored as one stacked tensor and as one key per image
    must give the same video; the stacked set's expected video is this implementation's, whose additional-reference
    path the dit set's cases d and e check against the official model."""
    from safetensors.torch import save_file

    from backend.scail2.testing.parity import run_pipeline_set

    inputs = _official_inputs(parity_root)
    views = [inputs["img"].flip(-1), inputs["img"].roll(8, dims=-1)]
    masks = [inputs["ref_mask_img"].flip(-1), inputs["ref_mask_img"].roll(8, dims=-1)]
    stacked = _pipeline_variant(
        parity_root, tmp_path / "stacked",
        {**inputs, "additional_ref_imgs": torch.stack(views), "additional_ref_mask_imgs": torch.stack(masks)},
        {"additional_ref_imgs": "inputs:additional_ref_imgs", "additional_ref_mask_imgs": "inputs:additional_ref_mask_imgs"})
    (stacked / "trace.safetensors").unlink()  # the official trace has no additional references
    video, trace = run_pipeline_set(stacked)
    assert "additional_ref_latents" in trace
    per_image = _pipeline_variant(
        parity_root, tmp_path / "per_image",
        {**inputs, **{f"additional_ref_img_{i}": v for i, v in enumerate(views)},
         **{f"additional_ref_mask_img_{i}": m for i, m in enumerate(masks)}},
        {"additional_ref_imgs": ["inputs:additional_ref_img_0", "inputs:additional_ref_img_1"],
         "additional_ref_mask_imgs": ["inputs:additional_ref_mask_img_0", "inputs:additional_ref_mask_img_1"]})
    (per_image / "trace.safetensors").unlink()
    save_file({"video": video}, str(per_image / "output.safetensors"))
    without_views = float((video - run_pipeline_set(parity_root / "pipeline")[0]).abs().max())
    assert without_views > 10 * 1e-3, "the extra views must change the video, or this test could not fail"
    run = _run(per_image)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert json.loads(run.stdout.splitlines()[0])["max_rel_err"] == 0.0


@pytest.mark.parametrize(("change", "words"), [
    ({"additional_ref_imgs": ["inputs:img", "inputs:missing"], "additional_ref_mask_imgs": ["inputs:img"] * 2},
     ["generate_args.additional_ref_imgs[1]", "'inputs:missing'", "no tensor 'missing'"]),
    ({"img": "reference:img"}, ["generate_args.img", "reference.safetensors"]),
    ({"extra_pose_video": "inputs:pose_video"}, ["extra_pose_video", "does not pass"]),
])
def test_an_input_that_cannot_be_found_is_named(parity_root: Path, tmp_path: Path, change: dict, words: list):
    variant = _pipeline_variant(parity_root, tmp_path / "pipeline", _official_inputs(parity_root), change)
    run = _run(variant)
    assert run.returncode == 1
    record = json.loads(run.stdout.splitlines()[-1])
    assert record["case"] == "load" and record["ok"] is False
    for word in words:
        assert word in record["error"], record["error"]
