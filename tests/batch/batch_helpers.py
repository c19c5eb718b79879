"""Helpers for the batch tests (imported by the inner ``bpy`` process only)."""

from __future__ import annotations

import math

import bpy


def add_camera(scene, name: str, x: float) -> bpy.types.Object:
    """A camera at ``x`` on the line y = -9, turned to look at the origin."""
    camera = bpy.data.objects.new(name, bpy.data.cameras.new(name))
    camera.location = (x, -9.0, 1.2)
    camera.rotation_euler = (math.radians(90), 0.0, math.atan2(x, 9.0))
    scene.collection.objects.link(camera)
    return camera


def job_ids(workers) -> list[set[str]]:
    """The ids of every job each worker holds."""
    return [{job["id"] for job in worker.client().iter_jobs()} for worker in workers]


def strip_of(scene, job_key: str):
    return scene.sequence_editor.strips_all.get(f"SCAIL {job_key}") if scene.sequence_editor else None


def backgrounds_of(camera, job_key: str) -> list:
    return [b for b in camera.data.background_images if b.image is not None and b.image.name == f"SCAIL {job_key}"]


def setup_shots(scene, names_frames: list[tuple[str, int, int]]) -> list:
    """Shots from the named cameras (selected), each ``(camera, first frame, first clip frame)``, 3 frames long."""
    for obj in scene.objects:
        obj.select_set(obj.name in {name for name, _s, _i in names_frames})
    assert bpy.ops.scail.shot_add_from_cameras() == {"FINISHED"}
    shots = {shot.name: shot for shot in scene.scail_batch.shots}
    for name, start, clip_in in names_frames:
        shot = shots[name]
        shot.frame_start, shot.frame_end = start, start + 2
        shot.driving_frame_in = clip_in
    return [shots[name] for name, _s, _i in names_frames]
