"""Where jobs go: the local worker this add-on starts, or a remote worker; and whether we may reach it.

Environment variables ``SCAIL_BACKEND_URL`` and ``SCAIL_TOKEN`` override the preferences for scripted use.
Requests to anything but loopback need Blender's "Allow Online Access" (``bpy.app.online_access``).
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import tempfile
import threading
import urllib.parse
from dataclasses import dataclass

import bpy

from . import ADDON_PACKAGE

LOCAL = "local"  # the server recorded on jobs sent to the add-on's own worker (its port changes per start)


class BackendUnavailable(Exception):
    """The backend cannot be used as configured; the message says what to change."""


@dataclass(frozen=True)
class BackendTarget:
    url: str
    token: str
    server_key: str  # what a job records: the URL, or LOCAL for the add-on's own worker
    timeout: float


def preferences(context=None):
    context = context or bpy.context
    addon = context.preferences.addons.get(ADDON_PACKAGE)
    if addon is None:
        raise BackendUnavailable(f"the add-on {ADDON_PACKAGE!r} is not enabled")
    return addon.preferences


def is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_online_access(url: str) -> None:
    """Loopback is always allowed; anything else only with Blender's online access switched on."""
    if is_loopback(url) or bpy.app.online_access:
        return
    how = ("Blender was started with --offline-mode" if getattr(bpy.app, "online_access_override", False)
           else "enable Preferences > System > Network > Allow Online Access")
    raise BackendUnavailable(f"online access is disabled, so the remote worker {url} cannot be reached: {how}")


def env_override() -> tuple[str, str] | None:
    url = os.environ.get("SCAIL_BACKEND_URL", "").strip()
    if not url:
        return None
    return url.rstrip("/"), os.environ.get("SCAIL_TOKEN", "")


def resolve_target(context=None, server_key: str | None = None) -> BackendTarget:
    """The backend for a new job (``server_key`` None) or for an existing job recorded with ``server_key``."""
    prefs = preferences(context)
    timeout = float(prefs.timeout)
    override = env_override()
    if server_key not in (None, LOCAL):
        if override and override[0] == server_key.rstrip("/"):
            token = override[1]
        else:
            token = prefs.remote_token if prefs.remote_url.rstrip("/") == server_key.rstrip("/") else ""
            for server in getattr(prefs, "servers", ()):  # the batch servers' list (addon/servers.py)
                if server.url.strip().rstrip("/") == server_key.rstrip("/"):
                    token = server.token
            token = os.environ.get("SCAIL_TOKEN", token)
        check_online_access(server_key)
        return BackendTarget(server_key, token, server_key, timeout)
    if server_key is None and override:
        check_online_access(override[0])
        return BackendTarget(override[0], override[1], override[0], timeout)
    if server_key is None and prefs.backend == "REMOTE":
        url = prefs.remote_url.strip().rstrip("/")
        if not url:
            raise BackendUnavailable("no remote worker URL: set it in the add-on preferences (Backend: Remote)")
        check_online_access(url)
        return BackendTarget(url, prefs.remote_token, url, timeout)
    worker = LOCAL_WORKER.running()
    if worker is None:
        raise BackendUnavailable(LOCAL_WORKER.not_running_message())
    return BackendTarget(worker.url, worker.token, LOCAL, timeout)


def make_client(target: BackendTarget):
    # Imported on use: the add-on registers (and its panels draw) even before a backend is configured.
    from ..backend.client import WorkerClient

    # Few retries: a dead worker should turn into a message within seconds, not minutes.
    return WorkerClient(target.url, token=target.token, timeout=target.timeout, retries=3, backoff=0.5)


def find_backend(python_exe: str) -> str:
    """The folder holding the ``backend`` package in ``python_exe``'s environment (raises if it has none)."""
    probe = ("import importlib.util, os, backend; "
             "assert importlib.util.find_spec('backend.worker') is not None, 'backend.worker missing'; "
             "print(os.path.dirname(os.path.dirname(os.path.abspath(backend.__file__))))")
    try:
        # From a neutral folder, so the current directory cannot supply a ``backend`` package.
        result = subprocess.run([python_exe, "-c", probe], capture_output=True, text=True, timeout=60,
                                cwd=tempfile.gettempdir())
    except OSError as error:
        raise BackendUnavailable(f"cannot run the Python at {python_exe}: {error}") from None
    if result.returncode != 0 or not result.stdout.strip():
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise BackendUnavailable(f"the Python at {python_exe} has no SCAIL backend installed ({last}); install it "
                                 "there with pip install -e <scail-motion folder>, or pick another environment")
    return result.stdout.strip().splitlines()[-1]


class LocalWorkerManager:
    """The one local worker process of this Blender session, started from the preferences or on demand."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._worker = None  # backend.launcher.LocalWorker
        self.state = "stopped"  # stopped | starting | ready | failed
        self.message = ""
        self.health: dict = {}

    def running(self):
        with self._lock:
            return self._worker if self.state == "ready" else None

    def not_running_message(self) -> str:
        if self.state == "starting":
            return "the local worker is still starting (loading the model); try again when it is ready"
        if self.state == "failed":
            return f"the local worker failed to start: {self.message}"
        return "the local worker is not running: start it in the add-on preferences (Backend: Local)"

    def start(self, python_exe: str, checkpoint: str, data_dir: str, device: str, log_path: str,
              sam3_dir: str = ""):
        """Start and wait until ready (blocking; call from a thread in the UI). ``sam3_dir`` enables auto masks."""
        from ..backend.launcher import LocalWorker

        with self._lock:
            if self.state in {"starting", "ready"} and self._worker is not None:
                return self._worker
            self.state, self.message, self.health = "starting", "", {}
        try:
            backend_root = find_backend(python_exe)
            # The launcher puts this extension's folder first on the worker's PYTHONPATH; its backend/ holds
            # only the client and the launcher (a namespace package), so the full backend of the chosen
            # environment must be named explicitly or an editable install would be shadowed.
            path = os.pathsep.join(p for p in (backend_root, os.environ.get("PYTHONPATH", "")) if p)
            worker = LocalWorker(python_exe=python_exe, checkpoint=checkpoint, data_dir=data_dir,
                                 device=device, log_path=log_path, env={"PYTHONPATH": path},
                                 extra_args=["--sam3", sam3_dir] if sam3_dir else [])
            with self._lock:
                self._worker = worker
            worker.start()
        except Exception as error:  # noqa: BLE001 - any failure is shown to the user as is
            tail = [line for line in getattr(error, "log_tail", "").splitlines() if line.strip()][-3:]
            with self._lock:
                self.state, self._worker = "failed", None
                self.message = str(error) + (": " + " | ".join(tail) if tail else "")
            raise
        with self._lock:
            self.state, self.message = "ready", worker.url
        return worker

    def stop(self) -> None:
        with self._lock:
            worker, self._worker = self._worker, None
            self.state, self.message, self.health = "stopped", "", {}
        if worker is not None:
            worker.stop()

    def refresh_health(self) -> None:
        """Fetch GPU, memory and model state for the preferences' live status (network: call from a thread)."""
        worker = self.running()
        if worker is None:
            return
        try:
            health = make_client(BackendTarget(worker.url, worker.token, LOCAL, 5.0)).health()
        except Exception as error:  # noqa: BLE001 - a dead worker is reported, not raised
            with self._lock:
                if self._worker is worker and not worker.is_running():
                    self.state, self.message, self._worker = "failed", f"the worker exited: {error}", None
            return
        with self._lock:
            self.health = dict(health)


LOCAL_WORKER = LocalWorkerManager()
