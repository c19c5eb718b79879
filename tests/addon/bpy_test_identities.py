"""One identity colour per character for the whole job, on real renders: every view and every driving frame
gives each object the colour it was assigned, wherever it is on screen.

Each check compares a mask with the object's own pixels (the object rendered alone, see ``assert_worn``): the
pixels of a character's colour must be exactly the pixels where that character is seen.
"""

from __future__ import annotations

import json
import os
import zipfile

import bpy
import numpy as np
import pytest
from addon_helpers import (
    add_shape,
    assert_worn,
    build_shapes_scene,
    colour_pixels,
    draw_all_panels,
    key_x,
    read_png,
)

THREE = [("Cube", "cube", -2.0, 0.0), ("Sphere", "sphere", 0.0, 0.0), ("Cone", "cone", 2.0, 0.0)]
# The cube passes in front of the sphere (nearer the camera), leaves the frame at 6 and comes back at 7.
CUBE_PATH = {1: -2.0, 2: -1.0, 3: 0.6, 4: 1.5, 5: 2.2, 6: 6.0, 7: 2.2}


@pytest.fixture
def three(addon, tmp_path):
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = build_shapes_scene(THREE)
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "three.blend"))
    return scene


def test_three_characters_keep_their_colours_from_the_front_and_from_behind(three, pkg, loopback, tmp_path, capfd):
    scene = three
    expected = {"Cube": "blue", "Sphere": "red", "Cone": "green"}  # left to right in the main reference render
    assert bpy.ops.scail.render_reference() == {"FINISHED"}
    assert "(Cube blue, Sphere red, Cone green)" in capfd.readouterr().out
    view = scene.scail.extra_views.add()
    view.camera = bpy.data.objects["Back"]
    assert bpy.ops.scail.render_extra_views() == {"FINISHED"}
    assert os.path.basename(view.image_path) == "extra_0.png"

    front = read_png(bpy.path.abspath(scene.scail.reference_ids_path))
    counts = assert_worn(pkg, scene, scene.camera, front, expected, tmp_path)
    assert all(counts[name][colour] > 100 for name, colour in expected.items()), counts
    back = read_png(bpy.path.abspath(view.mask_path))
    # From behind the cone is on the left and the cube on the right: each keeps its colour all the same.
    columns = {name: np.argwhere(colour_pixels(back, colour))[:, 1].mean() for name, colour in expected.items()}
    assert columns["Cone"] < columns["Sphere"] < columns["Cube"]
    assert_worn(pkg, scene, bpy.data.objects["Back"], back, expected, tmp_path)

    # What Generate sends: the flattened masks, and which object wore which colour.
    scene.scail.driving_source, scene.scail.driving_mask_source = "SCENE", "RENDER"
    scene.scail.driving_frame_in, scene.scail.driving_frame_out = 1, 2
    _job, task, _warnings = pkg.addon.workflow.prepare_job(scene)
    assert_worn(pkg, scene, scene.camera, read_png(task.files["reference_mask"]), expected, tmp_path)
    assert_worn(pkg, scene, bpy.data.objects["Back"], read_png(task.files["extra_reference_mask_0"]), expected,
                tmp_path)
    legend = json.load(open(os.path.join(task.output_dir, "inputs", "identities.json")))
    assert {c["name"]: c["colour"] for c in legend["characters"]} == expected


