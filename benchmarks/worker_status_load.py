"""Status polling under load: N clients hammer ``GET /v1/jobs/{id}`` on loopback while the worker runs a job.

Measures the latency of the polling workhorse (what every add-on instance calls once a second) while the GPU
thread is busy, and checks that every answer is a well-formed status of the right job. Prints a table and writes
the numbers as JSON.

    # self-contained: a local worker on the tiny CPU checkpoint, the real carphone clip from tests/data/media
    python benchmarks/worker_status_load.py --clients 50 --seconds 20 --out benchmarks/results/worker_status_load.json
    # against a running worker (loopback only: this is a load generator)
    python benchmarks/worker_status_load.py --url http://127.0.0.1:8765 --token T --job JOB_ID
    # only the idle keep-alive check (one connection, sequential status requests once the job has finished)
    python benchmarks/worker_status_load.py --idle-only --out benchmarks/results/worker_keepalive_idle.json

Every run ends with the idle keep-alive check: one client on one persistent connection (``http.client``, as curl
or any script would) asks for the finished job's status back to back. Its p50 must stay under
``KEEPALIVE_P50_LIMIT_MS``; a listening socket without TCP_NODELAY shows up here as a ~40 ms stall per request
(Nagle's algorithm waiting for the delayed ACK), and the script exits 1.

Run from the repository root.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import requests

REPO = Path(__file__).resolve().parents[1]
MEDIA = REPO / "tests" / "data" / "media"
KEEPALIVE_P50_LIMIT_MS = 5.0


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


def measure_status_latency(url: str, token: str, job_id: str, clients: int = 50, seconds: float = 20.0,
                           interval: float = 0.0, stop_when_finished: bool = True) -> dict[str, Any]:
    """Run ``clients`` threads polling the job's status for at most ``seconds`` (or until it finishes).

    Each thread keeps one HTTP connection (as a real client does) and polls back to back (``interval`` 0) or
    with a pause. Returns latency percentiles in milliseconds, counts, and the statuses seen.
    """
    host = urlparse(url).hostname or ""
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"{url}: this load generator only targets loopback workers")
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    seen: set[str] = set()
    finished = threading.Event()
    deadline = time.monotonic() + seconds
    start_barrier = threading.Barrier(clients)

    def poll(slot: int) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        start_barrier.wait()
        while time.monotonic() < deadline and not (stop_when_finished and finished.is_set()):
            began = time.perf_counter()
            try:
                response = session.get(f"{url}/v1/jobs/{job_id}", timeout=30)
                elapsed = time.perf_counter() - began
                body = response.json()
                if response.status_code != 200 or body.get("id") != job_id:
                    errors.append(f"{response.status_code}: {str(body)[:200]}")
                    continue
            except (requests.RequestException, ValueError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            latencies[slot].append(elapsed)
            seen.add(body["status"])
            if body["status"] in ("succeeded", "failed", "canceled"):
                finished.set()
            if interval:
                time.sleep(interval)
        session.close()

    threads = [threading.Thread(target=poll, args=(slot,), daemon=True) for slot in range(clients)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 60)
    wall = time.monotonic() - began
    values = sorted(v * 1000.0 for per_client in latencies for v in per_client)
    return {
        "clients": clients,
        "seconds": round(wall, 2),
        "requests": len(values),
        "errors": len(errors),
        "error_samples": errors[:5],
        "requests_per_s": round(len(values) / wall, 1) if wall else 0.0,
        "p50_ms": round(percentile(values, 0.50), 2),
        "p90_ms": round(percentile(values, 0.90), 2),
        "p99_ms": round(percentile(values, 0.99), 2),
        "max_ms": round(values[-1], 2) if values else None,
        "mean_ms": round(statistics.fmean(values), 2) if values else None,
        "statuses_seen": sorted(seen),
    }


def measure_keepalive_latency(url: str, token: str, job_id: str, requests_count: int = 300) -> dict[str, Any]:
    """Sequential ``GET /v1/jobs/{id}`` on one keep-alive connection; latency percentiles in milliseconds."""
    parsed = urlparse(url)
    if parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"{url}: this load generator only targets loopback workers")
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port or 80, timeout=30)
    headers = {"Authorization": f"Bearer {token}"}
    values: list[float] = []
    errors = 0
    try:
        for _ in range(requests_count):
            began = time.perf_counter()
            connection.request("GET", f"/v1/jobs/{job_id}", headers=headers)
            response = connection.getresponse()
            body = response.read()
            values.append((time.perf_counter() - began) * 1000.0)
            if response.status != 200 or json.loads(body).get("id") != job_id:
                errors += 1
    finally:
        connection.close()
    values.sort()
    p50 = percentile(values, 0.50)
    return {
        "requests": len(values),
        "errors": errors,
        "p50_ms": round(p50, 2),
        "p90_ms": round(percentile(values, 0.90), 2),
        "p99_ms": round(percentile(values, 0.99), 2),
        "max_ms": round(values[-1], 2),
        "limit_p50_ms": KEEPALIVE_P50_LIMIT_MS,
        "passed": errors == 0 and p50 < KEEPALIVE_P50_LIMIT_MS,
    }


def _self_contained_run(args: argparse.Namespace) -> dict[str, Any]:
    """Start a local worker on a tiny checkpoint, submit a job, and measure while it runs."""
    sys.path.insert(0, str(REPO))
    import numpy as np
    from PIL import Image

    from backend.launcher import LocalWorker

    work = Path(tempfile.mkdtemp(prefix="scail_load_"))
    checkpoint = args.checkpoint
    if checkpoint is None:
        from backend.scail2.testing.tiny import write_tiny_checkpoint

        checkpoint = write_tiny_checkpoint(work / "tiny")
    photo = np.asarray(Image.open(MEDIA / "astronaut.png").convert("RGB").resize((128, 128)))
    yy, xx = np.mgrid[:128, :128]
    alpha = ((((yy - 70) / 52.0) ** 2 + ((xx - 64) / 36.0) ** 2) < 1.0).astype(np.uint8) * 255
    reference = work / "reference.png"
    Image.fromarray(np.dstack([photo, alpha]), "RGBA").save(reference)
    # The driving clip's subject mask (blue on black), one PNG per used frame.
    mask_frames = np.zeros((args.frames, 144, 176, 3), np.uint8)
    mask_frames[:, 28:140, 44:132] = (0, 0, 255)
    mask_path = work / "driving_mask.zip"
    with zipfile.ZipFile(mask_path, "w") as archive:
        for index, frame in enumerate(mask_frames):
            png = work / "m.png"
            Image.fromarray(frame).save(png)
            archive.write(png, f"{index:04d}.png")
    worker = LocalWorker(sys.executable, checkpoint, work / "data", device=args.device, log_path=work / "worker.log")
    worker.start()
    try:
        client = worker.client()
        # Windows of 13 frames keep the job cycling through every phase (encode, steps, decode, store window).
        spec = {"preset": "quality", "guidance": 1.0, "steps": args.steps, "size": "96x64", "seed": 3,
                "frame_range": [0, args.frames], "segment_len": 13}
        job_id = client.submit(spec, {"reference": reference, "driving": MEDIA / "carphone_pristine.mp4",
                                      "driving_mask": mask_path})
        stats: dict[str, Any] = {}
        if not args.idle_only:
            stats = measure_status_latency(worker.url, worker.token, job_id, args.clients, args.seconds,
                                           interval=args.interval)
        final = client.wait(job_id, poll_interval=0.2, timeout=600)
        stats["job"] = {"status": final["status"], "frames": final["result"]["frames"], "timings": final["timings"]}
        stats["keepalive_idle"] = measure_keepalive_latency(worker.url, worker.token, job_id)
        stats["worker"] = {"device": args.device, "checkpoint": "tiny (untrained)" if args.checkpoint is None
                           else str(args.checkpoint)}
        return stats
    finally:
        worker.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running worker (loopback); default: start one on a tiny checkpoint")
    parser.add_argument("--token", default=os.environ.get("SCAIL_WORKER_TOKEN"))
    parser.add_argument("--job", help="job id to poll (with --url)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="checkpoint for the self-started worker")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--interval", type=float, default=0.0,
                        help="pause between one client's polls (0: back to back, the worst case; 1: the add-on)")
    parser.add_argument("--frames", type=int, default=29, help="driving frames of the self-submitted job")
    parser.add_argument("--steps", type=int, default=200, help="steps per window of the self-submitted job")
    parser.add_argument("--idle-only", action="store_true",
                        help="skip the polling load; only the idle keep-alive check after a short job")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "worker_status_load.json")
    args = parser.parse_args(argv)
    if args.idle_only and args.frames == parser.get_default("frames"):
        args.frames, args.steps = 9, 2  # the job only has to finish
    if args.url:
        if not (args.token and args.job):
            parser.error("--url needs --token (or SCAIL_WORKER_TOKEN) and --job")
        url = args.url.rstrip("/")
        stats = {} if args.idle_only else measure_status_latency(url, args.token, args.job, args.clients,
                                                                 args.seconds, interval=args.interval,
                                                                 stop_when_finished=False)
        stats["keepalive_idle"] = measure_keepalive_latency(url, args.token, args.job)
    else:
        stats = _self_contained_run(args)
    stats["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    stats["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    stats["interval_s"] = args.interval
    rows: list[tuple[str, Any]] = []
    if not args.idle_only:
        rows += [("clients", stats["clients"]), ("poll interval s", args.interval), ("duration s", stats["seconds"]),
                 ("requests", stats["requests"]), ("errors", stats["errors"]),
                 ("requests/s", stats["requests_per_s"]), ("p50 ms", stats["p50_ms"]), ("p90 ms", stats["p90_ms"]),
                 ("p99 ms", stats["p99_ms"]), ("max ms", stats["max_ms"]),
                 ("statuses seen", ", ".join(stats["statuses_seen"]))]
    idle = stats["keepalive_idle"]
    rows += [("idle keep-alive requests", idle["requests"]), ("idle keep-alive p50 ms", idle["p50_ms"]),
             ("idle keep-alive p90 ms", idle["p90_ms"]), ("idle keep-alive p99 ms", idle["p99_ms"]),
             (f"idle keep-alive p50 < {KEEPALIVE_P50_LIMIT_MS:g} ms", "pass" if idle["passed"] else "FAIL")]
    width = max(len(name) for name, _ in rows)
    print(f"{'metric'.ljust(width)} | value")
    print(f"{'-' * width}-|------")
    for name, value in rows:
        print(f"{name.ljust(width)} | {value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(stats, indent=1))
    tmp.replace(args.out)
    print(f"written {args.out}")
    return 0 if stats.get("errors", 0) == 0 and idle["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
