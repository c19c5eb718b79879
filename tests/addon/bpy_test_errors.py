"""Failures end in a clear message, with nothing written half: unreachable, wrong token, offline, env override."""

from __future__ import annotations

import os
import socket
import threading

import bpy
import pytest
from addon_helpers import MEDIA


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ready_to_generate(scene) -> None:
    settings = scene.scail
    settings.driving_source = "FILE"
    settings.driving_file = str(MEDIA / "carphone_pristine.mp4")
    settings.driving_frame_in, settings.driving_frame_out = 1, 3
    settings.driving_mask_source = "FRAME"
    settings.show_advanced, settings.steps = True, 1


def scail_dirs() -> set[str]:
    root = bpy.path.abspath("//scail")
    return set(os.listdir(root)) if os.path.isdir(root) else set()


def test_unreachable_server(scene, remote_prefs):
    ready_to_generate(scene)
    remote_prefs.remote_url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RuntimeError, match="cannot reach the worker at http://127.0.0.1:.*is it running"):
        bpy.ops.scail.generate()
    job = scene.scail.jobs[-1]
    assert job.status == "disconnected" and not job.job_id and not job.imported
    assert "Refresh submits it again" in job.message
    with pytest.raises(RuntimeError, match="cannot reach the worker"):
        bpy.ops.scail.jobs_refresh()
    with pytest.raises(RuntimeError, match="cannot reach the worker"):
        bpy.ops.scail.test_connection()


def test_offline_mode_blocks_remote_workers_before_anything_is_written(scene, remote_prefs):
    ready_to_generate(scene)
    bpy.context.preferences.system.use_online_access = False
    remote_prefs.remote_url = "http://192.0.2.10:8765"  # TEST-NET: never reached
    before = scail_dirs()
    with pytest.raises(RuntimeError, match="online access is disabled.*Allow Online Access"):
        bpy.ops.scail.generate()
    with pytest.raises(RuntimeError, match="online access is disabled"):
        bpy.ops.scail.test_connection()
    assert scail_dirs() == before and not scene.scail.jobs
    # Loopback stays allowed without online access: the local worker needs no permission.
    remote_prefs.remote_url = f"http://localhost:{free_port()}"
    with pytest.raises(RuntimeError, match="cannot reach the worker"):
        bpy.ops.scail.test_connection()


def test_remote_without_url(scene, remote_prefs):
    remote_prefs.remote_url = ""
    with pytest.raises(RuntimeError, match="no remote worker URL"):
        bpy.ops.scail.generate()


def test_local_worker_not_started(scene, addon, pkg):
    if pkg.addon.connection.LOCAL_WORKER.state == "ready":
        pytest.skip("the session's local worker is running")
    with pytest.raises(RuntimeError, match="local worker is not running"):
        bpy.ops.scail.generate()


def test_local_worker_with_missing_paths(addon, scene):
    prefs = bpy.context.preferences.addons[addon].preferences
    saved = prefs.python_path
    prefs.python_path = "/nonexistent/python"
    try:
        with pytest.raises(RuntimeError, match="Python interpreter not found: /nonexistent/python"):
            bpy.ops.scail.local_worker_start()
    finally:
        prefs.python_path = saved


def test_wrong_token(scene, local_worker, remote_prefs, pkg):
    ready_to_generate(scene)
    worker = pkg.addon.connection.LOCAL_WORKER.running()
    remote_prefs.remote_url, remote_prefs.remote_token = worker.url, "not-the-token"
    with pytest.raises(RuntimeError, match="refused the token: check the token in the add-on preferences"):
        bpy.ops.scail.generate()
    assert scene.scail.jobs[-1].status == "failed"
    with pytest.raises(RuntimeError, match="refused the token"):
        bpy.ops.scail.test_connection()
    remote_prefs.remote_token = worker.token
    assert bpy.ops.scail.test_connection() == {"FINISHED"}


def test_environment_overrides_preferences(scene, local_worker, remote_prefs, pkg, monkeypatch):
    worker = pkg.addon.connection.LOCAL_WORKER.running()
    remote_prefs.remote_url, remote_prefs.remote_token = "http://192.0.2.10:8765", "wrong"
    monkeypatch.setenv("SCAIL_BACKEND_URL", worker.url)
    monkeypatch.setenv("SCAIL_TOKEN", worker.token)
    assert bpy.ops.scail.test_connection() == {"FINISHED"}
    monkeypatch.setenv("SCAIL_TOKEN", "wrong")
    with pytest.raises(RuntimeError, match="check the token in the SCAIL_TOKEN environment variable"):
        bpy.ops.scail.test_connection()


def test_bad_settings_are_refused_by_name(scene, local_worker):
    ready_to_generate(scene)
    scene.scail.loras = "lightx2v=strong"
    with pytest.raises(RuntimeError, match="LoRAs: the strength of 'lightx2v' is not a number"):
        bpy.ops.scail.generate()
    scene.scail.loras = ""
    scene.scail.driving_frame_in, scene.scail.driving_frame_out = 50, 40
    with pytest.raises(RuntimeError, match="In/Out range 50-40 is empty"):
        bpy.ops.scail.generate()
    scene.scail.driving_frame_in, scene.scail.driving_frame_out = 1, 3
    scene.scail.driving_mask_source = "RENDER"
    with pytest.raises(RuntimeError, match="Mask: Render only exists for the scene's animation"):
        bpy.ops.scail.generate()
    assert not scene.scail.jobs


def test_threaded_path_keeps_blender_free(scene, local_worker, pkg):
    """The UI path: the network runs in a thread, the main thread only applies queued events."""
    ready_to_generate(scene)
    jobs = pkg.addon.jobs
    job, task, _warnings = pkg.addon.workflow.prepare_job(scene)
    events = []
    thread = threading.Thread(target=jobs.run_task, args=(task, lambda e: (events.append(e), jobs._events.put(e)),
                                                          threading.Event()))
    thread.start()
    ticks = 0
    while thread.is_alive():  # the main thread stays free while the job runs
        jobs.tick()
        ticks += 1
        thread.join(0.05)
    jobs.tick()
    assert ticks > 1 and job.status == "succeeded" and job.imported, job.message
    assert any(e.get("status") == "running" or e.get("status") == "queued" for e in events)