def test_explicit_colours_win_show_in_the_panel_and_update_rendered_masks(three, pkg, loopback, tmp_path):
    scene = three
    cone, sphere = bpy.data.objects["Cone"], bpy.data.objects["Sphere"]
    cone.scail_identity = "BLUE"
    assert bpy.ops.scail.render_reference() == {"FINISHED"}
    # The cone is blue because its object says so; the others take the free colours left to right.
    expected = {"Cone": "blue", "Cube": "red", "Sphere": "green"}
    assert_worn(pkg, scene, scene.camera, read_png(bpy.path.abspath(scene.scail.reference_ids_path)), expected,
                tmp_path)
    labels = [text for kind, text in draw_all_panels(bpy.context) if kind == "label"]
    shown = set(zip(labels, labels[1:], strict=False))  # each row: the object, then its colour
    assert {("Cone", "Blue"), ("Cube", "Red (auto)"), ("Sphere", "Green (auto)")} <= shown, labels

    # Changed after the reference was rendered: the panel says so and Generate renders the pass again.
    sphere.scail_identity = "YELLOW"
    labels = [text for kind, text in draw_all_panels(bpy.context) if kind == "label"]
    assert ("Sphere", "Yellow") in set(zip(labels, labels[1:], strict=False))
    assert any("Changed since the reference render" in text for text in labels)
    scene.scail.driving_source, scene.scail.driving_mask_source = "SCENE", "RENDER"
    scene.scail.driving_frame_in, scene.scail.driving_frame_out = 1, 1
    _job, task, _warnings = pkg.addon.workflow.prepare_job(scene)
    expected = {"Cone": "blue", "Cube": "red", "Sphere": "yellow"}
    assert_worn(pkg, scene, scene.camera, read_png(task.files["reference_mask"]), expected, tmp_path)
    with zipfile.ZipFile(task.files["driving_mask"]) as archive:
        (frame,) = archive.namelist()
        archive.extract(frame, tmp_path)
    assert_worn(pkg, scene, scene.camera, read_png(tmp_path / frame), expected, tmp_path)
    assert pkg.addon.workflow.reference_legend(scene).colours == {"Cone": 0, "Cube": 1, "Sphere": 5}

    # More Auto characters than free colours: a clear error, nothing rendered.
    for number in range(4):
        add_shape(scene.scail.character_collection, f"Extra{number}", "cube", (-3.0 + number, 2.0, 1.0))
    before = os.stat(bpy.path.abspath(scene.scail.reference_path)).st_mtime_ns
    with pytest.raises(RuntimeError, match="5 Auto characters need a colour but only 4 of the palette.s 6 are free"):
        bpy.ops.scail.render_reference()
    assert os.stat(bpy.path.abspath(scene.scail.reference_path)).st_mtime_ns == before


def test_two_characters_crossing_keep_their_colours_in_every_frame(addon, pkg, loopback, tmp_path):
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = build_shapes_scene([("Cube", "cube", CUBE_PATH[1], -1.5), ("Sphere", "sphere", 0.0, 0.0)])
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "crossing.blend"))
    key_x(bpy.data.objects["Cube"], CUBE_PATH)
    scene.frame_set(1)
    settings = scene.scail
    settings.driving_source, settings.driving_mask_source = "SCENE", "RENDER"
    settings.driving_frame_in, settings.driving_frame_out = 1, 7
    _job, task, _warnings = pkg.addon.workflow.prepare_job(scene)

    expected = {"Cube": "blue", "Sphere": "red"}  # the cube starts on the left in the reference render
    with zipfile.ZipFile(task.files["driving_mask"]) as archive:
        names = archive.namelist()
        archive.extractall(tmp_path / "driving_mask")
    assert names == [f"frame_{n:04d}.png" for n in range(1, 8)]
    # Rendered masks previewed: the same colours, shown as the mask clip.
    assert bpy.ops.scail.preview_masks(what="DRIVING") == {"FINISHED"}
    assert "Cube blue, Sphere red" in settings.mask_preview_message
    preview = bpy.path.abspath(settings.mask_preview_dir)
    assert bpy.data.movieclips["SCAIL Driving Mask"].frame_duration == 7
    assert settings.driving_mask_source == "RENDER"  # Generate renders them again; nothing is switched

    overlapped = False
    for number, frame in enumerate(CUBE_PATH, start=1):
        scene.frame_set(frame)
        sent = read_png(tmp_path / "driving_mask" / f"frame_{number:04d}.png")
        counts = assert_worn(pkg, scene, scene.camera, sent, expected, tmp_path, in_front={"Sphere": ["Cube"]})
        shown = read_png(os.path.join(preview, "driving_mask", f"frame_{frame:05d}.png"))
        assert np.array_equal(shown, sent)
        in_frame = frame != 6
        assert (counts["Cube"]["blue"] > 0) == in_frame, (frame, counts)
        assert counts["Sphere"]["red"] > 0 and counts["Cube"]["red"] == 0
        overlapped |= counts["Sphere"]["blue"] > 0  # the cube hides part of the sphere
    assert overlapped
    scene.frame_set(1)
