"""The shot list without rendering: creating shots from cameras and markers, editing the list, the panel, the
content hash and the choice of worker."""

from __future__ import annotations

import struct
import zlib

import bpy
import pytest
from addon_helpers import StubLayout


def names(scene) -> list[str]:
    return [shot.name for shot in scene.scail_batch.shots]


def test_shots_from_markers_and_list_editing(scene):
    cameras = bpy.data.objects
    scene.frame_end = 30
    for name, frame, camera in (("Intro", 1, "CamB"), ("Unbound", 5, None), ("Wide", 10, "Camera")):
        marker = scene.timeline_markers.new(name, frame=frame)
        marker.camera = cameras[camera] if camera else None
    assert bpy.ops.scail.shot_add_from_markers() == {"FINISHED"}
    shots = scene.scail_batch.shots
    assert [(s.name, s.camera.name, s.frame_start, s.frame_end, s.vse_channel) for s in shots] == \
        [("Intro", "CamB", 1, 9, 2), ("Wide", "Camera", 10, 30, 2)]  # back to back on one channel
    assert shots[0].driving_file == scene.scail.driving_file and shots[0].driving_mask_source == "FRAME"

    assert bpy.ops.scail.shot_duplicate(index=0) == {"FINISHED"}
    assert names(scene) == ["Intro", "Intro.001", "Wide"]
    copy = shots["Intro.001"]
    assert (copy.camera, copy.frame_start, copy.frame_end) == (shots["Intro"].camera, 1, 9)
    assert copy.uid != shots["Intro"].uid and not copy.status and not copy.content_hash

    scene.scail_batch.shot_index = 2
    assert bpy.ops.scail.shot_move(direction="UP") == {"FINISHED"}
    assert names(scene) == ["Intro", "Wide", "Intro.001"] and scene.scail_batch.shot_index == 1
    assert bpy.ops.scail.shot_move(index=0, direction="UP") == {"CANCELLED"}  # already first

    assert bpy.ops.scail.shot_enable(index=1, enable=False) == {"FINISHED"}
    assert [shot.enabled for shot in shots] == [True, False, True]
    assert bpy.ops.scail.shot_enable(all=True, enable=False) == {"FINISHED"}
    with pytest.raises(RuntimeError, match="no enabled shot"):
        bpy.ops.scail.batch_render()
    with pytest.raises(RuntimeError, match="no shot named 'Nope'"):
        bpy.ops.scail.batch_render(shots="Nope")

    assert bpy.ops.scail.shot_remove(index=0) == {"FINISHED"}
    assert names(scene) == ["Wide", "Intro.001"]
    for obj in scene.objects:
        obj.select_set(False)
    with pytest.raises(RuntimeError, match="select one or more cameras"):
        bpy.ops.scail.shot_add_from_cameras()


def test_a_shot_overrides_the_scenes_colour_anchoring(scene, pkg):
    assert scene.scail.color_anchor == "AUTO"
    assert bpy.ops.scail.shot_add() == {"FINISHED"}
    shot = scene.scail_batch.shots[0]
    shot.camera = scene.camera
    shots = pkg.addon.shots
    for choice, applied in (("SCENE", "AUTO"), ("OFF", "OFF"), ("ON", "ON")):
        shot.color_anchor = choice
        with shots.shot_settings(shots.input_overrides(scene, shot)):
            assert scene.scail.color_anchor == applied, choice
        assert scene.scail.color_anchor == "AUTO"  # the panel's value comes back


def test_a_shot_without_camera_fails_before_rendering(scene):
    assert bpy.ops.scail.shot_add() == {"FINISHED"}
    shot = scene.scail_batch.shots[0]
    shot.camera = None
    with pytest.raises(RuntimeError, match="has no camera"):
        bpy.ops.scail.batch_render()
    assert shot.status == "failed" and not scene.scail.jobs


