"""Every reference and driving source becomes the right files and spec fields for the worker."""

from __future__ import annotations

import json
import os
import zipfile

import bpy
import numpy as np
import pytest
from addon_helpers import MEDIA, read_png

CLIP = MEDIA / "carphone_pristine.mp4"


def prepare(scene, pkg):
    job, task, warnings = pkg.addon.workflow.prepare_job(scene)
    assert not warnings  # the file is saved: no unsaved-file warning
    saved = json.load(open(os.path.join(task.output_dir, "submission.json")))
    assert saved == {"spec": task.spec, "files": task.files}
    return job, task


def test_video_file_with_in_out(scene, pkg, loopback):
    settings = scene.scail
    settings.driving_source, settings.driving_file = "FILE", str(CLIP)
    settings.driving_frame_in, settings.driving_frame_out = 5, 12
    settings.driving_mask_source, settings.mode = "AUTO", "replacement"
    job, task = prepare(scene, pkg)
    assert task.files["driving"] == str(CLIP)
    assert task.spec["frame_range"] == [4, 12] and task.spec["driving_mask"] == "auto"
    assert task.spec["size"] == "96x64" and task.spec["mode"] == "replacement"
    assert "steps" not in task.spec and "seed" not in task.spec  # the preset decides
    # Replacement: the reference mask is the character's colour on black.
    mask = read_png(task.files["reference_mask"])
    assert {tuple(c) for c in np.unique(mask.reshape(-1, 3), axis=0)} == {(0, 0, 0), (0, 0, 255)}
    assert job.server_url == "http://127.0.0.1:9" and job.output_dir.startswith("//scail/")


def test_movie_clip_and_vse_strip(scene, pkg, loopback):
    settings = scene.scail
    settings.driving_source = "MOVIECLIP"
    settings.driving_clip = bpy.data.movieclips.load(str(CLIP))
    _job, task = prepare(scene, pkg)
    assert os.path.samefile(task.files["driving"], CLIP) and "frame_range" not in task.spec
    strips = pkg.addon.compat.vse_strips(scene)
    strips.new_movie(name="Performance", filepath=str(CLIP), channel=1, frame_start=1)
    settings.driving_source, settings.driving_strip = "STRIP", "Performance"
    _job, task = prepare(scene, pkg)
    assert os.path.samefile(task.files["driving"], CLIP)
    settings.driving_strip = "Missing"
    with pytest.raises(pkg.addon.driving.DrivingInputError, match="no movie strip named 'Missing'"):
        pkg.addon.workflow.prepare_job(scene)


def test_image_sequence_is_zipped_with_fps(scene, pkg, loopback, tmp_path):
    folder = tmp_path / "seq"
    folder.mkdir()
    for number in range(3, 9):  # numbering need not start at 1
        pkg.addon.pngio.write_png(str(folder / f"shot_{number:03d}.png"), 32, 32, 3, bytes([number * 20]) * 32 * 32 * 3)
    settings = scene.scail
    settings.driving_source, settings.driving_sequence, settings.driving_sequence_fps = (
        "SEQUENCE", str(folder / "shot_004.png"), 12.0)
    settings.driving_frame_in, settings.driving_frame_out = 2, 4
    assert bpy.ops.scail.probe_driving() == {"FINISHED"}
    assert (settings.probed_frames, settings.probed_fps) == (5, 12.0)
    _job, task = prepare(scene, pkg)
    assert task.spec["fps"] == 12.0 and "frame_range" not in task.spec
    with zipfile.ZipFile(task.files["driving"]) as archive:
        names = archive.namelist()
        assert names == ["frame_0001.png", "frame_0002.png", "frame_0003.png"]
        assert archive.read(names[0]) == (folder / "shot_005.png").read_bytes()


