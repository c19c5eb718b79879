"""Reference renders, exact masks, identity colours, driving-clip probing and the scene-animation driver."""

from __future__ import annotations

import os

import bpy
import numpy as np
import pytest
from addon_helpers import MEDIA, build_scene, read_png

PALETTE = {(0, 0, 255), (255, 0, 0), (0, 255, 0), (255, 0, 255), (0, 255, 255), (255, 255, 0)}


def colours(image: np.ndarray) -> set[tuple[int, int, int]]:
    return {tuple(int(v) for v in c) for c in np.unique(image[..., :3].reshape(-1, 3), axis=0)}


def test_reference_mask_equals_alpha(scene, pkg, capfd):
    scene.scail.character_collection = None  # one character: the mask comes from the render's alpha
    assert bpy.ops.scail.render_reference() == {"FINISHED"}
    assert "Reference rendered 96x64" in capfd.readouterr().out
    path = bpy.path.abspath(scene.scail.reference_path)
    assert path.startswith(os.path.dirname(bpy.data.filepath) + os.sep + "scail")
    reference = read_png(path)
    assert reference.shape == (64, 96, 4)
    alpha = reference[..., 3]
    assert (alpha == 0).any() and (alpha == 255).any()
    for mode, background in (("animation", (255, 255, 255)), ("replacement", (0, 0, 0))):
        out = os.path.join(os.path.dirname(path), f"mask_{mode}.png")
        pkg.addon.render.write_mask(path, "", pkg.backend.palette.mask_background(mode, "reference"), out)
        mask = read_png(out)
        assert mask.shape == (64, 96, 3)
        on = np.all(mask == (0, 0, 255), axis=-1)
        assert np.array_equal(on, alpha >= 128)
        assert np.all(mask[~on] == background)


def test_render_state_is_restored(scene):
    render = scene.render
    before = (render.engine, render.resolution_x, render.film_transparent, render.filepath,
              render.image_settings.file_format, scene.view_settings.view_transform)
    assert bpy.ops.scail.render_reference() == {"FINISHED"}
    after = (render.engine, render.resolution_x, render.film_transparent, render.filepath,
             render.image_settings.file_format, scene.view_settings.view_transform)
    assert before == after
    assert all(o.color[:] == (1.0, 1.0, 1.0, 1.0) for o in scene.objects if o.type == "MESH")


def test_multi_character_identity_masks_hold_only_palette_colours(addon, tmp_path, pkg):
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = build_scene(characters=3, resolution=(320, 160))
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "three.blend"))
    scene.scail.size_short_side = 96
    assert bpy.ops.scail.render_reference() == {"FINISHED"}
    ids = read_png(bpy.path.abspath(scene.scail.reference_ids_path))
    visible = ids[..., 3] > 0
    assert set(np.unique(ids[..., 3])) <= {0, 255}  # no anti-aliasing: every pixel is one identity or none
    found = colours(ids[visible])
    assert found == {(0, 0, 255), (255, 0, 0), (0, 255, 0)}
    # Identities go left to right: blue is the leftmost character, then red, then green.
    centres = {c: np.argwhere(np.all(ids[..., :3] == c, axis=-1) & visible)[:, 1].mean() for c in found}
    assert centres[(0, 0, 255)] < centres[(255, 0, 0)] < centres[(0, 255, 0)]
    mask_path = str(tmp_path / "mask.png")
    pkg.addon.render.write_mask("", bpy.path.abspath(scene.scail.reference_ids_path), (255, 255, 255), mask_path)
    assert colours(read_png(mask_path)) <= PALETTE | {(255, 255, 255)}


@pytest.mark.parametrize("name", ["carphone_pristine.mp4", "bigbuckbunny.mp4"])
def test_probe_real_driving_clips(scene, name, capfd):
    path = MEDIA / name
    expected = ffprobe(path)
    scene.scail.driving_source = "FILE"
    scene.scail.driving_file = str(path)
    assert bpy.ops.scail.probe_driving() == {"FINISHED"}
    settings = scene.scail
    assert settings.probed_frames == expected["frames"]
    assert settings.probed_fps == pytest.approx(expected["fps"], rel=1e-3)
    assert (settings.probed_width, settings.probed_height) == expected["size"]
    assert f"{expected['frames']} frames" in capfd.readouterr().out


def ffprobe(path) -> dict:
    """Frame count, fps and size by decoding with the ffmpeg binary from imageio-ffmpeg."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    frames = sum(1 for _ in reader)
    return {"frames": frames, "fps": meta["fps"], "size": tuple(meta["size"])}


def test_probe_errors_are_clear(scene):
    scene.scail.driving_file = "/nonexistent/clip.mp4"
    with pytest.raises(RuntimeError, match="driving video not found: /nonexistent/clip.mp4"):
        bpy.ops.scail.probe_driving()
    not_video = os.path.join(os.path.dirname(bpy.data.filepath), "notes.mp4")
    with open(not_video, "w") as handle:
        handle.write("this is not a video")
    scene.scail.driving_file = not_video
    with pytest.raises(RuntimeError, match="notes.mp4"):
        bpy.ops.scail.probe_driving()


def test_scene_animation_renders_with_exact_identity_masks(scene, pkg, tmp_path):
    body = bpy.data.objects["Char1"]
    body.location.x = -1.0
    body.keyframe_insert("location", frame=1)
    body.location.x = 1.0
    body.keyframe_insert("location", frame=4)
    animation = pkg.addon.render.render_animation(
        scene, None, "WORKBENCH", (96, 64), 1, 4, str(tmp_path / "drv"),
        characters=pkg.addon.workflow.job_characters(scene))
    assert animation.fps == 24.0 and len(animation.frames) == 4 and len(animation.identity_frames) == 4
    xs = []
    for frame, ids in zip(animation.frames, animation.identity_frames, strict=True):
        beauty, identity = read_png(frame), read_png(ids)
        assert beauty.shape == (64, 96, 4)
        assert colours(identity[identity[..., 3] > 0]) == {(0, 0, 255)}
        xs.append(np.argwhere(identity[..., 3] > 0)[:, 1].mean())
    assert xs == sorted(xs) and xs[-1] - xs[0] > 10  # the character moves right across the frames
    zip_path = str(tmp_path / "mask.zip")
    pkg.addon.driving.zip_flattened_masks(animation.identity_frames, (0, 0, 0), zip_path)
    import zipfile

    with zipfile.ZipFile(zip_path) as archive:
        assert archive.namelist() == [f"frame_{i:04d}.png" for i in range(1, 5)]
    assert scene.frame_current == 1


def test_cycles_reference_has_an_alpha_mask(scene):
    scene.scail.engine, scene.scail.character_collection = "CYCLES", None
    scene.cycles.samples = 4
    assert bpy.ops.scail.render_reference() == {"FINISHED"}
    alpha = read_png(bpy.path.abspath(scene.scail.reference_path))[..., 3]
    assert (alpha == 0).mean() > 0.3 and (alpha == 255).any()
    assert scene.render.engine != "CYCLES" or scene.scail.engine == "SCENE"  # the scene's engine is restored
