"""Start and stop a local ``scail-worker`` with a given Python interpreter. Standard library only (Blender imports it).

    worker = LocalWorker(python_exe="/home/me/venvs/scail/bin/python", checkpoint="/models/SCAIL-2",
                         data_dir="/home/me/.scail/worker", device="cuda", log_path="/home/me/.scail/worker.log")
    worker.start()                       # blocks until the model is loaded and the port is listening
    client = worker.client()             # a WorkerClient for worker.url with worker.token
    ...
    worker.stop()                        # also runs at interpreter exit

The worker listens on 127.0.0.1 only, on a free port the OS picks (``--port 0``; the port is read from its
``SCAIL-WORKER READY`` line), with a fresh random token passed through the environment (so it never shows in the
process list). Its stdout and stderr go to ``log_path``. It also watches this process and exits if we die without
stopping it (Blender crashed), so no orphan keeps the GPU.
"""

from __future__ import annotations

import atexit
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

READY_PREFIX = "SCAIL-WORKER READY "
TOKEN_ENV = "SCAIL_WORKER_TOKEN"
PROJECT_ROOT = Path(__file__).resolve().parents[1]  # the folder holding the ``backend`` package
LOG_ROTATE_BYTES = 20 << 20


class WorkerStartError(RuntimeError):
    """The worker exited or did not become ready in time. ``log_tail`` has the end of its log."""

    def __init__(self, message: str, log_tail: str = ""):
        super().__init__(f"{message}\n--- worker log (last lines) ---\n{log_tail}" if log_tail else message)
        self.log_tail = log_tail


class LocalWorker:
    """A worker subprocess on this machine. Not started until ``start()``; ``url``/``token`` are set then."""

    def __init__(
        self,
        python_exe: str | os.PathLike[str],
        checkpoint: str | os.PathLike[str],
        data_dir: str | os.PathLike[str],
        device: str = "cuda",
        log_path: str | os.PathLike[str] | None = None,
        *,
        dtype: str | None = None,
        extra_args: Sequence[str] = (),
        ready_timeout: float = 900.0,
        env: dict[str, str] | None = None,
    ):
        self.python_exe = str(python_exe)
        self.checkpoint = Path(checkpoint)
        self.data_dir = Path(data_dir)
        self.device = device
        self.log_path = Path(log_path) if log_path else self.data_dir / "worker.log"
        self.dtype = dtype
        self.extra_args = list(extra_args)
        self.ready_timeout = ready_timeout
        self.env = dict(env or {})
        self.url: str | None = None
        self.token: str | None = None
        self.process: subprocess.Popen | None = None
        self._lock = threading.Lock()  # one start() at a time; stop() never takes it (see stop)
        self._stopping = threading.Event()

    def __repr__(self) -> str:
        return f"LocalWorker(url={self.url!r}, pid={self.pid})"

    def __enter__(self) -> LocalWorker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self) -> list[str]:
        """The command line (without the token, which travels in the environment)."""
        command = [
            self.python_exe, "-m", "backend.worker.cli", "serve",
            "--checkpoint", str(self.checkpoint),
            "--data", str(self.data_dir),
            "--device", self.device,
            "--host", "127.0.0.1",
            "--port", "0",
            "--exit-with-parent", str(os.getpid()),
        ]
        if self.dtype:
            command += ["--dtype", self.dtype]
        return command + self.extra_args

    def start(self) -> LocalWorker:
        """Start the worker and wait for its ready line; raises ``WorkerStartError`` with the log tail."""
        with self._lock:
            if self.is_running():
                return self
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            if self.log_path.is_file() and self.log_path.stat().st_size > LOG_ROTATE_BYTES:
                os.replace(self.log_path, self.log_path.with_name(self.log_path.name + ".1"))
            self._stopping.clear()
            self.token = secrets.token_urlsafe(32)
            env = {**os.environ, **self.env, TOKEN_ENV: self.token, "PYTHONUNBUFFERED": "1"}
            # An explicit PYTHONPATH (e.g. the add-on naming the chosen environment's backend) comes first; the
            # folder holding this launcher's own ``backend`` package is the fallback.
            env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), str(PROJECT_ROOT)) if p)
            with open(self.log_path, "ab") as log:
                start_offset = log.tell()
                log.write(f"\n=== scail launcher: starting {' '.join(self.command())}\n".encode())
                log.flush()
                kwargs: dict = {}
                if sys.platform == "win32":
                    kwargs["creationflags"] = subprocess.CREATE_NO_WINDOW | subprocess.CREATE_NEW_PROCESS_GROUP
                else:
                    kwargs["start_new_session"] = True  # Ctrl-C in Blender's terminal must not hit the worker
                self.process = subprocess.Popen(
                    self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                    cwd=str(self.data_dir), **kwargs,
                )
            atexit.register(self.stop)
            try:
                self.url = self._wait_ready(start_offset)
            except BaseException:
                self._terminate()
                raise
            return self

    def _wait_ready(self, offset: int) -> str:
        deadline = time.monotonic() + self.ready_timeout
        while True:
            text = self._read_log_from(offset)
            for line in text.splitlines():
                if line.startswith(READY_PREFIX):
                    return line[len(READY_PREFIX):].strip()
            if self._stopping.is_set():
                raise WorkerStartError("the worker was stopped while it was starting", self.log_tail())
            assert self.process is not None
            code = self.process.poll()
            if code is not None:
                raise WorkerStartError(f"the worker exited with code {code} before it was ready", self.log_tail())
            if time.monotonic() > deadline:
                raise WorkerStartError(f"the worker was not ready after {self.ready_timeout:.0f} s", self.log_tail())
            time.sleep(0.1)

    def _read_log_from(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                return log.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the worker log."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - 64 * 1024))
                return "\n".join(log.read().decode("utf-8", "replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def client(self, timeout: float = 30.0, **kwargs):
        """A ``backend.client.WorkerClient`` for this worker (requires ``requests``)."""
        from .client import WorkerClient

        if self.url is None or self.token is None:
            raise RuntimeError("start() the worker first")
        return WorkerClient(self.url, self.token, timeout, **kwargs)

    def stop(self, timeout: float = 20.0) -> int | None:
        """Ask the worker to stop (SIGTERM: it requeues its running job), kill it after ``timeout`` seconds.
        Returns its exit code (None if it was never started)."""
        # Not under self._lock: start() holds it while it waits for the ready line, and stop() must work then
        # too (Blender quitting while the model loads runs this from atexit on the main thread).
        self._stopping.set()
        atexit.unregister(self.stop)
        return self._terminate(timeout)

    def _terminate(self, timeout: float = 20.0) -> int | None:
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        self.url = None
        return process.returncode