def test_scene_animation_with_rendered_masks(scene, pkg, loopback):
    settings = scene.scail
    settings.driving_source, settings.driving_mask_source = "SCENE", "RENDER"
    settings.driving_frame_in, settings.driving_frame_out = 2, 4
    _job, task = prepare(scene, pkg)
    assert task.spec["fps"] == 24.0 and task.spec["driving_mask"] == "file"
    with zipfile.ZipFile(task.files["driving"]) as frames, zipfile.ZipFile(task.files["driving_mask"]) as masks:
        assert len(frames.namelist()) == len(masks.namelist()) == 3
        import io

        import imageio.v3 as iio

        mask = iio.imread(io.BytesIO(masks.read(masks.namelist()[0])))
        frame = iio.imread(io.BytesIO(frames.read(frames.namelist()[0])))
    assert mask.shape[:2] == frame.shape[:2] == (64, 96)
    # Animation: the driving mask is the character's colour on black.
    assert {tuple(c) for c in np.unique(mask.reshape(-1, 3), axis=0)} == {(0, 0, 0), (0, 0, 255)}


def test_external_reference_image(scene, pkg, loopback, tmp_path):
    settings = scene.scail
    settings.reference_source, settings.reference_image = "IMAGE", str(MEDIA / "astronaut.png")
    settings.driving_source, settings.driving_file = "FILE", str(CLIP)
    settings.size = "512p"
    _job, task = prepare(scene, pkg)
    assert task.spec["reference_mask"] == "auto" and "reference_mask" not in task.files  # no alpha: segment
    assert task.spec["size"] == "512x512"
    settings.reference_mask_image = str(tmp_path / "missing.png")
    with pytest.raises(pkg.addon.workflow.WorkflowError, match="reference mask not found"):
        pkg.addon.workflow.prepare_job(scene)


def test_extra_views_are_numbered_from_zero_in_list_order(scene, pkg, loopback):
    side = bpy.data.objects.new("SideCam", bpy.data.cameras.new("SideCam"))
    side.location, side.rotation_euler = (9.0, 0.0, 1.2), (1.5708, 0.0, 1.5708)
    scene.collection.objects.link(side)
    with pytest.raises(RuntimeError, match="no extra view has a camera"):
        bpy.ops.scail.render_extra_views()
    bpy.context.view_layer.objects.active = side
    assert bpy.ops.scail.extra_view_add() == {"FINISHED"}
    assert scene.scail.extra_views[0].camera == side
    assert bpy.ops.scail.render_extra_views() == {"FINISHED"}
    assert bpy.path.basename(scene.scail.extra_views[0].image_path) == "extra_0.png"
    scene.scail.driving_source, scene.scail.driving_file = "FILE", str(CLIP)
    _job, task = prepare(scene, pkg)
    assert {f for f in task.files if f.startswith("extra_")} == {"extra_reference_0", "extra_reference_mask_0"}
    extra = read_png(task.files["extra_reference_0"])
    assert extra.shape == (64, 96, 4) and (extra[..., 3] > 0).any()
    # A second view with a camera but no image yet is rendered on Generate and sent as number 1.
    second = scene.scail.extra_views.add()
    second.camera = scene.camera
    _job, task = prepare(scene, pkg)
    assert {f for f in task.files if f.startswith("extra_")} == {"extra_reference_0", "extra_reference_mask_0",
                                                                  "extra_reference_1", "extra_reference_mask_1"}
    assert bpy.path.basename(task.files["extra_reference_1"]) == "extra_1.png"
    # A view with neither a camera nor an image: the message names it.
    scene.scail.extra_views.add()
    with pytest.raises(pkg.addon.workflow.WorkflowError, match="extra view 2 has no camera and no image"):
        pkg.addon.workflow.prepare_job(scene)
    scene.scail.extra_view_index = 2
    assert bpy.ops.scail.extra_view_remove() == {"FINISHED"} and len(scene.scail.extra_views) == 2


def test_unsaved_file_goes_to_an_absolute_folder_with_a_warning(addon, pkg, loopback):
    bpy.ops.wm.read_homefile(use_empty=True)
    from addon_helpers import build_scene

    scene = build_scene()
    scene.scail.driving_source, scene.scail.driving_file = "FILE", str(CLIP)
    job, task, warnings = pkg.addon.workflow.prepare_job(scene)
    assert warnings and "not saved" in warnings[0]
    assert os.path.isabs(job.output_dir) and os.path.isdir(job.output_dir)
