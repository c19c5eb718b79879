"""What the templates show: job rows and pages built from the store, and the Jinja filters that format them.

Everything here reads; nothing changes a job. Times are rendered in UTC (the page's script shows them in the
viewer's time zone).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..jobs import job_status_body
from ..schemas import JobStatus
from ..store import FINISHED_STATUSES, JobRecord, JobStore
from ..thumbnails import InputThumbs, WindowThumbs, input_thumbnails, window_thumbnails

ACTIVE_STATUSES = ("running", "queued")
ACTIVE_LIMIT = 200
FINISHED_PAGE = 50


def client_label(namespace: str) -> str:
    """Jobs are filed under the SHA-256 of the caller's ``X-Client-Id``: its first 8 hex digits name the client
    (``printf %s "$CLIENT_ID" | sha256sum | cut -c1-8`` gives the same); jobs sent without one are 'anonymous'."""
    return namespace[:8] if namespace else "anonymous"


@dataclass(frozen=True)
class JobView:
    """One job as the page shows it: the API's status body plus what only the operator sees."""

    status: JobStatus
    client: str
    files_removed: bool
    seq: int

    @property
    def id(self) -> str:
        return self.status.id

    @property
    def active(self) -> bool:
        return self.status.status in ACTIVE_STATUSES

    @property
    def can_cancel(self) -> bool:
        return self.active and not self.status.cancel_requested

    @property
    def can_delete(self) -> bool:
        return self.status.status != "running"


def job_view(store: JobStore, job: JobRecord) -> JobView:
    return JobView(status=job_status_body(store, job), client=client_label(job.namespace),
                   files_removed=job.files_removed, seq=job.seq)


@dataclass(frozen=True)
class JobTables:
    running: list[JobView]
    queued: list[JobView]
    finished: list[JobView]
    more_queued: int  # queued jobs beyond the ones listed
    older_cursor: int | None  # ?before= for the next page of finished jobs
    revision: str  # changes whenever a job is added, finishes or goes away (the script then reloads the tables)


def job_tables(store: JobStore, before: int | None = None) -> JobTables:
    active, _ = store.list_by_status(ACTIVE_STATUSES, ACTIVE_LIMIT, oldest_first=True)
    finished, older = store.list_by_status(FINISHED_STATUSES, FINISHED_PAGE, cursor=before)
    counts = store.counts()
    views = [job_view(store, job) for job in active]
    running = [view for view in views if view.status.status == "running"]
    queued = [view for view in views if view.status.status == "queued"]
    finished_views = [job_view(store, job) for job in finished]
    return JobTables(running=running, queued=queued, finished=finished_views,
                     more_queued=max(0, counts["queued"] - len(queued)), older_cursor=older,
                     revision=tables_revision(active, finished))


def tables_revision(active: list[JobRecord], finished: list[JobRecord]) -> str:
    marks = [(job.id, job.status, job.cancel_requested, job.files_removed) for job in (*active, *finished)]
    return hashlib.sha256(json.dumps(marks).encode()).hexdigest()[:16]


def live_tables(store: JobStore, before: int | None = None) -> dict[str, Any]:
    """What the dashboard's event stream sends: the active jobs' progress and the tables' revision."""
    active, _ = store.list_by_status(ACTIVE_STATUSES, ACTIVE_LIMIT, oldest_first=True)
    finished, _ = store.list_by_status(FINISHED_STATUSES, FINISHED_PAGE, cursor=before)
    return {
        "revision": tables_revision(active, finished),
        "queue": store.counts(),
        "jobs": [job_status_body(store, job).model_dump(include={"id", "status", "progress", "detail",
                                                                  "queue_position", "cancel_requested"})
                 for job in active],
    }


@dataclass(frozen=True)
class JobPage:
    job: JobView
    inputs: InputThumbs | None
    windows: list[WindowThumbs]
    result_files: dict[str, int]  # kind -> size in bytes, for succeeded jobs whose files are still there


def job_page(store: JobStore, job: JobRecord) -> JobPage:
    job_dir = store.job_dir(job.id)
    files: dict[str, int] = {}
    if job.status == "succeeded" and not job.files_removed:
        files = _result_sizes(job_dir / "result" / "manifest.json")
    return JobPage(job=job_view(store, job), inputs=input_thumbnails(job_dir), windows=window_thumbnails(job_dir),
                   result_files=files)


def _result_sizes(manifest_path: Path) -> dict[str, int]:
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return {}
    return {entry["kind"]: int(entry["size"]) for entry in manifest["files"] if entry["kind"] in ("mp4", "zip")}


# -- Jinja filters ---------------------------------------------------------------------------------------------


def duration(seconds: float | None) -> str:
    """'—', '0.4 s', '42 s', '3 min 05 s', '2 h 07 min'."""
    if seconds is None:
        return "—"
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def utc_time(timestamp: float | None) -> str:
    if timestamp is None:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))


def iso_time(timestamp: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp)) if timestamp is not None else ""


def file_size(size: int | None) -> str:
    if size is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024  # type: ignore[assignment]
    return f"{size} B"


def progress_text(status: JobStatus) -> str:
    """'window 2/3 · step 4/6', 'decoding', 'queued (#2)' ..., the same words the page's script writes."""
    detail = status.detail
    if status.status == "queued":
        return f"queued (#{status.queue_position + 1})" if status.queue_position is not None else "queued"
    parts = []
    if detail.window and detail.num_windows:
        parts.append(f"window {detail.window}/{detail.num_windows}")
    if detail.step is not None and detail.num_steps:
        parts.append(f"step {detail.step}/{detail.num_steps}")
    return " · ".join(parts) or (detail.phase or status.status)


def human_key(key: str) -> str:
    return key.replace("_", " ")


FILTERS = {"duration": duration, "utc_time": utc_time, "iso_time": iso_time, "file_size": file_size,
           "progress_text": progress_text, "human_key": human_key}
