"""The durable job store: one SQLite database in WAL mode plus a files folder, both under ``--data``.

Layout::

    DATA/worker.sqlite3             jobs and finished windows (WAL, synchronous=FULL: a commit survives power loss)
    DATA/jobs/<id>/inputs/<field>   uploads, under fixed names taken from an allow-list (never from the client)
    DATA/jobs/<id>/windows/NNNN.safetensors   each finished window's frames, written before it is recorded
    DATA/jobs/<id>/result/          frames/NNNNNN.png, result.mp4, result.zip, manifest.json
    DATA/jobs/<id>/thumbs/          the web page's previews of the inputs and each window (thumbnails.py)
    DATA/staging/                   half-received submissions and half-written results (wiped at start-up)

    DATA/quarantine/<time>/<id>     job folders found without a row at start-up (moved here, never deleted)

Rules that make crashes harmless: files are written under ``staging`` or with a temporary name and renamed into
place *before* the row that points at them is committed; a row is committed *before* any response reports the
state it describes; a transaction whose COMMIT fails is rolled back, so the connection is never left inside it.
At start-up, jobs left ``running`` go back to the queue (keeping their finished windows).

The store never deletes what it cannot account for. Opening it refuses (``StoreDamaged``, the CLI's exit code 4)
a database that is not a file, fails SQLite's integrity check, was written by a newer worker, or is missing or
empty while job folders exist (its rows are lost: starting empty would hide every job). A job folder without a
row in an intact database is moved to ``quarantine/`` with a warning.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .logs import get_logger
from .storage import shortage

log = get_logger("scail.worker.store")

SCHEMA_VERSION = 2  # 2: jobs.storage_retries
# A job that was running when the worker died this many times is failed instead of requeued (a crash loop, e.g.
# the process being killed for memory, must not block the queue forever).
MAX_ATTEMPTS = 3
# A job interrupted by a full disk goes back to the queue this many times; the next time it fails ("disk_full"): it
# needs more room than the disk has, and must not keep the queue behind it waiting.
MAX_STORAGE_RETRIES = 3
PROGRESS_COLUMNS = ("progress", "phase", "window", "num_windows", "step", "num_steps", "eta")
FINISHED_STATUSES = ("succeeded", "failed", "canceled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    namespace TEXT NOT NULL,
    idempotency_key TEXT,
    request_hash TEXT NOT NULL,
    status TEXT NOT NULL,
    spec TEXT NOT NULL,
    inputs TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    progress REAL NOT NULL DEFAULT 0,
    phase TEXT,
    window INTEGER,
    num_windows INTEGER,
    step INTEGER,
    num_steps INTEGER,
    eta REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    windows_done INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    result TEXT,
    timings TEXT,
    files_removed INTEGER NOT NULL DEFAULT 0,
    storage_retries INTEGER NOT NULL DEFAULT 0,
    UNIQUE (namespace, idempotency_key)
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
CREATE INDEX IF NOT EXISTS jobs_namespace ON jobs (namespace, seq);
CREATE TABLE IF NOT EXISTS windows (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    frames INTEGER NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (job_id, idx)
);
"""


@dataclass(frozen=True)
class JobRecord:
    """One row of ``jobs``, JSON columns decoded."""

    seq: int
    id: str
    namespace: str
    idempotency_key: str | None
    request_hash: str
    status: str
    spec: dict[str, Any]
    inputs: dict[str, Any]
    created_at: float
    started_at: float | None
    finished_at: float | None
    progress: float
    phase: str | None
    window: int | None
    num_windows: int | None
    step: int | None
    num_steps: int | None
    eta: float | None
    cancel_requested: bool
    attempts: int
    windows_done: int
    error: dict[str, Any] | None
    result: dict[str, Any] | None
    timings: dict[str, Any] | None
    files_removed: bool
    storage_retries: int

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> JobRecord:
        values = dict(row)
        for key in ("spec", "inputs"):
            values[key] = json.loads(values[key])
        for key in ("error", "result", "timings"):
            values[key] = json.loads(values[key]) if values[key] else None
        values["cancel_requested"] = bool(values["cancel_requested"])
        values["files_removed"] = bool(values["files_removed"])
        return cls(**values)


