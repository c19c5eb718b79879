"""End to end through a real worker subprocess: submit, progress, download, cancel, idempotency, listing."""

from __future__ import annotations

import hashlib
import json
import threading
import zipfile

import numpy as np
import pytest
import requests
from PIL import Image
from worker_helpers import LONG_SPEC, SHORT_SPEC, sha256, wait_until

from backend.client import BadRequest, JobFailed, JobNotFound, WorkerClient


def test_health_with_and_without_token(worker):
    public = requests.get(f"{worker.url}/v1/health", timeout=10).json()
    assert public == {"status": "ok", "version": public["version"], "api": "v1", "authenticated": False}
    full = worker.client().health()
    assert full["authenticated"] is True
    assert full["device"] == "cpu" and full["gpu"] is None
    assert full["model"]["loaded"] is True and full["model"]["dtype"] == "float32"
    assert set(full["model"]["loras"]) >= {"lightx2v", "dpo", "relight"}
    assert set(full["queue"]) == {"queued", "running"}
    assert full["limits"]["max_upload_mb"] == 8
    schema = requests.get(f"{worker.url}/openapi.json", timeout=10).json()
    assert {"/v1/health", "/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel", "/v1/jobs/{job_id}/result",
            "/v1/jobs/{job_id}/result/frames/{index}", "/v1/jobs/{job_id}/result/zip",
            "/v1/jobs/{job_id}/result/mp4"} <= set(schema["paths"])
    assert {"JobSpec", "JobStatus", "ErrorResponse", "ResultManifest"} <= set(schema["components"]["schemas"])


def test_submit_progress_and_verified_download(worker, inputs, tmp_path):
    client = worker.client()
    job_id = client.submit(SHORT_SPEC, inputs.files())
    seen: list[dict] = []
    final = client.wait(job_id, poll_interval=0.05, timeout=120, on_status=seen.append)

    statuses = [s["status"] for s in seen]
    assert statuses[-1] == "succeeded" and final["progress"] == 1.0
    assert final["result"] == {"frames": 9, "fps": pytest.approx(29.97, abs=0.01), "width": 96, "height": 64,
                               "manifest_url": f"/v1/jobs/{job_id}/result"}
    assert final["spec"]["seed"] == 7 and final["attempts"] == 1 and final["windows_done"] == 1
    fractions = [s["progress"] for s in seen]
    assert fractions == sorted(fractions), "progress never goes backwards"

    paths = client.download(job_id, tmp_path / "out", what=("frames", "mp4", "zip"))
    manifest = client.result_manifest(job_id)
    by_name = {entry["name"]: entry for entry in manifest["files"]}
    assert len(paths["frames"]) == 9
    for index, path in enumerate(paths["frames"]):
        assert path.name == f"{index:06d}.png"
        assert sha256(path) == by_name[f"frames/{path.name}"]["sha256"]
        assert np.asarray(Image.open(path)).shape == (64, 96, 3)
    assert sha256(paths["mp4"]) == by_name["result.mp4"]["sha256"]
    with zipfile.ZipFile(paths["zip"]) as archive:
        assert archive.namelist() == [f"frames/{i:06d}.png" for i in range(9)]
        assert archive.read("frames/000004.png") == paths["frames"][4].read_bytes()
    assert (tmp_path / "out" / "manifest.json").is_file()
    assert not list((tmp_path / "out").rglob("*.part"))

    # One structured summary line per job: settings, timings per phase, peak GPU memory; never the token.
    log_text = worker.log_path.read_text()
    assert worker.token not in log_text
    records = [json.loads(line) for line in log_text.splitlines() if line.startswith("{")]
    summary = next(r for r in records if r["event"] == "job finished" and r["job"] == job_id)
    assert summary["status"] == "succeeded" and summary["level"] == "info"
    assert summary["settings"]["steps"] == 2 and summary["settings"]["frames"] == 9
    assert summary["settings"]["size"] == "96x64" and summary["settings"]["seed"] == 7
    assert {"decoding", "encode", "step", "decode", "writing"} <= set(summary["timings"]["phases_s"])
    assert "peak_gpu_mb" in summary["timings"] and summary["timings"]["run_s"] > 0


