"""Fixtures for the add-on tests.

``bpy`` must be imported once per process and must not share a process with torch, so the add-on tests
(``bpy_*.py``) run in their own pytest process: ``test_addon_suite.py`` starts it from the main suite with
``SCAIL_BPY_SUITE=1``. Only that inner process imports ``bpy`` here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INNER = os.environ.get("SCAIL_BPY_SUITE") == "1"

if INNER:
    USER_RESOURCES = tempfile.mkdtemp(prefix="scail_bl_user_")
    os.environ["BLENDER_USER_RESOURCES"] = USER_RESOURCES
    import bpy  # noqa: E402 - after BLENDER_USER_RESOURCES, once per process

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import addon_helpers  # noqa: E402

    @pytest.fixture(scope="session")
    def extension_zip(tmp_path_factory) -> Path:
        return addon_helpers.build_extension(tmp_path_factory.mktemp("dist"))

    @pytest.fixture(scope="session")
    def addon(extension_zip) -> str:
        """The built zip installed into the temporary user repository and enabled."""
        module = addon_helpers.install_extension(extension_zip)
        yield module
        from addon_helpers import addon_package

        addon_package(module).addon.connection.LOCAL_WORKER.stop()

    @pytest.fixture
    def pkg(addon):
        """The installed add-on's package (``bl_ext.user_default.scail_motion``)."""
        return addon_helpers.addon_package(addon)

    @pytest.fixture
    def scene(addon, tmp_path):
        """An empty file with a character (two parts), a camera and a light, saved in ``tmp_path``."""
        bpy.ops.wm.read_homefile(use_empty=True)
        addon_helpers.build_scene(characters=1)
        bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "scene.blend"))
        return bpy.context.scene

    @pytest.fixture(scope="session")
    def tiny_checkpoint_dir(tmp_path_factory) -> Path:
        """A tiny untrained checkpoint written by the engine's own tool (in a separate process: torch)."""
        folder = tmp_path_factory.mktemp("tiny_ckpt")
        python = os.environ.get("SCAIL_TEST_WORKER_PYTHON") or str(addon_helpers.backend_python())
        subprocess.run([python, "-m", "backend.scail2.tiny", str(folder)],
                       cwd=REPO, check=True, timeout=300, capture_output=True)
        return folder

    @pytest.fixture(scope="session")
    def local_worker(addon, tiny_checkpoint_dir, tmp_path_factory):
        """The add-on's own local worker on the tiny checkpoint, started through its preferences and operator.

        The worker runs with this environment's Python, where ``make setup`` installed the backend, unless
        ``SCAIL_TEST_WORKER_PYTHON`` names another (e.g. when this suite runs under an older ``bpy``).
        """
        prefs = bpy.context.preferences.addons[addon].preferences
        prefs.backend = "LOCAL"
        prefs.python_path = os.environ.get("SCAIL_TEST_WORKER_PYTHON") or sys.executable
        prefs.checkpoint_dir = str(tiny_checkpoint_dir)
        prefs.device = "cpu"
        prefs.data_dir = str(tmp_path_factory.mktemp("worker"))
        prefs.timeout = 60.0
        assert bpy.ops.scail.local_worker_start() == {"FINISHED"}
        yield prefs
        bpy.ops.scail.local_worker_stop()

    @pytest.fixture
    def remote_prefs(addon):
        """Preferences switched to a remote worker for one test, then back."""
        prefs = bpy.context.preferences.addons[addon].preferences
        saved = (prefs.backend, prefs.remote_url, prefs.remote_token, bpy.context.preferences.system.use_online_access)
        prefs.backend = "REMOTE"
        yield prefs
        prefs.backend, prefs.remote_url, prefs.remote_token = saved[:3]
        bpy.context.preferences.system.use_online_access = saved[3]

    @pytest.fixture
    def loopback(remote_prefs):
        """A worker address that needs no running worker: preparing a job never contacts it."""
        remote_prefs.remote_url = "http://127.0.0.1:9"
        return remote_prefs

    def pytest_sessionfinish(session, exitstatus):
        session.config._scail_status = int(exitstatus)

    def pytest_unconfigure(config):
        # Blender's own atexit teardown can hang or crash after long sessions; the verdict is known here.
        import shutil

        shutil.rmtree(USER_RESOURCES, ignore_errors=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(getattr(config, "_scail_status", 0))
