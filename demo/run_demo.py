"""``make demo``: the whole artist workflow, headless, from a fresh clone.

1. builds the extension zip with the builder inside the ``bpy`` wheel and installs it into a temporary
   Blender user folder;
2. builds a demo scene: a simple character, a camera and a light;
3. renders the reference (transparent film, mask from alpha) with ``scail.render_reference``;
4. picks a real driving clip from the repository's ``tests/data/media`` (a few frames of it, so it runs in minutes on CPU);
5. starts a local worker (``scail-worker serve``) on a checkpoint: a tiny untrained one made on the fly, or
   the real weights named by ``SCAIL_CHECKPOINT``;
6. runs ``scail.generate``, which imports the result as a Sequencer strip and a camera background;
7. writes ``demo_out/``: ``scail_demo.blend``, ``result.mp4``, ``frames/``, ``contact_sheet.png`` (labelled:
   reference and driving frames above, reference mask and result frames below).

Environment: ``SCAIL_CHECKPOINT`` (real weights), ``SCAIL_DEVICE`` (default cuda with real weights, else cpu),
``SCAIL_DEMO_CLIP``, ``SCAIL_DEMO_FRAMES`` (default 9), ``SCAIL_DEMO_SIZE`` (short side, default 192 on the
tiny checkpoint, 512 with real weights).

This process imports ``bpy`` and never torch: the model runs in the worker subprocess.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "demo_out"
MEDIA = REPO / "tests" / "data" / "media"
DEFAULT_CLIP = "carphone_pristine.mp4"


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def banner(lines: list[str]) -> None:
    width = max(len(line) for line in lines) + 4
    print("\n" + "#" * width, flush=True)
    for line in lines:
        print(f"# {line.ljust(width - 4)} #", flush=True)
    print("#" * width + "\n", flush=True)


def checkpoint(work: Path) -> tuple[Path, bool]:
    """The real checkpoint named by SCAIL_CHECKPOINT, or a tiny untrained one written now."""
    named = os.environ.get("SCAIL_CHECKPOINT", "").strip()
    if named:
        path = Path(named).expanduser().resolve()
        if not path.is_dir():
            raise SystemExit(f"SCAIL_CHECKPOINT={named} is not a folder: point it at the SCAIL-2 weights")
        banner([f"REAL WEIGHTS: using the checkpoint at {path}",
                "The result is a real SCAIL-2 generation (this needs a GPU and takes minutes)."])
        return path, True
    path = work / "tiny_checkpoint"
    say("no SCAIL_CHECKPOINT set: writing a tiny UNTRAINED checkpoint (the result will be noise)")
    subprocess.run([sys.executable, "-m", "backend.scail2.tiny", str(path)], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL)
    return path, False


def build_scene(bpy, short_side: int):
    """A simple character (torso, head, arms, legs) in a "Characters" collection, a camera and a sun."""
    import bmesh

    bpy.ops.wm.read_homefile(use_empty=True)
    bpy.context.preferences.filepaths.save_version = 0  # no scail_demo.blend1 backups in demo_out/
    scene = bpy.context.scene
    characters = bpy.data.collections.new("Characters")
    scene.collection.children.link(characters)
    skin = bpy.data.materials.new("Skin")
    skin.diffuse_color = (0.85, 0.55, 0.35, 1.0)
    cloth = bpy.data.materials.new("Cloth")
    cloth.diffuse_color = (0.15, 0.3, 0.75, 1.0)

    def part(name, builder, location, scale, material, parent=None):
        mesh = bpy.data.meshes.new(name)
        bm = bmesh.new()
        builder(bm)
        bm.to_mesh(mesh)
        bm.free()
        obj = bpy.data.objects.new(name, mesh)
        obj.location, obj.scale = location, scale
        mesh.materials.append(material)
        characters.objects.link(obj)
        if parent is not None:
            obj.parent = parent
            obj.matrix_parent_inverse = parent.matrix_world.inverted()
        return obj

    def cube(bm):
        bmesh.ops.create_cube(bm, size=1.0)

    def sphere(bm):
        bmesh.ops.create_uvsphere(bm, u_segments=24, v_segments=12, radius=0.5)

    def cylinder(bm):
        bmesh.ops.create_cone(bm, cap_ends=True, segments=16, radius1=0.5, radius2=0.5, depth=1.0)

    torso = part("Torso", cube, (0, 0, 1.25), (0.6, 0.3, 0.8), cloth)
    bpy.context.view_layer.update()
    part("Head", sphere, (0, 0, 1.95), (0.45, 0.45, 0.5), skin, torso)
    for side in (-1, 1):
        arm = part(f"Arm.{'LR'[side > 0]}", cylinder, (0.42 * side, 0, 1.2), (0.16, 0.16, 0.75), skin, torso)
        arm.rotation_euler = (0, math.radians(12 * side), 0)
        part(f"Leg.{'LR'[side > 0]}", cylinder, (0.17 * side, 0, 0.42), (0.2, 0.2, 0.85), cloth, torso)
    camera = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    camera.location, camera.rotation_euler = (0.0, -4.2, 1.2), (math.radians(90), 0.0, 0.0)
    camera.data.lens = 35
    scene.collection.objects.link(camera)
    scene.camera = camera
    sun = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", "SUN"))
    sun.rotation_euler = (math.radians(50), math.radians(10), math.radians(30))
    sun.data.energy = 3.0
    scene.collection.objects.link(sun)
    scene.render.resolution_x, scene.render.resolution_y = 1024, 768  # 4:3, like the driving clip
    settings = scene.scail
    settings.engine = "WORKBENCH"
    settings.size = "CUSTOM"
    settings.size_short_side = short_side
    settings.character_collection = characters
    return scene


def main() -> int:
    started = time.monotonic()
    clip = MEDIA / os.environ.get("SCAIL_DEMO_CLIP", DEFAULT_CLIP)
    if not clip.is_file():
        raise SystemExit(f"driving clip not found: {clip} (SCAIL_DEMO_CLIP names a clip in tests/data/media or a path)")
    frames_wanted = int(os.environ.get("SCAIL_DEMO_FRAMES", "9"))
    work = Path(tempfile.mkdtemp(prefix="scail_demo_"))
    ckpt, real = checkpoint(work)
    short_side = int(os.environ.get("SCAIL_DEMO_SIZE", "512" if real else "192"))
    device = os.environ.get("SCAIL_DEVICE", "cuda" if real else "cpu")

    os.environ["BLENDER_USER_RESOURCES"] = str(work / "blender_user")
    import bpy  # after BLENDER_USER_RESOURCES: the demo never touches the user's Blender settings

    from demo.contact_sheet import contact_sheet
    from demo.extension import build_extension, install_extension

    zip_path = build_extension(work / "dist")
    module = install_extension(zip_path)
    say(f"built and installed {zip_path.name} as {module}")

    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir()
    blend = OUT / "scail_demo.blend"
    scene = build_scene(bpy, short_side)
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))  # saved first: outputs go to //scail/<job>/ beside it
    scene = bpy.context.scene

    prefs = bpy.context.preferences.addons[module].preferences
    prefs.backend = "LOCAL"
    prefs.python_path = sys.executable
    prefs.checkpoint_dir = str(ckpt)
    prefs.device = device
    prefs.data_dir = str(work / "worker")
    prefs.timeout = 120.0
    say(f"starting the local worker on {device} ...")
    bpy.ops.scail.local_worker_start()
    try:
        bpy.ops.scail.render_reference()
        say(f"reference rendered: {bpy.path.abspath(scene.scail.reference_path)}")

        settings = scene.scail
        settings.driving_source = "FILE"
        settings.driving_file = str(clip)
        bpy.ops.scail.probe_driving()
        settings.driving_frame_in, settings.driving_frame_out = 1, min(frames_wanted, settings.probed_frames)
        say(f"driving clip: {clip.name}, {settings.probed_frames} frames at {settings.probed_fps:.3f} fps; "
            f"using frames {settings.driving_frame_in}-{settings.driving_frame_out}")
        if _auto_masks(module):
            settings.driving_mask_source = "AUTO"
        else:
            settings.driving_mask_source = "FRAME"
            say("this worker has no automatic masks (SAM3): the driving mask marks the whole frame as the subject")
        settings.mode = "animation"
        settings.prompt = "a person talking and moving their head, natural motion"
        settings.preset = "fast"
        if not real:
            settings.show_advanced = True
            settings.steps = 2
        settings.seed = 42
        settings.vse_channel, settings.vse_frame_start = 2, 1
        say("generating ...")
        bpy.ops.scail.generate()
        job = settings.jobs[-1]
        say(f"{job.label}: {job.status}, {job.frame_count} frames at {job.fps:g} fps ({job.message})")
    finally:
        bpy.ops.scail.local_worker_stop()

    job_dir = Path(bpy.path.abspath(job.output_dir))
    frames = sorted((job_dir / "frames").glob("*.png"))
    out_frames = OUT / "frames"
    shutil.copytree(job_dir / "frames", out_frames)
    result_mp4 = OUT / "result.mp4"
    shutil.copyfile(job_dir / "result.mp4", result_mp4)
    sheet = OUT / "contact_sheet.png"
    contact_sheet(Path(bpy.path.abspath(settings.reference_path)), job_dir / "inputs" / "reference_mask.png", clip,
                  (settings.driving_frame_in - 1, settings.driving_frame_out), frames, sheet)
    scene.frame_end = scene.frame_start + len(frames) - 1
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    shutil.rmtree(work, ignore_errors=True)

    strip = scene.sequence_editor.strips_all.get(f"SCAIL {job.key}") if scene.sequence_editor else None
    background = [b for b in scene.camera.data.background_images if b.image is not None]
    print("\nSCAIL Motion demo finished in {:.0f} s{}".format(
        time.monotonic() - started, "" if real else " (tiny UNTRAINED checkpoint: the frames are noise)"))
    print(f"  {blend}  (VSE strip {strip.name if strip else '-'} on channel {settings.vse_channel}, "
          f"{len(background)} camera background(s), {scene.render.fps} fps)")
    print(f"  {result_mp4}")
    print(f"  {out_frames}/  ({len(frames)} frames)")
    print(f"  {sheet}")
    print(f"  {job_dir}/  (the job's own folder: inputs and results)")
    sys.stdout.flush()
    os._exit(0)  # skip Blender's atexit teardown, which can hang after a session like this


def _auto_masks(module: str) -> bool:
    import importlib

    connection = importlib.import_module(f"{module}.addon.connection")
    connection.LOCAL_WORKER.refresh_health()
    return bool(connection.LOCAL_WORKER.health.get("features", {}).get("auto_masks"))


if __name__ == "__main__":
    try:
        main()
    except BaseException as error:  # noqa: BLE001 - report, then leave without Blender's atexit teardown
        import traceback

        traceback.print_exc()
        print(f"\nSCAIL Motion demo FAILED: {error}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)
