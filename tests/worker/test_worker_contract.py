"""The HTTP contract of every endpoint, driven with a raw client (no retries) against a real worker process.

Any 5xx fails the test, and so does any error line in the worker's log: a request that did what it was asked must
be answered as such to every client, not only to ours (which retries 5xx and would hide them).
"""

from __future__ import annotations

import http.client
import json
import time

import pytest
from raw_http import error_lines, host_port, multipart, request
from worker_helpers import SHORT_SPEC, start_worker

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "canceled")


@pytest.fixture(scope="module")
def contract_worker(tiny_checkpoint, tmp_path_factory):
    """A worker of its own, so that its log holds only what this module did."""
    folder = tmp_path_factory.mktemp("contract")
    running = start_worker(tiny_checkpoint, folder / "data", folder / "worker.log")
    yield running
    running.stop()


class Caller:
    """Raw requests to one worker; every answer is checked for 5xx and recorded."""

    def __init__(self, worker):
        self.worker = worker
        self.seen: list[tuple[str, str, int]] = []

    def __call__(self, method: str, path: str, *, token: bool = True, headers: dict[str, str] | None = None,
                 body: bytes | None = None):
        sent = dict(headers or {})
        if token:
            sent["Authorization"] = f"Bearer {self.worker.token}"
        response = request(self.worker.url, method, path, headers=sent, body=body)
        self.seen.append((method, path, response.status))
        assert response.status < 500, (method, path, response.status, response.body[:500])
        if response.status >= 400:
            assert response.error["code"], (method, path)  # the JSON error format, always
        return response

    def submit(self, files: dict[str, tuple[str, bytes]], spec: dict, key: str | None = None):
        content_type, body = multipart({"spec": json.dumps(spec)}, files)
        headers = {"Content-Type": content_type}
        if key:
            headers["Idempotency-Key"] = key
        return self("POST", "/v1/jobs", headers=headers, body=body)

    def wait(self, job_id: str, timeout: float = 180.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self("GET", f"/v1/jobs/{job_id}").json()
            if status["status"] in ("succeeded", "failed", "canceled"):
                return status
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} did not finish within {timeout} s")


def read_event_stream(worker, job_id: str, timeout: float = 180.0) -> list[dict]:
    """The ``event: status`` payloads of ``/events`` until the server ends the stream."""
    host, port = host_port(worker.url)
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", f"/v1/jobs/{job_id}/events", headers={"Authorization": f"Bearer {worker.token}"})
        response = connection.getresponse()
        assert response.status == 200 and response.getheader("content-type", "").startswith("text/event-stream")
        text = response.read().decode()
    finally:
        connection.close()
    return [json.loads(line[len("data: "):]) for line in text.splitlines()
            if line.startswith("data: ") and line != "data: {}"]


