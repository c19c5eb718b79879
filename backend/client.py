"""HTTP client of the SCAIL-2 worker (API v1). Standard library + ``requests`` only: Blender imports this module.

    client = WorkerClient("http://127.0.0.1:8765", token)
    job_id = client.submit({"mode": "animation", "preset": "fast", "size": "512p"},
                           {"reference": "ref.png", "driving": "clip.mp4"})
    final = client.wait(job_id, on_status=lambda status: print(status["progress"]))
    paths = client.download(job_id, "/tmp/out")        # frames/000000.png ..., result.mp4, manifest.json
    masks = client.preview_masks({"mode": "animation"}, {"driving": "clip.mp4"}, "/tmp/masks")  # SAM3 workers

Every call is safe to retry: submissions carry an ``Idempotency-Key`` (generated unless given), so a submission
whose response was lost is not queued twice; connection errors and 5xx answers are retried with exponential
back-off. Downloads resume with HTTP Range, are verified against the server's SHA-256 and land in the output folder
only complete (written as ``*.part``, then renamed).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import requests

API_PREFIX = "/v1"
FINAL_STATUSES = ("succeeded", "failed", "canceled")
RETRY_STATUSES = (429, 500, 502, 503, 504)
CHUNK = 1 << 20


class WorkerError(Exception):
    """Base class of every error this client raises."""


class WorkerUnreachable(WorkerError):
    """No answer from the worker (refused, timed out, TLS failure) after the retries, or repeated 5xx answers."""


class AuthError(WorkerError):
    """The worker refused the token (HTTP 401)."""


class BadRequest(WorkerError):
    """The worker refused the request (4xx). ``field`` names what to fix (``spec.size``, ``driving`` ...)."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None):
        super().__init__(f"{field}: {message}" if field else message)
        self.status = status
        self.code = code
        self.field = field
        self.message = message


class JobNotFound(BadRequest):
    """No such job on this worker (never submitted there, or deleted)."""


class JobFailed(WorkerError):
    """The job ended ``failed`` or ``canceled``; ``error`` is the server's ``{type, field, message}`` (or None)."""

    def __init__(self, job_id: str, status: str, error: Mapping[str, Any] | None):
        self.job_id = job_id
        self.status = status
        self.error = dict(error) if error else None
        self.field = self.error.get("field") if self.error else None
        detail = self.error.get("message") if self.error else status
        super().__init__(f"job {job_id} {status}: {detail}")


class DownloadError(WorkerError):
    """A result file kept failing its size or SHA-256 check."""


def _error_from_response(response: requests.Response) -> WorkerError:
    try:
        error = response.json()["error"]
        code, field, message = error.get("code", "error"), error.get("field"), error.get("message", "")
    except (ValueError, KeyError, TypeError):
        code, field, message = "error", None, response.text[:500] or response.reason
    if response.status_code == 401:
        return AuthError(message or "the worker refused the token")
    if response.status_code == 404:
        return JobNotFound(404, code, message, field)
    if response.status_code >= 500:
        return WorkerUnreachable(f"worker error {response.status_code}: {message}")
    return BadRequest(response.status_code, code, message, field)


