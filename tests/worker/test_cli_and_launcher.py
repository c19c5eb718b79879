"""The command line's refusals, a generated token over TLS, and the launcher's failure report."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from worker_helpers import SHORT_SPEC, wait_until

from backend.client import BadRequest, WorkerClient
from backend.launcher import LocalWorker, WorkerStartError

REPO = Path(__file__).resolve().parents[2]


def _result_gone(client: WorkerClient, job_id: str) -> BadRequest | None:
    try:
        client.result_manifest(job_id)
    except BadRequest as error:
        return error
    return None


def run_cli(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "backend.worker.cli", "serve", *args], cwd=REPO, text=True,
                          capture_output=True, timeout=timeout, env={**os.environ, **(env or {})})


def test_a_public_address_needs_a_token(tiny_checkpoint, tmp_path):
    env = {"SCAIL_WORKER_TOKEN": ""}
    result = run_cli("--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path), "--host", "0.0.0.0",
                     "--device", "cpu", env=env)
    assert result.returncode == 2
    assert "give --token" in result.stderr and "SCAIL-WORKER READY" not in result.stdout


def test_launcher_reports_a_broken_checkpoint_with_the_log_tail(tmp_path):
    broken = tmp_path / "not_a_checkpoint"
    broken.mkdir()
    (broken / "notes.txt").write_text("weights go here")
    worker = LocalWorker(sys.executable, broken, tmp_path / "data", device="cpu", log_path=tmp_path / "w.log",
                         ready_timeout=120)
    with pytest.raises(WorkerStartError) as failure:
        worker.start()
    assert "exited with code 3" in str(failure.value)
    assert "cannot load the checkpoint" in failure.value.log_tail
    assert not worker.is_running()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a test certificate")
def test_generated_token_tls_and_retention(tiny_checkpoint, inputs, tmp_path):
    """One worker with a generated token, HTTPS, and a tiny disk budget that removes each result once written."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out",
                    str(cert)], check=True, capture_output=True)
    log_file = tmp_path / "worker.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "backend.worker.cli", "serve", "--checkpoint", str(tiny_checkpoint), "--data",
         str(tmp_path / "data"), "--device", "cpu", "--port", "0", "--ssl-certfile", str(cert), "--ssl-keyfile",
         str(key), "--log-file", str(log_file), "--retention-gb", "0.000001"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "SCAIL_WORKER_TOKEN": ""},
    )
    try:
        token_line = process.stdout.readline().strip()
        ready_line = process.stdout.readline().strip()
        assert token_line.startswith("SCAIL-WORKER TOKEN ")
        token = token_line.split()[-1]
        assert ready_line.startswith("SCAIL-WORKER READY https://127.0.0.1:")
        url = ready_line.split()[-1]
        client = WorkerClient(url, token, verify=str(cert))
        assert client.health()["authenticated"] is True
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(f"{url}/v1/health", timeout=10)  # an unverified certificate is refused by default

        job_id = client.submit(SHORT_SPEC, inputs.files())
        assert client.wait(job_id, poll_interval=0.05, timeout=120)["status"] == "succeeded"
        # The disk budget (1 KiB) is exceeded by any result: the sweep after the job removes its files.
        expired = wait_until(lambda: _result_gone(client, job_id), timeout=30)
        assert expired.status == 410 and expired.code == "expired"
        assert client.status(job_id)["status"] == "succeeded", "the job row stays"
        assert token not in log_file.read_text(), "the token never reaches the log"
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0
    assert token not in stderr


def test_schema_and_explorer_need_the_token_off_loopback(tiny_checkpoint, tmp_path):
    """/openapi.json and /docs are as open as the socket: behind the token on a worker bound to all addresses."""
    token = "s" * 43
    process = subprocess.Popen(
        [sys.executable, "-m", "backend.worker.cli", "serve", "--checkpoint", str(tiny_checkpoint), "--data",
         str(tmp_path / "data"), "--device", "cpu", "--host", "0.0.0.0", "--port", "0"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "SCAIL_WORKER_TOKEN": token},
    )
    try:
        ready = process.stdout.readline().strip()
        assert ready.startswith("SCAIL-WORKER READY http://0.0.0.0:"), ready
        url = "http://127.0.0.1:" + ready.rsplit(":", 1)[1]
        for path in ("/openapi.json", "/docs"):
            refused = requests.get(url + path, timeout=10)
            assert refused.status_code == 401 and refused.json()["error"]["field"] == "Authorization", path
            allowed = requests.get(url + path, timeout=10, headers={"Authorization": f"Bearer {token}"})
            assert allowed.status_code == 200, path
        assert "/v1/jobs" in requests.get(url + "/openapi.json", timeout=10,
                                          headers={"Authorization": f"Bearer {token}"}).json()["paths"]
    finally:
        process.terminate()
        process.communicate(timeout=30)
    assert process.returncode == 0


def test_stop_while_starting_does_not_wait_for_the_start(tiny_checkpoint, tmp_path):
    """Blender quitting while the model loads: stop() from another thread ends the start at once."""
    worker = LocalWorker(sys.executable, tiny_checkpoint, tmp_path / "data", device="cpu",
                         log_path=tmp_path / "w.log", ready_timeout=120)
    errors: list[BaseException] = []

    def start() -> None:
        try:
            worker.start()
        except BaseException as error:  # noqa: BLE001 - collected for the assertion
            errors.append(error)

    starter = threading.Thread(target=start)
    starter.start()
    wait_until(lambda: worker.process is not None, timeout=30, interval=0.01)
    began = time.monotonic()
    worker.stop(timeout=20)
    starter.join(30)
    assert time.monotonic() - began < 25 and not starter.is_alive()
    assert not worker.is_running()
    assert errors and isinstance(errors[0], WorkerStartError)


def test_accepted_connections_have_nagle_off():
    """Every connection the worker's listening socket accepts (through asyncio, as uvicorn serves it) sends small
    responses at once: without TCP_NODELAY a keep-alive client waited ~40 ms per request for a delayed ACK."""
    import asyncio
    import socket

    from backend.worker.cli import _bind

    async def accepted_nodelay() -> int:
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport):
                sock = transport.get_extra_info("socket")
                seen.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        listener = _bind("127.0.0.1", 0)
        server = await asyncio.get_running_loop().create_server(Probe, sock=listener)
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", listener.getsockname()[1])
            value = await asyncio.wait_for(seen, 10)
            writer.close()
            return value
        finally:
            server.close()

    assert asyncio.run(accepted_nodelay()) != 0
