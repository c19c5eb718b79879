"""Helpers for the bpy add-on tests: build and install the extension, build scenes, draw panels."""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path

import bpy
import numpy as np

REPO = Path(__file__).resolve().parents[2]
MEDIA = REPO / "tests" / "data" / "media"
sys.path.insert(0, str(REPO))

from demo.extension import build_extension, install_extension, run_extension_cli  # noqa: E402

__all__ = ["build_extension", "install_extension", "run_extension_cli"]


def backend_python() -> Path:
    """The interpreter of this environment: it has the backend installed, so it can run the worker."""
    return Path(sys.executable)


def addon_package(module: str):
    return importlib.import_module(module)


def _material(name: str, rgba) -> bpy.types.Material:
    material = bpy.data.materials.new(name)
    material.diffuse_color = rgba
    return material


def build_character(name: str, x: float, colour) -> bpy.types.Object:
    """A simple figure: a body (cube) with a head (sphere) parented to it."""
    body_mesh = bpy.data.meshes.new(f"{name}_body")
    import bmesh

    bm = bmesh.new()
    bmesh.ops.create_cube(bm, size=1.0)
    bm.to_mesh(body_mesh)
    bm.free()
    body = bpy.data.objects.new(name, body_mesh)
    body.scale = (0.5, 0.3, 0.8)
    body.location = (x, 0.0, 0.8)
    body.data.materials.append(_material(f"{name}_skin", colour))
    head_mesh = bpy.data.meshes.new(f"{name}_head")
    bm = bmesh.new()
    bmesh.ops.create_uvsphere(bm, u_segments=16, v_segments=8, radius=0.35)
    bm.to_mesh(head_mesh)
    bm.free()
    head = bpy.data.objects.new(f"{name}_head", head_mesh)
    head.location = (x, 0.0, 2.0)
    head.data.materials.append(_material(f"{name}_face", colour))
    return body, head


def build_scene(characters: int = 1, resolution=(160, 120)) -> bpy.types.Scene:
    """Characters in a "Characters" collection, a floor-less stage, a camera and a sun."""
    scene = bpy.context.scene
    collection = bpy.data.collections.new("Characters")
    scene.collection.children.link(collection)
    spacing = 2.0
    for index in range(characters):
        x = (index - (characters - 1) / 2) * spacing
        body, head = build_character(f"Char{index + 1}", x, (0.8, 0.5 - 0.2 * index, 0.3, 1.0))
        collection.objects.link(body)
        collection.objects.link(head)
        head.parent = body
        head.matrix_parent_inverse = body.matrix_world.inverted()
    camera = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    camera.location = (0.0, -9.0, 1.2)
    camera.rotation_euler = (math.radians(90), 0.0, 0.0)
    scene.collection.objects.link(camera)
    scene.camera = camera
    sun = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", "SUN"))
    sun.rotation_euler = (0.8, 0.2, 0.5)
    scene.collection.objects.link(sun)
    scene.render.resolution_x, scene.render.resolution_y = resolution
    scene.render.fps = 24
    scene.frame_start, scene.frame_end = 1, 8
    settings = scene.scail
    settings.size = "CUSTOM"
    settings.size_short_side = 64
    settings.character_collection = collection
    return scene


class StubLayout:
    """Stands in for ``UILayout`` during ``Panel.draw``: records calls and checks every name it is given.

    Properties must exist on their data, operators must be registered and list classes known, so a typo in
    a panel fails the test instead of silently drawing nothing.
    """

    def __init__(self, calls: list | None = None) -> None:
        self.calls = calls if calls is not None else []

    def __getattr__(self, name):
        if name in {"row", "column", "box", "split", "column_flow", "grid_flow"}:
            return lambda *a, **k: StubLayout(self.calls)
        if name in {"label", "separator", "template_icon", "progress"}:
            return lambda *a, **k: self.calls.append((name, k.get("text", "")))
        if name in {"prop", "prop_search"}:
            return self._prop
        if name == "operator":
            return self._operator
        if name == "template_list":
            return self._template_list
        raise AttributeError(name)

    def __setattr__(self, name, value):
        if name == "calls":
            object.__setattr__(self, name, value)
        # enabled, scale_y, alert... are accepted and ignored

    def _prop(self, data, name, *args, **kwargs):
        assert name in data.bl_rna.properties, f"{type(data).__name__} has no property {name!r}"
        if args:  # prop_search(data, name, search_data, search_name)
            assert hasattr(args[0], args[1]), f"{type(args[0]).__name__} has no {args[1]!r}"
        self.calls.append(("prop", name))

    def _operator(self, idname, **kwargs):
        category, name = idname.split(".")
        cls_name = f"{category.upper()}_OT_{name}"
        assert hasattr(bpy.types, cls_name), f"operator {idname} is not registered"
        self.calls.append(("operator", idname))
        properties = getattr(getattr(bpy.ops, category), name).get_rna_type().properties

        class OperatorProperties:
            def __setattr__(self, key, value):
                assert key in properties, f"operator {idname} has no property {key!r}"

        return OperatorProperties()

    def _template_list(self, list_type, list_id, data, prop, active_data, active_prop, **kwargs):
        assert hasattr(bpy.types, list_type), f"UIList {list_type} is not registered"
        assert prop in data.bl_rna.properties and active_prop in active_data.bl_rna.properties
        self.calls.append(("template_list", list_type))