class WorkerClient:
    """One worker at ``base_url`` (``http://host:port`` or ``https://...``), authenticated with ``token``.

    ``client_id`` groups this client's jobs for ``list_jobs`` (keep it stable per installation); ``verify`` is
    passed to requests (False or a CA bundle path for a self-signed TLS worker). ``retries`` and ``backoff``
    (seconds, doubled per attempt, capped at 10 s) govern retries on connection errors and 429/5xx answers.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        timeout: float = 30.0,
        *,
        client_id: str | None = None,
        retries: int = 5,
        backoff: float = 0.5,
        verify: bool | str = True,
    ):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._headers = {"Authorization": f"Bearer {token}"}
        if client_id:
            self._headers["X-Client-Id"] = client_id
        self._verify = verify
        self._local = threading.local()  # requests.Session is not thread-safe: one per thread

    def __repr__(self) -> str:  # never show the token
        return f"WorkerClient({self.base_url!r})"

    @property
    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers.update(self._headers)
            self._local.session = session
        return session

    def close(self) -> None:
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()
            self._local.session = None

    # -- plumbing --

    def _url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else f"{self.base_url}{path}"

    def _sleep_before_retry(self, attempt: int) -> None:
        time.sleep(min(10.0, self.backoff * (2**attempt)))

    def _request(self, method: str, path: str, *, stream: bool = False,
                 make_kwargs: Callable[[], dict[str, Any]] | None = None, **kwargs: Any) -> requests.Response:
        """Send with retries; returns a 2xx/206 response or raises the matching ``WorkerError``."""
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                self._sleep_before_retry(attempt - 1)
            call_kwargs = dict(kwargs)
            if make_kwargs is not None:
                call_kwargs.update(make_kwargs())
            try:
                # verify per request: a session-level value would lose to REQUESTS_CA_BUNDLE from the environment.
                response = self._session.request(method, self._url(path), timeout=self.timeout, stream=stream,
                                                 verify=self._verify, **call_kwargs)
            except requests.exceptions.SSLError as exc:
                raise WorkerUnreachable(f"TLS with {self.base_url} failed: {exc}. For a self-signed worker pass "
                                        "verify='/path/to/cert.pem'") from exc
            except (requests.ConnectionError, requests.Timeout) as exc:
                last = exc
                continue
            finally:
                for handle in call_kwargs.get("files", {}).values() if make_kwargs is not None else ():
                    _close_file_tuple(handle)
            if response.status_code in RETRY_STATUSES:
                last = _error_from_response(response)
                response.close()
                continue
            if response.status_code >= 400:
                error = _error_from_response(response)
                response.close()
                raise error
            return response
        if isinstance(last, WorkerError):
            raise last
        raise WorkerUnreachable(f"cannot reach the worker at {self.base_url} ({last})") from last

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        try:
            return response.json() if response.content else None
        finally:
            response.close()

    # -- API --

    def health(self) -> dict[str, Any]:
        """``GET /v1/health``: status, version, device, GPU memory, model, queue sizes, limits."""
        return self._json("GET", f"{API_PREFIX}/health")

    def submit(
        self,
        spec: Mapping[str, Any],
        files: Mapping[str, str | os.PathLike[str]],
        idempotency_key: str | None = None,
    ) -> str:
        """Queue a job; returns its id. ``files`` maps file fields (``reference``, ``driving``, ``driving_mask``,
        ``extra_reference_0`` ...) to local paths. Retrying with the same ``idempotency_key`` returns the same job.
        Raises ``BadRequest`` (with ``field``) when the worker refuses the inputs."""
        key = idempotency_key or uuid.uuid4().hex
        paths = {name: Path(path) for name, path in files.items()}
        for name, path in paths.items():
            if not path.is_file():
                raise BadRequest(0, "missing_file", f"{path}: file not found", name)

        def body() -> dict[str, Any]:
            return {"files": {name: (path.name, open(path, "rb"), "application/octet-stream")
                              for name, path in paths.items()}}

        created = self._json("POST", f"{API_PREFIX}/jobs", data={"spec": json.dumps(dict(spec))},
                             headers={"Idempotency-Key": key}, make_kwargs=body)
        return created["id"]

    def status(self, job_id: str) -> dict[str, Any]:
        """``GET /v1/jobs/{id}``: status, progress, detail (phase, window i/k, step j/n, ETA), error, result."""
        return self._json("GET", f"{API_PREFIX}/jobs/{job_id}")

    def list_jobs(self, limit: int = 50, cursor: str | None = None) -> dict[str, Any]:
        """One page of this client's jobs, newest first: ``{"jobs": [...], "next_cursor": ...}``."""
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        return self._json("GET", f"{API_PREFIX}/jobs", params=params)

    def iter_jobs(self, page_size: int = 50) -> Iterator[dict[str, Any]]:
        cursor = None
        while True:
            page = self.list_jobs(page_size, cursor)
            yield from page["jobs"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a job (queued: at once; running: at the next denoising step). Returns its status."""
        return self._json("POST", f"{API_PREFIX}/jobs/{job_id}/cancel")

    def delete(self, job_id: str) -> None:
        """Delete a job that is not running, with its files."""
        self._json("DELETE", f"{API_PREFIX}/jobs/{job_id}")

    def wait(
        self,
        job_id: str,
        poll_interval: float = 1.0,
        timeout: float | None = None,
        on_status: Callable[[dict[str, Any]], None] | None = None,
        cancel_event: threading.Event | None = None,
    ) -> dict[str, Any]:
        """Poll until the job finishes; returns the final status of a succeeded job.

        Raises ``JobFailed`` for failed/canceled jobs, ``TimeoutError`` after ``timeout`` seconds. Setting
        ``cancel_event`` cancels the job on the worker and raises ``JobFailed`` once it reports ``canceled``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        cancel_sent = False
        while True:
            if cancel_event is not None and cancel_event.is_set() and not cancel_sent:
                self.cancel(job_id)
                cancel_sent = True
            status = self.status(job_id)
            if on_status is not None:
                on_status(status)
            if status["status"] in FINAL_STATUSES:
                if status["status"] != "succeeded":
                    raise JobFailed(job_id, status["status"], status.get("error"))
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {status['status']} after {timeout} s")
            if cancel_event is not None:
                cancel_event.wait(poll_interval)
            else:
                time.sleep(poll_interval)

    def preview_masks(
        self,
        spec: Mapping[str, Any],
        files: Mapping[str, str | os.PathLike[str]],
        out_dir: str | os.PathLike[str],
        first_frame: int = 0,
    ) -> dict[str, Any]:
        """``POST /v1/masks``: SAM3 masks of a ``reference`` image and/or a ``driving`` clip, unpacked into ``out_dir``.

        ``spec`` carries ``mode``, ``fps``, ``frame_range`` and the ``mask_*`` options (docs/API.md). The worker's
        zip is unpacked into a temporary folder beside ``out_dir`` and renamed over it, so ``out_dir`` holds either
        the previous preview or the complete new one. Driving masks are written as
        ``driving_mask/frame_<first_frame + i>.png`` (5 digits), e.g. numbered by the clip frames they belong to.
        Raises ``BadRequest`` (409 ``auto_masks_unavailable`` when the worker was started without ``--sam3``,
        422 naming the field) and ``DownloadError`` for an archive with unexpected contents.
        Returns ``{"folder": Path, "reference_mask": Path | None, "driving_mask": [Path, ...],
        "fps": float | None, "summary": dict}`` (``summary`` is the worker's ``masks.json``).
        """
        unknown = set(files) - {"reference", "driving"}
        if unknown or not files:
            raise ValueError(f"files: send 'reference' and/or 'driving', got {sorted(files)}")
        if first_frame < 0:
            raise ValueError(f"first_frame must be >= 0, got {first_frame}")
        paths = {name: Path(path) for name, path in files.items()}
        for name, path in paths.items():
            if not path.is_file():
                raise BadRequest(0, "missing_file", f"{path}: file not found", name)
        out = Path(out_dir)
        out.parent.mkdir(parents=True, exist_ok=True)

        def body() -> dict[str, Any]:
            return {"files": {name: (path.name, open(path, "rb"), "application/octet-stream")
                              for name, path in paths.items()}}

        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            archive = staging / "masks.zip"
            response = self._request("POST", f"{API_PREFIX}/masks", stream=True,
                                     data={"spec": json.dumps(dict(spec))}, make_kwargs=body)
            with response, open(archive, "wb") as handle:
                for chunk in response.iter_content(CHUNK):
                    handle.write(chunk)
            unpacked = staging / "masks"
            result = _unpack_masks(archive, unpacked, first_frame)
            archive.unlink()
            _replace_dir(unpacked, out)
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            raise WorkerUnreachable(f"the mask preview from {self.base_url} broke off: {exc}") from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return {**result, "folder": out,
                "reference_mask": out / result["reference_mask"] if result["reference_mask"] else None,
                "driving_mask": [out / name for name in result["driving_mask"]]}

    def result_manifest(self, job_id: str) -> dict[str, Any]:
        """``GET /v1/jobs/{id}/result``: frames, fps, size and every file with size, SHA-256 and URL."""
        return self._json("GET", f"{API_PREFIX}/jobs/{job_id}/result")

    def download(
        self,
        job_id: str,
        out_dir: str | os.PathLike[str],
        what: tuple[str, ...] = ("frames", "mp4"),
        on_progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, Any]:
        """Download a succeeded job's results into ``out_dir``; returns the local paths.

        ``what`` picks any of ``"frames"`` (``out_dir/frames/000000.png`` ...), ``"mp4"`` (``result.mp4``) and
        ``"zip"`` (``result.zip``). Files already present with the right SHA-256 are skipped, partial ones are
        resumed, and ``manifest.json`` is written last, so its presence means the folder is complete.
        ``on_progress(done_bytes, total_bytes)`` is called as data arrives.
        Returns ``{"frames": [Path, ...], "mp4": Path | None, "zip": Path | None, "manifest": Path,
        "fps": float, "width": int, "height": int}``.
        """
        unknown = set(what) - {"frames", "mp4", "zip"}
        if unknown:
            raise ValueError(f"what: unknown result kinds {sorted(unknown)}; use 'frames', 'mp4', 'zip'")
        manifest = self.result_manifest(job_id)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        kinds = {"frames": "frame", "mp4": "mp4", "zip": "zip"}
        wanted = [entry for entry in manifest["files"] if entry["kind"] in {kinds[w] for w in what}]
        total = sum(entry["size"] for entry in wanted)
        done = 0
        paths: dict[str, Any] = {"frames": [], "mp4": None, "zip": None}
        for entry in wanted:
            target = _safe_target(out, entry["name"])

            def progress(n: int, base: int = done) -> None:
                if on_progress is not None:
                    on_progress(base + n, total)

            self.download_file(entry["url"], target, entry["sha256"], entry["size"], progress)
            done += entry["size"]
            if entry["kind"] == "frame":
                paths["frames"].append(target)
            else:
                paths[entry["kind"]] = target
        manifest_path = out / "manifest.json"
        _write_atomic(manifest_path, json.dumps(manifest, indent=1).encode())
        paths.update({"manifest": manifest_path, "fps": manifest["fps"], "width": manifest["width"],
                      "height": manifest["height"]})
        return paths

    def download_file(
        self,
        url: str,
        target: str | os.PathLike[str],
        sha256: str,
        size: int,
        on_progress: Callable[[int], None] | None = None,
    ) -> Path:
        """Fetch one file to ``target`` with Range resume and SHA-256 verification; atomic rename at the end."""
        target = Path(target)
        if target.is_file() and target.stat().st_size == size and _sha256(target) == sha256:
            if on_progress:
                on_progress(size)
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        for attempt in range(self.retries + 1):
            if attempt:
                self._sleep_before_retry(attempt - 1)
            have = part.stat().st_size if part.is_file() else 0
            if have > size:
                part.unlink()
                have = 0
            if have < size:
                try:
                    self._fetch_into(url, part, have, sha256, on_progress)
                except WorkerUnreachable:
                    if attempt == self.retries:
                        raise
                    continue
                except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError):
                    if attempt == self.retries:
                        raise WorkerUnreachable(f"download of {url} kept failing") from None
                    continue  # keep what arrived; the next attempt resumes from there
            if part.stat().st_size == size and _sha256(part) == sha256:
                os.replace(part, target)
                return target
            part.unlink(missing_ok=True)  # corrupt: start over
        raise DownloadError(f"{url}: the downloaded file does not match the worker's size/SHA-256 "
                            f"after {self.retries + 1} attempts")

    def _fetch_into(self, url: str, part: Path, have: int, sha256: str,
                    on_progress: Callable[[int], None] | None) -> None:
        headers = {"Range": f"bytes={have}-", "If-Range": f'"{sha256}"'} if have else {}
        response = self._request("GET", url, stream=True, headers=headers)
        with response:
            append = have > 0 and response.status_code == 206
            written = have if append else 0
            with open(part, "ab" if append else "wb") as handle:
                for chunk in response.iter_content(CHUNK):
                    handle.write(chunk)
                    written += len(chunk)
                    if on_progress:
                        on_progress(written)
                handle.flush()
                os.fsync(handle.fileno())


