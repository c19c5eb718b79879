"""Preview Masks against the add-on's real local worker: without SAM3 a clear message; with a tiny random SAM3
(``--sam3``, set through the preferences) the driving masks arrive as a Movie Clip of exactly the clip's In/Out
frames, become the driving mask file that Generate sends as it is (edits included), and the reference mask
becomes the external reference mask."""

from __future__ import annotations

import json
import os
import subprocess
import time
import zipfile

import addon_helpers
import bpy
import pytest
from addon_helpers import MEDIA, REPO, draw_all_panels

CLIP = MEDIA / "carphone_pristine.mp4"
IN, OUT = 2, 4  # clip frames 2..4: three masks, numbered by clip frame
PALETTE = {"blue": (0, 0, 255), "red": (255, 0, 0), "green": (0, 255, 0), "magenta": (255, 0, 255),
           "cyan": (0, 255, 255), "yellow": (255, 255, 0)}  # SCAIL-2's identity colours, by the names SAM3 reports
WHITE = (255, 255, 255)


@pytest.fixture(scope="module")
def tiny_sam3_dir(tmp_path_factory) -> str:
    """A tiny untrained SAM3 folder (facebook/sam3 layout) written by the backend's own tool, in its own process."""
    folder = tmp_path_factory.mktemp("sam3") / "sam3"
    python = os.environ.get("SCAIL_TEST_WORKER_PYTHON") or str(addon_helpers.backend_python())
    subprocess.run([python, "-c", "import sys; from backend.masks.tiny import write_tiny_sam3; "
                    "write_tiny_sam3(sys.argv[1], seed=0)", str(folder)],
                   cwd=REPO, check=True, timeout=300, capture_output=True)
    return str(folder)


@pytest.fixture(scope="module")
def sam3_worker(local_worker, tiny_sam3_dir):
    """The local worker restarted with the SAM3 folder from the preferences (later tests may keep it)."""
    local_worker.sam3_dir = tiny_sam3_dir
    bpy.ops.scail.local_worker_stop()
    assert bpy.ops.scail.local_worker_start() == {"FINISHED"}
    yield local_worker
    local_worker.sam3_dir = ""


def setup_clip(scene) -> None:
    settings = scene.scail
    settings.driving_source = "FILE"
    settings.driving_file = str(CLIP)
    settings.driving_frame_in, settings.driving_frame_out = IN, OUT
    settings.driving_mask_source = "AUTO"
    settings.mask_prompts = "person, character, cat"
    settings.show_advanced, settings.steps, settings.seed = True, 1, 3
    settings.vse_channel, settings.vse_frame_start = 3, 10
    assert bpy.ops.scail.probe_driving() == {"FINISHED"}


