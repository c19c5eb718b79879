"""Driving-clip operators."""

from __future__ import annotations

import bpy

from ..addon import workflow
from .common import register_factory, report_errors


class SCAIL_OT_probe_driving(bpy.types.Operator):
    """Read the driving clip's frame rate, length and size"""

    bl_idname = "scail.probe_driving"
    bl_label = "Probe Driving Clip"

    def execute(self, context):
        def action():
            info = workflow.probe_driving(context.scene)
            self.report({"INFO"}, f"Driving clip: {info.frames} frames at {info.fps:.3f} fps, "
                                  f"{info.width}x{info.height}")
            return {"FINISHED"}

        return report_errors(self, action)


classes = (SCAIL_OT_probe_driving,)
register, unregister = register_factory(classes)
