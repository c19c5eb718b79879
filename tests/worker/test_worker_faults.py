"""Bad luck against a real worker process: a damaged or lost database, a full disk, kill -9 in every phase.

The promise under test: nothing is lost. A worker refuses to start on a store it cannot trust (exit code 4, the
database and the job folders left exactly as they were), moves folders it cannot account for to quarantine instead
of deleting them, pauses instead of failing when the disk fills up and resumes when there is room, and finishes
every job killed in any phase with the result an uninterrupted run gives.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from raw_http import error_lines, multipart, request
from worker_helpers import SHORT_SPEC, fill_disk, small_tmpfs, start_worker, wait_until

from backend.worker.store import JobStore

REPO = Path(__file__).resolve().parents[2]
EXIT_STORE_DAMAGED = 4
JOBS_IN_STORE = 40


# -- a store with finished jobs and their results ---------------------------------------------------------------


def _finished_store(data: Path) -> dict[str, bytes]:
    """A store of ``JOBS_IN_STORE`` succeeded jobs, each with a result the API serves; returns id -> result bytes."""
    store = JobStore(data)
    results = {}
    for index in range(JOBS_IN_STORE):
        staged = store.new_staging_dir()
        (staged / "reference.png").write_bytes(b"reference %d" % index)
        job, _ = store.create_job(job_id=f"finished-job-{index:04d}-aaaa", namespace="", idempotency_key=None,
                                  request_hash=f"h{index}", spec={"prompt": "a result someone wants " * 20},
                                  inputs={"reference": "reference.png"}, staged_inputs=staged)
        claimed = store.claim_next()
        assert claimed.id == job.id
        payload = os.urandom(4096)
        folder = store.job_dir(job.id) / "result"
        folder.mkdir()
        (folder / "result.mp4").write_bytes(payload)
        manifest = {"frames": 1, "fps": 16.0, "width": 2, "height": 2, "files": [
            {"name": "result.mp4", "kind": "mp4", "size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}]}
        (folder / "manifest.json").write_text(json.dumps(manifest))
        store.finish(job.id, "succeeded", result={"frames": 1, "fps": 16.0, "width": 2, "height": 2})
        results[job.id] = payload
    store.close()
    return results


def _tree(data: Path) -> dict[str, str]:
    """Every file under ``data`` with its SHA-256 (SQLite's shared-memory index aside: readers recreate it)."""
    return {str(path.relative_to(data)): hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
            for path in sorted(data.rglob("*")) if not path.name.endswith("-shm")}


def _serve(checkpoint: Path, data: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "SCAIL_WORKER_TOKEN": "t" * 32, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "backend.worker.cli", "serve", "--checkpoint", str(checkpoint),
                           "--data", str(data), "--device", "cpu", "--port", "0"], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=timeout)


