"""Auto masks in the worker: ``--sam3 DIR``, ``POST /v1/masks`` previews and jobs whose masks are "auto" (a
"masks" phase before sampling), through a real worker subprocess on the tiny SCAIL-2 and tiny SAM3 checkpoints."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from backend.launcher import LocalWorker
from backend.scail2.conditioning.masks import BLACK, PALETTE_RGB, WHITE
from backend.scail2.conditioning.media import probe_video

PALETTE = set(PALETTE_RGB)


def colours_in(image: np.ndarray) -> set[tuple[int, int, int]]:
    return {tuple(int(v) for v in c) for c in np.unique(image.reshape(-1, 3), axis=0)}


@pytest.fixture(scope="module")
def sam3_worker(tiny_checkpoint: Path, tiny_sam3: Path, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("sam3_worker")
    worker = LocalWorker(sys.executable, tiny_checkpoint, folder / "data", device="cpu",
                         log_path=folder / "worker.log", extra_args=["--sam3", str(tiny_sam3)], ready_timeout=180)
    worker.start()
    yield worker
    worker.stop()


def test_preview_returns_palette_masks_for_the_inputs(sam3_worker, media_root: Path, short_clips) -> None:
    assert sam3_worker.client().health()["features"]["auto_masks"] is True
    clip = short_clips["carphone"]
    info = probe_video(clip)
    spec = {"mode": "animation", "mask_prompts": "person, character", "mask_threshold": 0.0}
    with open(media_root / "astronaut.png", "rb") as reference, open(clip, "rb") as driving:
        response = requests.post(
            f"{sam3_worker.url}/v1/masks", headers={"Authorization": f"Bearer {sam3_worker.token}"},
            data={"spec": json.dumps(spec)}, files={"reference": reference, "driving": driving}, timeout=120,
        )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    summary = json.loads(archive.read("masks.json"))
    assert summary["driving"]["frames"] == 3 and summary["driving"]["fps"] == pytest.approx(info.fps)
    frames = sorted(n for n in archive.namelist() if n.startswith("driving_mask/"))
    assert len(frames) == 3
    for name in frames:
        frame = np.asarray(Image.open(io.BytesIO(archive.read(name))).convert("RGB"))
        assert frame.shape == (info.height, info.width, 3)
        assert colours_in(frame) <= PALETTE | {BLACK}
    reference_mask = np.asarray(Image.open(io.BytesIO(archive.read("reference_mask.png"))).convert("RGB"))
    assert reference_mask.shape == (512, 512, 3) and colours_in(reference_mask) <= PALETTE | {WHITE}
    assert summary["reference"]["source"] == "sam3"


def test_preview_refuses_bad_requests(sam3_worker, short_clips) -> None:
    url = f"{sam3_worker.url}/v1/masks"
    auth = {"Authorization": f"Bearer {sam3_worker.token}"}
    with open(short_clips["carphone"], "rb") as driving:
        bad = requests.post(url, headers=auth, data={"spec": json.dumps({"mask_colours": ["orange"]})},
                            files={"driving": driving}, timeout=60)
    assert bad.status_code == 422 and "orange" in bad.json()["error"]["message"]
    assert requests.post(url, data={"spec": "{}"}, files={"driving": b"x"}, timeout=30).status_code == 401


def test_job_with_auto_driving_mask_runs_a_masks_phase(sam3_worker, media_root: Path, tmp_path: Path) -> None:
    photo = np.asarray(Image.open(media_root / "astronaut.png").convert("RGB").resize((128, 128)))
    yy, xx = np.mgrid[:128, :128]
    alpha = (((yy - 70) / 52.0) ** 2 + ((xx - 64) / 36.0) ** 2 < 1.0).astype(np.uint8) * 255
    reference = tmp_path / "reference.png"  # an RGBA cut-out: its alpha gives the reference mask
    Image.fromarray(np.dstack([photo, alpha]), "RGBA").save(reference)
    spec = {"mode": "animation", "preset": "quality", "steps": 1, "guidance": 1.0, "size": "96x64", "seed": 1,
            "frame_range": [0, 5], "driving_mask": "auto", "mask_threshold": 0.0}
    client = sam3_worker.client()
    job_id = client.submit(spec, {"reference": reference, "driving": media_root / "carphone_pristine.mp4"})
    status = client.wait(job_id, poll_interval=0.1, timeout=300)
    assert status["status"] == "succeeded", status.get("error")
    assert "masks" in status["timings"]["phases_s"]
    assert status["result"]["frames"] == 5


def test_worker_refuses_a_bad_sam3_folder(tiny_checkpoint: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "backend.worker.cli", "serve", "--checkpoint", str(tiny_checkpoint), "--data",
         str(tmp_path / "data"), "--device", "cpu", "--sam3", str(tmp_path / "missing-sam3"), "--port", "0"],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 3
    assert "missing-sam3 does not exist" in result.stderr