def draw_all_panels(context) -> list:
    """Draw every SCAIL panel (and the job list's items) with the stub layout; return the calls."""
    calls: list = []
    for name in ("SCAIL_PT_main", "SCAIL_PT_reference", "SCAIL_PT_extra_views", "SCAIL_PT_driving",
                 "SCAIL_PT_generate", "SCAIL_PT_jobs", "SCAIL_PT_output"):
        cls = getattr(bpy.types, name)
        stub = type("PanelStub", (), {"layout": StubLayout(calls)})()
        cls.draw(stub, context)
    ul = bpy.types.SCAIL_UL_jobs
    for job in context.scene.scail.jobs:
        ul.draw_item(None, context, StubLayout(calls), context.scene.scail, job, 0, None, "", 0)
    return calls


def read_png(path):
    import imageio.v3 as iio

    return iio.imread(path)


# ---------------------------------------------------------------------------------------------------------------
# Identity colours: shapes as characters, and which pixels each object covers

PALETTE_NAMES = ("blue", "red", "green", "magenta", "cyan", "yellow")
PALETTE_RGB = {"blue": (0, 0, 255), "red": (255, 0, 0), "green": (0, 255, 0), "magenta": (255, 0, 255),
               "cyan": (0, 255, 255), "yellow": (255, 255, 0)}


def add_shape(collection, name: str, kind: str, location) -> bpy.types.Object:
    """A cube, UV sphere or cone of about one unit, linked into ``collection``."""
    import bmesh

    mesh = bpy.data.meshes.new(name)
    bm = bmesh.new()
    if kind == "cube":
        bmesh.ops.create_cube(bm, size=1.2)
    elif kind == "sphere":
        bmesh.ops.create_uvsphere(bm, u_segments=16, v_segments=8, radius=0.7)
    else:
        bmesh.ops.create_cone(bm, cap_ends=True, segments=16, radius1=0.7, radius2=0.0, depth=1.4)
    bm.to_mesh(mesh)
    bm.free()
    obj = bpy.data.objects.new(name, mesh)
    obj.location = location
    collection.objects.link(obj)
    return obj


def add_camera_at(scene, name: str, location, rotation_degrees) -> bpy.types.Object:
    camera = bpy.data.objects.new(name, bpy.data.cameras.new(name))
    camera.location = location
    camera.rotation_euler = tuple(math.radians(angle) for angle in rotation_degrees)
    scene.collection.objects.link(camera)
    return camera


def build_shapes_scene(shapes, resolution=(200, 100)) -> bpy.types.Scene:
    """``shapes`` = [(name, kind, x, y)] as characters in a "Characters" collection, seen by "Front" (the
    scene camera, at y = -9) and "Back" (at y = +9, looking the other way); the short side is 64 pixels."""
    scene = bpy.context.scene
    collection = bpy.data.collections.new("Characters")
    scene.collection.children.link(collection)
    for name, kind, x, y in shapes:
        add_shape(collection, name, kind, (x, y, 1.0))
    scene.camera = add_camera_at(scene, "Front", (0.0, -9.0, 1.2), (90, 0, 0))
    add_camera_at(scene, "Back", (0.0, 9.0, 1.2), (90, 0, 180))
    scene.render.resolution_x, scene.render.resolution_y = resolution
    scene.render.fps = 24
    settings = scene.scail
    settings.size, settings.size_short_side = "CUSTOM", 64
    settings.character_collection = collection
    return scene


def key_x(obj, path: dict[int, float]) -> None:
    """Keyframe ``obj``'s x location at each frame of ``path`` (frame -> x)."""
    for frame, x in path.items():
        obj.location.x = x
        obj.keyframe_insert("location", index=0, frame=frame)


def footprints(pkg, scene, camera, size, folder) -> dict[str, np.ndarray]:
    """Each character's pixels at the current frame, rendered alone with the add-on's identity pass: the
    whole object, as if nothing were in front of it."""
    identities = pkg.addon.identities
    found = {}
    for name, objects in identities.groups(scene, scene.scail.character_collection).items():
        path = str(Path(folder) / f"alone_{name}_{scene.frame_current}_{camera.name}.png")
        pkg.addon.render.render_identity_pass(scene, camera, [identities.Character(name, tuple(objects), 0)], size,
                                              path, legend=False)
        found[name] = read_png(path)[..., 3] > 0
    return found


def colour_pixels(mask, colour_name: str):
    """Where an RGB(A) mask holds exactly the palette colour ``colour_name``."""
    return np.all(mask[..., :3] == PALETTE_RGB[colour_name], axis=-1)


def count_by_colour(mask, region) -> dict[str, int]:
    """Pixels of each palette colour inside ``region`` (a boolean array): e.g. {"blue": 212, "red": 0, ...}."""
    return {name: int((colour_pixels(mask, name) & region).sum()) for name in PALETTE_NAMES}


def assert_worn(pkg, scene, camera, mask, expected: dict[str, str], folder, in_front: dict | None = None) -> dict:
    """Each object in ``expected`` wears exactly its colour where it is seen, and no other object wears it.

    ``in_front`` maps an object to those that hide it. Returns the pixel counts per object and colour.
    """
    alone = footprints(pkg, scene, camera, (mask.shape[1], mask.shape[0]), folder)
    counts = {}
    for name, colour in expected.items():
        seen = alone[name].copy()
        for other in (in_front or {}).get(name, ()):
            seen &= ~alone[other]
        counts[name] = count_by_colour(mask, alone[name])
        same = np.array_equal(colour_pixels(mask, colour), seen)
        assert same, f"{name} must be {colour} on its {int(seen.sum())} seen pixels; by colour: {counts[name]}"
    anywhere = np.zeros(mask.shape[:2], bool)
    for name in PALETTE_NAMES:
        if name not in expected.values():
            anywhere |= colour_pixels(mask, name)
    assert not anywhere.any()  # no pixel wears a colour nobody was given
    return counts