@pytest.fixture(scope="module")
def finished_store(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    data = tmp_path_factory.mktemp("finished_store") / "data"
    return data, _finished_store(data)


def _overwrite(path: Path, offset: int, data: bytes) -> None:
    content = bytearray(path.read_bytes())
    content[offset:offset + len(data)] = data
    path.write_bytes(bytes(content))


def _newer_schema(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.commit()
    db.close()


def _replace_with_folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


DAMAGES = {
    "deleted": lambda db: db.unlink(),
    "zero-length": lambda db: db.write_bytes(b""),
    "bad header": lambda db: _overwrite(db, 0, b"not SQLite at all"),
    "truncated": lambda db: db.write_bytes(db.read_bytes()[: db.stat().st_size // 2 + 100]),
    "a directory in its place": _replace_with_folder,
    "corrupt pages behind a good header": lambda db: _overwrite(db, 2 * 4096, os.urandom(db.stat().st_size - 8192)),
    "written by a newer worker": _newer_schema,
}


@pytest.mark.parametrize("damage", list(DAMAGES), ids=list(DAMAGES))
def test_a_damaged_store_stops_the_worker_and_changes_nothing(finished_store, tiny_checkpoint, tmp_path, damage):
    template, _ = finished_store
    data = Path(shutil.copytree(template, tmp_path / "data"))
    DAMAGES[damage](data / "worker.sqlite3")
    before = _tree(data)

    result = _serve(tiny_checkpoint, data)

    assert result.returncode == EXIT_STORE_DAMAGED, result.stderr[-3000:]
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("scail-worker: error:") and str(data) in message, message
    assert ("Restore worker.sqlite3" in message) or ("newer worker" in message), message
    assert "Traceback" not in result.stderr
    assert _tree(data) == before, "a refused start must leave the database and every job folder as they were"


def test_lost_database_refused_then_restored_and_orphans_quarantined(finished_store, tiny_checkpoint, tmp_path):
    """The whole story of issue 12's data loss: before, a deleted database started an empty store and recovery
    deleted all 43 job folders as orphans. Now the start is refused; restoring the database brings every job back,
    and a folder that no row accounts for is moved to quarantine, not deleted."""
    template, results = finished_store
    data = Path(shutil.copytree(template, tmp_path / "data"))
    backup = tmp_path / "worker.sqlite3.backup"
    shutil.copy2(data / "worker.sqlite3", backup)
    (data / "worker.sqlite3").unlink()
    assert _serve(tiny_checkpoint, data).returncode == EXIT_STORE_DAMAGED
    assert sorted(p.name for p in (data / "jobs").iterdir()) == sorted(results)

    shutil.copy2(backup, data / "worker.sqlite3")
    orphan = data / "jobs" / "orphan-folder-bbbbbbbbbb"
    (orphan / "result").mkdir(parents=True)
    (orphan / "result" / "result.mp4").write_bytes(b"a result whose row is gone")
    worker = start_worker(tiny_checkpoint, data, tmp_path / "worker.log")
    try:
        for job_id, payload in results.items():
            response = request(worker.url, "GET", f"/v1/jobs/{job_id}/result/mp4",
                               headers={"Authorization": f"Bearer {worker.token}"})
            assert response.status == 200 and response.body == payload, job_id
    finally:
        worker.stop()
    [quarantined] = list((data / "quarantine").glob("*/orphan-folder-bbbbbbbbbb"))
    assert (quarantined / "result" / "result.mp4").read_bytes() == b"a result whose row is gone"
    log = (tmp_path / "worker.log").read_text()
    assert "moved to quarantine" in log
    assert error_lines(log) == []


# -- a full disk ------------------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 48 MiB tmpfs for the worker's --data (mounted by the test; needs root and mount permission)."""
    with small_tmpfs(tmp_path / "disk") as mount_point:
        yield mount_point


# 29 driving frames in windows of 13 (8 new frames each after 5 of history): three windows, each busy for a while.
THREE_WINDOWS = {**SHORT_SPEC, "frame_range": [0, 29], "segment_len": 13, "steps": 40, "seed": 11}


def test_a_full_disk_pauses_the_runner_refuses_submissions_507_and_resumes(small_disk, tiny_checkpoint, inputs,
                                                                          tmp_path):
    data = small_disk / "data"
    worker = start_worker(tiny_checkpoint, data, tmp_path / "worker.log", "--min-free-mb", "4")
    headers = {"Authorization": f"Bearer {worker.token}"}
    files = {name: (path.name, path.read_bytes()) for name, path in inputs.files().items()}
    content_type, body = multipart({"spec": json.dumps(SHORT_SPEC)}, files)
    client = worker.client()
    try:
        job_id = client.submit(THREE_WINDOWS, inputs.files())
        wait_until(lambda: client.status(job_id)["windows_done"] >= 1, timeout=180, interval=0.02)
        filler = fill_disk(small_disk)

        # The job cannot store its next window: the runner pauses, the job is never left running unattended.
        def paused() -> dict | None:
            health = client.health()
            return health if health["storage"]["runner_paused"] else None

        health = wait_until(paused, timeout=120, interval=0.2)
        assert health["storage"]["accepting_jobs"] is False
        refused = request(worker.url, "POST", "/v1/jobs", headers={**headers, "Content-Type": content_type},
                          body=body)
        assert refused.status == 507, refused.body
        assert refused.error["code"] == "insufficient_storage" and refused.headers["retry-after"]
        assert client.status(job_id)["status"] in ("running", "queued")

        filler.unlink()
        final = client.wait(job_id, poll_interval=0.1, timeout=300)
        assert final["status"] == "succeeded" and final["windows_done"] == 3 and final["result"]["frames"] == 29
        assert final["attempts"] == 2 and final["timings"]["resumed_windows"] >= 1
        assert client.health()["storage"]["runner_paused"] is None
        accepted = request(worker.url, "POST", "/v1/jobs", headers={**headers, "Content-Type": content_type},
                           body=body)
        assert accepted.status == 201, accepted.body
        client.wait(accepted.json()["id"], poll_interval=0.1, timeout=180)
    finally:
        worker.stop()
    assert not list((data / "staging").iterdir())
    assert error_lines((tmp_path / "worker.log").read_text()) == []


# -- kill -9 in every phase -------------------------------------------------------------------------------------


def _phase_reader(data: Path):
    database = sqlite3.connect(f"file:{data / 'worker.sqlite3'}?mode=ro", uri=True, timeout=5)

    def read(job_id: str) -> tuple[str, str, int]:
        return database.execute("SELECT status, phase, windows_done FROM jobs WHERE id = ?", (job_id,)).fetchone()

    return read


def _kill_when(worker, data: Path, job_id: str, predicate, timeout: float = 180.0) -> tuple[str, str, int] | None:
    """SIGKILL the worker as soon as the job's row satisfies ``predicate`` (polled every ~2 ms); None (and the
    worker left running) when the job finished first, i.e. the phase went by between two polls."""
    read = _phase_reader(data)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = read(job_id)
        if row and predicate(*row):
            os.kill(worker.pid, signal.SIGKILL)
            worker.process.wait(10)
            worker.stop()
            return row
        if row and row[0] in ("succeeded", "failed", "canceled"):
            return None
        time.sleep(0.002)
    raise AssertionError(f"job {job_id} never reached the phase (last row {read(job_id)})")


def _kill_in_phase(worker, data: Path, candidates, predicate, tries: int = 5) -> tuple[str, tuple]:
    """Kill the worker while one of ``candidates()``'s jobs is in a phase too short to catch every time (on a
    busy machine a poll can miss it): a job that got past it unharmed is fine, the next one is watched."""
    for _ in range(tries):
        job_id = candidates()
        row = _kill_when(worker, data, job_id, predicate)
        if row is not None:
            return job_id, row
    raise AssertionError(f"no job was caught in the phase in {tries} tries")


# 57 frames in windows of 13: seven windows, and enough frames that writing the result takes a moment.
PHASED = {**SHORT_SPEC, "frame_range": [0, 57], "segment_len": 13, "steps": 3, "seed": 5}


def _frames(client, job_id: str, folder: Path) -> np.ndarray:
    paths = client.download(job_id, folder, what=("frames",))["frames"]
    return np.stack([np.asarray(Image.open(path)) for path in paths])


def test_kill_9_in_every_phase_loses_nothing(tiny_checkpoint, inputs, tmp_path):
    data = tmp_path / "data"
    log = tmp_path / "worker.log"
    killed: dict[str, tuple] = {}
    submitted: list[str] = []

    first = start_worker(tiny_checkpoint, data, log)
    client = first.client()

    def submit() -> str:
        submitted.append(client.submit(PHASED, inputs.files()))  # one request, a job of its own each time
        return submitted[-1]

    behind: list[str] = []

    def with_one_queued_behind() -> str:
        job_id = submit()
        behind.append(submit())
        return job_id

    job, killed["decoding, another job queued"] = _kill_in_phase(
        first, data, with_one_queued_behind, lambda s, phase, w: phase == "decoding")

    second = start_worker(tiny_checkpoint, data, log)
    killed["denoising, after stored windows"] = _kill_when(second, data, job,
                                                           lambda s, phase, w: phase == "step" and w >= 2)

    third = start_worker(tiny_checkpoint, data, log)
    client = third.client()
    queue = iter(behind[-1:])  # the job left queued behind the first kill is watched first
    written, killed["writing the result"] = _kill_in_phase(
        third, data, lambda: next(queue, None) or submit(), lambda s, phase, w: phase == "writing")

    last = start_worker(tiny_checkpoint, data, log)
    try:
        client = last.client()
        finals = {job_id: client.wait(job_id, poll_interval=0.05, timeout=300) for job_id in dict.fromkeys(submitted)}
        assert finals[job]["attempts"] == 3 and finals[written]["attempts"] == 2
        assert all(final["status"] == "succeeded" and final["result"]["frames"] == 57 for final in finals.values())
        reference = client.submit(PHASED, inputs.files(), idempotency_key="uninterrupted")
        client.wait(reference, poll_interval=0.05, timeout=300)
        expected = _frames(client, reference, tmp_path / "reference")
        for job_id in (job, written):
            np.testing.assert_array_equal(_frames(client, job_id, tmp_path / job_id), expected)
        # Identical results, written minutes apart after different crashes: byte-identical archives.
        zips = {entry["sha256"] for job_id in (job, written, reference)
                for entry in client.result_manifest(job_id)["files"] if entry["kind"] == "zip"}
        assert len(zips) == 1
    finally:
        last.stop()
    assert {row[0] for row in killed.values()} == {"running"}, killed
    # Nothing half-written stays behind, and nothing was taken for an orphan.
    assert not list((data / "staging").iterdir()) and not (data / "quarantine").exists()
    for job_id in (job, written):
        names = {path.name for path in (data / "jobs" / job_id).iterdir()}
        assert {"inputs", "result"} <= names and not names & {"windows", "result.staging"}, names
        assert not list((data / "jobs" / job_id).rglob("*.tmp"))
    assert error_lines(log.read_text()) == []
