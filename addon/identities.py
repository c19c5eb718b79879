"""One identity colour per character for a whole job: who the characters are and which palette colour each wears.

SCAIL-2 ties a reference subject to a driving subject by colour, so a character must wear the same colour in the
reference, in every extra view and in every driving frame, wherever it is on screen. The colour is therefore a
property of the character (its root object), decided once per job:

1. a character whose root object has an explicit colour (``Object.scail_identity``) wears it;
2. an Auto character keeps the colour recorded with the job's reference render (its legend), unless an explicit
   colour took it meanwhile;
3. the remaining Auto characters take the free palette colours left to right as the reference camera sees them.

Rendering the reference starts from no record, so its Auto characters are ordered left to right in that render
(the convention SCAIL-2's automatic masks follow too); the legend written next to its identity pass then holds
the colours for the rest of the job.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import bpy
from bpy_extras.object_utils import world_to_camera_view
from mathutils import Vector

from ..backend.palette import PALETTE, PALETTE_NAMES
from . import pngio

AUTO = "AUTO"
IDENTITY_ITEMS = [(AUTO, "Auto", "Left to right in the main reference render, then kept for the whole job")] + [
    (name.upper(), name.capitalize(), f"Always {name} in every view and driving frame")
    for name in PALETTE_NAMES
]
RENDERABLE_TYPES = frozenset({"MESH", "CURVE", "SURFACE", "META", "FONT", "CURVES", "POINTCLOUD", "VOLUME",
                              "GPENCIL", "GREASEPENCIL"})
WHOLE_SCENE = "(scene)"


class IdentityError(Exception):
    """The characters cannot be given distinct colours as set; the message says what to change."""


@dataclass(frozen=True)
class Character:
    """One identity: the renderable objects that wear ``colour`` (a palette index)."""

    name: str  # the root object's name (WHOLE_SCENE when everything visible is one character)
    objects: tuple[bpy.types.Object, ...]
    colour: int
    explicit: bool = False

    @property
    def colour_name(self) -> str:
        return PALETTE_NAMES[self.colour]

    @property
    def rgb(self) -> tuple[int, int, int]:
        return PALETTE[self.colour]


def explicit_colour(obj: bpy.types.Object | None) -> int | None:
    """The palette index set on ``obj`` (Object > SCAIL Identity), or None for Auto."""
    value = getattr(obj, "scail_identity", AUTO) if obj is not None else AUTO
    return None if value == AUTO else PALETTE_NAMES.index(value.lower())


def _renders(obj: bpy.types.Object) -> bool:
    return obj.type in RENDERABLE_TYPES and not obj.hide_render


def _root_in(obj: bpy.types.Object, members: set[str]) -> bpy.types.Object:
    root = obj
    while root.parent is not None and root.parent.name in members:
        root = root.parent
    return root


def groups(scene, collection: bpy.types.Collection | None) -> dict[str, list[bpy.types.Object]]:
    """Root object name -> its renderable objects. With a collection, each top-level object in it (with its
    children in it) is one character; without one, every object that renders is one character."""
    if collection is None:
        objects = sorted((o for o in scene.objects if _renders(o)), key=lambda o: o.name)
        return {WHOLE_SCENE: objects} if objects else {}
    members = {o.name for o in collection.all_objects}
    found: dict[str, list[bpy.types.Object]] = {}
    for obj in sorted(collection.all_objects, key=lambda o: o.name):
        if _renders(obj):
            found.setdefault(_root_in(obj, members).name, []).append(obj)
    return found


def screen_x(scene, camera, objects: Sequence[bpy.types.Object]) -> float:
    """Horizontal position (0 left, 1 right) of the objects' bounding-box centre as ``camera`` sees it."""
    centre = Vector((0.0, 0.0, 0.0))
    for obj in objects:
        centre += obj.matrix_world @ (sum((Vector(c) for c in obj.bound_box), Vector()) / 8.0)
    return world_to_camera_view(scene, camera, centre / len(objects)).x


