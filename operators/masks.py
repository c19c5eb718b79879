"""Preview Masks: the worker's automatic (SAM3) masks of the driving clip and/or reference, to inspect and edit;
or, for the scene's animation, its rendered masks in the characters' identity colours."""

from __future__ import annotations

import bpy
from bpy.props import EnumProperty

from ..addon import masks
from .common import register_factory, report_errors


class SCAIL_OT_preview_masks(bpy.types.Operator):
    """Ask the worker for automatic masks (Mask Prompts), show the driving masks as a Movie Clip and use them on
    Generate instead of automatic masks; edit the PNGs to fix them"""

    bl_idname = "scail.preview_masks"
    bl_label = "Preview Masks"

    what: EnumProperty(
        name="Masks",
        items=[
            ("DRIVING", "Driving", "Masks of the driving clip's In/Out frames"),
            ("REFERENCE", "Reference", "The mask of the external reference image"),
            ("BOTH", "Both", "The driving clip's masks and, for an external reference image, its mask"),
        ],
        default="DRIVING",
        options={"SKIP_SAVE"},
    )

    @classmethod
    def poll(cls, context):
        return context.scene is not None and not masks.is_running(context.scene)

    def execute(self, context):
        def action():
            if masks.renders_masks(context.scene, self.what):
                self.report({"INFO"}, f"Masks: {masks.preview_rendered(context.scene)}")
                return {"FINISHED"}
            task = masks.prepare_preview(context.scene, context, self.what)
            masks.start(task)
            settings = context.scene.scail
            if not bpy.app.background:
                self.report({"INFO"}, "Previewing masks on the worker")
                return {"FINISHED"}
            if settings.mask_preview_status == "failed":
                self.report({"ERROR"}, settings.mask_preview_message)
                return {"CANCELLED"}
            self.report({"INFO"}, f"Masks: {settings.mask_preview_message}")
            return {"FINISHED"}

        return report_errors(self, action)


classes = (SCAIL_OT_preview_masks,)
register, _unregister = register_factory(classes)


def unregister() -> None:
    masks.unregister()
    _unregister()
