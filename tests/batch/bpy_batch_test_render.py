"""Batch renders against two real local workers on a tiny checkpoint: shots from cameras, skipping unchanged
shots, moving and replacing results, and one bad shot among good ones."""

from __future__ import annotations

import json
import os
import zipfile

import bpy
import pytest
from addon_helpers import assert_worn, build_shapes_scene, key_x, read_png
from batch_helpers import backgrounds_of, job_ids, setup_shots, strip_of


def result_frames(job) -> list[str]:
    return sorted(os.listdir(os.path.join(bpy.path.abspath(job.output_dir), "frames")))


def test_three_cameras_three_jobs_then_only_changes_are_rendered(scene, workers):
    shots = setup_shots(scene, [("CamB", 1, 1), ("CamC", 11, 4), ("Camera", 21, 7)])
    assert [shot.vse_channel for shot in shots] == [2, 3, 4]  # one channel per camera
    before = job_ids(workers)

    assert bpy.ops.scail.batch_render() == {"FINISHED"}

    jobs = scene.scail.jobs
    assert len(jobs) == 3, [(job.label, job.status, job.message) for job in jobs]
    cameras = [shot.camera for shot in shots]
    for shot in shots:
        assert shot.status == "succeeded", shot.message
        job = next(job for job in jobs if job.key == shot.result_key)
        assert job.status == "succeeded" and job.imported and job.camera_name == shot.camera.name
        # The strip holds exactly the returned frames on the shot's channel, from the shot's first frame.
        strip = strip_of(scene, job.key)
        assert (strip.channel, strip.frame_final_start, strip.frame_final_duration) == \
            (shot.vse_channel, shot.frame_start, 3)
        assert [element.filename for element in strip.elements] == result_frames(job)
        # ... and behind the shot's own camera only, over the same frames.
        (background,) = backgrounds_of(shot.camera, job.key)
        assert (background.image_user.frame_start, background.image_user.frame_duration) == (shot.frame_start, 3)
        assert not any(backgrounds_of(other, job.key) for other in cameras if other != shot.camera)
        assert os.path.isfile(bpy.path.abspath(shot.reference_path))
        assert shot.seconds_prepare > 0 and shot.seconds_generate > 0 and shot.seconds_import >= 0
    assert len({shot.content_hash for shot in shots}) == 3  # three views, three different inputs
    assert scene.scail_batch.status == "done" and scene.scail_batch.progress == pytest.approx(1.0)

    # Both workers took part: the least busy one got each shot.
    after = job_ids(workers)
    new = [now - then for now, then in zip(after, before, strict=True)]
    assert all(new) and sum(map(len, new)) == 3
    assert {job.server_url for job in jobs} == {worker.url for worker in workers}

    # A second run submits nothing.
    keys = [job.key for job in jobs]
    assert bpy.ops.scail.batch_render() == {"FINISHED"}
    assert job_ids(workers) == after and [job.key for job in scene.scail.jobs] == keys
    assert [shot.status for shot in shots] == ["skipped"] * 3

    # A new output target moves the result without generating it again.
    shots[0].vse_channel = 9
    assert bpy.ops.scail.batch_render() == {"FINISHED"}
    assert job_ids(workers) == after
    assert strip_of(scene, shots[0].result_key).channel == 9 and "moved" in shots[0].message

    # A changed setting renders that shot again; its new result replaces the old one everywhere.
    old_key, old_hash = shots[1].result_key, shots[1].content_hash
    old_id = next(job.job_id for job in scene.scail.jobs if job.key == old_key)
    shots[1].prompt = "a robot dancing"
    assert bpy.ops.scail.batch_render() == {"FINISHED"}
    latest = job_ids(workers)
    assert sum(len(now - then) for now, then in zip(latest, after, strict=True)) == 1
    assert not any(old_id in ids for ids in latest)  # the replaced job is deleted on its worker too
    assert shots[1].status == "succeeded" and shots[1].result_key != old_key and shots[1].content_hash != old_hash
    assert strip_of(scene, old_key) is None and not backgrounds_of(shots[1].camera, old_key)
    assert old_key not in [job.key for job in scene.scail.jobs] and len(scene.scail.jobs) == 3
    assert strip_of(scene, shots[1].result_key).channel == 3
    assert [shots[0].status, shots[2].status] == ["skipped", "skipped"]

    # The shots, their hashes and results survive saving and reopening.
    saved = [(shot.name, shot.result_key, shot.content_hash) for shot in shots]
    path = bpy.data.filepath
    bpy.ops.wm.save_mainfile()
    bpy.ops.wm.open_mainfile(filepath=path)
    reopened = bpy.context.scene
    assert [(shot.name, shot.result_key, shot.content_hash) for shot in reopened.scail_batch.shots] == saved


