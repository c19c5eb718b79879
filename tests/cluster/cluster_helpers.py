"""A real multi-node Ray cluster on this machine, a real gateway process in front of it, raw HTTP to talk to it.

GPUs are stood in by the custom resource ``gpu_stub`` (the gateway's ``--gpu-resource``): the engines run the
tiny checkpoint on the CPU. Every raylet gets one CPU and a small object store, so several fit on a 2-core CI
machine. The media are made here (a figure on flat colour whose alpha is its mask), so nothing outside the
repository is read.
"""

from __future__ import annotations

import json
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import requests
from PIL import Image

from backend.launcher import LocalWorker

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "worker"))
from worker_helpers import fill_disk, fill_files, small_tmpfs, wait_until  # noqa: E402, F401  (re-exported for the cluster tests)

GPU = "gpu_stub"
OBJECT_STORE_BYTES = 80 * 2**20
DRIVING_FRAMES = 61
FPS = 12.0
# One window of 9 frames, 2 steps: a few seconds on a busy 2-core machine.
SHORT_SPEC = {"mode": "animation", "preset": "quality", "steps": 2, "guidance": 1.0, "size": "96x64", "seed": 7,
              "frame_range": [0, 9], "fps": FPS, "prompt": "a figure waving"}
# 29 frames in windows of 13 (8 new after 5 of history): three windows, each long enough to kill a node in.
THREE_WINDOWS = {**SHORT_SPEC, "frame_range": [0, 29], "segment_len": 13, "steps": 120, "seed": 11,
                 "step_cache": "off"}
# Fourteen windows of 9 frames, 200 steps each: holds an engine for a minute or more, until it is canceled.
LONG_SPEC = {**SHORT_SPEC, "frame_range": [0, DRIVING_FRAMES], "segment_len": 9, "steps": 200,
             "step_cache": "off"}


@dataclass(frozen=True)
class Media:
    reference: Path
    driving: Path

    def files(self) -> dict[str, Path]:
        return {"reference": self.reference, "driving": self.driving}


def write_media(folder: Path) -> Media:
    """An RGBA figure on flat colour as the reference, and a zip of RGBA frames of it swaying as the driving clip."""
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:128, :128]
    reference = np.zeros((128, 128, 4), np.uint8)
    reference[..., :3] = (xx * 2 % 256)[..., None] // 2 + np.array([60, 90, 120], np.uint8)
    reference[..., 3] = ((((yy - 70) / 52.0) ** 2 + ((xx - 64) / 30.0) ** 2) < 1.0) * 255
    Image.fromarray(reference, "RGBA").save(folder / "reference.png")
    driving = folder / "driving.zip"
    with zipfile.ZipFile(driving, "w") as archive:
        for index in range(DRIVING_FRAMES):
            frame = np.full((144, 176, 4), (40, 60, 80, 0), np.uint8)
            left = 50 + int(12 * np.sin(index / 3))
            frame[30:140, left:left + 70] = (200, 150, 120, 255)
            path = folder / f"frame_{index:04d}.png"
            Image.fromarray(frame, "RGBA").save(path)
            archive.write(path, arcname=path.name)
            path.unlink()
    return Media(folder / "reference.png", driving)


class Gateway:
    """``scail-worker serve --ray`` started by the real launcher, spoken to with plain ``requests`` (no retries)."""

    def __init__(self, checkpoint: Path, data: Path, address: str, *extra: str, log_path: Path | None = None):
        self.worker = LocalWorker(sys.executable, checkpoint, data, device="cpu",
                                  log_path=log_path or data.parent / "gateway.log",
                                  extra_args=["--ray", address, "--gpu-resource", GPU, *extra], ready_timeout=180)
        self.session = requests.Session()

    def start(self) -> Gateway:
        self.worker.start()
        self.session.headers["Authorization"] = f"Bearer {self.worker.token}"
        return self

    @property
    def url(self) -> str:
        return f"{self.worker.url}/v1"

    def submit(self, spec: dict[str, Any], media: Media, client: str) -> str:
        files = {name: (path.name, path.read_bytes(), "application/octet-stream") for name, path in media.files().items()}
        response = self.session.post(f"{self.url}/jobs", data={"spec": json.dumps(spec)}, files=files,
                                     headers={"X-Client-Id": client}, timeout=60)
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def status(self, job_id: str) -> dict[str, Any]:
        response = self.session.get(f"{self.url}/jobs/{job_id}", timeout=30)
        assert response.status_code == 200, response.text
        return response.json()

    def cancel(self, job_id: str) -> dict[str, Any]:
        response = self.session.post(f"{self.url}/jobs/{job_id}/cancel", timeout=30)
        assert response.status_code == 200, response.text
        return response.json()

    def health(self) -> dict[str, Any]:
        response = self.session.get(f"{self.url}/health", timeout=30)
        assert response.status_code == 200, response.text
        return response.json()

    def wait(self, job_id: str, timeout: float = 300.0) -> dict[str, Any]:
        return wait_until(lambda: (status := self.status(job_id))["status"] in ("succeeded", "failed", "canceled")
                          and status, timeout=timeout, interval=0.2)

    def frames(self, job_id: str) -> list[bytes]:
        """The result's PNG frames, in order, as bytes."""
        manifest = self.session.get(f"{self.url}/jobs/{job_id}/result", timeout=30).json()
        count = manifest["frames"]
        return [self.session.get(f"{self.url}/jobs/{job_id}/result/frames/{index}", timeout=30).content
                for index in range(count)]

    def log_events(self, event: str) -> list[dict[str, Any]]:
        """The gateway's JSON log lines whose event is ``event``."""
        lines = []
        for line in self.worker.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                entry = json.loads(line)
                if entry.get("event") == event:
                    lines.append(entry)
        return lines

    def stop(self) -> int | None:
        self.session.close()
        return self.worker.stop()

