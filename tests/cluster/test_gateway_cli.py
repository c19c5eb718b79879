"""``scail-worker serve --ray`` flags, and the single-machine worker running without Ray at all.

Ray is an optional extra: a worker without ``--ray`` must never import it. The last test proves that by running a
real worker whose interpreter cannot import ``ray`` (``sys.modules['ray'] = None``) through a whole job.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from cluster_helpers import SHORT_SPEC, wait_until

from backend.launcher import READY_PREFIX
from backend.worker.cli import main

REPO = Path(__file__).resolve().parents[2]
TOKEN = "a-test-token-of-enough-length"
WITHOUT_RAY = "import sys; sys.modules['ray'] = None; from backend.worker.cli import main; sys.exit(main(sys.argv[1:]))"


def _serve(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "SCAIL_WORKER_TOKEN": TOKEN, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    kwargs.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen([sys.executable, "-c", WITHOUT_RAY, "serve", *args], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.parametrize(("extra", "message"), [
    (("--checkpoint", "models/SCAIL-2"), "absolute path every GPU node has it at"),
    (("--gpus", "2"), "with --ray use --gpus-per-job"),
    (("--device", "cuda:1"), "Ray assigns each engine its GPUs"),
    (("--sam3", "/models/sam3"), "--sam3 is not available with --ray"),
    (("--gpus-per-job", "2", "--fp8"), "with --gpus-per-job > 1 use the other performance flags"),
    (("--gpus-per-job", "0"), "--gpus-per-job must be at least 1"),
])
def test_gateway_flags_a_gateway_cannot_run_are_refused(tmp_path, capsys, extra, message):
    # Refused before anything is loaded or joined, so it runs in this process.
    code = main(["serve", "--checkpoint", "/models/SCAIL-2", "--data", str(tmp_path), "--ray", "auto", *extra])
    assert code == 2
    assert message in capsys.readouterr().err


def test_a_gateway_without_ray_installed_says_how_to_install_it(tmp_path):
    process = _serve("--checkpoint", "/models/SCAIL-2", "--data", str(tmp_path), "--ray", "auto")
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 3, stderr
    assert "pip install 'scail-motion[cluster]'" in stderr


def test_the_single_machine_worker_runs_a_job_without_ray(tiny_checkpoint, media, tmp_path):
    log = tmp_path / "worker.log"
    with open(log, "w") as stderr:  # a file, not a pipe nobody drains while the job runs
        process = _serve("--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path / "data"), "--device", "cpu",
                         "--port", "0", stderr=stderr)
    try:
        url = None
        for line in process.stdout:
            if line.startswith(READY_PREFIX):
                url = line[len(READY_PREFIX):].strip()
                break
        assert url, log.read_text()
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {TOKEN}"
        files = {name: (path.name, path.read_bytes()) for name, path in media.files().items()}
        created = session.post(f"{url}/v1/jobs", data={"spec": json.dumps(SHORT_SPEC)}, files=files, timeout=60)
        assert created.status_code == 201, created.text
        job = created.json()["id"]
        final = wait_until(lambda: (status := session.get(f"{url}/v1/jobs/{job}", timeout=30).json())["status"]
                           in ("succeeded", "failed", "canceled") and status, timeout=300, interval=0.2)
        assert final["status"] == "succeeded", final
        assert session.get(f"{url}/v1/health", timeout=30).json()["cluster"] is None
    finally:
        process.terminate()
        process.communicate(timeout=60)
