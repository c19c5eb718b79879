"""Hostile requests against a real worker: each is answered 4xx, quickly, without a memory spike, and leaves the
store and the job folders exactly as they were.

Every case goes through a raw client (``raw_http``: no retries; raw sockets for what ``http.client`` will not
send). The bounds are per request: ``SECONDS_BOUND`` of wall time and ``MEMORY_BOUND_MB`` of growth of the worker
process's peak resident memory (VmHWM, reset before each case through ``/proc/<pid>/clear_refs``).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hostile_media import (
    ffmpeg_video,
    jpeg_header_only,
    noise_png,
    png_bomb,
    png_broken_ihdr_crc,
    png_header_only,
    png_image,
    png_with_text_bomb,
    zip_bomb_member,
    zip_marked_encrypted,
    zip_of,
    zip_with_bad_crc,
    zip_with_unknown_method,
)
from raw_http import RawResponse, chunked, error_lines, multipart, request, send_bytes
from worker_helpers import SHORT_SPEC, UPLOAD_LIMIT_MB, start_worker, wait_until

SECONDS_BOUND = 20.0  # generous for a shared 2-core machine; a hostile request is refused in well under a second
MEMORY_BOUND_MB = 150.0
DEEP = 20_000
HUGE_INT = "9" * 5000


@pytest.fixture(scope="module")
def hostile_worker(tiny_checkpoint, inputs, tmp_path_factory):
    """A worker of its own, idle, with one finished job in its store (so 'unchanged' has something to keep)."""
    folder = tmp_path_factory.mktemp("hostile")
    running = start_worker(tiny_checkpoint, folder / "data", folder / "worker.log")
    client = running.client()
    client.wait(client.submit(SHORT_SPEC, inputs.files()), poll_interval=0.05, timeout=180)
    yield running
    running.stop()


@dataclass
class Kit:
    """What a case needs: the worker, valid files to send beside the bad one, and the hostile files."""

    worker: object
    files: dict[str, tuple[str, bytes]]
    media: dict[str, bytes]

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.worker.token}"}

    def job(self, spec: dict | None = None, replace: dict[str, bytes | None] | None = None,
            raw_spec: str | bytes | None = None, fields: list[tuple[str, str]] | None = None,
            headers: dict[str, str] | None = None) -> RawResponse:
        files = dict(self.files)
        for name, data in (replace or {}).items():
            if data is None:
                files.pop(name, None)
            else:
                files[name] = (f"{name}.bin", data)
        form: list[tuple[str, str | bytes]] = [("spec", raw_spec if raw_spec is not None
                                                 else json.dumps(spec or SHORT_SPEC)), *(fields or [])]
        content_type, body = multipart(form, files)
        return request(self.worker.url, "POST", "/v1/jobs", body=body,
                       headers={**self.auth, "Content-Type": content_type, **(headers or {})})

    def get(self, path: str, headers: dict[str, str] | None = None) -> RawResponse:
        return request(self.worker.url, "GET", path, headers={**self.auth, **(headers or {})})

    def raw(self, path: str, headers: list[str], body: bytes, method: str = "POST") -> RawResponse:
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {self.worker.token}",
                 *headers]
        return send_bytes(self.worker.url, ("\r\n".join(lines) + "\r\n\r\n").encode(), body)

    def multipart_raw(self, fields: dict[str, str | bytes], files: dict[str, tuple[str, bytes]]):
        return multipart(fields, files)


@pytest.fixture(scope="module")
def kit(hostile_worker, inputs, tmp_path_factory) -> Kit:
    folder = tmp_path_factory.mktemp("hostile_media")
    files = {name: (path.name, path.read_bytes()) for name, path in inputs.files().items()}
    reference = files["reference"][1]
    small = png_image(64, 64, "RGB", 0)
    big_frame = png_image(1024, 1024, "RGBA", 0)
    big_rgb = png_image(1024, 1024, "RGB", 0)
    frames = [(f"frame_{i:04d}.png", small) for i in range(9)]
    over_limit = (UPLOAD_LIMIT_MB + 4) << 20
    media = {
        "png_100000": png_header_only(100_000, 100_000),
        "png_15000x12000": png_bomb(15_000, 12_000),
        "png_1x60000": png_header_only(1, 60_000),
        "png_text_bomb": png_with_text_bomb(reference),
        "png_bad_ihdr_crc": png_broken_ihdr_crc(reference),
        "png_truncated": reference[: len(reference) // 2],
        "jpeg_65000": jpeg_header_only(65_000, 65_000),
        "gif": b"GIF89a" + b"\0" * 64,
        "text": b"this is not an image\n" * 20,
        "zip_first_png_text": zip_of([("frame_0000.png", b"not a png at all\n" * 10), *frames[1:]]),
        "zip_bad_crc": zip_with_bad_crc(zip_of(frames), "frame_0004.png"),
        "zip_encrypted": zip_marked_encrypted(zip_of(frames), "frame_0000.png"),
        "zip_unknown_method": zip_with_unknown_method(zip_of(frames), "frame_0002.png"),
        "zip_truncated": zip_of(frames)[:700],
        "zip_no_png": zip_of([("notes.txt", b"hello")]),
        "zip_bomb": zip_bomb_member("frame_0000.png", 300 << 20),
        "zip_too_many_frames": zip_of([(f"f_{i:05d}.png", small) for i in range(2401)]),
        # 100 RGBA frames of 1024x1024 decode to 400 MiB, over the tests' 256 MiB budget; the first frame is small,
        # which is all the old check looked at.
        "zip_over_budget_small_first": zip_of([("frame_0000.png", small)]
                                              + [(f"frame_{i:04d}.png", big_frame) for i in range(1, 100)]),
        "zip_over_budget": zip_of([(f"frame_{i:04d}.png", big_frame) for i in range(100)]),
        "zip_frame_bomb": zip_of([*frames[:4], ("frame_0004.png", png_bomb(15_000, 12_000))]),
        "zip_frame_header_bomb": zip_of([*frames[:8], ("frame_0008.png", png_header_only(30_000, 30_000))]),
        "junk_over_limit": b"\0" * over_limit,
        "video_wide": ffmpeg_video(folder / "wide.mkv", "-f", "lavfi", "-i", "color=c=red:s=2048x64:r=16",
                                   "-frames:v", "2", "-c:v", "mjpeg").read_bytes(),
        "video_long": ffmpeg_video(folder / "long.mp4", "-f", "lavfi", "-i", "color=c=red:s=32x32:r=100", "-t",
                                   "30", "-c:v", "libx264", "-preset", "ultrafast").read_bytes(),
        "noise_1024": noise_png(1024, 1024),
        # With the 1024x1024 reference, 85 RGB frames of that size decode to 3 MiB over the budget.
        "zip_85_frames_1024": zip_of([(f"f{i:03d}.png", big_rgb) for i in range(85)]),
    }
    return Kit(hostile_worker, files, media)


def _chunked_over_limit(kit: Kit, declared_length: int | None) -> RawResponse:
    content_type, body = multipart({"spec": json.dumps(SHORT_SPEC)},
                                   {**kit.files, "driving": ("x.mp4", kit.media["junk_over_limit"])})
    headers = [f"Content-Type: {content_type}", "Transfer-Encoding: chunked"]
    if declared_length is not None:
        headers.append(f"Content-Length: {declared_length}")
    return kit.raw("/v1/jobs", headers, chunked(body))


def _lying_length(kit: Kit) -> RawResponse:
    content_type, body = multipart({"spec": json.dumps(SHORT_SPEC)}, kit.files)
    return kit.raw("/v1/jobs", [f"Content-Type: {content_type}", "Content-Length: 300"], body)


def _many_parts(kit: Kit, files: int, fields: int) -> RawResponse:
    form = {"spec": json.dumps(SHORT_SPEC)} | {f"f{i}": "x" for i in range(fields)}
    parts = {f"extra_reference_{i}": ("r.png", kit.files["reference"][1]) for i in range(files)}
    content_type, body = multipart(form, parts)
    return request(kit.worker.url, "POST", "/v1/jobs", headers={**kit.auth, "Content-Type": content_type}, body=body)


def _multipart_with_raw_name(kit: Kit, name: str) -> RawResponse:
    content_type, body = multipart({"spec": json.dumps(SHORT_SPEC)}, {**kit.files, name: ("x.png", b"\x89PNG")})
    return request(kit.worker.url, "POST", "/v1/jobs", headers={**kit.auth, "Content-Type": content_type}, body=body)


def _nested(depth: int, opening: str, closing: str, leaf: str = "1") -> str:
    return opening * depth + leaf + closing * depth


# name: (send, expected status, expected error field or None when any is fine)
Send = Callable[[Kit], RawResponse]
CASES: dict[str, tuple[Send, int, str | None]] = {
    # -- the spec --
    "5000-digit seed": (lambda k: k.job(raw_spec=json.dumps(SHORT_SPEC)[:-1] + f', "seed": {HUGE_INT}}}'),
                        400, "spec"),
    "5000-digit steps": (lambda k: k.job(raw_spec=f'{{"steps": {HUGE_INT}}}'), 400, "spec"),
    "5000-digit float": (lambda k: k.job(raw_spec=f'{{"guidance": 1.{HUGE_INT}e{HUGE_INT}}}'), 422,
                         "spec.guidance"),
    "array nested 20000 deep": (lambda k: k.job(raw_spec='{"prompt": ' + _nested(DEEP, "[", "]") + "}"), 400,
                                "spec"),
    # 10,000 levels of {"a": keep the spec under its 64 KiB part limit; far deeper than any parser recurses.
    "object nested 10000 deep": (lambda k: k.job(raw_spec='{"prompt": ' + _nested(DEEP // 2, '{"a":', "}") + "}"),
                                 400, "spec"),
    "spec is an array": (lambda k: k.job(raw_spec="[1, 2, 3]"), 400, "spec"),
    "lone surrogate in the prompt": (lambda k: k.job(raw_spec='{"prompt": "\\ud800"}'), 422, "spec.prompt"),
    "spec over 64 KiB": (lambda k: k.job(raw_spec=json.dumps({"prompt": "a" * 70_000})), 400, None),
    "NaN guidance": (lambda k: k.job(raw_spec='{"guidance": NaN}'), 422, "spec.guidance"),
    "Infinity fps": (lambda k: k.job(raw_spec='{"fps": Infinity}'), 422, "spec.fps"),
    "negative seed": (lambda k: k.job({**SHORT_SPEC, "seed": -1}), 422, "spec.seed"),
    "5000-digit size": (lambda k: k.job({**SHORT_SPEC, "size": f"{HUGE_INT}x64"}), 422, "spec.size"),
    "2000 LoRAs": (lambda k: k.job({**SHORT_SPEC, "loras": {f"l{i}": 1.0 for i in range(2000)}}), 422,
                   "spec.loras"),
    "NUL in the prompt": (lambda k: k.job({**SHORT_SPEC, "prompt": "a\u0000b"}), 422, "spec"),
    "__proto__ key": (lambda k: k.job({**SHORT_SPEC, "__proto__": {"admin": True}}), 422, "spec.__proto__"),
    # -- the body and its framing --
    "Content-Length over the limit": (lambda k: k.job(replace={"driving": k.media["junk_over_limit"]}), 413,
                                      "files"),
    "chunked body over the limit": (lambda k: _chunked_over_limit(k, None), 413, "files"),
    "small Content-Length plus chunked": (lambda k: _chunked_over_limit(k, 1000), 400, "Transfer-Encoding"),
    # The server reads 300 bytes as the body (the spec alone) and the rest as a next request, which it refuses.
    "Content-Length shorter than the body": (_lying_length, 422, "reference"),
    "Content-Length not a number": (lambda k: k.raw("/v1/jobs", ["Content-Type: multipart/form-data; boundary=b",
                                                                 "Content-Length: 12abc"], b"x" * 10), 400, None),
    "multipart without a boundary": (lambda k: k.raw("/v1/jobs", ["Content-Type: multipart/form-data",
                                                                  "Content-Length: 10"], b"x" * 10), 400, None),
    "40 file parts": (lambda k: _many_parts(k, 40, 0), 400, None),
    "500 text fields": (lambda k: _many_parts(k, 0, 500), 400, None),
    "JSON body instead of multipart": (
        lambda k: request(k.worker.url, "POST", "/v1/jobs", body=b"{}",
                          headers={**k.auth, "Content-Type": "application/json"}), 415, "Content-Type"),
    "traversal in a field name": (lambda k: _multipart_with_raw_name(k, "../../etc/passwd"), 422, None),
    "control characters in a field name": (lambda k: _multipart_with_raw_name(k, "ref\x01erence"), 422, None),
    "spec sent twice": (lambda k: k.job(fields=[("spec", "{}")]), 400, "spec"),
    "extra reference index 9": (lambda k: k.job(replace={"extra_reference_9": k.files["reference"][1]}), 422,
                                "extra_reference_9"),
    "extra reference 1 without 0": (lambda k: k.job(replace={"extra_reference_1": k.files["reference"][1]}), 422,
                                    "extra_reference_1"),
    "Idempotency-Key of 201 characters": (lambda k: k.job(headers={"Idempotency-Key": "k" * 201}), 400,
                                          "Idempotency-Key"),
    "X-Client-Id of 129 characters": (lambda k: k.job(headers={"X-Client-Id": "c" * 129}), 400, "X-Client-Id"),
    "100 KB Authorization header": (lambda k: request(k.worker.url, "GET", "/v1/jobs",
                                                      headers={"Authorization": "Bearer " + "t" * 100_000}), 401,
                                    "Authorization"),
    # -- images --
    "PNG header 100000x100000": (lambda k: k.job(replace={"reference": k.media["png_100000"]}), 413, "reference"),
    "PNG bomb 15000x12000": (lambda k: k.job(replace={"reference": k.media["png_15000x12000"]}), 413, "reference"),
    "PNG header 1x60000": (lambda k: k.job(replace={"reference": k.media["png_1x60000"]}), 413, "reference"),
    "PNG bomb as the reference mask": (lambda k: k.job(replace={"reference_mask": k.media["png_15000x12000"]}),
                                       413, "reference_mask"),
    "PNG bomb as an extra reference": (lambda k: k.job(replace={"extra_reference_0": k.media["png_15000x12000"]}),
                                       413, "extra_reference_0"),
    "PNG with a 64 MiB text chunk": (lambda k: k.job(replace={"reference": k.media["png_text_bomb"]}), 422,
                                     "reference"),
    "PNG with a broken IHDR CRC": (lambda k: k.job(replace={"reference": k.media["png_bad_ihdr_crc"]}), 422,
                                   "reference"),
    "PNG cut in half": (lambda k: k.job(replace={"reference": k.media["png_truncated"]}), 422, "reference"),
    "JPEG header 65000x65000": (lambda k: k.job(replace={"reference": k.media["jpeg_65000"]}), 413, "reference"),
    "GIF as the reference": (lambda k: k.job(replace={"reference": k.media["gif"]}), 422, "reference"),
    "empty reference": (lambda k: k.job(replace={"reference": b""}), 422, "reference"),
    "image as the driving clip": (lambda k: k.job(replace={"driving": k.files["reference"][1]}), 422, "driving"),
    # -- frame archives (driving clips as zips of PNGs) --
    "zip whose first PNG is text": (lambda k: k.job({**SHORT_SPEC, "fps": 16},
                                                    replace={"driving": k.media["zip_first_png_text"],
                                                             "driving_mask": None}), 422, "driving"),
    "zip member with a bad CRC": (lambda k: k.job({**SHORT_SPEC, "fps": 16},
                                                  replace={"driving": k.media["zip_bad_crc"], "driving_mask": None}),
                                  422, "driving"),
    "zip member marked encrypted": (lambda k: k.job({**SHORT_SPEC, "fps": 16},
                                                    replace={"driving": k.media["zip_encrypted"],
                                                             "driving_mask": None}), 422, "driving"),
    "zip member with an unknown method": (lambda k: k.job({**SHORT_SPEC, "fps": 16},
                                                          replace={"driving": k.media["zip_unknown_method"],
                                                                   "driving_mask": None}), 422, "driving"),
    "truncated zip": (lambda k: k.job({**SHORT_SPEC, "fps": 16}, replace={"driving": k.media["zip_truncated"],
                                                                         "driving_mask": None}), 422, "driving"),
    "zip without PNGs": (lambda k: k.job({**SHORT_SPEC, "fps": 16}, replace={"driving": k.media["zip_no_png"],
                                                                            "driving_mask": None}), 422, "driving"),
    "zip member inflating to 300 MiB": (lambda k: k.job({**SHORT_SPEC, "fps": 16},
                                                        replace={"driving": k.media["zip_bomb"],
                                                                 "driving_mask": None}), 413, "driving"),
    "zip of 2401 frames": (lambda k: k.job({**SHORT_SPEC, "fps": 16},
                                           replace={"driving": k.media["zip_too_many_frames"],
                                                    "driving_mask": None}), 413, "driving"),
    "zip over the decode budget, small first frame": (
        lambda k: k.job({**SHORT_SPEC, "fps": 16}, replace={"driving": k.media["zip_over_budget_small_first"],
                                                            "driving_mask": None}), 413, "driving"),
    "zip over the decode budget": (lambda k: k.job({**SHORT_SPEC, "fps": 16},
                                                   replace={"driving": k.media["zip_over_budget"],
                                                            "driving_mask": None}), 413, "driving"),
    "mask zip over the decode budget": (lambda k: k.job({**SHORT_SPEC, "fps": 16},
                                                        replace={"driving_mask": k.media["zip_over_budget"]}),
                                        413, "driving_mask"),
    "PNG bomb inside a zip": (lambda k: k.job({**SHORT_SPEC, "fps": 16},
                                              replace={"driving": k.media["zip_frame_bomb"], "driving_mask": None}),
                              413, "driving"),
    "PNG header 30000x30000 inside a zip": (lambda k: k.job({**SHORT_SPEC, "fps": 16},
                                                            replace={"driving": k.media["zip_frame_header_bomb"],
                                                                     "driving_mask": None}), 413, "driving"),
    # -- videos --
    "video wider than the side limit": (lambda k: k.job(replace={"driving": k.media["video_wide"],
                                                                 "driving_mask": None}), 413, "driving"),
    "video of 3000 frames": (lambda k: k.job({**SHORT_SPEC, "frame_range": None},
                                             replace={"driving": k.media["video_long"], "driving_mask": None}), 413,
                             "driving"),
    "reference and driving together over the budget": (
        lambda k: k.job({**SHORT_SPEC, "fps": 16, "frame_range": None},
                        replace={"reference": k.media["noise_1024"], "driving": k.media["zip_85_frames_1024"],
                                 "driving_mask": None}), 413, None),
    # -- other endpoints --
    "5000-digit limit": (lambda k: k.get(f"/v1/jobs?limit={HUGE_INT}"), 422, "limit"),
    "5000-digit cursor": (lambda k: k.get(f"/v1/jobs?cursor={HUGE_INT}"), 422, "cursor"),
    "5000-digit frame index": (lambda k: k.get(f"/v1/jobs/AAAAAAAAAAAAAAAAAAAAAA/result/frames/{HUGE_INT}"), 422,
                               "index"),
    "300-character job id": (lambda k: k.get("/v1/jobs/" + "A" * 300), 404, "id"),
    "10 MiB body on cancel": (lambda k: k.raw("/v1/jobs/AAAAAAAAAAAAAAAAAAAAAA/cancel",
                                              [f"Content-Length: {10 << 20}"], b"x" * (10 << 20)), 413, "body"),
    "invalid Range on a result": (lambda k: k.get(_result_url(k), headers={"Range": "bytes=abc"}), 400, "Range"),
    "Range past the end": (lambda k: k.get(_result_url(k), headers={"Range": "bytes=999999999-"}), 416, "Range"),
}


def _result_url(kit: Kit) -> str:
    job = kit.get("/v1/jobs?limit=1").json()["jobs"][0]
    return f"/v1/jobs/{job['id']}/result/mp4"


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def reset_peak_rss(pid: int) -> float:
    """Reset the kernel's peak-RSS mark of ``pid`` (root, Linux) and return the current RSS in MiB."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return peak_rss_mb(pid)


