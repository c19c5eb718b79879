"""What the cluster gateway costs: its overhead per job against a single-machine worker, and a window's trip home.

Two measurements on one machine, with the tiny checkpoint on the CPU (no GPU needed):

1. **Overhead per job.** A single-machine worker (``scail-worker serve``) and a gateway (``scail-worker serve
   --ray``) in front of a real two-raylet Ray cluster (a CPU head, one node with the stub GPU resource the cluster
   tests use) run the same tiny jobs: a one-window job and a three-window job. Jobs alternate between the two
   (single, gateway, single, ...) so that load from anything else on the machine hits both alike. A job's time is
   the server's own: from the commit of its submission (``created_at``) to the commit of its result
   (``finished_at``), so the upload and the client's polling interval are left out alike. Both run torch on one
   thread (``OMP_NUM_THREADS=1``, which Ray's workers default to), so the engines compute the same and the
   difference is the gateway's: the dispatch step, shipping the uploads to the node, streaming progress and
   windows back, persisting them there. Clients poll once every 0.25 s, as scripts do (the add-on: once a
   second); the single worker answers them in the process that computes, the gateway in another.
2. **A window's trip home.** An actor on the stub-GPU node streams back full-size ``WindowResult``s of 81-frame
   windows at 512p (896x512) and 704p (1280x704), the way an engine does (``WindowDone`` through a Ray streaming
   generator); the driver on the head node (where the gateway runs) times each from the moment the node hands it
   over until it is deserialized, then stores it the gateway's way (``WindowSink``: file, fsync, row, previews).
   Both raylets are on this machine, so the bytes cross loopback TCP between two object stores, not a network;
   the table also gives what the same bytes take on 10 and 25 Gbit/s links at line rate.

    python benchmarks/bench_gateway.py                  # writes benchmarks/results/gateway_cpu.json
    # no spare core: everything (worker, gateway, raylets, engine) on CPU 0
    taskset -c 0 python benchmarks/bench_gateway.py --out benchmarks/results/gateway_cpu_one_core.json
    python benchmarks/bench_gateway.py --jobs 3 --transfers 2 --out /tmp/quick.json

Run from the repository root, with the ``cluster`` (or ``dev``) extra installed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Before torch or Ray start anywhere: one torch thread for the worker, the gateway's engines and this process.
os.environ["OMP_NUM_THREADS"] = "1"

import requests  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "cluster"))
from cluster_helpers import GPU, SHORT_SPEC, THREE_WINDOWS, Gateway, write_media  # noqa: E402

from backend.launcher import LocalWorker  # noqa: E402

FINISHED = ("succeeded", "failed", "canceled")
POLL_S = 0.25
# The tiny jobs: the cluster tests' one-window job, and their three-window job with few steps.
JOBS = {"1 window, 9 frames": SHORT_SPEC, "3 windows, 29 frames": {**THREE_WINDOWS, "steps": 4}}
# Full-size windows: 81 frames, 5 of them history for the next window (the engine's defaults).
WINDOW_FRAMES, OVERLAP = 81, 5
WINDOW_SIZES = {"512p": (512, 896), "704p": (704, 1280)}
LINKS_GBIT = (10, 25)
OBJECT_STORE_BYTES = 1536 * 2**20  # per raylet: a 704p window is ~270 MB


class Endpoint:
    """A worker or gateway spoken to over plain HTTP."""

    def __init__(self, name: str, worker: LocalWorker):
        self.name, self.worker = name, worker
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {worker.token}"
        self.url = f"{worker.url}/v1"

    def run(self, spec: dict[str, Any], files: dict[str, Path]) -> dict[str, Any]:
        """Submit one job, poll until it finishes; its final status plus ``job_s`` (the server's time from the
        submission's commit to the result's) and ``wall_s`` (the client's, from sending it to seeing it done)."""
        upload = {name: (path.name, path.read_bytes(), "application/octet-stream") for name, path in files.items()}
        started = time.perf_counter()
        response = self.session.post(f"{self.url}/jobs", data={"spec": json.dumps(spec)}, files=upload,
                                     headers={"X-Client-Id": "bench"}, timeout=60)
        response.raise_for_status()
        job_id = response.json()["id"]
        while True:
            status = self.session.get(f"{self.url}/jobs/{job_id}", timeout=30).json()
            if status["status"] in FINISHED:
                status["wall_s"] = time.perf_counter() - started
                status["job_s"] = status["finished_at"] - status["created_at"]
                if status["status"] != "succeeded":
                    raise RuntimeError(f"{self.name}: job {job_id} ended {status['status']}: {status['error']}")
                return status
            time.sleep(POLL_S)


def measure_overhead(single: Endpoint, gateway: Endpoint, files: dict[str, Path], jobs: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for label, spec in JOBS.items():
        for endpoint in (single, gateway):  # warm-up: the first job of a size pays one-off costs
            endpoint.run({**spec, "seed": 100}, files)
        runs: dict[str, list[dict[str, Any]]] = {single.name: [], gateway.name: []}
        for index in range(jobs):
            order = (single, gateway) if index % 2 == 0 else (gateway, single)
            for endpoint in order:
                runs[endpoint.name].append(endpoint.run({**spec, "seed": index}, files))
        job_s = {name: [status["job_s"] for status in statuses] for name, statuses in runs.items()}
        paired = [g - s for s, g in zip(job_s[single.name], job_s[gateway.name], strict=True)]
        single_median = statistics.median(job_s[single.name])
        transfers = [status["timings"].get("window_transfer") for status in runs[gateway.name]]

        results[label] = {
            "spec": spec, "jobs": jobs,
            "job_s": {name: [round(value, 3) for value in values] for name, values in job_s.items()},
            "median_s": {name: round(statistics.median(values), 3) for name, values in job_s.items()},
            "client_wall_s_median": {name: round(statistics.median(status["wall_s"] for status in statuses), 3)
                                     for name, statuses in runs.items()},
            "queued_s_median": _timing_medians(runs, "queued_s"), "run_s_median": _timing_medians(runs, "run_s"),
            "overhead_s_median": round(statistics.median(paired), 3),
            "overhead_s_paired": [round(value, 3) for value in paired],
            "overhead_pct_of_job": round(100 * statistics.median(paired) / single_median, 1),
            "window_transfer_ms_mean": round(statistics.mean(item["ms_mean"] for item in transfers if item), 2),
            "window_bytes": transfers[0]["bytes"] // transfers[0]["windows"] if transfers[0] else None,
        }
    return results


def _timing_medians(runs: dict[str, list[dict[str, Any]]], key: str) -> dict[str, float]:
    return {name: round(statistics.median(status["timings"][key] for status in statuses), 3)
            for name, statuses in runs.items()}


class WindowSender:
    """An actor on a GPU node that streams a window back as an engine does (``EngineActor.run``)."""

    def __init__(self):
        self._window: Any = None

    def prepare(self, height: int, width: int, frames: int, overlap: int) -> None:
        import numpy as np
        import torch

        from backend.scail2 import WindowResult

        rng = np.random.default_rng(0)  # random pixels: nothing along the way can compress them
        pixels = rng.integers(0, 256, (frames - overlap, height, width, 3), dtype=np.uint8)
        history = {"tail": torch.rand(3, overlap, height, width), "anchor": torch.rand(2, 3),
                   "seed": torch.tensor([7])}
        self._window = WindowResult(0, pixels, history)

    def send(self, index: int):
        """A stream of one window: an engine's windows are minutes apart, so none waits behind another."""
        from dataclasses import replace

        from backend.worker.cluster.messages import WindowDone

        yield WindowDone.of(replace(self._window, index=index))


def measure_transfers(ray: Any, node_id: str, count: int, folder: Path) -> dict[str, Any]:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from backend.worker.runner import WindowSink
    from backend.worker.store import JobStore

    sender = ray.remote(WindowSender).options(
        num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote()
    store = JobStore(folder / "store")
    results = {}
    for label, (height, width) in WINDOW_SIZES.items():
        staged = store.new_staging_dir()
        job, _ = store.create_job(job_id=f"bench-window-{label}-0000", namespace="", idempotency_key=None,
                                  request_hash=label, spec={}, inputs={}, staged_inputs=staged)
        sink = WindowSink(store, job.id, [])
        trips, stores, nbytes = [], [], 0
        ray.get(sender.prepare.remote(height, width, WINDOW_FRAMES, OVERLAP))
        for number in range(count + 1):
            stream = sender.send.options(num_returns="streaming").remote(number)
            ref = next(stream)
            item = ray.get(ref)  # what the dispatcher does with each streamed item
            trip = time.time() - item.sent_at  # the dispatcher's window_transfer measure
            started = time.perf_counter()
            sink(item.window)
            stored = time.perf_counter() - started
            nbytes = item.nbytes
            del ref, item
            for _ in stream:  # the stream's end
                pass
            if number > 0:  # the first pays the actor's and the object stores' one-off set-up
                trips.append(trip)
                stores.append(stored)
        results[label] = {"trips": trips, "stores": stores, "nbytes": nbytes}
        store.finish(job.id, "canceled")
    ray.kill(sender)
    return results


def _window_bytes(height: int, width: int) -> dict[str, int]:
    frames = (WINDOW_FRAMES - OVERLAP) * height * width * 3
    tail = 3 * OVERLAP * height * width * 4
    return {"frames": frames, "history": tail + 2 * 3 * 4 + 8, "total": frames + tail + 2 * 3 * 4 + 8}


def _git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=8, help="timed jobs of each kind per endpoint (default 8)")
    parser.add_argument("--transfers", type=int, default=5, help="timed windows of each size (default 5)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "gateway_cpu.json")
    args = parser.parse_args(argv)

    import ray
    from ray.cluster_utils import Cluster

    from backend.scail2.testing.tiny import write_tiny_checkpoint

    folder = Path(tempfile.mkdtemp(prefix="scail-bench-gateway-"))
    checkpoint = write_tiny_checkpoint(folder / "SCAIL-2", layout="official", seed=0)
    media = write_media(folder / "media")
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "object_store_memory": OBJECT_STORE_BYTES, "include_dashboard": False})
    node = cluster.add_node(num_cpus=1, resources={GPU: 1}, object_store_memory=OBJECT_STORE_BYTES)
    cluster.wait_for_nodes()
    single = LocalWorker(sys.executable, checkpoint, folder / "single", device="cpu",
                         log_path=folder / "single.log", ready_timeout=300)
    gateway = Gateway(checkpoint, folder / "gateway", cluster.address)
    try:
        single.start()
        gateway.start()
        endpoints = Endpoint("single", single), Endpoint("gateway", gateway.worker)
        deadline = time.monotonic() + 300
        while gateway.health()["cluster"]["engines_idle"] < 1:
            if time.monotonic() > deadline:
                raise RuntimeError("the gateway's engine did not load within 300 s")
            time.sleep(0.5)
        print(f"measuring the overhead: {args.jobs} jobs of each kind on each endpoint, alternating", flush=True)
        overhead = measure_overhead(*endpoints, media.files(), args.jobs)
        gateway.stop()
        single.stop()
        print(f"measuring windows' trip home: {args.transfers} windows of each size", flush=True)
        ray.init(address=cluster.address, log_to_driver=False)
        raw = measure_transfers(ray, node.node_id, args.transfers, folder)
        ray.shutdown()
    finally:
        gateway.stop()
        single.stop()
        cluster.shutdown()

    transfers = {}
    for label, (height, width) in WINDOW_SIZES.items():
        sizes = _window_bytes(height, width)
        assert sizes["total"] == raw[label]["nbytes"], (sizes, raw[label]["nbytes"])  # what WindowDone counted
        trip_ms = [1000 * value for value in raw[label]["trips"]]
        store_ms = [1000 * value for value in raw[label]["stores"]]
        transfers[label] = {
            "size": f"{width}x{height}", "frames": WINDOW_FRAMES, "new_frames": WINDOW_FRAMES - OVERLAP,
            "bytes": sizes, "trip_ms": [round(value, 1) for value in trip_ms],
            "trip_ms_median": round(statistics.median(trip_ms), 1),
            "trip_mb_per_s": round(sizes["total"] / 1e6 / (statistics.median(trip_ms) / 1000), 1),
            "store_ms": [round(value, 1) for value in store_ms],
            "store_ms_median": round(statistics.median(store_ms), 1),
            "line_rate_ms": {f"{gbit} Gbit/s": round(sizes["total"] * 8 / (gbit * 1e9) * 1000, 1)
                             for gbit in LINKS_GBIT},
        }

    import ray as ray_module
    import torch

    record = {
        "benchmark": "benchmarks/bench_gateway.py", "commit": _git_commit(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpu": _cpu_model(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "ray": ray_module.__version__, "torch": torch.__version__,
                    "load_avg_at_end": list(os.getloadavg())},
        "settings": {"OMP_NUM_THREADS": 1, "poll_s": POLL_S, "jobs": args.jobs, "transfers": args.transfers,
                     "cluster": "ray.cluster_utils.Cluster: CPU head + 1 node with 1 stub GPU (gpu_stub), one raylet "
                     "each, 1 CPU each, object stores of 1.5 GiB, all on this machine",
                     "checkpoint": "tiny (backend.scail2.testing.tiny, official layout)"},
        "overhead": overhead, "window_transfer": transfers,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")

    print(f"\nGateway overhead per job ({args.jobs} jobs each, alternating; submission to result, server side; "
          "overhead: median of paired differences)")
    print(f"{'job':<22} {'single s':>9} {'gateway s':>10} {'overhead s':>11} {'% of job':>9} {'queued s':>14} "
          f"{'window ms':>10}")
    for label, item in overhead.items():
        queued = item["queued_s_median"]
        print(f"{label:<22} {item['median_s']['single']:>9.3f} {item['median_s']['gateway']:>10.3f} "
              f"{item['overhead_s_median']:>11.3f} {item['overhead_pct_of_job']:>8.1f}% "
              f"{queued['single']:>6.3f}/{queued['gateway']:<7.3f} {item['window_transfer_ms_mean']:>10.2f}")
    print(f"\nA window's trip from a node to the gateway ({WINDOW_FRAMES} frames, {OVERLAP} of history; median of "
          f"{args.transfers})")
    print(f"{'size':<6} {'MB':>7} {'trip ms':>8} {'MB/s':>7} {'store ms':>9} "
          + " ".join(f"{name:>12}" for name in transfers["512p"]["line_rate_ms"]))
    for label, item in transfers.items():
        print(f"{label:<6} {item['bytes']['total'] / 1e6:>7.1f} {item['trip_ms_median']:>8.1f} "
              f"{item['trip_mb_per_s']:>7.1f} {item['store_ms_median']:>9.1f} "
              + " ".join(f"{value:>9.1f} ms" for value in item["line_rate_ms"].values()))
    print(f"\nwritten {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
