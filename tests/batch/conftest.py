"""Fixtures for the batch tests: the installed add-on, two real local workers on a tiny checkpoint, scenes.

``bpy`` must be imported once per process and never share one with torch, so the batch tests (``bpy_batch_*.py``)
run in their own pytest process, started by ``test_batch_suite.py`` with ``SCAIL_BATCH_SUITE=1``. Only that inner
process imports ``bpy`` here. The workers are ``scail-worker`` subprocesses started by ``backend.launcher``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MEDIA = REPO / "tests" / "data" / "media"
CLIP = MEDIA / "carphone_pristine.mp4"
INNER = os.environ.get("SCAIL_BATCH_SUITE") == "1"

if INNER:
    os.environ["BLENDER_USER_RESOURCES"] = tempfile.mkdtemp(prefix="scail_batch_user_")
    import bpy  # noqa: E402 - after BLENDER_USER_RESOURCES, once per process

    sys.path.insert(0, str(REPO / "tests" / "addon"))
    sys.path.insert(0, str(HERE))
    import addon_helpers  # noqa: E402 - the add-on suite's extension and scene builders
    from batch_helpers import add_camera  # noqa: E402

    @pytest.fixture(scope="session")
    def addon(tmp_path_factory) -> str:
        """The built extension zip installed into the temporary user repository and enabled."""
        zip_path = addon_helpers.build_extension(tmp_path_factory.mktemp("dist"))
        return addon_helpers.install_extension(zip_path)

    @pytest.fixture(scope="session")
    def pkg(addon):
        return addon_helpers.addon_package(addon)

    @pytest.fixture(scope="session")
    def tiny_checkpoint_dir(tmp_path_factory) -> Path:
        """A tiny untrained checkpoint written by the engine's own tool (in a separate process: torch)."""
        folder = tmp_path_factory.mktemp("tiny_ckpt") / "SCAIL-2"
        subprocess.run([sys.executable, "-m", "backend.scail2.tiny", str(folder)], cwd=REPO, check=True,
                       timeout=300, capture_output=True)
        return folder

    @pytest.fixture(scope="session")
    def workers(tiny_checkpoint_dir, tmp_path_factory):
        """Two local workers on the tiny checkpoint, started side by side."""
        from backend.launcher import LocalWorker

        started = [LocalWorker(sys.executable, tiny_checkpoint_dir, tmp_path_factory.mktemp(f"worker{n}"),
                               device="cpu", ready_timeout=300) for n in (1, 2)]
        threads = [threading.Thread(target=worker.start) for worker in started]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert all(worker.is_running() and worker.url for worker in started), [w.log_tail() for w in started]
        yield started
        for worker in started:
            worker.stop()

    @pytest.fixture(scope="session")
    def batch_prefs(addon, workers):
        """Preferences whose own backend is an unstarted local worker, with both workers as batch servers."""
        prefs = bpy.context.preferences.addons[addon].preferences
        prefs.backend, prefs.python_path, prefs.timeout = "LOCAL", "", 60.0
        prefs.servers.clear()
        for worker in workers:
            server = prefs.servers.add()
            server.url, server.token = worker.url, worker.token
        return prefs

    @pytest.fixture
    def scene(addon, batch_prefs, tmp_path):
        """A saved file with a character, three cameras ("Camera", "CamB", "CamC"), tiny sizes, one step,
        and a driving clip with whole-frame masks that new shots start from."""
        bpy.ops.wm.read_homefile(use_empty=True)
        scene = addon_helpers.build_scene(characters=1)
        add_camera(scene, "CamB", 3.0)
        add_camera(scene, "CamC", -3.0)
        settings = scene.scail
        settings.driving_source, settings.driving_file = "FILE", str(CLIP)
        settings.driving_mask_source = "FRAME"
        settings.steps, settings.seed = 1, 7
        bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "scene.blend"))
        return scene

    @pytest.fixture
    def broken_clip(tmp_path) -> Path:
        """The start of a real mp4, cut off: not decodable."""
        path = tmp_path / "broken.mp4"
        path.write_bytes(CLIP.read_bytes()[:20000])
        return path

    def pytest_sessionfinish(session, exitstatus):
        session.config._scail_status = int(exitstatus)

    def pytest_unconfigure(config):
        # Blender's own atexit teardown can hang after worker threads ran; the verdict is known here.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(getattr(config, "_scail_status", 0))