def test_colour_anchoring_is_on_for_clips_longer_than_one_window(worker, inputs, tmp_path):
    client = worker.client()
    long_spec = {**LONG_SPEC, "steps": 2}  # 120 frames: two windows
    jobs = {"default": client.submit(long_spec, inputs.files()),
            "off": client.submit({**long_spec, "color_anchor": False}, inputs.files()),
            "one_window": client.submit(SHORT_SPEC, inputs.files())}
    frames = {}
    for name, job_id in jobs.items():
        client.wait(job_id, poll_interval=0.1, timeout=300)
        frames[name] = client.download(job_id, tmp_path / name, what=("frames",))["frames"]
    records = [json.loads(line) for line in worker.log_path.read_text().splitlines() if line.startswith("{")]
    anchored = {name: next(r for r in records if r["event"] == "job finished" and r["job"] == job_id)
                ["settings"]["color_anchor"] for name, job_id in jobs.items()}
    assert anchored == {"default": True, "off": False, "one_window": False}
    assert client.status(jobs["off"])["spec"]["color_anchor"] is False
    # The first window is the anchor and stays as generated; the second one is recoloured only when anchored.
    assert len(frames["default"]) == len(frames["off"]) == 120
    assert frames["default"][10].read_bytes() == frames["off"][10].read_bytes()
    assert not np.array_equal(np.asarray(Image.open(frames["default"][110])), np.asarray(Image.open(frames["off"][110])))


def test_range_requests_resume_a_partial_download(worker, inputs, tmp_path):
    client = worker.client()
    job_id = client.submit(SHORT_SPEC, inputs.files())
    client.wait(job_id, poll_interval=0.05, timeout=120)
    mp4 = next(e for e in client.result_manifest(job_id)["files"] if e["kind"] == "mp4")
    headers = {"Authorization": f"Bearer {worker.token}"}
    whole = requests.get(f"{worker.url}{mp4['url']}", headers=headers, timeout=10)
    assert whole.status_code == 200 and whole.headers["accept-ranges"] == "bytes"
    assert hashlib.sha256(whole.content).hexdigest() == mp4["sha256"] == whole.headers["x-content-sha256"]
    part = requests.get(f"{worker.url}{mp4['url']}", headers={**headers, "Range": "bytes=100-"}, timeout=10)
    assert part.status_code == 206 and part.content == whole.content[100:]
    assert part.headers["content-range"] == f"bytes 100-{mp4['size'] - 1}/{mp4['size']}"

    # A download interrupted after 1000 bytes resumes from there and is verified against the checksum.
    target = tmp_path / "result.mp4"
    (tmp_path / "result.mp4.part").write_bytes(whole.content[:1000])
    client.download_file(mp4["url"], target, mp4["sha256"], mp4["size"])
    assert target.read_bytes() == whole.content
    # A corrupt partial file (wrong bytes) is detected by the checksum and fetched again.
    (tmp_path / "again.mp4.part").write_bytes(b"\0" * 1000)
    client.download_file(mp4["url"], tmp_path / "again.mp4", mp4["sha256"], mp4["size"])
    assert (tmp_path / "again.mp4").read_bytes() == whole.content


