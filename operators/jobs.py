"""Job-list operators: refresh, re-import, open folder, delete."""

from __future__ import annotations

import os

import bpy
from bpy.props import BoolProperty, IntProperty

from ..addon import jobs, paths
from .common import register_factory, report_errors
from .generate import job_at

INDEX = IntProperty(name="Job", default=-1, options={"SKIP_SAVE"}, description="Job list index; -1: the active job")


class SCAIL_OT_jobs_refresh(bpy.types.Operator):
    """Ask the worker about every unfinished job and fetch results that finished meanwhile"""

    bl_idname = "scail.jobs_refresh"
    bl_label = "Refresh Jobs"

    def execute(self, context):
        def action():
            problems = jobs.reconnect_all()
            for problem in problems:
                self.report({"ERROR"}, problem)
            lost = [job for job in context.scene.scail.jobs if job.status == "disconnected"]
            for job in lost:
                self.report({"ERROR"}, f"{job.label}: {job.message}")
            return {"CANCELLED"} if problems or lost else {"FINISHED"}

        return report_errors(self, action)


class SCAIL_OT_job_reimport(bpy.types.Operator):
    """Import the job's frames again (a strip and/or camera background); download them again if deleted"""

    bl_idname = "scail.job_reimport"
    bl_label = "Re-import"

    index: INDEX

    def execute(self, context):
        def action():
            job, _index = job_at(context, self.index)
            if job is None or job.status != "succeeded":
                self.report({"ERROR"}, "pick a finished job to import")
                return {"CANCELLED"}
            frames_dir = os.path.join(paths.absolute(job.output_dir), "frames")
            if not os.path.isdir(frames_dir):
                job.imported = False
                jobs.resume(job)
                if bpy.app.background and not job.imported:
                    self.report({"ERROR"}, job.message or f"the result folder {frames_dir} is missing")
                    return {"CANCELLED"}
                if not bpy.app.background:
                    self.report({"INFO"}, f"{job.label}: downloading the result again")
                    return {"FINISHED"}
            else:
                jobs.import_job(context.scene, job)
            self.report({"INFO"}, f"{job.label}: {job.message}")
            return {"FINISHED"}

        return report_errors(self, action)


class SCAIL_OT_job_open_folder(bpy.types.Operator):
    """Open the job's output folder in the file browser"""

    bl_idname = "scail.job_open_folder"
    bl_label = "Open Folder"

    index: INDEX

    def execute(self, context):
        job, _index = job_at(context, self.index)
        if job is None:
            self.report({"ERROR"}, "no job selected")
            return {"CANCELLED"}
        folder = paths.absolute(job.output_dir)
        if not os.path.isdir(folder):
            self.report({"ERROR"}, f"the output folder {folder} does not exist (deleted or moved)")
            return {"CANCELLED"}
        if bpy.app.background:
            self.report({"INFO"}, folder)
            return {"FINISHED"}
        bpy.ops.wm.path_open(filepath=folder)
        return {"FINISHED"}


class SCAIL_OT_job_delete(bpy.types.Operator):
    """Remove the job from the list, the worker, the timeline and the camera background"""

    bl_idname = "scail.job_delete"
    bl_label = "Delete Job"
    bl_options = {"REGISTER", "UNDO"}

    index: INDEX
    delete_files: BoolProperty(name="Delete Files", default=True, description="Also delete //scail/<job>/")

    def execute(self, context):
        def action():
            job, index = job_at(context, self.index)
            if job is None:
                self.report({"ERROR"}, "no job selected")
                return {"CANCELLED"}
            if jobs.is_running(job.key):
                jobs.request_cancel(job)
            label = job.label
            note = jobs.delete_job(context.scene, index, delete_files=self.delete_files)
            self.report({"WARNING"} if note else {"INFO"}, f"{label} deleted{note}")
            return {"FINISHED"}

        return report_errors(self, action)


classes = (SCAIL_OT_jobs_refresh, SCAIL_OT_job_reimport, SCAIL_OT_job_open_folder, SCAIL_OT_job_delete)
register, unregister = register_factory(classes)

