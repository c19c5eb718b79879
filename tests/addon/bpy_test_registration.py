"""Packaging and registration: the built zip installs, registers everything and unregisters cleanly."""

from __future__ import annotations

import re
import zipfile

import bpy
from addon_helpers import StubLayout, draw_all_panels

OPERATORS = ("render_reference", "render_extra_views", "extra_view_add", "extra_view_remove", "probe_driving",
             "generate", "cancel", "jobs_refresh", "job_reimport", "job_open_folder", "job_delete",
             "local_worker_start", "local_worker_stop", "test_connection")


def test_zip_ships_only_the_blender_side(extension_zip):
    names = set(zipfile.ZipFile(extension_zip).namelist())
    assert {"blender_manifest.toml", "__init__.py", "addon/jobs.py", "operators/generate.py", "panels/main.py",
            "backend/client.py", "backend/launcher.py", "backend/palette.py"} <= names
    assert "backend/__init__.py" not in names  # a namespace package: never shadows the worker's backend
    unwanted = [n for n in names if n.startswith(("tests/", "demo/", "docs/", "benchmarks/", "training/",
                                                  "backend/scail2/", "backend/worker/", "backend/masks/", ".venv/"))]
    assert not unwanted, unwanted


def test_blender_side_imports_no_heavy_modules(extension_zip):
    """The add-on's code imports the standard library, requests and bpy only: never torch or the server."""
    archive = zipfile.ZipFile(extension_zip)
    banned = re.compile(r"^\s*(import|from)\s+(torch|numpy|fastapi|uvicorn|diffusers|transformers|PIL|imageio)\b"
                        r"|^\s*from\s+\.+(scail2|worker|masks)\b", re.MULTILINE)
    for name in archive.namelist():
        if name.endswith(".py"):
            found = banned.search(archive.read(name).decode())
            assert found is None, f"{name} imports {found.group(0).strip()!r}"


def test_everything_registers(addon):
    assert addon.startswith("bl_ext.user_default.")
    for name in OPERATORS:
        assert hasattr(bpy.types, f"SCAIL_OT_{name}"), name
    assert hasattr(bpy.types.Scene, "scail")
    prefs = bpy.context.preferences.addons[addon].preferences
    assert prefs.backend == "LOCAL"
    assert prefs.bl_rna.properties["remote_token"].subtype == "PASSWORD"
    assert bpy.types.SCAIL_PT_main.bl_category == "SCAIL"


def test_compat_names_are_valid_here(pkg, scene):
    compat = pkg.addon.compat
    scene.render.engine = compat.eevee_engine_id()  # raises TypeError for a wrong id on this version
    assert compat.vse_strips(scene) is not None
    compat.set_video_output(scene)
    assert scene.render.image_settings.file_format == "FFMPEG"
    compat.set_image_output(scene)
    assert scene.render.image_settings.file_format == "PNG"
    assert not pkg.addon.jobs.blender_busy()


def test_unregister_and_register_again(addon):
    bpy.ops.preferences.addon_disable(module=addon)
    assert not hasattr(bpy.types.Scene, "scail")
    assert not hasattr(bpy.types, "SCAIL_OT_generate")
    bpy.ops.preferences.addon_enable(module=addon)
    assert hasattr(bpy.types, "SCAIL_OT_generate") and hasattr(bpy.types.Scene, "scail")


def test_panels_draw_in_every_state(scene):
    """Idle, running, failed, done (and disconnected, canceled): every panel draws and names real things."""
    calls = draw_all_panels(bpy.context)
    assert ("operator", "scail.render_reference") in calls and ("operator", "scail.generate") in calls
    jobs = scene.scail.jobs
    for status, message in (("running", ""), ("failed", "the worker rejected the job: size"),
                            ("succeeded", "imported 8 frames"), ("disconnected", "cannot reach the worker"),
                            ("canceled", ""), ("queued", "")):
        job = jobs.add()
        job.key, job.label, job.status, job.message = f"k{len(jobs)}", f"Job {len(jobs)}", status, message
        job.progress, job.num_windows, job.window, job.num_steps, job.step, job.eta_seconds = 0.4, 2, 1, 6, 3, 75
        scene.scail.job_index = len(jobs) - 1
        calls = draw_all_panels(bpy.context)
        if status == "running":
            assert ("operator", "scail.cancel") in calls
            assert any(c[0] == "progress" and "window 1/2" in c[1] and "step 3/6" in c[1] for c in calls), calls
    for source in ("FILE", "MOVIECLIP", "STRIP", "SEQUENCE", "SCENE"):
        scene.scail.driving_source = source
        draw_all_panels(bpy.context)
    scene.scail.reference_source = "IMAGE"
    scene.scail.show_advanced = True
    scene.scail.extra_views.add()
    draw_all_panels(bpy.context)
    prefs = bpy.context.preferences.addons[addon_name(scene)].preferences
    for backend in ("LOCAL", "REMOTE"):
        prefs.backend = backend
        prefs.__class__.draw(PrefsStub(prefs), bpy.context)
    prefs.backend = "LOCAL"


def addon_name(scene) -> str:
    return next(a.module for a in bpy.context.preferences.addons if a.module.endswith(".scail_motion"))


class PrefsStub:
    """``self`` for ``AddonPreferences.draw``: the real preferences plus a checking layout."""

    def __init__(self, prefs) -> None:
        object.__setattr__(self, "_prefs", prefs)
        object.__setattr__(self, "layout", StubLayout())

    def __getattr__(self, name):
        return getattr(self._prefs, name)