def resolve(scene, collection, camera, recorded: Mapping[str, int] | None = None) -> list[Character]:
    """The characters of ``collection`` with their colours by the rule in the module docstring, in colour order.

    ``camera`` orders the characters that need a new Auto colour; ``recorded`` is the legend of the job's
    reference render (None when rendering that reference).
    """
    found = groups(scene, collection)
    explicit = {name: explicit_colour(bpy.data.objects.get(name)) for name in found}
    colours = {name: colour for name, colour in explicit.items() if colour is not None}
    taken = set(colours.values())
    for name in found:
        kept = (recorded or {}).get(name)
        if name not in colours and isinstance(kept, int) and 0 <= kept < len(PALETTE) and kept not in taken:
            colours[name] = kept
            taken.add(kept)
    new = sorted((name for name in found if name not in colours), key=lambda n: screen_x(scene, camera, found[n]))
    free = [index for index in range(len(PALETTE)) if index not in taken]
    if len(new) > len(free):
        raise IdentityError(
            f"{len(new)} Auto characters need a colour but only {len(free)} of the palette's {len(PALETTE)} are "
            "free: give characters that may share an identity the same colour (Identity Colours in the SCAIL "
            "Reference panel), or turn Identity Colours off")
    colours.update(zip(new, free, strict=False))
    characters = [Character(name, tuple(objects), colours[name], explicit[name] is not None)
                  for name, objects in found.items()]
    return sorted(characters, key=lambda c: (c.colour, c.name))


def single_identity(scene, collection) -> list[Character]:
    """Every character as one identity in the first colour (Identity Colours off: one subject)."""
    objects = [obj for group in groups(scene, collection).values() for obj in group]
    return [Character(WHOLE_SCENE, tuple(objects), 0)] if objects else []


def colour_table(characters: Sequence[Character]) -> dict[str, int]:
    return {character.name: character.colour for character in characters}


def describe(characters: Sequence[Character]) -> str:
    """``"Cube blue, Sphere red"``: for reports and messages."""
    return ", ".join(f"{c.name} {c.colour_name}" for c in characters)


def write_assignment(path: str, characters: Sequence[Character]) -> None:
    """Which objects wear which colour in a job's masks (kept with its inputs and previews, never uploaded)."""
    data = {"characters": [{"name": c.name, "colour": c.colour_name, "rgb": list(c.rgb), "explicit": c.explicit,
                            "objects": [o.name for o in c.objects]} for c in characters]}
    pngio.write_atomic(path, json.dumps(data, indent=1).encode())


# ---------------------------------------------------------------------------------------------------------------
# Legends: the colours an identity pass was rendered with, next to it as ``<pass>.json``


@dataclass(frozen=True)
class Legend:
    camera: str
    frame: int
    size: tuple[int, int]
    colours: dict[str, int]


def legend_path(identity_path: str) -> str:
    return os.path.splitext(identity_path)[0] + ".json"


def write_legend(identity_path: str, legend: Legend) -> None:
    data = {"camera": legend.camera, "frame": legend.frame, "size": list(legend.size),
            "colours": {name: {"index": index, "name": PALETTE_NAMES[index], "rgb": list(PALETTE[index])}
                        for name, index in sorted(legend.colours.items())}}
    pngio.write_atomic(legend_path(identity_path), json.dumps(data, indent=1).encode())


_legend_cache: dict[str, tuple[int, Legend | None]] = {}


def read_legend(identity_path: str) -> Legend | None:
    """The legend of an identity pass this add-on rendered; None for a mask from elsewhere (or none at all).

    Cached by modification time: the panel reads it on every redraw."""
    path = legend_path(identity_path) if identity_path else ""
    try:
        stamp = os.stat(path).st_mtime_ns
    except OSError:
        return None
    cached = _legend_cache.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        legend = Legend(str(data["camera"]), int(data["frame"]), (int(data["size"][0]), int(data["size"][1])),
                        {str(name): int(entry["index"]) for name, entry in data["colours"].items()})
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        legend = None  # unreadable: treated like a mask from elsewhere, never guessed at
    _legend_cache[path] = (stamp, legend)
    return legend
