"""50 clients polling while a job runs: every status answer is right, and the job's result is unaffected."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from worker_helpers import SHORT_SPEC

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "worker_status_load.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("worker_status_load", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_status_polling_under_load_keeps_answers_and_result_right(worker, inputs):
    benchmark = load_benchmark()
    client = worker.client()
    spec = {**SHORT_SPEC, "seed": 21}
    under_load = client.submit(spec, inputs.files())
    # Poll for the whole period even after the job ends: how many answers arrive then depends only on the
    # machine, never on how fast the tiny job finishes, so every one of the 50 clients gets at least one.
    stats = benchmark.measure_status_latency(
        worker.url, worker.token, under_load, clients=50, seconds=8.0, stop_when_finished=False
    )
    assert stats["errors"] == 0, stats["error_samples"]
    assert stats["requests"] >= 50
    assert "running" in stats["statuses_seen"] or "queued" in stats["statuses_seen"]
    client.wait(under_load, poll_interval=0.05, timeout=120)

    quiet = client.submit(spec, inputs.files())  # same request, no load
    client.wait(quiet, poll_interval=0.2, timeout=120)
    hashes = [[f["sha256"] for f in client.result_manifest(job)["files"] if f["kind"] == "frame"]
              for job in (under_load, quiet)]
    assert len(hashes[0]) == 9 and hashes[0] == hashes[1]
