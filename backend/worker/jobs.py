"""Job operations shared by the HTTP API (``app``) and the web page (``web``): lookup, the status body, cancel,
delete, result files and the server-sent event stream.

Both front ends check their own credentials (bearer header, session cookie) and then call these, so a job
behaves the same whichever of them is asked.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from . import API_VERSION
from .errors import ApiError
from .logs import get_logger
from .results import ResultFileResponse
from .schemas import JobError, JobProgress, JobSpec, JobStatus, ResultInfo
from .store import JobRecord, JobStore

log = get_logger("scail.worker.api")

JOB_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
SSE_POLL_S = 0.25
SSE_KEEPALIVE_S = 15.0
RESULT_MEDIA_TYPES = {"frame": "image/png", "zip": "application/zip", "mp4": "video/mp4"}


def links(job_id: str) -> dict[str, str]:
    base = f"/{API_VERSION}/jobs/{job_id}"
    return {"self": base, "cancel": f"{base}/cancel", "result": f"{base}/result"}


def job_status_body(store: JobStore, job: JobRecord) -> JobStatus:
    result = None
    if job.result and job.status == "succeeded":
        result = ResultInfo(**job.result, manifest_url=links(job.id)["result"])
    return JobStatus(
        id=job.id,
        status=job.status,  # type: ignore[arg-type]
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        queue_position=store.queue_position(job),
        progress=job.progress,
        detail=JobProgress(fraction=job.progress, phase=job.phase, window=job.window, num_windows=job.num_windows,
                           step=job.step, num_steps=job.num_steps,
                           eta_seconds=round(job.eta, 1) if job.eta is not None else None),
        cancel_requested=job.cancel_requested,
        attempts=job.attempts,
        windows_done=job.windows_done,
        error=JobError(**job.error) if job.error else None,
        result=result,
        timings=job.timings,
        spec=JobSpec.model_validate(job.spec),
        links=links(job.id),
    )


def find_job(store: JobStore, job_id: str) -> JobRecord:
    job = store.get(job_id) if JOB_ID_PATTERN.match(job_id) else None
    if job is None:
        raise ApiError(404, "not_found", f"no job {job_id!r} on this worker (deleted, or never submitted here)", "id")
    return job


def cancel_job(store: JobStore, runner: Any, job_id: str) -> JobRecord:
    """A queued job is canceled at once; a running one stops at the next denoising step."""
    find_job(store, job_id)
    job = store.request_cancel(job_id)
    runner.cancel(job_id)
    log.info("cancel requested", extra={"job": job_id})
    return find_job(store, job_id) if job is None else job


def delete_job(store: JobStore, job_id: str) -> None:
    """Remove a finished or queued job and its files; a running job must be canceled first (409)."""
    job = find_job(store, job_id)
    if job.status == "running":
        raise ApiError(409, "job_running", "the job is running: cancel it, wait until its status is 'canceled', "
                       "then delete it", "id")
    store.delete(job_id)
    log.info("job deleted", extra={"job": job_id})


def finished_result(store: JobStore, job_id: str) -> tuple[JobRecord, Path, dict[str, Any]]:
    """The job, its result folder and manifest; 409 before it succeeded, 410 after retention removed it."""
    job = find_job(store, job_id)
    if job.status != "succeeded":
        raise ApiError(409, "not_ready", f"the job is {job.status}; results exist only once it has succeeded", "id")
    if job.files_removed:
        raise ApiError(410, "expired", "the result files were removed by the worker's retention policy", "id")
    folder = store.job_dir(job.id) / "result"
    manifest = json.loads((folder / "manifest.json").read_text())
    return job, folder, manifest


def result_file(store: JobStore, job_id: str, kind: str, index: int | None = None,
                disposition: str = "attachment") -> ResultFileResponse:
    """One result file (a frame, the zip or the mp4) with its SHA-256 as ETag; Range requests are answered by
    Starlette, an unusable Range by the API's JSON error (``ResultFileResponse``)."""
    _, folder, manifest = finished_result(store, job_id)
    for entry in manifest["files"]:
        if entry["kind"] == kind and (index is None or entry.get("index") == index):
            # entry["name"] was written by the runner, never taken from the request.
            return ResultFileResponse(folder / entry["name"], media_type=RESULT_MEDIA_TYPES[kind],
                                      headers={"ETag": f'"{entry["sha256"]}"', "X-Content-SHA256": entry["sha256"],
                                               "Cache-Control": "private, max-age=0"},
                                      filename=Path(entry["name"]).name, content_disposition_type=disposition)
    raise ApiError(404, "not_found", f"the result has no frame {index}" if index is not None else
                   f"the result has no {kind}", "index" if index is not None else None)


def change_events(request: Request, read: Callable[[], tuple[str, str | None, bool]]) -> StreamingResponse:
    """Server-sent events: ``read()`` gives ``(event, data, last)``; a changed ``data`` is sent as ``event``, a
    keep-alive comment goes out after quiet spells, and the stream ends after a ``last`` reading or when the
    client leaves. ``read`` runs in the thread pool (it reads SQLite)."""

    async def stream() -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        sent, quiet_since = None, loop.time()
        while not await request.is_disconnected():
            event, data, last = await run_in_threadpool(read)
            now = loop.time()
            if data != sent:
                yield f"event: {event}\ndata: {data}\n\n"
                sent, quiet_since = data, now
            elif now - quiet_since > SSE_KEEPALIVE_S:
                yield ": keep-alive\n\n"  # a comment line keeps proxies from closing an idle stream
                quiet_since = now
            if last:
                return
            await asyncio.sleep(SSE_POLL_S)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def status_reader(store: JobStore, job_id: str) -> Callable[[], tuple[str, str | None, bool]]:
    """For ``change_events``: ``event: status`` with the job's status body until the job finishes, or
    ``event: deleted`` once it is gone."""

    def read() -> tuple[str, str | None, bool]:
        job = store.get(job_id)
        if job is None:
            return "deleted", "{}", True
        return "status", job_status_body(store, job).model_dump_json(), job.finished

    return read
