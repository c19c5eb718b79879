"""The job store on its own: crash recovery, idempotency, cancel, retention (a real SQLite file and folders)."""

from __future__ import annotations

import os
import time

import pytest

from backend.worker.store import MAX_ATTEMPTS, IdempotencyConflict, JobStore


def stage(store: JobStore, payload: bytes = b"x" * 1000):
    folder = store.new_staging_dir()
    (folder / "reference.png").write_bytes(payload)
    return folder


def create(store: JobStore, job_id: str, key: str | None = None, request_hash: str = "h1", payload=b"x" * 1000):
    return store.create_job(job_id=job_id, namespace="", idempotency_key=key, request_hash=request_hash,
                            spec={"seed": 1}, inputs={"reference": "reference.png"},
                            staged_inputs=stage(store, payload))


def test_create_claim_finish_and_idempotency(tmp_path):
    store = JobStore(tmp_path)
    job, created = create(store, "job-aaaaaaaaaaaaaaaa", key="k")
    assert created and job.status == "queued" and (store.job_dir(job.id) / "inputs" / "reference.png").is_file()
    again, created = create(store, "job-bbbbbbbbbbbbbbbb", key="k")
    assert not created and again.id == job.id
    assert not store.job_dir("job-bbbbbbbbbbbbbbbb").exists(), "the losing submission's files are discarded"
    with pytest.raises(IdempotencyConflict):
        create(store, "job-cccccccccccccccc", key="k", request_hash="h2")

    claimed = store.claim_next()
    assert claimed.id == job.id and claimed.status == "running" and claimed.attempts == 1
    assert store.claim_next() is None
    store.finish(job.id, "succeeded", result={"frames": 9, "fps": 16.0, "width": 96, "height": 64})
    assert store.get(job.id).status == "succeeded" and store.get(job.id).progress == 1.0


def test_recover_requeues_running_jobs_and_fails_crash_loops(tmp_path):
    store = JobStore(tmp_path)
    create(store, "job-running-aaaaaaaa")
    create(store, "job-queued-bbbbbbbbb")
    running = store.claim_next()
    store.window_path(running.id, 0).parent.mkdir()
    store.window_path(running.id, 0).write_bytes(b"window")
    store.record_window(running.id, 0, 13)
    (store.jobs_dir / "orphan-folder").mkdir()
    (store.window_path(running.id, 1).with_suffix(".safetensors.tmp")).write_bytes(b"half")

    reopened = JobStore(tmp_path)  # a new process after a crash
    summary = reopened.recover()
    assert summary["requeued"] == 1 and summary["queued"] == 2 and summary["orphan_folders_quarantined"] == 1
    job = reopened.get(running.id)
    assert job.status == "queued" and job.windows_done == 1
    assert [index for index, _ in reopened.finished_windows(job.id)] == [0]
    assert not list(store.window_path(job.id, 0).parent.glob("*.tmp"))
    assert reopened.claim_next().id == running.id, "the interrupted job keeps its place at the head"

    for _ in range(MAX_ATTEMPTS - 1):
        reopened.recover()
        reopened.claim_next()
    reopened.recover()
    assert reopened.get(running.id).status == "failed"
    assert reopened.get(running.id).error["type"] == "crashed"


def test_cancel_and_delete(tmp_path):
    store = JobStore(tmp_path)
    first, _ = create(store, "job-first-aaaaaaaaaa")
    second, _ = create(store, "job-second-bbbbbbbbb")
    store.claim_next()
    assert store.request_cancel(second.id).status == "canceled"
    flagged = store.request_cancel(first.id)
    assert flagged.status == "running" and flagged.cancel_requested
    store.delete(first.id)
    assert store.get(first.id) is not None, "a running job is not deleted"
    store.delete(second.id)
    assert store.get(second.id) is None and not store.job_dir(second.id).exists()


def test_retention_by_age_then_disk_budget(tmp_path):
    store = JobStore(tmp_path)
    ids = [f"job-{n}-aaaaaaaaaaaaaaa" for n in range(4)]
    for job_id in ids:
        create(store, job_id, payload=b"x" * 100_000)
    for job_id in ids[:3]:
        store.claim_next()
        store.finish(job_id, "succeeded")
    # job 0 finished long ago; jobs 1 and 2 just now; job 3 is still queued (never touched by retention).
    old = time.time() - 10 * 3600
    store._connection().execute("UPDATE jobs SET finished_at = ? WHERE id = ?", (old, ids[0]))
    assert store.apply_retention(max_age_seconds=3600, max_bytes=None) == [ids[0]]
    assert not store.job_dir(ids[0]).exists() and store.get(ids[0]).files_removed
    # Budget for two folders: the oldest remaining finished job goes, the queued one stays.
    assert store.apply_retention(max_age_seconds=None, max_bytes=250_000) == [ids[1]]
    assert store.job_dir(ids[2]).exists() and store.job_dir(ids[3]).exists()


def test_database_is_wal_and_fully_synchronous(tmp_path):
    store = JobStore(tmp_path)
    db = store._connection()
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert os.path.exists(tmp_path / "worker.sqlite3")