def paint_subjects(pkg, path: str, colours: list[str]) -> None:
    """Overwrite a reference mask with one rectangle per colour name, left to right, on white (animation)."""
    pngio = pkg.addon.pngio
    width, height = pngio.png_size(path)
    slot = width // (2 * len(colours) + 1)
    band = bytearray(WHITE * width)
    for index, name in enumerate(colours):
        left = (2 * index + 1) * slot
        band[3 * left:3 * (left + slot)] = bytes(PALETTE[name]) * slot
    rows = [bytes(band) if height // 4 <= y < 3 * height // 4 else bytes(WHITE * width) for y in range(height)]
    pngio.write_atomic(path, pngio.encode_png(width, height, 3, b"".join(rows)))


def mask_folders() -> set[str]:
    root = bpy.path.abspath("//scail/masks")
    return set(os.listdir(root)) if os.path.isdir(root) else set()


def test_worker_without_sam3_gets_a_clear_message(scene, local_worker):
    assert not local_worker.sam3_dir  # the suite's worker runs without --sam3
    setup_clip(scene)
    with pytest.raises(RuntimeError, match=r"has no SAM3.*start the worker with --sam3 DIR"):
        bpy.ops.scail.preview_masks()
    settings = scene.scail
    assert settings.mask_preview_status == "failed" and "--sam3 DIR" in settings.mask_preview_message
    assert settings.driving_mask_source == "AUTO" and not mask_folders()
    assert any("SAM3" in text for kind, text in draw_all_panels(bpy.context) if kind == "label")
    settings.mask_preview_status = "running"  # as saved mid-preview and reopened: no thread follows it
    assert ("label", "The mask preview was interrupted: preview again") in draw_all_panels(bpy.context)


def test_preview_masks_become_the_masks_generate_sends(scene, sam3_worker, pkg):
    setup_clip(scene)
    settings = scene.scail
    settings.reference_source = "IMAGE"
    settings.reference_image = str(MEDIA / "astronaut.png")
    settings.mask_preview_to_vse = True
    assert bpy.ops.scail.preview_masks(what="BOTH") == {"FINISHED"}
    assert settings.mask_preview_status == "done", settings.mask_preview_message
    assert settings.mask_preview_dir.startswith("//scail/masks/")
    folder = bpy.path.abspath(settings.mask_preview_dir)

    # Exactly the clip's In/Out frames, numbered by clip frame, as an image-sequence Movie Clip.
    names = sorted(os.listdir(os.path.join(folder, "driving_mask")))
    assert names == [f"frame_{n:05d}.png" for n in range(IN, OUT + 1)]
    clip = bpy.data.movieclips[pkg.addon.masks.MASK_CLIP]
    assert clip.source == "SEQUENCE" and clip.frame_duration == OUT - IN + 1 == len(names)
    assert clip.frame_start == settings.vse_frame_start
    assert os.path.samefile(bpy.path.abspath(clip.filepath), os.path.join(folder, "driving_mask", names[0]))
    assert tuple(clip.size) == (settings.probed_width, settings.probed_height)
    # Sequence clips play at the scene's rate, which the preview set to the driving clip's fps.
    assert scene.render.fps / scene.render.fps_base == pytest.approx(settings.probed_fps, rel=1e-4)
    strip = pkg.addon.compat.vse_strips(scene)[pkg.addon.masks.MASK_STRIP]
    assert [e.filename for e in strip.elements] == names and strip.frame_final_duration == len(names)

    # They override automatic masks: the driving mask is now that file, the reference mask the external one.
    assert settings.driving_mask_source == "FILE"
    assert bpy.path.abspath(settings.driving_mask_file) == os.path.join(folder, "driving_mask", names[0])
    calls = draw_all_panels(bpy.context)
    assert ("operator", "scail.preview_masks") in calls
    # The untrained SAM3 finds nobody in still images: an empty reference mask is kept on disk but not used,
    # since it could only fail the job. The artist paints the subjects (same colours as the clip) and picks it.
    summary = json.load(open(os.path.join(folder, "masks.json")))
    assert not summary["reference"]["identities"] and not settings.reference_mask_image
    assert "reference mask: no subject found, not used" in settings.mask_preview_message
    reference_mask = os.path.join(folder, "reference_mask.png")
    paint_subjects(pkg, reference_mask, [i["colour"] for i in summary["driving"]["identities"]])
    settings.reference_mask_image = reference_mask

    # An edited PNG is sent as it is; the frames before In are padding the worker cuts off with frame_range.
    edited = os.path.join(folder, "driving_mask", names[1])
    with open(os.path.join(folder, "driving_mask", names[0]), "rb") as handle:
        first_bytes = handle.read()
    with open(edited, "wb") as handle:
        handle.write(first_bytes)
    assert bpy.ops.scail.generate() == {"FINISHED"}
    job = scene.scail.jobs[-1]
    assert job.status == "succeeded" and job.frame_count == OUT - IN + 1, job.message
    spec, files = pkg.addon.jobs.load_submission(job)
    assert spec["driving_mask"] == "file" and spec["reference_mask"] == "file"
    assert spec["frame_range"] == [IN - 1, OUT]
    with zipfile.ZipFile(files["driving_mask"]) as archive:
        entries = archive.namelist()
        assert len(entries) == OUT
        assert archive.read(entries[IN]) == first_bytes  # clip frame IN + 1: the edited one

    # A mask sequence that misses a frame of In/Out is refused with the frame named, before anything is sent.
    os.remove(edited)
    with pytest.raises(RuntimeError, match=rf"lacks frame {IN + 1}.*Preview Masks again"):
        bpy.ops.scail.generate()


def test_threaded_preview_is_applied_by_the_timer_function(scene, sam3_worker, pkg):
    """The UI path: the request in a thread, the result applied on the main thread by the timer function."""
    setup_clip(scene)
    masks = pkg.addon.masks
    masks.start(masks.prepare_preview(scene, bpy.context, "DRIVING"), threaded=True)
    try:
        assert scene.scail.mask_preview_status == "running" and masks.is_running(scene)
        assert ("label", "Previewing masks on the worker...") in draw_all_panels(bpy.context)
        assert not bpy.ops.scail.preview_masks.poll()  # one preview at a time
        deadline = time.monotonic() + 120
        while masks.tick() is not None and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        if bpy.app.timers.is_registered(masks.tick):
            bpy.app.timers.unregister(masks.tick)
    assert scene.scail.mask_preview_status == "done", scene.scail.mask_preview_message
    assert bpy.data.movieclips[masks.MASK_CLIP].frame_duration == OUT - IN + 1
    assert scene.scail.driving_mask_source == "FILE"