def test_panel_draws_in_every_state(scene, pkg):
    assert bpy.ops.scail.shot_add() == {"FINISHED"}
    shot = scene.scail_batch.shots[0]
    panel, item_list = bpy.types.SCAIL_PT_shots, bpy.types.SCAIL_UL_shots
    for status, source in (("", "FILE"), ("running", "SCENE"), ("failed", "SEQUENCE"), ("skipped", "STRIP")):
        shot.status, shot.driving_source, shot.progress = status, source, 0.5
        shot.message = "the worker rejected the job" if status == "failed" else ""
        scene.scail_batch.status, scene.scail_batch.message = ("failed", "0 rendered") if status else ("", "")
        calls: list = []
        panel.draw(type("PanelStub", (), {"layout": StubLayout(calls)})(), bpy.context)
        item_list.draw_item(None, bpy.context, StubLayout(calls), scene.scail_batch, shot, 0, None, "", 0)
        assert ("operator", "scail.batch_render") in calls and ("template_list", "SCAIL_UL_shots") in calls
    calls = []
    pkg.addon.servers.draw_servers(StubLayout(calls), bpy.context.preferences.addons[pkg.__name__].preferences)
    assert ("operator", "scail.server_add") in calls and ("prop", "token") in calls


def test_content_hash_ignores_render_stamps(pkg, tmp_path):
    """Blender writes the render time into PNG text chunks; the same pixels must hash the same."""
    batch, pngio = pkg.addon.batch, pkg.addon.pngio
    png = pngio.encode_png(2, 1, 3, bytes([255, 0, 0, 0, 0, 255]))
    text = b"RenderTime\x0000:01.20"
    chunk = struct.pack(">I", len(text)) + b"tEXt" + text + struct.pack(">I", zlib.crc32(b"tEXt" + text))
    stamped = png[:-12] + chunk + png[-12:]  # before IEND
    (tmp_path / "a.png").write_bytes(png)
    (tmp_path / "b.png").write_bytes(stamped)
    (tmp_path / "c.png").write_bytes(pngio.encode_png(2, 1, 3, bytes([255, 0, 0, 0, 0, 254])))
    spec = {"mode": "animation", "steps": 1}
    digest = batch.content_hash(spec, {"reference": str(tmp_path / "a.png")})
    assert batch.content_hash(spec, {"reference": str(tmp_path / "b.png")}) == digest
    assert batch.content_hash(spec, {"reference": str(tmp_path / "c.png")}) != digest
    assert batch.content_hash({**spec, "steps": 2}, {"reference": str(tmp_path / "a.png")}) != digest


def test_least_busy_healthy_worker_is_chosen(pkg, workers):
    servers, connection = pkg.addon.servers, pkg.addon.connection
    targets = [connection.BackendTarget(w.url, w.token, w.url, 10.0) for w in workers]
    dead = connection.BackendTarget("http://127.0.0.1:9", "x", "http://127.0.0.1:9", 1.0)
    loads = [servers.measure(target) for target in (dead, *targets)]
    assert loads[0].load is None and "127.0.0.1:9" in loads[0].problem
    assert all(load.load is not None for load in loads[1:])
    # Queues being equal, uploads the workers have not counted yet decide, then this batch's share.
    assert servers.least_busy(loads, {targets[0].url: 1}, {}) == targets[1]
    assert servers.least_busy(loads, {}, {targets[0].url: 2, targets[1].url: 1}) == targets[1]
    wrong_token = servers.measure(connection.BackendTarget(workers[0].url, "wrong", workers[0].url, 5.0))
    assert wrong_token.load is None and "refused the token" in wrong_token.problem
    with pytest.raises(connection.BackendUnavailable, match="no healthy worker"):
        servers.least_busy([loads[0], wrong_token], {}, {})


def test_ui_batch_is_stepped_by_a_timer(scene, pkg, workers):
    """In the UI the batch runs from a timer, one step at a time; here the timer's function is called directly
    because background mode has no event loop."""
    batch = pkg.addon.batch
    assert bpy.ops.scail.shot_add() == {"FINISHED"}
    assert bpy.ops.scail.shot_duplicate() == {"FINISHED"}
    for shot in scene.scail_batch.shots:
        shot.camera = None  # fails at once, before any render: the stepping is what is tested
    run = batch.start_in_background(scene, None, bpy.context)
    assert batch.active_run() is run and bpy.types.SCAIL_OT_batch_cancel.poll(bpy.context)
    with pytest.raises(batch.BatchError, match="already running"):
        batch.start_in_background(scene, None, bpy.context)
    ticks = 0
    while batch._tick() is not None:
        ticks += 1
        assert ticks < 50
    assert ticks >= 2  # one shot per step
    assert [shot.status for shot in scene.scail_batch.shots] == ["failed", "failed"]
    assert scene.scail_batch.status == "failed" and run.finished
    assert not bpy.types.SCAIL_OT_batch_cancel.poll(bpy.context)
    batch.stop_active()
