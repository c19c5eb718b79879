"""Batch operators: render every shot, and build the shot list (from cameras or markers, reorder, duplicate...)."""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, EnumProperty, IntProperty, StringProperty

from ..addon import batch, connection, shots
from .common import register_factory, report_errors

INDEX = IntProperty(name="Shot", default=-1, options={"SKIP_SAVE"}, description="Shot list index; -1: the active shot")


def shot_at(context, index: int):
    batch_settings = context.scene.scail_batch
    index = batch_settings.shot_index if index < 0 else index
    if not 0 <= index < len(batch_settings.shots):
        return None, index
    return batch_settings.shots[index], index


def _run_names(text: str) -> list[str] | None:
    names = [name.strip() for name in text.split(",") if name.strip()]
    return names or None


class SCAIL_OT_batch_render(bpy.types.Operator):
    """Render every enabled shot's reference, send each shot to the least busy worker and import the results
    at the shots' frame ranges; unchanged shots whose results are present are skipped"""

    bl_idname = "scail.batch_render"
    bl_label = "Batch Render"

    shots: StringProperty(name="Shots", options={"SKIP_SAVE"},
                          description="Comma-separated shot names; empty: every enabled shot")

    def execute(self, context):
        def action():
            # In the UI the batch runs on a timer; without one (background mode) it runs to the end here.
            start = batch.run_batch if bpy.app.background else batch.start_in_background
            run = start(context.scene, _run_names(self.shots), context)
            for note in run.notes + run.warnings:
                self.report({"WARNING"}, note)
            if not bpy.app.background:
                self.report({"INFO"}, f"Batch started: {len(run.names)} shot(s) on {len(run.pool)} worker(s)")
                return {"FINISHED"}
            scene_batch = context.scene.scail_batch
            failed = run.failed_shots()
            for name in failed:
                shot = shots.find_shot(context.scene, name)
                self.report({"ERROR"}, f"shot {name}: {shot.message if shot is not None else 'removed'}")
            self.report({"ERROR"} if failed else {"INFO"}, f"Batch: {scene_batch.message}")
            return {"FINISHED"}

        return report_errors(self, action)


class SCAIL_OT_batch_cancel(bpy.types.Operator):
    """Stop the running batch: no more shots are prepared and the jobs under way are canceled on their workers"""

    bl_idname = "scail.batch_cancel"
    bl_label = "Cancel Batch"

    @classmethod
    def poll(cls, context):
        run = batch.active_run()
        return run is not None and not run.finished

    def execute(self, context):
        batch.active_run().request_cancel()
        self.report({"INFO"}, "Batch cancel requested")
        return {"FINISHED"}


class SCAIL_OT_shot_add(bpy.types.Operator):
    """Add a shot for the active camera (or the scene camera) over the scene's frame range"""

    bl_idname = "scail.shot_add"
    bl_label = "Add Shot"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        active = context.active_object
        camera = active if active is not None and active.type == "CAMERA" else context.scene.camera
        shots.add_shot(context.scene, camera.name if camera is not None else "Shot", camera)
        return {"FINISHED"}


class SCAIL_OT_shot_add_from_cameras(bpy.types.Operator):
    """Add one shot per selected camera, each on its own Sequencer channel, over the scene's frame range"""

    bl_idname = "scail.shot_add_from_cameras"
    bl_label = "Shots from Selected Cameras"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        cameras = shots.cameras_from_selection(context)
        if not cameras:
            self.report({"ERROR"}, "select one or more cameras first")
            return {"CANCELLED"}
        base = context.scene.scail.vse_channel
        for number, camera in enumerate(cameras):
            shots.add_shot(context.scene, camera.name, camera, channel=min(128, base + number))
        self.report({"INFO"}, f"Added {len(cameras)} shot(s)")
        return {"FINISHED"}


class SCAIL_OT_shot_add_from_markers(bpy.types.Operator):
    """Add one shot per timeline marker bound to a camera: from the marker to the frame before the next one"""

    bl_idname = "scail.shot_add_from_markers"
    bl_label = "Shots from Markers"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        found = shots.marker_shots(context.scene)
        if not found:
            self.report({"ERROR"}, "no timeline marker is bound to a camera (Marker > Bind Camera to Markers)")
            return {"CANCELLED"}
        for name, camera, start, end in found:
            shots.add_shot(context.scene, name, camera, start, end)
        self.report({"INFO"}, f"Added {len(found)} shot(s)")
        return {"FINISHED"}