def test_cancel_running_and_queued_jobs(worker, inputs):
    client = worker.client()
    running = client.submit({**LONG_SPEC, "steps": 20}, inputs.files())
    queued = client.submit(SHORT_SPEC, inputs.files())
    wait_until(lambda: client.status(running)["detail"]["step"], timeout=120)
    assert client.status(queued)["status"] == "queued"
    assert client.status(queued)["queue_position"] == 0

    after = client.cancel(queued)
    assert after["status"] == "canceled"  # a queued job is canceled at once
    requested = client.cancel(running)
    assert requested["cancel_requested"] is True
    with pytest.raises(JobFailed) as failure:
        client.wait(running, poll_interval=0.05, timeout=60)
    assert failure.value.status == "canceled"
    status = client.status(running)
    assert status["detail"]["num_windows"] == 2 and status["windows_done"] < 2, "stopped before the end"
    assert status["result"] is None and status["progress"] < 1.0
    with pytest.raises(BadRequest) as not_ready:
        client.result_manifest(running)
    assert not_ready.value.status == 409

    client.delete(running)
    with pytest.raises(JobNotFound):
        client.status(running)


def test_idempotent_resubmission(worker, inputs):
    client = worker.client()
    first = client.submit(SHORT_SPEC, inputs.files(), idempotency_key="shot-010-take-1")
    again = client.submit(SHORT_SPEC, inputs.files(), idempotency_key="shot-010-take-1")
    assert again == first
    with pytest.raises(BadRequest) as conflict:
        client.submit({**SHORT_SPEC, "seed": 8}, inputs.files(), idempotency_key="shot-010-take-1")
    assert conflict.value.status == 409 and conflict.value.field == "Idempotency-Key"
    client.wait(first, poll_interval=0.05, timeout=120)


def test_concurrent_retries_with_one_key_make_one_job(worker, inputs):
    client = worker.client()
    ids: list[str] = []
    threads = [threading.Thread(target=lambda: ids.append(
        client.submit(SHORT_SPEC, inputs.files(), idempotency_key="same-key-raced"))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ids) == 4 and len(set(ids)) == 1
    client.wait(ids[0], poll_interval=0.05, timeout=120)


def test_list_shows_only_the_callers_jobs(worker, inputs):
    alice = WorkerClient(worker.url, worker.token, client_id="alice-install")
    bob = WorkerClient(worker.url, worker.token, client_id="bob-install")
    mine = [alice.submit(SHORT_SPEC, inputs.files()) for _ in range(3)]
    page = alice.list_jobs(limit=2)
    assert [job["id"] for job in page["jobs"]] == mine[::-1][:2] and page["next_cursor"]
    assert [job["id"] for job in alice.iter_jobs(page_size=2)] == mine[::-1]
    assert not any(job["id"] in mine for job in bob.iter_jobs())
    for job_id in mine:
        alice.wait(job_id, poll_interval=0.05, timeout=120)


def test_server_sent_events_follow_a_job_to_the_end(worker, inputs):
    client = worker.client()
    # The worker runs one job at a time: a job ahead that would run for minutes (400 CFG steps at 192x128) keeps
    # the watched one queued until the stream has reported it, and is canceled only then, so the stream cannot
    # connect after the watched job has started, however slowly this machine runs.
    blocker = client.submit({**LONG_SPEC, "steps": 200, "step_cache": "off", "guidance": 5.0, "size": "192x128"}, inputs.files())
    job_id = client.submit({**SHORT_SPEC, "seed": 31}, inputs.files())
    headers = {"Authorization": f"Bearer {worker.token}"}
    events = []
    with requests.get(f"{worker.url}/v1/jobs/{job_id}/events", headers=headers, stream=True, timeout=120) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in stream.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((kind, json.loads(line.removeprefix("data: "))))
                if len(events) == 1:
                    assert events[0][1]["status"] == "queued", "the stream starts with the current status"
                    assert client.cancel(blocker)["id"] == blocker
    assert all(kind == "status" and body["id"] == job_id for kind, body in events)
    assert events[-1][1]["status"] == "succeeded", "the stream ends with the final status"
    assert len({json.dumps(body, sort_keys=True) for _, body in events}) == len(events), "only changes are sent"
    statuses = [body["status"] for _, body in events]
    order = ["queued", "running", "succeeded"]
    assert statuses == sorted(statuses, key=order.index) and set(statuses) == set(order), statuses
    assert client.status(blocker)["status"] == "canceled"
    client.delete(blocker)
