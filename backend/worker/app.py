"""The FastAPI application of HTTP API v1 (see docs/API.md): routes, auth, error format.

``create_app`` takes the already-built store, runner and settings; it never loads the model itself, so the CLI
decides when the worker is ready. Every route except ``GET /v1/health`` needs the bearer token; the web page
(``web``, under ``/ui``) takes the same token through its login form.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from . import API_VERSION, jobs
from .body_limit import SMALL_BODY_LIMIT, BodyLimitMiddleware
from .errors import ApiError, invalid, parse_json_object
from .executor import JobExecutor
from .jobs import find_job, finished_result, job_status_body, links, result_file
from .logs import get_logger
from .schemas import (
    ErrorResponse,
    Health,
    HealthPublic,
    JobCreated,
    JobList,
    JobSpec,
    JobStatus,
    ResultManifest,
)
from .security import TokenGuard, client_namespace, new_job_id
from .storage import InsufficientStorage, free_bytes, is_storage_full
from .store import IdempotencyConflict, JobRecord, JobStore
from .thumbnails import input_preview, write_input_thumbnails, write_quietly
from .uploads import UploadLimits, build_request, canonical_field, discard, resolve_mask_sources, store_upload
from .web import mount_web

log = get_logger("scail.worker.api")

MAX_IDEMPOTENCY_KEY = 200
MAX_SPEC_BYTES = 64 << 10
# Decoding and validating uploads holds whole clips in memory; two at a time bounds that.
VALIDATION_SLOTS = 2
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 409, 410, 413, 415, 416, 422, 503, 507)
}


# Module level: with postponed annotations FastAPI resolves these names in the module's globals.
Authorization = Annotated[str | None, Header(description="Bearer <token>")]
ClientId = Annotated[str | None, Header(alias="X-Client-Id", description="groups jobs for GET /v1/jobs")]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", description="makes retries return one job")]


@dataclass
class WorkerInfo:
    """What ``/v1/health`` reports about this worker."""

    version: str
    device: str
    checkpoint: str
    dtype: str
    extra: dict[str, Any] = field(default_factory=dict)
    performance: dict[str, Any] | None = None  # the CLI's resolved performance report (PerformanceInfo)


def _error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def _validation_field(error: dict[str, Any], prefix: str) -> str:
    parts = [str(part) for part in error.get("loc", ()) if part not in ("body",)]
    return ".".join([prefix, *parts]) if parts else prefix


def create_app(
    store: JobStore,
    runner: JobExecutor,
    guard: TokenGuard,
    limits: UploadLimits,
    info: WorkerInfo,
    masks: Any = None,
    public_docs: bool = False,
) -> FastAPI:
    """``masks`` is the worker's ``backend.masks.service.MaskService`` (``--sam3``): it enables 'auto' mask
    sources and ``POST /v1/masks``. ``public_docs``: serve ``/openapi.json`` and ``/docs`` without the token (the
    CLI sets it for a worker that listens on loopback only)."""
    app = FastAPI(
        title="SCAIL-2 worker",
        version=info.version,
        description="SCAIL-2 motion transfer jobs: submit, poll, cancel, download. See docs/API.md.",
        responses=ERROR_RESPONSES,
        openapi_url=None,  # served below, behind the token when the worker is reachable from other machines
        docs_url=None,
        redoc_url=None,
    )
    validation_slots = asyncio.Semaphore(VALIDATION_SLOTS)
    upload_routes = {f"/{API_VERSION}/jobs", f"/{API_VERSION}/masks"}

    def body_limit(method: str, path: str) -> tuple[int, str]:
        if method == "POST" and path in upload_routes:
            return limits.max_upload_bytes, "files"
        return SMALL_BODY_LIMIT, "body"

    app.add_middleware(BodyLimitMiddleware, limit_for=body_limit)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        location = [str(part) for part in first.get("loc", ())]
        field_name = location[-1] if location else None
        return _error_response(ApiError(422, "invalid_field", str(first.get("msg", "invalid request")), field_name))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error_response(ApiError(exc.status_code, code, str(exc.detail), None))

    @app.exception_handler(OSError)
    @app.exception_handler(sqlite3.Error)
    async def _storage(_: Request, exc: Exception) -> JSONResponse:
        """A full disk is answered 507 and a database that fails 503: neither is the client's fault, neither is
        a bug in the request's handling (both are logged)."""
        if is_storage_full(exc):
            log.warning("request refused: the disk is full", extra={"error": f"{type(exc).__name__}: {exc}"})
            return _error_response(InsufficientStorage("the request could not be stored"))
        if isinstance(exc, sqlite3.Error):
            log.error("the job store failed a request", extra={"error": f"{type(exc).__name__}: {exc}"})
            return _error_response(ApiError(503, "store_unavailable", f"the worker's job store failed ({exc}); "
                                            "retry, and tell the worker's operator if it persists", None,
                                            {"Retry-After": "10"}))
        return await _internal(_, exc)

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error in a request", exc_info=exc)
        return _error_response(ApiError(500, "internal", f"internal error ({type(exc).__name__}); see the worker log"))

    def authorize(authorization: str | None) -> None:
        guard.require(authorization)

    async def read_form(request: Request, **limits_: int) -> Any:
        """The multipart form, or a 400 naming what is wrong with the body (a 413 from ``BodyLimitMiddleware`` and
        a 507 for a full disk pass through)."""
        try:
            return await request.form(**limits_)
        except StarletteHTTPException as exc:  # starlette's own multipart checks (limits, boundary)
            raise ApiError(400, "malformed_body", f"could not parse the multipart body ({exc.detail})",
                           "body") from exc
        except (ValueError, ClientDisconnect) as exc:  # python-multipart's parse errors are ValueErrors
            raise ApiError(400, "malformed_body", f"could not parse the multipart body ({exc})", "body") from exc
        except OSError as exc:  # spooling a large file part to a temporary file
            if is_storage_full(exc):
                raise InsufficientStorage("the upload could not be received") from exc
            raise

    def require_room() -> None:
        short = store.shortage()
        if short is not None:
            raise InsufficientStorage(f"under the worker's --data folder {short}")

    # -- the schema and its explorer --

    @app.get("/openapi.json", include_in_schema=False)
    def openapi_schema(authorization: Authorization = None) -> JSONResponse:
        if not public_docs:
            authorize(authorization)
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    def openapi_explorer(authorization: Authorization = None) -> HTMLResponse:
        if not public_docs:
            authorize(authorization)
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - API explorer")

    # -- health --

    @app.get(f"/{API_VERSION}/health", response_model=Health | HealthPublic, response_model_exclude_none=False)
    def health(authorization: Authorization = None) -> Health | HealthPublic:
        """Liveness and, with the token, the device, GPU memory, model and queue."""
        if not guard.is_valid(authorization):
            return HealthPublic(status="ok", version=info.version, api=API_VERSION, authenticated=False)
        return full_health()

    def full_health() -> Health:
        loras = runner.available_loras()  # a gateway knows them once an engine has loaded (None before)
        return Health(
            status="ok",
            version=info.version,
            api=API_VERSION,
            authenticated=True,
            device=info.device,
            gpu=_gpu_info(info.device),
            model={"loaded": loras is not None, "checkpoint": info.checkpoint, "dtype": info.dtype,
                   "loras": sorted(loras or ())},
            queue=store.counts(),
            limits={"max_upload_mb": limits.max_upload_bytes / 2**20, "max_frames": limits.max_frames,
                    "max_seconds": limits.max_seconds, "max_side": limits.max_side,
                    "max_decoded_gb": limits.max_decoded_bytes / 2**30},
            features={"auto_masks": masks is not None, "range_downloads": True, "idempotency_keys": True},
            performance=info.performance,
            cluster=runner.cluster_info(),
            storage={"free_mb": round(free_bytes(store.data_dir) / 2**20, 1),
                     "min_free_mb": round(store.min_free_bytes / 2**20, 1), "accepting_jobs": store.has_room(),
                     "runner_paused": runner.paused},
        )

    # -- submission --

    @app.post(f"/{API_VERSION}/jobs", status_code=201, response_model=JobCreated)
    async def submit_job(
        request: Request,
        authorization: Authorization = None,
        client_id: ClientId = None,
        idempotency_key: IdempotencyKey = None,
    ) -> JSONResponse:
        """Multipart: a JSON ``spec`` field and file fields. Validated fully before it is queued."""
        authorize(authorization)
        namespace = client_namespace(client_id)
        if idempotency_key is not None and (
            not idempotency_key or len(idempotency_key) > MAX_IDEMPOTENCY_KEY or not idempotency_key.isprintable()
        ):
            raise invalid("Idempotency-Key", f"must be 1..{MAX_IDEMPOTENCY_KEY} printable characters", 400)
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            raise ApiError(415, "unsupported_media_type", "send the job as multipart/form-data with a JSON 'spec' "
                           "field and file fields", "Content-Type")
        require_room()
        form = await read_form(request, max_files=32, max_fields=8, max_part_size=MAX_SPEC_BYTES)
        staging: Path | None = None
        try:
            staging = store.new_staging_dir()
            spec, raw_spec, uploads = _read_form(form)
            files: dict[str, str] = {}
            digests: dict[str, str] = {}
            for field_name, upload in uploads.items():
                name, digest, _ = await run_in_threadpool(store_upload, upload.file, field_name, staging)
                files[field_name], digests[field_name] = name, digest
            sources = resolve_mask_sources(spec, files, auto_masks=masks is not None)
            fill_masks = _shape_only_masks([role for role, source in sources.items() if source == "auto"])
            request_hash = hashlib.sha256(
                json.dumps({"spec": raw_spec, "files": digests}, sort_keys=True).encode()
            ).hexdigest()
            if idempotency_key:
                existing = store.find_by_idempotency_key(namespace, idempotency_key)
                if existing is not None:
                    discard(staging)
                    return _created(_check_same(existing, request_hash), created=False)
            async with validation_slots:
                # Only the page's small previews outlive the validation, not the decoded clip (thumbnails.py).
                preview = await run_in_threadpool(lambda: input_preview(
                    build_request(spec, files, staging, limits, runner.available_loras(), fill_masks,
                                  runner.pinned_loras())[0],
                    spec.frame_range[0] if spec.frame_range else 0))
            stored_spec = spec.model_dump(mode="json")
            if stored_spec["seed"] is None:
                # Fixed now, so a restarted job continues with the noise it started with.
                stored_spec["seed"] = random.randrange(2**31)
            job, created = await run_in_threadpool(
                lambda: store.create_job(job_id=new_job_id(), namespace=namespace, idempotency_key=idempotency_key,
                                         request_hash=request_hash, spec=stored_spec, inputs=files,
                                         staged_inputs=staging))
        except IdempotencyConflict as exc:
            raise _conflict(exc.existing) from exc
        except Exception as exc:
            if is_storage_full(exc):
                raise InsufficientStorage("the upload could not be stored") from exc
            raise
        finally:
            await form.close()
            if staging is not None:
                discard(staging)
        if created:
            await run_in_threadpool(write_quietly, write_input_thumbnails, store.job_dir(job.id), preview)
        runner.notify()
        log.info("job queued", extra={"job": job.id, "created": created, "files": sorted(files)})
        return _created(job, created)

    def _check_same(existing: JobRecord, request_hash: str) -> JobRecord:
        if existing.request_hash != request_hash:
            raise _conflict(existing)
        return existing

    def _conflict(existing: JobRecord) -> ApiError:
        return ApiError(409, "idempotency_conflict", f"this Idempotency-Key was used for a different request "
                        f"(job {existing.id}); use a new key for a new job", "Idempotency-Key")

    def _created(job: JobRecord, created: bool) -> JSONResponse:
        body = JobCreated(id=job.id, status=job.status, created=created, links=links(job.id))  # type: ignore[arg-type]
        return JSONResponse(body.model_dump(), status_code=201 if created else 200)

    # -- mask preview --

    @app.post(f"/{API_VERSION}/masks", response_class=Response,
              responses={200: {"content": {"application/zip": {}}}, 409: {"model": ErrorResponse}})
    async def preview_masks(request: Request, authorization: Authorization = None) -> Response:
        """Multipart: a JSON ``spec`` (``MaskPreviewSpec``) and ``reference`` and/or ``driving`` files. Returns a zip
        with ``reference_mask.png``, ``driving_mask/frame_NNNNN.png`` and ``masks.json`` (identities, warnings)."""
        authorize(authorization)
        if masks is None:
            raise ApiError(409, "auto_masks_unavailable", "this worker has no SAM3: start it with --sam3 DIR (the "
                           "facebook/sam3 folder) to preview automatic masks", "spec")
        from backend.masks.options import MaskPreviewSpec
        from backend.masks.service import settings_from_spec, write_preview_zip
        from backend.scail2.errors import CheckpointError, Scail2InputError

        from .errors import engine_error
        from .uploads import load_preview_inputs

        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise ApiError(415, "unsupported_media_type", "send multipart/form-data with a JSON 'spec' field and "
                           "'reference' and/or 'driving' files", "Content-Type")
        require_room()
        form = await read_form(request, max_files=2, max_fields=2, max_part_size=MAX_SPEC_BYTES)
        staging: Path | None = None
        try:
            staging = store.new_staging_dir()
            raw, uploads = None, {}
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    uploads[canonical_field(key)] = value
                elif key == "spec":
                    raw = value
                else:
                    raise invalid("body", "unknown form field; send a JSON 'spec' field and file fields", 400)
            try:
                spec = MaskPreviewSpec.model_validate_json(raw or "{}")
                settings = settings_from_spec(spec)
            except ValidationError as exc:
                first = exc.errors()[0]
                raise invalid(_validation_field(first, "spec"),
                              str(first.get("msg", "invalid value")).removeprefix("Value error, ")) from exc
            except Scail2InputError as exc:
                raise invalid(f"spec.{exc.field}" if exc.field else "spec", str(exc)) from exc
            files = {}
            for field_name, upload in uploads.items():
                files[field_name] = (await run_in_threadpool(store_upload, upload.file, field_name, staging))[0]
            async with validation_slots:
                reference, driving = await run_in_threadpool(load_preview_inputs, spec, files, staging, limits)
            try:
                result = await run_in_threadpool(masks.make, settings, reference, driving)
            except CheckpointError as exc:
                raise ApiError(503, "sam3_unavailable", f"SAM3 failed to load: {exc}", None) from exc
            except Scail2InputError as exc:
                raise engine_error(exc, staging, files) from exc
            archive = await run_in_threadpool(write_preview_zip, result, staging / "masks.zip")
            body = archive.read_bytes()
        finally:
            await form.close()
            if staging is not None:
                discard(staging)
        log.info("masks previewed", extra={"files": sorted(files), "warnings": len(result.warnings)})
        return Response(body, media_type="application/zip",
                        headers={"Content-Disposition": 'attachment; filename="masks.zip"'})

    # -- jobs --

    @app.get(f"/{API_VERSION}/jobs", response_model=JobList)
    def list_jobs(
        authorization: Authorization = None,
        client_id: ClientId = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        cursor: Annotated[str | None, Query(pattern=r"^\d{1,18}$")] = None,
    ) -> JobList:
        """The caller's jobs (same ``X-Client-Id``), newest first, ``limit`` per page."""
        authorize(authorization)
        records, next_seq = store.list_jobs(client_namespace(client_id), limit, int(cursor) if cursor else None)
        return JobList(jobs=[job_status_body(store, job) for job in records],
                       next_cursor=str(next_seq) if next_seq is not None else None)

    @app.get(f"/{API_VERSION}/jobs/{{job_id}}", response_model=JobStatus)
    def get_job(job_id: str, authorization: Authorization = None) -> JobStatus:
        """Status, progress (window i/k, step j/n, ETA), error and result metadata."""
        authorize(authorization)
        return job_status_body(store, find_job(store, job_id))

    @app.post(f"/{API_VERSION}/jobs/{{job_id}}/cancel", response_model=JobStatus)
    def cancel_job(job_id: str, authorization: Authorization = None) -> JobStatus:
        """Queued jobs are canceled at once; a running job stops at the next denoising step."""
        authorize(authorization)
        return job_status_body(store, jobs.cancel_job(store, runner, job_id))

    @app.delete(f"/{API_VERSION}/jobs/{{job_id}}", status_code=204)
    def delete_job(job_id: str, authorization: Authorization = None) -> None:
        """Remove a finished or queued job and its files; a running job must be canceled first."""
        authorize(authorization)
        jobs.delete_job(store, job_id)

    @app.get(f"/{API_VERSION}/jobs/{{job_id}}/events", response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {}}}})
    async def job_events(job_id: str, request: Request, authorization: Authorization = None) -> StreamingResponse:
        """Server-sent events: an ``event: status`` with the status body whenever it changes, until the job
        finishes (or is deleted: ``event: deleted``). An extra to polling, which stays the primary interface."""
        authorize(authorization)
        await run_in_threadpool(find_job, store, job_id)
        return jobs.change_events(request, jobs.status_reader(store, job_id))

    # -- results --

    @app.get(f"/{API_VERSION}/jobs/{{job_id}}/result", response_model=ResultManifest)
    def result_manifest(job_id: str, authorization: Authorization = None) -> ResultManifest:
        """Every result file with its size, SHA-256 and download URL."""
        authorize(authorization)
        job, _, manifest = finished_result(store, job_id)
        base = links(job.id)["result"]
        files = []
        for entry in manifest["files"]:
            url = {"frame": f"{base}/frames/{entry.get('index')}", "zip": f"{base}/zip", "mp4": f"{base}/mp4"}
            files.append({key: entry[key] for key in ("name", "kind", "size", "sha256")} | {"url": url[entry["kind"]]})
        return ResultManifest(job_id=job.id, frames=manifest["frames"], fps=manifest["fps"], width=manifest["width"],
                              height=manifest["height"], files=files)

    @app.get(f"/{API_VERSION}/jobs/{{job_id}}/result/frames/{{index}}", response_class=FileResponse)
    def result_frame(job_id: str, index: int, authorization: Authorization = None) -> FileResponse:
        """One output frame as PNG (0-based). Supports HTTP Range and If-Range with the ETag (its SHA-256)."""
        authorize(authorization)
        return result_file(store, job_id, "frame", index)

    @app.get(f"/{API_VERSION}/jobs/{{job_id}}/result/zip", response_class=FileResponse)
    def result_zip(job_id: str, authorization: Authorization = None) -> FileResponse:
        """All output frames as a zip of PNGs (frames/000000.png ...). Supports HTTP Range."""
        authorize(authorization)
        return result_file(store, job_id, "zip")

    @app.get(f"/{API_VERSION}/jobs/{{job_id}}/result/mp4", response_class=FileResponse)
    def result_mp4(job_id: str, authorization: Authorization = None) -> FileResponse:
        """The output as H.264 mp4 at the driving clip's fps. Supports HTTP Range."""
        authorize(authorization)
        return result_file(store, job_id, "mp4")

    mount_web(app, store=store, runner=runner, guard=guard, health=full_health)
    return app