class SCAIL_OT_shot_move(bpy.types.Operator):
    """Move the shot up or down the list (the batch renders in list order)"""

    bl_idname = "scail.shot_move"
    bl_label = "Move Shot"
    bl_options = {"REGISTER", "UNDO"}

    index: INDEX
    direction: EnumProperty(name="Direction", items=[("UP", "Up", ""), ("DOWN", "Down", "")])

    def execute(self, context):
        shot, index = shot_at(context, self.index)
        batch_settings = context.scene.scail_batch
        target = index - 1 if self.direction == "UP" else index + 1
        if shot is None or not 0 <= target < len(batch_settings.shots):
            return {"CANCELLED"}
        batch_settings.shots.move(index, target)
        batch_settings.shot_index = target
        return {"FINISHED"}


class SCAIL_OT_shot_enable(bpy.types.Operator):
    """Enable or disable shots for the batch"""

    bl_idname = "scail.shot_enable"
    bl_label = "Enable Shots"
    bl_options = {"REGISTER", "UNDO"}

    index: INDEX
    enable: BoolProperty(name="Enable", default=True)
    all: BoolProperty(name="All", default=False, description="Every shot instead of one")

    def execute(self, context):
        if self.all:
            for shot in context.scene.scail_batch.shots:
                shot.enabled = self.enable
            return {"FINISHED"}
        shot, _index = shot_at(context, self.index)
        if shot is None:
            self.report({"ERROR"}, "no shot selected")
            return {"CANCELLED"}
        shot.enabled = self.enable
        return {"FINISHED"}


class SCAIL_OT_shot_duplicate(bpy.types.Operator):
    """Copy the shot's settings into a new shot below it"""

    bl_idname = "scail.shot_duplicate"
    bl_label = "Duplicate Shot"
    bl_options = {"REGISTER", "UNDO"}

    index: INDEX

    def execute(self, context):
        shot, index = shot_at(context, self.index)
        if shot is None:
            self.report({"ERROR"}, "no shot selected")
            return {"CANCELLED"}
        shots.duplicate_shot(context.scene, index)
        return {"FINISHED"}


class SCAIL_OT_shot_remove(bpy.types.Operator):
    """Remove the shot from the list (its imported result and jobs stay)"""

    bl_idname = "scail.shot_remove"
    bl_label = "Remove Shot"
    bl_options = {"REGISTER", "UNDO"}

    index: INDEX

    def execute(self, context):
        shot, index = shot_at(context, self.index)
        if shot is None:
            self.report({"ERROR"}, "no shot selected")
            return {"CANCELLED"}
        run = batch.active_run()
        if run is not None and not run.finished and shot.name in run.names:
            self.report({"ERROR"}, f"shot {shot.name} is part of the running batch: cancel the batch first")
            return {"CANCELLED"}
        batch_settings = context.scene.scail_batch
        batch_settings.shots.remove(index)
        batch_settings.shot_index = max(0, min(index, len(batch_settings.shots) - 1))
        return {"FINISHED"}


class SCAIL_OT_server_add(bpy.types.Operator):
    """Add a worker for batch renders"""

    bl_idname = "scail.server_add"
    bl_label = "Add Batch Server"

    def execute(self, context):
        def action():
            connection.preferences(context).servers.add()
            return {"FINISHED"}

        return report_errors(self, action)


class SCAIL_OT_server_remove(bpy.types.Operator):
    """Remove this batch server"""

    bl_idname = "scail.server_remove"
    bl_label = "Remove Batch Server"

    index: IntProperty(name="Server", default=0, options={"SKIP_SAVE"})

    def execute(self, context):
        def action():
            servers = connection.preferences(context).servers
            if not 0 <= self.index < len(servers):
                self.report({"ERROR"}, f"no batch server {self.index + 1}")
                return {"CANCELLED"}
            servers.remove(self.index)
            return {"FINISHED"}

        return report_errors(self, action)


classes = (SCAIL_OT_batch_render, SCAIL_OT_batch_cancel, SCAIL_OT_shot_add, SCAIL_OT_shot_add_from_cameras,
           SCAIL_OT_shot_add_from_markers, SCAIL_OT_shot_move, SCAIL_OT_shot_enable, SCAIL_OT_shot_duplicate,
           SCAIL_OT_shot_remove, SCAIL_OT_server_add, SCAIL_OT_server_remove)
_register, _unregister = register_factory(classes)


def register() -> None:
    _register()
    batch.register()


def unregister() -> None:
    batch.unregister()
    _unregister()