def test_list_by_status_pages_every_clients_jobs(tmp_path):
    store = JobStore(tmp_path)
    ids = [f"job-{index:02d}-aaaaaaaaaaaa" for index in range(7)]
    for index, job_id in enumerate(ids):
        store.create_job(job_id=job_id, namespace=f"client-{index % 2}", idempotency_key=None, request_hash="h",
                         spec={"seed": 1}, inputs={"reference": "reference.png"}, staged_inputs=stage(store))
    for job_id in ids[:4]:
        store.request_cancel(job_id)  # queued jobs are canceled at once
    running = store.claim_next()
    assert running.id == ids[4]

    finished, cursor = store.list_by_status(("succeeded", "failed", "canceled"), 3)
    assert [job.id for job in finished] == [ids[3], ids[2], ids[1]]  # newest first, both clients
    rest, last = store.list_by_status(("succeeded", "failed", "canceled"), 3, cursor=cursor)
    assert [job.id for job in rest] == [ids[0]] and last is None
    active, cursor = store.list_by_status(("running", "queued"), 2, oldest_first=True)
    assert [job.id for job in active] == ids[4:6]  # the order the runner takes them
    rest, last = store.list_by_status(("running", "queued"), 2, cursor=cursor, oldest_first=True)
    assert [job.id for job in rest] == [ids[6]] and last is None


def test_a_failed_commit_is_rolled_back_and_the_store_keeps_working(tmp_path):
    """A COMMIT can fail (a full disk, SQLITE_FULL; here a deferred foreign key): the transaction must be rolled
    back, or the connection stays inside it and every later write on that thread fails."""
    import sqlite3

    store = JobStore(tmp_path)
    with pytest.raises(sqlite3.IntegrityError):
        with store._transaction() as db:
            db.execute("PRAGMA defer_foreign_keys = ON")  # the violation is found by COMMIT, not by the INSERT
            db.execute("INSERT INTO windows (job_id, idx, frames, created_at) VALUES ('no-such-job', 0, 1, 0)")
    assert not store._connection().in_transaction
    job, created = create(store, "job-after-aaaaaaaaaa")
    assert created and store.claim_next().id == job.id
    assert store._connection().execute("SELECT COUNT(*) FROM windows").fetchone()[0] == 0


def test_a_job_failed_after_crashes_has_its_windows_removed(tmp_path):
    store = JobStore(tmp_path)
    create(store, "job-crashy-aaaaaaaaa")
    for _ in range(MAX_ATTEMPTS):
        job = store.claim_next()
        store.window_path(job.id, 0).parent.mkdir(exist_ok=True)
        store.window_path(job.id, 0).write_bytes(b"window")
        store.record_window(job.id, 0, 13)
        JobStore(tmp_path).recover()  # the worker died while it ran
    failed = store.get("job-crashy-aaaaaaaaa")
    assert failed.status == "failed" and failed.error["type"] == "crashed"
    assert not (store.job_dir(failed.id) / "windows").exists(), "a failed job never resumes: its windows go"
    assert (store.job_dir(failed.id) / "inputs" / "reference.png").is_file(), "its inputs stay"


def test_folders_without_a_row_are_quarantined_not_deleted(tmp_path):
    store = JobStore(tmp_path)
    create(store, "job-known-aaaaaaaaaa")
    orphan = store.jobs_dir / "job-orphan-bbbbbbbbb"
    (orphan / "result").mkdir(parents=True)
    (orphan / "result" / "result.mp4").write_bytes(b"somebody's only copy")
    summary = JobStore(tmp_path).recover()
    assert summary["orphan_folders_quarantined"] == 1
    assert not orphan.exists() and store.job_dir("job-known-aaaaaaaaaa").is_dir()
    [moved] = list((tmp_path / "quarantine").glob("*/job-orphan-bbbbbbbbb"))
    assert (moved / "result" / "result.mp4").read_bytes() == b"somebody's only copy"


def test_a_disk_full_requeue_counts_and_keeps_the_windows(tmp_path):
    store = JobStore(tmp_path)
    create(store, "job-diskfull-aaaaaaa")
    job = store.claim_next()
    store.window_path(job.id, 0).parent.mkdir()
    store.window_path(job.id, 0).write_bytes(b"window")
    store.record_window(job.id, 0, 13)
    store.requeue(job.id, phase="waiting_for_disk", storage_failure=True)
    again = store.get(job.id)
    assert (again.status, again.phase, again.storage_retries, again.windows_done) == ("queued", "waiting_for_disk",
                                                                                      1, 1)
    assert store.claim_next().id == job.id and store.window_path(job.id, 0).is_file()


def test_a_version_1_store_is_migrated(tmp_path):
    import sqlite3

    store = JobStore(tmp_path)
    create(store, "job-old-aaaaaaaaaaaa")
    store.close()
    db = sqlite3.connect(tmp_path / "worker.sqlite3")
    db.execute("ALTER TABLE jobs DROP COLUMN storage_retries")
    db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    reopened = JobStore(tmp_path)
    assert reopened.get("job-old-aaaaaaaaaaaa").storage_retries == 0
    assert reopened._connection().execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "2"