def _read_form(form: Any) -> tuple[JobSpec, dict[str, Any], dict[str, UploadFile]]:
    """Split the multipart form into the parsed spec and the allow-listed uploads (422/400 naming the field)."""
    raw = None
    uploads: dict[str, UploadFile] = {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            name = canonical_field(key)
            if name in uploads:
                raise invalid(name, "this file field was sent twice")
            uploads[name] = value
        elif key == "spec":
            if raw is not None:
                raise invalid("spec", "the spec field was sent twice", 400)
            raw = value
        else:
            raise invalid(key if key.isprintable() and len(key) < 64 else "body",
                          "unknown form field; send a JSON 'spec' field and file fields", 400)
    if raw is None:
        raise invalid("spec", "the multipart body needs a 'spec' field holding the job's JSON settings", 400)
    parsed = parse_json_object(raw, "spec")
    try:
        spec = JobSpec.model_validate(parsed)
    except ValidationError as exc:
        first = exc.errors()[0]
        message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        raise invalid(_validation_field(first, "spec"), message) from exc
    return spec, parsed, uploads


def _gpu_info(device: str) -> dict[str, Any] | None:
    if not device.startswith("cuda"):
        return None
    import torch

    index = torch.device(device).index or 0
    props = torch.cuda.get_device_properties(index)
    return {
        "name": props.name,
        "memory_total_mb": props.total_memory // 2**20,
        "memory_allocated_mb": torch.cuda.memory_allocated(index) // 2**20,
        "memory_reserved_mb": torch.cuda.memory_reserved(index) // 2**20,
    }


def _shape_only_masks(roles: list[str]) -> Any:
    """For validating a submission with 'auto' masks: stand-in masks of the inputs' own shape (see
    ``backend.masks.service.shape_only_masks``); the real ones are made by SAM3 when the job runs."""
    if not roles:
        return None
    from backend.masks.service import shape_only_masks

    return lambda request: shape_only_masks(request, roles)
