"""The result folder of a job: written once, atomically and reproducibly; served with checked byte ranges.

``write_result`` writes ``frames/NNNNNN.png``, ``result.mp4``, ``result.zip`` and ``manifest.json`` under
``result.staging/`` and renames it to ``result/``. The zip's entries carry fixed timestamps and attributes in frame
order, so two identical results give byte-identical archives (and the same SHA-256 in their manifests).

``ResultFileResponse`` serves one of those files with HTTP ranges. It checks a ``Range`` header before sending
anything, so an unusable one gets the API's JSON error (400, or 416 with ``Content-Range``) instead of the plain
text Starlette's ``FileResponse`` answers with.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.responses import FileResponse, JSONResponse
from starlette.datastructures import Headers
from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable
from starlette.types import Receive, Scope, Send

from .errors import ApiError
from .store import write_json_atomic

HASH_CHUNK = 1 << 20
ZIP_ENTRY_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip can hold: no clock in the archive
ZIP_ENTRY_MODE = 0o100644 << 16  # a regular file, rw-r--r--, whatever the umask


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _add_to_zip(archive: zipfile.ZipFile, path: Path, name: str) -> None:
    entry = zipfile.ZipInfo(name, date_time=ZIP_ENTRY_TIME)
    entry.external_attr = ZIP_ENTRY_MODE
    entry.create_system = 3  # Unix, on every platform
    entry.compress_type = zipfile.ZIP_STORED
    with open(path, "rb") as source, archive.open(entry, "w") as target:
        shutil.copyfileobj(source, target, HASH_CHUNK)


def write_result(frames: np.ndarray, fps: float, job_dir: Path) -> dict[str, Any]:
    """Write frames/NNNNNN.png, result.mp4, result.zip and manifest.json into ``job_dir/result`` atomically."""
    from PIL import Image

    from backend.scail2.conditioning.media import write_mp4

    staging = job_dir / "result.staging"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "frames").mkdir(parents=True)
    files: list[dict[str, Any]] = []
    frame_names = []
    for index, frame in enumerate(frames):
        name = f"{index:06d}.png"
        Image.fromarray(np.ascontiguousarray(frame)).save(staging / "frames" / name, format="PNG")
        frame_names.append(name)
    with zipfile.ZipFile(staging / "result.zip", "w", compression=zipfile.ZIP_STORED) as archive:
        for name in frame_names:
            _add_to_zip(archive, staging / "frames" / name, f"frames/{name}")
    write_mp4(frames, fps, staging / "result.mp4")
    for index, name in enumerate(frame_names):
        path = staging / "frames" / name
        files.append({"name": f"frames/{name}", "kind": "frame", "index": index, "size": path.stat().st_size,
                      "sha256": sha256_file(path)})
    for name, kind in (("result.zip", "zip"), ("result.mp4", "mp4")):
        path = staging / name
        files.append({"name": name, "kind": kind, "size": path.stat().st_size, "sha256": sha256_file(path)})
    manifest = {
        "frames": int(frames.shape[0]),
        "fps": float(fps),
        "height": int(frames.shape[1]),
        "width": int(frames.shape[2]),
        "files": files,
    }
    write_json_atomic(staging / "manifest.json", manifest)
    target = job_dir / "result"
    if target.exists():  # left by an attempt that crashed after the rename but before the commit
        shutil.rmtree(target)
    os.replace(staging, target)
    return manifest


class ResultFileResponse(FileResponse):
    """A ``FileResponse`` whose ``Range`` errors are the API's JSON errors (field ``Range``)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = self._range_error(Headers(scope=scope), scope.get("method", "GET"))
        if error is not None:
            await JSONResponse(error.body(), status_code=error.status, headers=error.headers)(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    def _range_error(self, headers: Headers, method: str) -> ApiError | None:
        http_range = headers.get("range")
        if http_range is None or method.upper() not in ("GET", "HEAD"):
            return None
        stat = os.stat(self.path)
        self.set_stat_headers(stat)  # Last-Modified, which If-Range may name (Starlette sets it the same way)
        if_range = headers.get("if-range")
        if if_range is not None and not self._should_use_range(if_range):
            return None  # the whole file is sent: the range is ignored, as HTTP says
        size = stat.st_size
        try:
            # Starlette's own parser, so exactly the ranges it would refuse are answered here.
            self._parse_range_header(http_range, size)
        except MalformedRangeHeader as exc:
            return ApiError(400, "invalid_range", f"unusable Range header ({exc.content}); send e.g. "
                            "'bytes=0-1023' or 'bytes=1024-'", "Range")
        except RangeNotSatisfiable:
            return ApiError(416, "range_not_satisfiable", f"the Range starts past the end of the {size}-byte file",
                            "Range", {"Content-Range": f"bytes */{size}"})
        return None
