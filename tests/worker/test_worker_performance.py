"""The performance flags through a real worker: resolved settings and warm-up in /v1/health, fp8 with pinned LoRAs
(jobs asking for other strengths get a 422 naming spec.loras / spec.preset), and the flags the CLI refuses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from worker_helpers import SHORT_SPEC, start_worker

from backend.client import BadRequest

REPO = Path(__file__).resolve().parents[2]
PINNED = {"lightx2v": 0.8, "dpo": 1.0}


def test_health_reports_the_cpu_reference_settings(worker):
    performance = worker.client().health()["performance"]
    # The CPU resolves to the safe reference path: PyTorch SDPA, nothing compiled, converted or streamed.
    assert performance["attention_backend"] == "auto" and performance["attention_backend_resolved"] == "native"
    assert performance["compile_blocks"] is False and performance["compiled_blocks"] == 0
    assert performance["fp8_linear"] is False and performance["fp8_linears"] == 0
    assert performance["low_vram"] is False and performance["streamed_host_gib"] == 0.0
    assert performance["offload_encoders"] is False  # nothing to park the encoders away from
    assert performance["pinned_loras"] is None and performance["warmup"] is None
    schema = requests.get(f"{worker.url}/openapi.json", timeout=10).json()["components"]["schemas"]
    assert {"PerformanceInfo", "WarmupInfo"} <= set(schema)


def test_every_rank_of_a_multi_gpu_worker_applies_the_flags(tiny_checkpoint, tmp_path):
    # Two CPU processes (gloo) stand for two GPUs; health reports what rank 0 applied.
    running = start_worker(tiny_checkpoint, tmp_path / "data", tmp_path / "worker.log", "--gpus", "2",
                           "--attention-backend", "native", "--no-compile")
    try:
        performance = running.client().health()["performance"]
    finally:
        running.stop()
    assert performance["attention_backend"] == "native" and performance["attention_backend_resolved"] == "native"
    assert performance["compile_blocks"] is False and performance["fp8_linear"] is False
    assert performance["pinned_loras"] is None and performance["warmup"] is None


@pytest.fixture(scope="module")
def fp8_worker(tiny_checkpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("worker_fp8")
    running = start_worker(tiny_checkpoint, folder / "data", folder / "worker.log", "--fp8", "--loras",
                           "lightx2v=0.8,dpo=1.0", "--attention-backend", "native", "--no-compile",
                           "--warmup", "96x64:9")
    yield running
    running.stop()


def test_fp8_worker_reports_its_settings_pinned_loras_and_warmup(fp8_worker):
    performance = fp8_worker.client().health()["performance"]
    assert performance["fp8_linear"] is True
    assert performance["fp8_linears"] == 8 * 2  # 8 token-wise linears in each of the tiny DiT's 2 blocks
    assert performance["attention_backend"] == "native" and performance["compile_blocks"] is False
    assert performance["pinned_loras"] == PINNED
    warmup = performance["warmup"]
    assert warmup["sizes"] == ["96x64:9"] and set(warmup["seconds"]) == {"96x64:9"}
    assert 0 < warmup["total_s"] == warmup["seconds"]["96x64:9"] and warmup["compiled_graphs"] == 0


def test_fp8_worker_refuses_other_lora_strengths_and_runs_the_pinned_ones(fp8_worker, inputs):
    client = fp8_worker.client()
    files = inputs.files()
    # SHORT_SPEC's 'quality' preset uses no LoRA: the preset is what to change.
    with pytest.raises(BadRequest) as by_preset:
        client.submit(SHORT_SPEC, files)
    assert by_preset.value.status == 422 and by_preset.value.code == "loras_pinned"
    assert by_preset.value.field == "spec.preset"
    assert "'quality' preset" in str(by_preset.value) and "dpo=1,lightx2v=0.8" in str(by_preset.value)
    with pytest.raises(BadRequest) as by_loras:
        client.submit({**SHORT_SPEC, "loras": {"lightx2v": 1.0, "dpo": 1.0}}, files)
    assert by_loras.value.status == 422 and by_loras.value.field == "spec.loras"
    assert "--fp8" in str(by_loras.value)
    # The pinned set, given explicitly (zero strengths are "off" and do not count), runs.
    job_id = client.submit({**SHORT_SPEC, "loras": {**PINNED, "relight": 0.0}}, files)
    final = client.wait(job_id, poll_interval=0.05, timeout=120)
    assert final["status"] == "succeeded", final["error"]
    assert final["timings"]["warmup_paid"] is False and final["timings"]["compiled_graphs"] == 0
    assert client.health()["queue"] == {"queued": 0, "running": 0}


def run_serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "backend.worker.cli", "serve", *args], cwd=REPO, text=True,
                          capture_output=True, timeout=120, env={**os.environ, "SCAIL_WORKER_TOKEN": "t" * 32})


@pytest.mark.parametrize(("flags", "words"), [
    (("--warmup", "100x64"), "--warmup: '100x64': both sides must be multiples of 32"),
    (("--loras", "lightx2v"), "--loras: 'lightx2v' is not NAME=STRENGTH"),
    (("--gpus", "2", "--fp8"), "apply to single-GPU workers"),
    (("--fp8", "--loras", "lightx2v=0.8,missing=1"), "--loras lightx2v=0.8,missing=1:"),
])
def test_bad_performance_flags_exit_2_with_the_flag_named(tiny_checkpoint, tmp_path, flags, words):
    result = run_serve("--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path), "--device", "cpu",
                       "--port", "0", *flags)
    assert result.returncode == 2, result.stderr[-2000:]
    assert words in result.stderr and "SCAIL-WORKER READY" not in result.stdout
