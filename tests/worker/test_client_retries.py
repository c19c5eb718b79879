"""The client's retries: an unreachable worker, a wrong token, and a submission whose response is lost."""

from __future__ import annotations

import socket
import threading
from urllib.parse import urlparse

import pytest
from worker_helpers import SHORT_SPEC

from backend.client import AuthError, WorkerClient, WorkerUnreachable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LosingProxy:
    """A loopback TCP proxy in front of the worker that drops the response of the first request it forwards:
    the worker has handled the request (the job exists), but the client sees the connection close."""

    def __init__(self, upstream_url: str):
        parsed = urlparse(upstream_url)
        self.upstream = (parsed.hostname, parsed.port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections = 0
        self.dropped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(client, self.connections == 1), daemon=True).start()

    def _serve(self, client: socket.socket, drop_response: bool) -> None:
        upstream = socket.create_connection(self.upstream)
        threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
        try:
            first = upstream.recv(65536)
            if drop_response:
                self.dropped.set()
                return  # the finally closes both ends: the response never reaches the client
            while first:
                client.sendall(first)
                first = upstream.recv(65536)
        except OSError:
            pass
        finally:
            for end in (client, upstream):  # shutdown first: the pump thread still blocks in recv on them
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                end.close()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()


def test_unreachable_worker_raises_after_retries():
    client = WorkerClient(f"http://127.0.0.1:{free_port()}", "t" * 32, timeout=2, retries=2, backoff=0.01)
    with pytest.raises(WorkerUnreachable, match="cannot reach the worker"):
        client.health()


def test_wrong_token_is_an_auth_error(worker):
    with pytest.raises(AuthError, match="wrong token"):
        WorkerClient(worker.url, "not-the-token-0123456789", retries=0).list_jobs()


def test_a_lost_submission_response_is_retried_into_the_same_job(worker, inputs):
    proxy = LosingProxy(worker.url)
    try:
        client = WorkerClient(proxy.url, worker.token, client_id="lossy-network", retries=3, backoff=0.05)
        job_id = client.submit(SHORT_SPEC, inputs.files())
        assert proxy.dropped.is_set() and proxy.connections >= 2
    finally:
        proxy.close()
    direct = WorkerClient(worker.url, worker.token, client_id="lossy-network")
    assert [job["id"] for job in direct.iter_jobs()] == [job_id], "exactly one job was queued"
    assert direct.wait(job_id, poll_interval=0.05, timeout=120)["status"] == "succeeded"