def store_snapshot(data_dir: Path) -> tuple:
    """Everything a request could change: the jobs' rows, every file under jobs/, and staging/."""
    database = sqlite3.connect(f"file:{data_dir / 'worker.sqlite3'}?mode=ro", uri=True)
    try:
        rows = database.execute("SELECT * FROM jobs ORDER BY seq").fetchall()
        windows = database.execute("SELECT * FROM windows ORDER BY job_id, idx").fetchall()
    finally:
        database.close()
    files = sorted((str(p.relative_to(data_dir)), p.stat().st_size) for p in (data_dir / "jobs").rglob("*")
                   if p.is_file())
    staging = sorted(p.name for p in (data_dir / "staging").iterdir())
    return rows, windows, files, staging


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_hostile_request_is_refused_cheaply_and_changes_nothing(kit, case):
    send, status, field = CASES[case]
    worker = kit.worker
    data_dir = Path(worker.data_dir)
    before = store_snapshot(data_dir)
    baseline = reset_peak_rss(worker.pid)

    response = send(kit)

    growth = peak_rss_mb(worker.pid) - baseline
    assert 400 <= response.status < 500, (response.status, response.body[:400])
    assert response.status == status, (response.status, response.body[:400])
    if response.headers.get("content-type", "").startswith("application/json") or field is not None:
        error = response.error
        if field is not None:
            assert error["field"] == field, error
        assert error["message"], error
    assert response.seconds < SECONDS_BOUND, f"answered after {response.seconds:.1f} s"
    assert growth < MEMORY_BOUND_MB, f"the worker's peak memory grew by {growth:.0f} MiB"
    # Staging folders of refused uploads are removed as the response is sent; give the server that moment.
    wait_until(lambda: store_snapshot(data_dir) == before, timeout=10)
    assert worker.is_running()


def test_no_error_was_logged_and_the_worker_still_serves(kit, inputs):
    """Runs after the cases: none of them may have produced an error line, and a good job still runs."""
    assert error_lines(Path(kit.worker.log_path).read_text()) == []
    client = kit.worker.client()
    job_id = client.submit({**SHORT_SPEC, "seed": 99}, inputs.files())
    assert client.wait(job_id, poll_interval=0.05, timeout=180)["status"] == "succeeded"
