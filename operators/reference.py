"""Reference operators: render the character, and extra views of it."""

from __future__ import annotations

import bpy

from ..addon import identities, workflow
from .common import register_factory, report_errors


class SCAIL_OT_render_reference(bpy.types.Operator):
    """Render the character with a transparent film; its alpha (or identity colours) gives the exact mask"""

    bl_idname = "scail.render_reference"
    bl_label = "Render Reference"
    bl_options = {"REGISTER"}

    def execute(self, context):
        def action():
            result, warning = workflow.render_reference(context.scene)
            if warning:
                self.report({"WARNING"}, warning)
            who = f" ({identities.describe(result.characters)})" if result.characters else ""
            self.report({"INFO"}, f"Reference rendered {result.size[0]}x{result.size[1]}{who}: {result.image_path}")
            return {"FINISHED"}

        return report_errors(self, action)


class SCAIL_OT_render_extra_views(bpy.types.Operator):
    """Render the character from every extra view's camera as additional references"""

    bl_idname = "scail.render_extra_views"
    bl_label = "Render Extra Views"

    def execute(self, context):
        def action():
            count = workflow.render_extra_views(context.scene)
            if count == 0:
                self.report({"ERROR"}, "no extra view has a camera: add one and pick its camera")
                return {"CANCELLED"}
            self.report({"INFO"}, f"Rendered {count} extra view(s)")
            return {"FINISHED"}

        return report_errors(self, action)


class SCAIL_OT_extra_view_add(bpy.types.Operator):
    """Add an extra view of the character"""

    bl_idname = "scail.extra_view_add"
    bl_label = "Add Extra View"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        settings = context.scene.scail
        view = settings.extra_views.add()
        active = context.active_object
        if active is not None and active.type == "CAMERA":
            view.camera = active
        settings.extra_view_index = len(settings.extra_views) - 1
        return {"FINISHED"}


class SCAIL_OT_extra_view_remove(bpy.types.Operator):
    """Remove the selected extra view"""

    bl_idname = "scail.extra_view_remove"
    bl_label = "Remove Extra View"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return len(context.scene.scail.extra_views) > 0

    def execute(self, context):
        settings = context.scene.scail
        settings.extra_views.remove(settings.extra_view_index)
        settings.extra_view_index = max(0, settings.extra_view_index - 1)
        return {"FINISHED"}


classes = (SCAIL_OT_render_reference, SCAIL_OT_render_extra_views, SCAIL_OT_extra_view_add,
           SCAIL_OT_extra_view_remove)
register, unregister = register_factory(classes)