def test_a_corrupt_clip_and_a_rejected_job_fail_clearly_while_the_others_land(scene, workers, broken_clip):
    shots = setup_shots(scene, [("CamB", 1, 1), ("CamC", 11, 1), ("Camera", 21, 1)])
    shots[1].driving_file = str(broken_clip)
    # A shot the worker refuses: automatic masks need a segmentation model these workers do not have.
    assert bpy.ops.scail.shot_duplicate(index=2) == {"FINISHED"}
    rejected = scene.scail_batch.shots[3]
    rejected.frame_start, rejected.frame_end, rejected.driving_mask_source = 31, 33, "AUTO"

    with pytest.raises(RuntimeError, match=r"shot CamC: could not decode the driving video .*broken\.mp4"):
        bpy.ops.scail.batch_render()

    broken = scene.scail_batch.shots["CamC"]
    assert broken.status == "failed" and not broken.job_key and not broken.result_key
    assert rejected.status == "failed" and "rejected" in rejected.message, rejected.message
    landed = [scene.scail_batch.shots[name] for name in ("CamB", "Camera")]
    for shot in landed:
        assert shot.status == "succeeded", shot.message
        strip = strip_of(scene, shot.result_key)
        assert (strip.channel, strip.frame_final_start, strip.frame_final_duration) == \
            (shot.vse_channel, shot.frame_start, 3)
        assert len(backgrounds_of(shot.camera, shot.result_key)) == 1
    assert scene.scail_batch.status == "failed" and "2 rendered" in scene.scail_batch.message
    # Nothing half-written for the broken shot: only the submitted jobs have folders.
    folders = set(os.listdir(bpy.path.abspath("//scail"))) - {"shots"}
    assert folders == {job.key for job in scene.scail.jobs}
    assert sorted(job.status for job in scene.scail.jobs) == ["failed", "succeeded", "succeeded"]


def test_shots_of_the_scene_animation_keep_each_characters_colour(addon, batch_prefs, pkg, tmp_path):
    """Two shots of a cube crossing a sphere, one from the front and one from behind: in each shot's job the
    reference mask and every driving frame give each object the colour its reference render assigned."""
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = build_shapes_scene([("Cube", "cube", -2.0, -1.5), ("Sphere", "sphere", 0.0, 0.0)])
    key_x(bpy.data.objects["Cube"], {1: -2.0, 2: -1.0, 3: 0.6, 4: 1.5, 5: 2.2, 6: -2.0})
    settings = scene.scail
    settings.driving_source, settings.driving_mask_source = "SCENE", "RENDER"
    settings.steps, settings.seed = 1, 7
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "crossing.blend"))
    shots = setup_shots(scene, [("Front", 1, 1), ("Back", 4, 1)])

    assert bpy.ops.scail.batch_render() == {"FINISHED"}

    # From the front the cube starts on the left; from behind, at frame 4, it is on the sphere's left too.
    for shot in shots:
        assert shot.status == "succeeded", shot.message
        job = next(job for job in scene.scail.jobs if job.key == shot.result_key)
        inputs = os.path.join(bpy.path.abspath(job.output_dir), "inputs")
        legend = json.load(open(os.path.join(inputs, "identities.json")))
        expected = {c["name"]: c["colour"] for c in legend["characters"]}
        assert expected == {"Cube": "blue", "Sphere": "red"}
        scene.frame_set(shot.frame_start)
        assert_worn(pkg, scene, shot.camera, read_png(os.path.join(inputs, "reference_mask.png")), expected,
                    tmp_path)
        with zipfile.ZipFile(os.path.join(inputs, "driving_mask.zip")) as archive:
            names = sorted(archive.namelist())
            archive.extractall(tmp_path / shot.name)
        assert len(names) == shot.frame_end - shot.frame_start + 1
        for frame, name in enumerate(names, start=shot.frame_start):
            scene.frame_set(frame)
            assert_worn(pkg, scene, shot.camera, read_png(tmp_path / shot.name / name), expected, tmp_path,
                        in_front={"Sphere": ["Cube"]} if shot.name == "Front" else {"Cube": ["Sphere"]})
    scene.frame_set(1)
