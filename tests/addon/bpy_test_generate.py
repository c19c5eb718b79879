"""Generate against a real local worker subprocess on a tiny checkpoint, and everything around a job."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from pathlib import Path

import bpy
import numpy as np
import pytest
from addon_helpers import MEDIA, add_camera_at, build_shapes_scene, colour_pixels, read_png
from PIL import Image

CLIP = MEDIA / "carphone_pristine.mp4"


def setup_generation(scene, frames: int = 5) -> None:
    settings = scene.scail
    settings.driving_source = "FILE"
    settings.driving_file = str(CLIP)
    settings.driving_frame_in, settings.driving_frame_out = 1, frames
    settings.driving_mask_source = "FRAME"
    settings.show_advanced = True
    settings.steps = 1
    settings.seed = 7
    settings.vse_channel, settings.vse_frame_start = 3, 10
    assert bpy.ops.scail.probe_driving() == {"FINISHED"}


def submit_blocker(scene, pkg) -> str:
    """Queue a longer job straight on the worker, so the next job waits behind it (the worker runs one at a time)."""
    _job, task, _warnings = pkg.addon.workflow.prepare_job(scene)
    scene.scail.jobs.remove(len(scene.scail.jobs) - 1)
    spec = dict(task.spec, frame_range=[0, 17], size="256x192")
    return pkg.addon.connection.make_client(task.target).submit(spec, task.files)


def test_generate_imports_exactly_the_returned_frames(scene, local_worker, pkg, tmp_path):
    setup_generation(scene)
    assert bpy.ops.scail.generate() == {"FINISHED"}
    job = scene.scail.jobs[-1]
    assert job.status == "succeeded", job.message
    assert job.imported and job.frame_count == 5
    job_dir = bpy.path.abspath(job.output_dir)
    assert job.output_dir.startswith("//scail/")
    manifest = json.load(open(os.path.join(job_dir, "manifest.json")))
    returned = sorted(f["name"].split("/")[-1] for f in manifest["files"] if f["kind"] == "frame")
    assert len(returned) == 5 and os.path.isfile(os.path.join(job_dir, "result.mp4"))
    # The strip holds exactly the returned frames, in order, at the chosen channel and start.
    strip = pkg.addon.compat.vse_strips(scene, all_levels=True)[f"SCAIL {job.key}"]
    assert [e.filename for e in strip.elements] == returned
    assert os.path.samefile(bpy.path.abspath(strip.directory), os.path.join(job_dir, "frames"))
    assert (strip.channel, strip.frame_final_start, strip.frame_final_duration) == (3, 10, 5)
    # ... at the result's fps, which is the driving clip's.
    assert job.fps == pytest.approx(manifest["fps"]) == pytest.approx(scene.scail.probed_fps, rel=1e-4)
    assert scene.render.fps / scene.render.fps_base == pytest.approx(manifest["fps"], rel=1e-4)
    # The camera background shows frame i of the result at scene frame 10 + i, and nothing outside.
    background = next(b for b in scene.camera.data.background_images if b.image is not None)
    user = background.image_user
    assert (user.frame_start, user.frame_duration) == (10, 5)
    for index, name in enumerate(returned):
        scene.frame_set(10 + index)
        assert os.path.basename(background.image.filepath_from_user(image_user=user)) == name
    assert scene.camera.data.show_background_images


def test_results_stay_linked_when_the_project_folder_moves(scene, local_worker, pkg, tmp_path):
    setup_generation(scene, frames=3)
    assert bpy.ops.scail.generate() == {"FINISHED"}
    job = scene.scail.jobs[-1]
    name, folder = f"SCAIL {job.key}", job.output_dir.removeprefix("//")
    strip = pkg.addon.compat.vse_strips(scene, all_levels=True)[name]
    assert strip.directory.startswith("//scail/"), strip.directory
    assert bpy.data.images[name].filepath.startswith("//scail/"), bpy.data.images[name].filepath
    bpy.ops.wm.save_mainfile()
    bpy.ops.wm.read_homefile(use_empty=True)
    moved = tmp_path.with_name(tmp_path.name + "_moved")
    shutil.move(tmp_path, moved)
    try:
        bpy.ops.wm.open_mainfile(filepath=str(moved / "scene.blend"))
        scene = bpy.context.scene
        strip = pkg.addon.compat.vse_strips(scene, all_levels=True)[name]
        frames = moved / folder / "frames"
        assert os.path.samefile(bpy.path.abspath(strip.directory), frames)
        assert all((frames / element.filename).is_file() for element in strip.elements)
        background = next(b for b in scene.camera.data.background_images if b.image is not None)
        assert os.path.samefile(os.path.dirname(bpy.path.abspath(background.image.filepath)), frames)
    finally:
        bpy.ops.wm.read_homefile(use_empty=True)
        shutil.move(moved, tmp_path)


def test_reopening_restores_the_job_list(scene, local_worker, pkg):
    setup_generation(scene, frames=3)
    assert bpy.ops.scail.generate() == {"FINISHED"}
    saved = [(j.key, j.job_id, j.status, j.output_dir) for j in scene.scail.jobs]
    path = bpy.data.filepath
    bpy.ops.wm.save_mainfile()
    bpy.ops.wm.read_homefile(use_empty=True)
    assert not bpy.context.scene.scail.jobs
    bpy.ops.wm.open_mainfile(filepath=path)
    scene = bpy.context.scene
    assert [(j.key, j.job_id, j.status, j.output_dir) for j in scene.scail.jobs] == saved
    assert f"SCAIL {saved[0][0]}" in pkg.addon.compat.vse_strips(scene, all_levels=True)


def test_results_that_finish_while_closed_are_fetched_on_load(scene, local_worker, pkg):
    setup_generation(scene, frames=3)
    submit_blocker(scene, pkg)
    assert bpy.ops.scail.generate(wait=False) == {"FINISHED"}
    job = scene.scail.jobs[-1]
    assert job.job_id and job.status in {"queued", "running"}
    key, job_id = job.key, job.job_id
    bpy.ops.wm.save_mainfile()
    path = bpy.data.filepath
    bpy.ops.wm.read_homefile(use_empty=True)
    # "Blender is closed" while the worker finishes the job.
    client = pkg.addon.connection.make_client(pkg.addon.connection.resolve_target())
    client.wait(job_id, poll_interval=0.5, timeout=600)
    bpy.ops.wm.open_mainfile(filepath=path)  # load_post reconnects
    scene = bpy.context.scene
    job = next(j for j in scene.scail.jobs if j.key == key)
    assert job.status == "succeeded" and job.imported, job.message
    assert f"SCAIL {key}" in pkg.addon.compat.vse_strips(scene, all_levels=True)


def test_deleted_output_folder_is_reported_and_downloaded_again(scene, local_worker, pkg):
    setup_generation(scene, frames=3)
    bpy.ops.scail.generate()
    job = scene.scail.jobs[-1]
    folder = bpy.path.abspath(job.output_dir)
    shutil.rmtree(folder)
    with pytest.raises(RuntimeError, match="does not exist"):
        bpy.ops.scail.job_open_folder()
    assert bpy.ops.scail.job_reimport() == {"FINISHED"}  # downloads it again from the worker
    assert job.imported and len(os.listdir(os.path.join(folder, "frames"))) == 3
    # Gone from disk and from the worker: a clear message, and no half folder left behind.
    shutil.rmtree(folder)
    connection = pkg.addon.connection
    connection.make_client(connection.resolve_target()).delete(job.job_id)
    with pytest.raises(RuntimeError, match="no longer has this job"):
        bpy.ops.scail.job_reimport()
    assert not os.path.isdir(os.path.join(folder, "frames"))


def test_cancel_stops_a_job(scene, local_worker, pkg):
    setup_generation(scene, frames=3)
    blocker = submit_blocker(scene, pkg)
    assert bpy.ops.scail.generate(wait=False) == {"FINISHED"}
    job = scene.scail.jobs[-1]
    assert job.status == "queued"
    assert bpy.ops.scail.cancel() == {"FINISHED"}
    deadline = time.monotonic() + 300
    while job.status not in {"canceled", "succeeded", "failed"} and time.monotonic() < deadline:
        time.sleep(0.5)
        bpy.ops.scail.jobs_refresh()
    assert job.status == "canceled", (job.status, job.message)
    assert not os.path.isdir(os.path.join(bpy.path.abspath(job.output_dir), "frames"))
    pkg.addon.connection.make_client(pkg.addon.connection.resolve_target()).cancel(blocker)


def test_delete_job_removes_everything(scene, local_worker, pkg):
    setup_generation(scene, frames=3)
    bpy.ops.scail.generate()
    job = scene.scail.jobs[-1]
    key, folder = job.key, bpy.path.abspath(job.output_dir)
    assert bpy.ops.scail.job_delete() == {"FINISHED"}
    assert not scene.scail.jobs and not os.path.exists(folder)
    assert f"SCAIL {key}" not in pkg.addon.compat.vse_strips(scene, all_levels=True)
    assert not [b for b in scene.camera.data.background_images if b.image is not None]


def test_worker_that_dies_mid_job(scene, local_worker, pkg):
    """The job ends in a clear message; nothing is imported or written half; a restarted worker resumes it."""
    setup_generation(scene, frames=9)
    scene.scail.steps = 6
    manager = pkg.addon.connection.LOCAL_WORKER
    worker = manager.running()

    client = worker.client()
    known = {j["id"] for j in client.list_jobs(limit=200)["jobs"]}

    def kill_when_running():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            jobs = client.list_jobs(limit=200)["jobs"]
            if any(j["status"] == "running" and j["id"] not in known for j in jobs):
                break
            time.sleep(0.05)
        worker.process.kill()

    threading.Thread(target=kill_when_running, daemon=True).start()
    with pytest.raises(RuntimeError, match="cannot reach the worker"):
        bpy.ops.scail.generate()
    job = scene.scail.jobs[-1]
    assert job.status == "disconnected"
    assert not os.path.isdir(os.path.join(bpy.path.abspath(job.output_dir), "frames"))
    assert f"SCAIL {job.key}" not in pkg.addon.compat.vse_strips(scene, all_levels=True)
    manager.stop()
    assert bpy.ops.scail.local_worker_start() == {"FINISHED"}
    bpy.ops.scail.jobs_refresh()
    deadline = time.monotonic() + 600
    while job.status != "succeeded" and time.monotonic() < deadline:
        time.sleep(1.0)
        bpy.ops.scail.jobs_refresh()
    assert job.status == "succeeded" and job.imported, job.message


@pytest.mark.parametrize("views", [1, 2])
def test_generate_sends_extra_views_to_the_engine_in_order(addon, local_worker, pkg, tmp_path, views):
    """Extra views reach the worker as extra_reference_0, 1 ... in the panel's order, and the engine gets them.

    The worker keeps each upload under its field name (``DATA/jobs/<id>/inputs/``) and rebuilds the engine's
    request from those files in index order; its "job finished" log line counts the extra references the
    engine received and the digest of each one's pixels, in the order the engine got them."""
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = build_shapes_scene([("Cube", "cube", -1.5, 0.0), ("Sphere", "sphere", 1.5, 0.0)])
    add_camera_at(scene, "Side", (9.0, 0.0, 1.2), (90, 0, 90))
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "views.blend"))
    settings = scene.scail
    for name in ("Back", "Side")[:views]:
        settings.extra_views.add().camera = bpy.data.objects[name]
    settings.driving_source, settings.driving_mask_source = "SCENE", "RENDER"
    settings.driving_frame_in, settings.driving_frame_out = 1, 5
    settings.show_advanced, settings.steps, settings.seed = True, 1, 7

    assert bpy.ops.scail.generate() == {"FINISHED"}
    job = settings.jobs[-1]
    assert job.status == "succeeded" and job.imported and job.frame_count == 5, job.message

    stored = Path(bpy.path.abspath(local_worker.data_dir)) / "jobs" / job.job_id / "inputs"
    assert sorted(p.name for p in stored.iterdir() if p.name.startswith("extra_")) == sorted(
        f"extra_reference_{kind}{i}.png" for i in range(views) for kind in ("", "mask_"))
    inputs = Path(bpy.path.abspath(job.output_dir)) / "inputs"
    for index, view in enumerate(settings.extra_views):
        rendered = Path(bpy.path.abspath(view.image_path))
        assert rendered.name == f"extra_{index}.png"
        assert (stored / f"extra_reference_{index}.png").read_bytes() == rendered.read_bytes()
        assert (stored / f"extra_reference_mask_{index}.png").read_bytes() == \
            (inputs / f"extra_reference_mask_{index}.png").read_bytes()
    # The views are told apart: from behind the sphere is on the left, and still red.
    back = read_png(stored / "extra_reference_mask_0.png")
    centre = {colour: colour_pixels(back, colour).nonzero()[1].mean() for colour in ("blue", "red")}
    assert centre["red"] < centre["blue"]
    if views == 2:
        assert (stored / "extra_reference_0.png").read_bytes() != (stored / "extra_reference_1.png").read_bytes()

    log = Path(bpy.path.abspath(local_worker.data_dir)) / "worker.log"
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    queued = [line for line in lines if line.get("event") == "job queued" and line.get("job") == job.job_id]
    assert [f for f in queued[0]["files"] if f.startswith("extra_reference_")] == sorted(
        f"extra_reference_{kind}{i}" for i in range(views) for kind in ("", "mask_"))
    finished = [line for line in lines if line.get("event") == "job finished" and line.get("job") == job.job_id]
    assert finished[-1]["status"] == "succeeded" and finished[-1]["settings"]["extra_references"] == views
    assert finished[-1]["settings"]["extra_reference_digests"] == [
        pixel_digest(stored / f"extra_reference_{index}.png") for index in range(views)]


def pixel_digest(path: Path) -> str:
    """The worker's digest of a decoded image, recomputed here with PIL (torch may not load beside bpy)."""
    pixels = np.ascontiguousarray(np.asarray(Image.open(path)))
    return hashlib.sha256(f"{pixels.shape}{pixels.dtype}".encode() + pixels.tobytes()).hexdigest()[:16]
