"""Generate and Cancel."""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, IntProperty

from ..addon import jobs, workflow
from .common import register_factory, report_errors


class SCAIL_OT_generate(bpy.types.Operator):
    """Send the reference and driving clip to the worker; the result lands on the timeline when done"""

    bl_idname = "scail.generate"
    bl_label = "Generate"

    wait: BoolProperty(
        name="Wait", default=True, options={"SKIP_SAVE"},
        description="In background mode: wait for the result (else only submit; Refresh follows it later)",
    )

    def execute(self, context):
        def action():
            job, task, warnings = workflow.prepare_job(context.scene, context)
            for warning in warnings:
                self.report({"WARNING"}, warning)
            jobs.start(task, wait=self.wait)
            if not bpy.app.background:
                self.report({"INFO"}, f"{job.label} submitted")
                return {"FINISHED"}
            if job.status in {"failed", "disconnected"}:
                self.report({"ERROR"}, f"{job.label}: {job.message}")
                return {"CANCELLED"}
            if job.status == "succeeded" and job.message and not job.imported:
                self.report({"ERROR"}, f"{job.label}: {job.message}")
                return {"CANCELLED"}
            self.report({"INFO"}, f"{job.label}: {job.status}" + (f" - {job.message}" if job.message else ""))
            return {"FINISHED"}

        return report_errors(self, action)


def job_at(context, index: int):
    settings = context.scene.scail
    index = settings.job_index if index < 0 else index
    if not 0 <= index < len(settings.jobs):
        return None, index
    return settings.jobs[index], index


class SCAIL_OT_cancel(bpy.types.Operator):
    """Stop the job on the worker (honoured between sampling steps)"""

    bl_idname = "scail.cancel"
    bl_label = "Cancel"

    index: IntProperty(name="Job", default=-1, options={"SKIP_SAVE"}, description="Job list index; -1: the active job")

    def execute(self, context):
        def action():
            job, _index = job_at(context, self.index)
            if job is None or not (job.job_id or jobs.is_running(job.key)):
                self.report({"ERROR"}, "no submitted job to cancel")
                return {"CANCELLED"}
            if job.status in jobs.TERMINAL:
                self.report({"WARNING"}, f"{job.label} already {job.status}")
                return {"CANCELLED"}
            jobs.request_cancel(job)
            if job.status == "disconnected":
                self.report({"ERROR"}, job.message)
                return {"CANCELLED"}
            self.report({"INFO"}, f"{job.label}: cancel requested ({job.status})")
            return {"FINISHED"}

        return report_errors(self, action)


classes = (SCAIL_OT_generate, SCAIL_OT_cancel)
register, unregister = register_factory(classes)