def _close_file_tuple(value: Any) -> None:
    handle: BinaryIO | None = value[1] if isinstance(value, tuple) and len(value) > 1 else None
    if handle is not None and hasattr(handle, "close"):
        handle.close()


def _safe_target(out: Path, name: str) -> Path:
    """``out/name`` for a server-given relative name, refusing anything that would leave ``out``."""
    target = (out / name).resolve()
    if out.resolve() not in target.parents:
        raise DownloadError(f"the worker sent an unsafe file name {name!r}")
    return target


MASKS_SUMMARY = "masks.json"
REFERENCE_MASK = "reference_mask.png"
_DRIVING_MASK_FRAME = re.compile(r"^driving_mask/frame_(\d+)\.png$")


def _unpack_masks(archive_path: Path, folder: Path, first_frame: int) -> dict[str, Any]:
    """Extract a ``POST /v1/masks`` zip into ``folder`` (which must not exist), accepting only its known names.

    Every entry is written under a name built here (never the archive's own path), so nothing can land outside
    ``folder``; an unknown entry, a missing ``masks.json`` or driving frames with gaps refuse the whole archive.
    Returns the relative names written and the summary.
    """
    def refuse(why: str) -> DownloadError:
        return DownloadError(f"the worker's mask archive is not usable: {why}")

    try:
        archive = zipfile.ZipFile(archive_path)
    except zipfile.BadZipFile as exc:
        raise refuse(f"not a zip file ({exc})") from exc
    with archive:
        entries = [info for info in archive.infolist() if not info.is_dir()]
        frames: dict[int, zipfile.ZipInfo] = {}
        reference = summary_entry = None
        for info in entries:
            match = _DRIVING_MASK_FRAME.match(info.filename)
            if match:
                frames[int(match.group(1))] = info
            elif info.filename == REFERENCE_MASK:
                reference = info
            elif info.filename == MASKS_SUMMARY:
                summary_entry = info
            else:
                raise refuse(f"unexpected entry {info.filename!r}")
        if summary_entry is None:
            raise refuse(f"{MASKS_SUMMARY} is missing")
        try:
            summary = json.loads(archive.read(summary_entry))
        except ValueError as exc:
            raise refuse(f"{MASKS_SUMMARY} is not JSON ({exc})") from exc
        if sorted(frames) != list(range(len(frames))):
            raise refuse(f"driving mask frames are not numbered 0..{len(frames) - 1}")
        folder.mkdir(parents=True)
        written: list[str] = []
        if frames:
            (folder / "driving_mask").mkdir()
        for index in range(len(frames)):
            name = f"driving_mask/frame_{first_frame + index:05d}.png"
            (folder / name).write_bytes(archive.read(frames[index]))
            written.append(name)
        if reference is not None:
            (folder / REFERENCE_MASK).write_bytes(archive.read(reference))
        (folder / MASKS_SUMMARY).write_text(json.dumps(summary, indent=2))
    driving = summary.get("driving") if isinstance(summary, dict) else None
    fps = driving.get("fps") if isinstance(driving, dict) else None
    return {"reference_mask": REFERENCE_MASK if reference is not None else None, "driving_mask": written,
            "fps": float(fps) if fps else None, "summary": summary}


def _replace_dir(source: Path, target: Path) -> None:
    """Move the complete folder ``source`` to ``target``, replacing an older ``target`` only once it is in place."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, old)
    try:
        os.replace(source, target)
    except OSError:
        if old is not None:
            os.replace(old, target)  # put the previous preview back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