def test_every_endpoint_answers_without_5xx_or_logged_errors(contract_worker, inputs):
    call = Caller(contract_worker)
    files = {name: (path.name, path.read_bytes()) for name, path in inputs.files().items()}

    public = call("GET", "/v1/health", token=False)
    assert public.status == 200 and public.json()["authenticated"] is False
    health = call("GET", "/v1/health")
    assert health.status == 200 and health.json()["authenticated"] is True

    # A plain submission: 201 with the job's id, first time, every time (this was a 500 for every raw client).
    created = call.submit(files, SHORT_SPEC)
    assert created.status == 201, created.body
    job_id = created.json()["id"]
    assert created.json()["created"] is True and created.json()["status"] == "queued"
    keyed = call.submit(files, {**SHORT_SPEC, "seed": 8}, key="contract-1")
    again = call.submit(files, {**SHORT_SPEC, "seed": 8}, key="contract-1")
    assert (keyed.status, again.status) == (201, 200) and keyed.json()["id"] == again.json()["id"]
    conflict = call.submit(files, {**SHORT_SPEC, "seed": 9}, key="contract-1")
    assert conflict.status == 409 and conflict.error["code"] == "idempotency_conflict"

    events = read_event_stream(contract_worker, job_id)
    assert events and events[-1]["status"] == "succeeded" and all(e["id"] == job_id for e in events)
    final = call.wait(job_id)
    assert final["status"] == "succeeded" and final["result"]["frames"] == 9

    listing = call("GET", "/v1/jobs?limit=1").json()
    assert [job["id"] for job in listing["jobs"]] == [keyed.json()["id"]] and listing["next_cursor"]
    rest = call("GET", f"/v1/jobs?limit=50&cursor={listing['next_cursor']}").json()
    assert [job["id"] for job in rest["jobs"]] == [job_id] and rest["next_cursor"] is None

    manifest = call("GET", f"/v1/jobs/{job_id}/result").json()
    assert manifest["frames"] == 9
    for entry in manifest["files"]:
        whole = call("GET", entry["url"])
        assert whole.status == 200 and len(whole.body) == entry["size"]
        assert whole.headers["etag"] == f'"{entry["sha256"]}"'
        part = call("GET", entry["url"], headers={"Range": "bytes=10-19"})
        assert part.status == 206 and part.body == whole.body[10:20]
        if_range = call("GET", entry["url"], headers={"Range": "bytes=0-9", "If-Range": f'"{entry["sha256"]}"'})
        assert if_range.status == 206 and if_range.body == whole.body[:10]
    assert call("GET", f"/v1/jobs/{job_id}/result/frames/9").status == 404
    mp4 = f"/v1/jobs/{job_id}/result/mp4"
    for bad_range, status in (("bytes=abc", 400), ("pages=0-9", 400), ("bytes=999999999-", 416)):
        refused = call("GET", mp4, headers={"Range": bad_range})
        assert refused.status == status and refused.error["field"] == "Range", (bad_range, refused.body)

    # A loopback worker serves its schema and explorer without the token (off loopback they need it: see
    # test_cli_and_launcher); ours is on loopback.
    schema = call("GET", "/openapi.json", token=False)
    assert schema.status == 200 and "/v1/jobs/{job_id}/result/mp4" in schema.json()["paths"]
    explorer = call("GET", "/docs", token=False)
    assert explorer.status == 200 and explorer.headers["content-type"].startswith("text/html")

    previews = call("POST", "/v1/masks", headers={"Content-Type": multipart({"spec": "{}"})[0]},
                    body=multipart({"spec": "{}"})[1])
    assert previews.status == 409 and previews.error["code"] == "auto_masks_unavailable"

    # Cancel: a finished job is left as it is; a fresh one is canceled wherever it is by then.
    assert call("POST", f"/v1/jobs/{job_id}/cancel").json()["status"] == "succeeded"
    canceled = call.submit(files, {**SHORT_SPEC, "steps": 40, "seed": 10}).json()["id"]
    assert call("POST", f"/v1/jobs/{canceled}/cancel").json()["cancel_requested"] is True
    assert call.wait(keyed.json()["id"])["status"] == "succeeded"
    assert call.wait(canceled)["status"] == "canceled"
    not_ready = call("GET", f"/v1/jobs/{canceled}/result")
    assert not_ready.status == 409 and not_ready.error["code"] == "not_ready"

    for finished in (job_id, canceled):
        deleted = call("DELETE", f"/v1/jobs/{finished}")
        assert deleted.status == 204 and deleted.body == b""
        assert call("GET", f"/v1/jobs/{finished}").status == 404

    assert call("GET", "/v1/jobs/AAAAAAAAAAAAAAAAAAAAAA").error["code"] == "not_found"
    assert call("GET", "/v1/no-such-route").status == 404
    assert call("PUT", "/v1/jobs").status == 405
    assert call("GET", "/v1/jobs", token=False).status == 401

    statuses = {status for _, _, status in call.seen}
    assert statuses <= {200, 201, 204, 206, 400, 401, 404, 405, 409, 416}, statuses
    assert error_lines(contract_worker.log_path.read_text()) == [], "the worker logged errors"