@dataclass(frozen=True)
class QueuedJob:
    """A queued job as a scheduler sees it: order, owner and settings."""

    seq: int
    id: str
    namespace: str
    spec: dict[str, Any]


class StoreDamaged(Exception):
    """The database under ``--data`` cannot be trusted; the message says what was found and what to do."""


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before for a different request."""

    def __init__(self, existing: JobRecord):
        super().__init__(existing.id)
        self.existing = existing


class JobStore:
    """Thread-safe access to the database (one connection per thread) and the job folders."""

    def __init__(self, data_dir: str | os.PathLike[str], min_free_bytes: int = 0):
        """Open (or create) the store; raises ``StoreDamaged`` instead of opening a database it cannot trust.

        ``min_free_bytes``: below this much free disk space (or below ``storage.MIN_FREE_FILES`` free inodes) the
        store has no room (``has_room``): submissions are refused with 507 and the runner starts no job.
        """
        self.data_dir = Path(data_dir).resolve()
        self.jobs_dir = self.data_dir / "jobs"
        self.staging_root = self.data_dir / "staging"
        self.quarantine_root = self.data_dir / "quarantine"
        self.db_path = self.data_dir / "worker.sqlite3"
        self.min_free_bytes = int(min_free_bytes)
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.staging_root.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._write_lock = threading.Lock()
        # Answers queue_position for an executor that starts queued jobs in another order than oldest first (a
        # cluster gateway's fair share across clients): job -> jobs that start before it.
        self.queue_order: Callable[[JobRecord], int] | None = None
        self._check_database_file()
        try:
            self._check_integrity()
            db = self._connection()
            self._check_version(db)
            # executescript commits on its own; each CREATE is IF NOT EXISTS, so a crash part-way is harmless.
            db.executescript(_SCHEMA)
            self._migrate(db)
        except sqlite3.DatabaseError as exc:
            self.close()
            raise StoreDamaged(self._damaged(f"SQLite cannot read it ({exc})")) from exc
        except BaseException:
            self.close()
            raise

    def _damaged(self, finding: str) -> str:
        return (f"the job store's database {self.db_path} is damaged: {finding}. The worker did not start, so that "
                f"nothing under {self.data_dir} is changed or deleted. Restore worker.sqlite3 (with its -wal file, "
                f"if any) from a backup of that folder; or move {self.data_dir} aside (the job folders in jobs/ "
                "keep each job's inputs and results) and start with a new --data folder")

    def _check_database_file(self) -> None:
        """Refuse what SQLite would open without complaint but must not: a missing or empty database beside job
        folders (an empty store would hide those jobs, and recovery used to delete them as orphans)."""
        path = self.db_path
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise StoreDamaged(self._damaged("it is not a regular file (something else is in its place)"))
        if path.exists() and path.stat().st_size > 0:
            return
        folders = sum(1 for _ in self.jobs_dir.iterdir())
        if folders:
            state = "missing" if not path.exists() else "empty (0 bytes)"
            raise StoreDamaged(self._damaged(f"it is {state} while {self.jobs_dir} holds {folders} job folder(s), "
                                             "so the rows that describe those jobs are lost"))

    def _check_integrity(self) -> None:
        """SQLite's integrity check (every page, index and constraint), on a connection of its own that changes
        nothing (the store's connections switch the file to WAL mode first)."""
        if not self.db_path.exists():
            return
        db = sqlite3.connect(self.db_path, isolation_level=None)
        try:
            rows = [row[0] for row in db.execute("PRAGMA integrity_check(5)").fetchall()]
        finally:
            db.close()
        if rows != ["ok"]:
            findings = "; ".join(" ".join(str(row).split()) for row in rows)  # one line, for the exit message
            raise StoreDamaged(self._damaged(f"SQLite's integrity check failed: {findings}"))

    def _check_version(self, db: sqlite3.Connection) -> None:
        """Refuse a store written by a newer worker before anything here writes to it."""
        if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone() is None:
            return  # a new store
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is not None and int(row[0]) > SCHEMA_VERSION:
            raise StoreDamaged(f"the job store {self.db_path} was written by a newer worker (schema {row[0]}; this "
                               f"worker knows {SCHEMA_VERSION}). Start the newer worker, or use another --data "
                               "folder; nothing was changed")

    def _migrate(self, db: sqlite3.Connection) -> None:
        """Bring a store of an older schema up to this one (columns are only ever added)."""
        columns = {info[1] for info in db.execute("PRAGMA table_info(jobs)")}
        missing = set(JobRecord.__dataclass_fields__) - columns - {"storage_retries"}
        if missing:
            raise StoreDamaged(self._damaged(f"its jobs table lacks the columns {sorted(missing)}"))
        with self._transaction() as tx:
            if "storage_retries" not in columns:
                tx.execute("ALTER TABLE jobs ADD COLUMN storage_retries INTEGER NOT NULL DEFAULT 0")
            tx.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    # -- connections -------------------------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None, check_same_thread=True)
            try:
                db.row_factory = sqlite3.Row
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                db.execute("PRAGMA foreign_keys=ON")
                db.execute("PRAGMA busy_timeout=30000")
            except BaseException:
                db.close()
                raise
            self._local.db = db
        return db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT: the write lock is taken up front, so no transaction fails half-way.

        A COMMIT can still fail (a full disk, an I/O error); then the transaction is rolled back here, or the
        connection would stay inside it and every later BEGIN on this thread would fail."""
        db = self._connection()
        with self._write_lock:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # SQLite may already have rolled back (e.g. after SQLITE_FULL)
                    with suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # -- folders -----------------------------------------------------------------------------------------------

    def job_dir(self, job_id: str) -> Path:
        # job ids are generated by the server (security.new_job_id); this never sees client text.
        return self.jobs_dir / job_id

    def has_room(self) -> bool:
        """Whether the disk under ``--data`` has at least ``min_free_bytes`` (and a few hundred files) free."""
        return self.shortage() is None

    def shortage(self) -> str | None:
        """What the disk under ``--data`` is short of for a new job (``storage.shortage``), or None."""
        return shortage(self.data_dir, self.min_free_bytes)

    def new_staging_dir(self) -> Path:
        path = self.staging_root / uuid.uuid4().hex
        path.mkdir()
        return path

    # -- submission --------------------------------------------------------------------------------------------

    def find_by_idempotency_key(self, namespace: str, key: str) -> JobRecord | None:
        row = self._connection().execute(
            "SELECT * FROM jobs WHERE namespace = ? AND idempotency_key = ?", (namespace, key)
        ).fetchone()
        return JobRecord.from_row(row) if row else None

    def create_job(
        self,
        *,
        job_id: str,
        namespace: str,
        idempotency_key: str | None,
        request_hash: str,
        spec: dict[str, Any],
        inputs: dict[str, Any],
        staged_inputs: Path,
    ) -> tuple[JobRecord, bool]:
        """Move the staged uploads into the job folder and commit the queued row.

        Returns ``(job, created)``; ``created`` is False when another request with the same idempotency key won
        (then this request's files are discarded). Raises ``IdempotencyConflict`` when the key was used for a
        different request.
        """
        if idempotency_key:
            existing = self.find_by_idempotency_key(namespace, idempotency_key)
            if existing is not None:
                shutil.rmtree(staged_inputs, ignore_errors=True)
                return self._same_request(existing, request_hash), False
        job_dir = self.job_dir(job_id)
        job_dir.mkdir()
        try:
            os.replace(staged_inputs, job_dir / "inputs")
            with self._transaction() as db:
                db.execute(
                    "INSERT INTO jobs (id, namespace, idempotency_key, request_hash, status, spec, inputs, created_at,"
                    " phase) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, 'queued')",
                    (job_id, namespace, idempotency_key, request_hash, json.dumps(spec), json.dumps(inputs),
                     time.time()),
                )
        except sqlite3.IntegrityError:
            shutil.rmtree(job_dir, ignore_errors=True)
            existing = self.find_by_idempotency_key(namespace, idempotency_key or "")
            if existing is None:
                raise
            return self._same_request(existing, request_hash), False
        except BaseException:
            shutil.rmtree(job_dir, ignore_errors=True)  # never committed, never reported: nothing points at it
            raise
        record = self.get(job_id)
        assert record is not None
        return record, True

    @staticmethod
    def _same_request(existing: JobRecord, request_hash: str) -> JobRecord:
        if existing.request_hash != request_hash:
            raise IdempotencyConflict(existing)
        return existing

    # -- queries -----------------------------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord | None:
        row = self._connection().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return JobRecord.from_row(row) if row else None

    def list_jobs(self, namespace: str, limit: int, before_seq: int | None) -> tuple[list[JobRecord], int | None]:
        """Newest first; returns the page and the seq to continue before (None on the last page)."""
        rows = self._connection().execute(
            "SELECT * FROM jobs WHERE namespace = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
            (namespace, before_seq if before_seq is not None else 2**62, limit + 1),
        ).fetchall()
        records = [JobRecord.from_row(row) for row in rows[:limit]]
        return records, (records[-1].seq if len(rows) > limit else None)

    def list_by_status(self, statuses: tuple[str, ...], limit: int, cursor: int | None = None,
                       oldest_first: bool = False) -> tuple[list[JobRecord], int | None]:
        """Every client's jobs in ``statuses`` (the web page's operator view), newest first, or oldest first (the
        order the runner takes them); returns the page and the cursor of the next one (None on the last page)."""
        marks = ", ".join("?" for _ in statuses)
        if oldest_first:
            where, order, start = "seq > ?", "ASC", -1
        else:
            where, order, start = "seq < ?", "DESC", 2**62
        rows = self._connection().execute(
            f"SELECT * FROM jobs WHERE status IN ({marks}) AND {where} ORDER BY seq {order} LIMIT ?",
            (*statuses, start if cursor is None else cursor, limit + 1),
        ).fetchall()
        records = [JobRecord.from_row(row) for row in rows[:limit]]
        return records, (records[-1].seq if len(rows) > limit else None)

    def queue_position(self, job: JobRecord) -> int | None:
        if job.status != "queued":
            return None
        if self.queue_order is not None:
            return self.queue_order(job)
        (ahead,) = self._connection().execute(
            "SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND seq < ?", (job.seq,)
        ).fetchone()
        return int(ahead)

    def counts(self) -> dict[str, int]:
        rows = self._connection().execute(
            "SELECT status, COUNT(*) FROM jobs WHERE status IN ('queued', 'running') GROUP BY status"
        ).fetchall()
        counts = {"queued": 0, "running": 0}
        counts.update({status: int(n) for status, n in rows})
        return counts

    # -- the runner's side -------------------------------------------------------------------------------------

    def claim_next(self) -> JobRecord | None:
        """Atomically move the oldest queued job to running (attempts + 1) and return it."""
        with self._transaction() as db:
            row = db.execute("SELECT id FROM jobs WHERE status = 'queued' ORDER BY seq LIMIT 1").fetchone()
            if row is None:
                return None
            self._mark_running(db, row["id"])
        return self.get(row["id"])

    def queued(self) -> list[QueuedJob]:
        """Every queued job, oldest first, with what a scheduler needs to choose among them."""
        rows = self._connection().execute(
            "SELECT seq, id, namespace, spec FROM jobs WHERE status = 'queued' ORDER BY seq"
        ).fetchall()
        return [QueuedJob(row["seq"], row["id"], row["namespace"], json.loads(row["spec"])) for row in rows]

    def claim(self, job_id: str) -> JobRecord | None:
        """Atomically move this queued job to running (attempts + 1); None when it is no longer queued (canceled
        or deleted meanwhile)."""
        with self._transaction() as db:
            if not self._mark_running(db, job_id):
                return None
        return self.get(job_id)

    @staticmethod
    def _mark_running(db: sqlite3.Connection, job_id: str) -> bool:
        return db.execute(
            "UPDATE jobs SET status = 'running', started_at = COALESCE(started_at, ?), attempts = attempts + 1,"
            " phase = 'starting', step = NULL, num_steps = NULL, eta = NULL WHERE id = ? AND status = 'queued'",
            (time.time(), job_id),
        ).rowcount == 1

    def update_progress(self, job_id: str, **fields: Any) -> None:
        unknown = set(fields) - set(PROGRESS_COLUMNS)
        if unknown:
            raise ValueError(f"not progress columns: {sorted(unknown)}")
        assignments = ", ".join(f"{column} = ?" for column in fields)
        with self._transaction() as db:
            db.execute(f"UPDATE jobs SET {assignments} WHERE id = ? AND status = 'running'",
                       (*fields.values(), job_id))

    def window_path(self, job_id: str, index: int) -> Path:
        return self.job_dir(job_id) / "windows" / f"{int(index):04d}.safetensors"

    def record_window(self, job_id: str, index: int, frames: int) -> None:
        """Commit that window ``index`` (already renamed into place) is finished. Idempotent per index."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO windows (job_id, idx, frames, created_at) VALUES (?, ?, ?, ?)",
                (job_id, int(index), int(frames), time.time()),
            )
            db.execute(
                "UPDATE jobs SET windows_done = (SELECT COUNT(*) FROM windows WHERE job_id = ?) WHERE id = ?",
                (job_id, job_id),
            )

    def finished_windows(self, job_id: str) -> list[tuple[int, Path]]:
        """The recorded windows of a job, in order, each with its file (the file exists: it was renamed first)."""
        rows = self._connection().execute(
            "SELECT idx FROM windows WHERE job_id = ? ORDER BY idx", (job_id,)
        ).fetchall()
        return [(int(row["idx"]), self.window_path(job_id, row["idx"])) for row in rows]

    def is_cancel_requested(self, job_id: str) -> bool:
        row = self._connection().execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row["cancel_requested"])

    def finish(
        self,
        job_id: str,
        status: str,
        *,
        error: dict[str, Any] | None = None,
        result: dict[str, Any] | None = None,
        timings: dict[str, Any] | None = None,
    ) -> None:
        if status not in FINISHED_STATUSES:
            raise ValueError(f"not a final status: {status}")
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, error = ?, result = ?, timings = ?, phase = ?,"
                " progress = CASE WHEN ? = 'succeeded' THEN 1.0 ELSE progress END, eta = NULL WHERE id = ?",
                (status, time.time(), json.dumps(error) if error else None, json.dumps(result) if result else None,
                 json.dumps(timings) if timings else None, status, status, job_id),
            )
        # Windows only matter for resuming; a finished job never resumes (its frames are in result/ if any).
        shutil.rmtree(self.job_dir(job_id) / "windows", ignore_errors=True)

    def requeue(self, job_id: str, count_attempt: bool = True, phase: str = "queued",
                storage_failure: bool = False) -> None:
        """Put a running job back in the queue (the worker is shutting down, a cluster engine was lost, or the disk
        is full: then ``phase`` says so and ``storage_retries`` counts it); its windows are kept. ``count_attempt``
        False takes back the attempt its claim counted (it never started)."""
        with self._transaction() as db:
            db.execute("UPDATE jobs SET status = 'queued', phase = ?, step = NULL, eta = NULL, "
                       "attempts = attempts - ?, storage_retries = storage_retries + ? "
                       "WHERE id = ? AND status = 'running'",
                       (phase, 0 if count_attempt else 1, int(storage_failure), job_id))

    # -- client actions ----------------------------------------------------------------------------------------

    def request_cancel(self, job_id: str) -> JobRecord | None:
        """A queued job is canceled at once; a running one is flagged (the runner stops between steps)."""
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET status = 'canceled', finished_at = ?, phase = 'canceled', cancel_requested = 1 "
                "WHERE id = ? AND status = 'queued'",
                (time.time(), job_id),
            )
            db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = 'running'", (job_id,))
        return self.get(job_id)

    def delete(self, job_id: str) -> None:
        """Remove a job that is not running: its row first (so no response can point at it), then its files."""
        with self._transaction() as db:
            db.execute("DELETE FROM jobs WHERE id = ? AND status != 'running'", (job_id,))
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    # -- start-up and housekeeping -----------------------------------------------------------------------------

    def recover(self) -> dict[str, Any]:
        """Run once at start-up, before the runner: requeue interrupted jobs, clear half-written files, and move
        job folders that no row accounts for to ``quarantine/`` (never delete them)."""
        shutil.rmtree(self.staging_root, ignore_errors=True)
        self.staging_root.mkdir(parents=True, exist_ok=True)
        with self._transaction() as db:
            crash_looped = [row["id"] for row in db.execute(
                "SELECT id FROM jobs WHERE status = 'running' AND attempts >= ?", (MAX_ATTEMPTS,))]
            db.execute(
                "UPDATE jobs SET status = 'failed', finished_at = ?, phase = 'failed', error = ? "
                "WHERE status = 'running' AND attempts >= ?",
                (time.time(), json.dumps({"type": "crashed", "field": None, "message":
                 f"the worker stopped {MAX_ATTEMPTS} times while running this job (out of memory?)"}),
                 MAX_ATTEMPTS),
            )
            requeued = db.execute(
                "UPDATE jobs SET status = 'queued', phase = 'queued', step = NULL, eta = NULL "
                "WHERE status = 'running'"
            ).rowcount
            known = {row["id"] for row in db.execute("SELECT id FROM jobs")}
            queued = db.execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued'").fetchone()[0]
        for job_id in crash_looped:
            # A failed job never resumes, so its windows are only disk usage now (as in ``finish``).
            shutil.rmtree(self.job_dir(job_id) / "windows", ignore_errors=True)
        quarantined = self._quarantine(sorted(path for path in self.jobs_dir.iterdir() if path.name not in known))
        for job_id in known:
            # A crash between writing a window file and committing its row leaves a stray temp file.
            for stray in (self.job_dir(job_id) / "windows").glob("*.tmp"):
                stray.unlink(missing_ok=True)
            if (self.job_dir(job_id) / "result.staging").exists():
                shutil.rmtree(self.job_dir(job_id) / "result.staging", ignore_errors=True)
        summary = {"requeued": requeued, "failed_after_crashes": len(crash_looped), "queued": int(queued),
                   "orphan_folders_quarantined": len(quarantined)}
        log.info("job store recovered", extra=summary)
        return summary

    def _quarantine(self, folders: list[Path]) -> list[Path]:
        """Move job folders without a row under ``quarantine/<UTC time>/``: a crash between a submission's rename
        and its commit leaves one, and so does a database restored from an older backup; either way they may
        hold results that someone still wants."""
        if not folders:
            return []
        target = self.quarantine_root / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target.mkdir(parents=True, exist_ok=True)
        moved = []
        for folder in folders:
            destination = target / folder.name
            os.replace(folder, destination)
            moved.append(destination)
        log.warning("job folders without a row in the database were moved to quarantine (not deleted): inspect "
                    "them and remove them when they are not needed",
                    extra={"folders": [path.name for path in moved], "quarantine": str(target)})
        return moved

    def apply_retention(self, max_age_seconds: float | None, max_bytes: int | None) -> list[str]:
        """Remove the files of finished jobs older than ``max_age_seconds``, then of the oldest finished jobs
        until all job folders together fit in ``max_bytes``. Rows stay (status still answers; results say 410)."""
        removed: list[str] = []
        rows = self._connection().execute(
            "SELECT id, finished_at FROM jobs WHERE status IN ('succeeded', 'failed', 'canceled') "
            "AND files_removed = 0 ORDER BY finished_at"
        ).fetchall()
        now = time.time()
        candidates = [(row["id"], row["finished_at"] or 0.0) for row in rows]
        if max_age_seconds is not None:
            for job_id, finished_at in candidates:
                if now - finished_at > max_age_seconds:
                    removed.append(job_id)
        if max_bytes is not None:
            total = sum(_folder_size(path) for path in self.jobs_dir.iterdir())
            total -= sum(_folder_size(self.job_dir(job_id)) for job_id in removed)
            for job_id, _ in candidates:
                if total <= max_bytes:
                    break
                if job_id not in removed:
                    total -= _folder_size(self.job_dir(job_id))
                    removed.append(job_id)
        for job_id in removed:
            with self._transaction() as db:
                db.execute("UPDATE jobs SET files_removed = 1 WHERE id = ?", (job_id,))
            shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
        if removed:
            log.info("retention removed job files", extra={"jobs": len(removed)})
        return removed


def _folder_size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass
    return total


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to ``path`` through a temporary file, fsync'd, then renamed."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
