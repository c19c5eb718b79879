"""N-panel sections: Reference, Extra views, Driving, Generate, Jobs, Output.

Panels only read properties; every action goes through an operator.
"""

from __future__ import annotations

import os

import bpy

from ..addon import compat, connection, identities, masks, paths, render, workflow
from ..addon.properties import ACTIVE_STATUSES
from ..addon.workflow import PREVIEW_IMAGE

STATUS_ICONS = {
    "succeeded": "CHECKMARK", "failed": "ERROR", "canceled": "CANCEL", "disconnected": "UNLINKED",
    "queued": "SORTTIME", "running": "PLAY", "uploading": "EXPORT", "downloading": "IMPORT",
    "preparing": "TIME",
}


class SCAIL_PT_base:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "SCAIL"


class SCAIL_PT_main(SCAIL_PT_base, bpy.types.Panel):
    bl_idname = "SCAIL_PT_main"
    bl_label = "SCAIL Motion"

    def draw(self, context):
        layout = self.layout
        try:
            prefs = connection.preferences(context)
        except connection.BackendUnavailable as error:
            layout.label(text=str(error), icon="ERROR")
            return
        override = connection.env_override()
        if override:
            layout.label(text=f"Worker: {override[0]} (environment)", icon="URL")
        elif prefs.backend == "REMOTE":
            layout.label(text=f"Worker: {prefs.remote_url or '(no URL)'}", icon="URL")
            if not connection.is_loopback(prefs.remote_url) and not bpy.app.online_access:
                layout.label(text="Online access is off in Preferences", icon="ERROR")
        else:
            state = connection.LOCAL_WORKER.state
            row = layout.row()
            row.label(text=f"Local worker: {state}", icon="CHECKMARK" if state == "ready" else "RADIOBUT_OFF")
            if state in {"starting", "ready"}:
                row.operator("scail.local_worker_stop", text="", icon="CANCEL")
            else:
                row.operator("scail.local_worker_start", text="", icon="PLAY")
        if not bpy.data.filepath:
            layout.label(text="Unsaved file: outputs go to a temporary folder", icon="INFO")


class SCAIL_PT_reference(SCAIL_PT_base, bpy.types.Panel):
    bl_idname = "SCAIL_PT_reference"
    bl_label = "Reference"
    bl_parent_id = "SCAIL_PT_main"

    def draw(self, context):
        layout = self.layout
        settings = context.scene.scail
        layout.row().prop(settings, "reference_source", expand=True)
        if settings.reference_source == "IMAGE":
            layout.prop(settings, "reference_image")
            layout.prop(settings, "reference_mask_image")
            layout.operator("scail.preview_masks", text="Preview Mask", icon="MOD_MASK").what = "REFERENCE"
            draw_mask_preview_status(layout, context.scene)
        else:
            col = layout.column()
            col.prop(settings, "camera")
            col.prop(settings, "engine")
            col.prop(settings, "size")
            if settings.size == "CUSTOM":
                col.prop(settings, "size_short_side")
            col.prop(settings, "character_collection")
            sub = col.row()
            sub.enabled = settings.character_collection is not None
            sub.prop(settings, "use_identity_colours")
            if workflow.uses_identity_colours(context.scene):
                draw_identities(layout, context.scene)
            layout.operator("scail.render_reference", icon="RENDER_STILL")
            if settings.reference_path:
                exists = os.path.isfile(paths.absolute(settings.reference_path))
                layout.label(text=os.path.basename(settings.reference_path) if exists else "Reference file missing",
                             icon="IMAGE_DATA" if exists else "ERROR")
                image = bpy.data.images.get(PREVIEW_IMAGE)
                if image is not None and exists and not bpy.app.background:
                    image.preview_ensure()
                    layout.template_icon(icon_value=image.preview.icon_id, scale=6.0)


class SCAIL_PT_extra_views(SCAIL_PT_base, bpy.types.Panel):
    bl_idname = "SCAIL_PT_extra_views"
    bl_label = "Extra Views"
    bl_parent_id = "SCAIL_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        settings = context.scene.scail
        for index, view in enumerate(settings.extra_views):
            box = layout.box()
            row = box.row()
            row.prop(view, "camera", text=f"View {index}")  # sent as extra_reference_<index>
            box.prop(view, "image_path")
        row = layout.row(align=True)
        row.operator("scail.extra_view_add", icon="ADD", text="Add")
        row.operator("scail.extra_view_remove", icon="REMOVE", text="Remove")
        layout.operator("scail.render_extra_views", icon="RENDER_STILL")


class SCAIL_PT_driving(SCAIL_PT_base, bpy.types.Panel):
    bl_idname = "SCAIL_PT_driving"
    bl_label = "Driving"
    bl_parent_id = "SCAIL_PT_main"

    def draw(self, context):
        layout = self.layout
        scene = context.scene
        settings = scene.scail
        layout.prop(settings, "driving_source")
        source = settings.driving_source
        if source == "FILE":
            layout.prop(settings, "driving_file")
        elif source == "MOVIECLIP":
            layout.prop(settings, "driving_clip")
        elif source == "STRIP":
            if scene.sequence_editor is not None:
                layout.prop_search(settings, "driving_strip", scene.sequence_editor,
                                   "strips_all" if hasattr(scene.sequence_editor, "strips_all") else "sequences_all")
            else:
                layout.label(text="The Video Sequencer is empty", icon="INFO")
        elif source == "SEQUENCE":
            layout.prop(settings, "driving_sequence")
            layout.prop(settings, "driving_sequence_fps")
        else:
            layout.prop(settings, "driving_camera")
        row = layout.row(align=True)
        row.prop(settings, "driving_frame_in")
        row.prop(settings, "driving_frame_out")
        layout.prop(settings, "driving_mask_source")
        if settings.driving_mask_source == "FILE":
            layout.prop(settings, "driving_mask_file")
        if source == "SCENE" and settings.driving_mask_source == "RENDER":
            box = layout.box()
            box.operator("scail.preview_masks", text="Preview Rendered Masks", icon="MOD_MASK").what = "DRIVING"
            draw_mask_preview_status(box, scene)
        elif source != "SCENE":
            box = layout.box()
            box.prop(settings, "mask_prompts")
            row = box.row(align=True)
            row.operator("scail.preview_masks", icon="MOD_MASK").what = "DRIVING"
            row.prop(settings, "mask_preview_to_vse", text="", icon="SEQUENCE")
            draw_mask_preview_status(box, scene)
        layout.operator("scail.probe_driving", icon="FILE_MOVIE")
        if settings.probed_frames:
            layout.label(text=f"{settings.probed_frames} frames, {settings.probed_fps:.3f} fps, "
                              f"{settings.probed_width}x{settings.probed_height}")


class SCAIL_PT_generate(SCAIL_PT_base, bpy.types.Panel):
    bl_idname = "SCAIL_PT_generate"
    bl_label = "Generate"
    bl_parent_id = "SCAIL_PT_main"

    def draw(self, context):
        layout = self.layout
        settings = context.scene.scail
        layout.row().prop(settings, "mode", expand=True)
        layout.prop(settings, "prompt_text")
        if settings.prompt_text is None:
            layout.prop(settings, "prompt")
        layout.prop(settings, "negative_prompt")
        layout.prop(settings, "preset")
        layout.prop(settings, "show_advanced", icon="PREFERENCES")
        if settings.show_advanced:
            col = layout.column(align=True)
            for name in ("steps", "guidance", "shift", "seed", "sampler", "step_cache", "loras", "color_anchor"):
                col.prop(settings, name)
        active = [job for job in settings.jobs if job.status in ACTIVE_STATUSES]
        row = layout.row()
        row.scale_y = 1.4
        row.operator("scail.generate", icon="PLAY")
        for job in active:
            draw_progress(layout, job)
        if settings.jobs and not active:
            last = settings.jobs[settings.job_index] if settings.job_index < len(settings.jobs) else settings.jobs[-1]
            if last.status in {"failed", "disconnected"} and last.message:
                draw_message(layout, last.message, "ERROR")


def draw_identities(layout, scene) -> None:
    """Each character (object) with the colour it wears in every mask of the job, and its own setting."""
    box = layout.box()
    box.label(text="Identity Colours", icon="GROUP")
    try:
        characters = workflow.job_characters(scene)
    except (identities.IdentityError, render.RenderInputError) as error:
        draw_message(box, str(error), "ERROR")
        return
    if not characters:
        box.label(text="The collection has no visible objects", icon="INFO")
    for character in characters:
        row = box.row(align=True)
        row.label(text=character.name, icon="OBJECT_DATA")
        row.label(text=character.colour_name.capitalize() + ("" if character.explicit else " (auto)"))
        obj = bpy.data.objects.get(character.name)
        if obj is not None:
            row.prop(obj, "scail_identity", text="")
    legend = workflow.reference_legend(scene)
    if legend is not None and legend.colours != identities.colour_table(characters):
        box.label(text="Changed since the reference render: Generate updates its masks", icon="INFO")


def draw_mask_preview_status(layout, scene) -> None:
    """The last mask preview: running, its result, or why it failed."""
    settings = scene.scail
    status = settings.mask_preview_status
    if status == "running":
        if masks.is_running(scene):
            layout.label(text="Previewing masks on the worker...", icon="SORTTIME")
        else:  # saved while running and reopened, or the add-on was reloaded
            layout.label(text="The mask preview was interrupted: preview again", icon="INFO")
    elif status == "failed" and settings.mask_preview_message:
        draw_message(layout, settings.mask_preview_message, "ERROR")
    elif status == "done":
        draw_message(layout, settings.mask_preview_message or "masks ready", "CHECKMARK")


def draw_progress(layout, job) -> None:
    box = layout.box()
    parts = [job.phase or job.status]
    if job.num_windows:
        parts.append(f"window {job.window}/{job.num_windows}")
    if job.num_steps:
        parts.append(f"step {job.step}/{job.num_steps}")
    if job.eta_seconds >= 0:
        parts.append(f"ETA {int(job.eta_seconds) // 60}:{int(job.eta_seconds) % 60:02d}")
    compat.layout_progress(box, job.progress, " · ".join(parts))
    row = box.row()
    row.label(text=job.label)
    op = row.operator("scail.cancel", icon="CANCEL")
    op.index = list(job.id_data.scail.jobs).index(job)


def draw_message(layout, message: str, icon: str) -> None:
    """Long messages wrapped over a few label lines."""
    words, line, lines = message.split(), "", []
    for word in words:
        if len(line) + len(word) > 48:
            lines.append(line)
            line = ""
        line = f"{line} {word}".strip()
    lines.append(line)
    col = layout.column(align=True)
    for number, text in enumerate(lines[:6]):
        col.label(text=text, icon=icon if number == 0 else "BLANK1")


class SCAIL_UL_jobs(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_property, index=0, flt_flag=0):
        row = layout.row(align=True)
        row.label(text=item.label or item.key, icon=STATUS_ICONS.get(item.status, "QUESTION"))
        text = item.status
        if item.status in ACTIVE_STATUSES and item.progress > 0:
            text = f"{item.status} {item.progress * 100:.0f}%"
        row.label(text=text)


class SCAIL_PT_jobs(SCAIL_PT_base, bpy.types.Panel):
    bl_idname = "SCAIL_PT_jobs"
    bl_label = "Jobs"
    bl_parent_id = "SCAIL_PT_main"

    def draw(self, context):
        layout = self.layout
        settings = context.scene.scail
        layout.template_list("SCAIL_UL_jobs", "", settings, "jobs", settings, "job_index", rows=3)
        row = layout.row(align=True)
        row.operator("scail.jobs_refresh", icon="FILE_REFRESH", text="Refresh")
        if not settings.jobs or settings.job_index >= len(settings.jobs):
            return
        job = settings.jobs[settings.job_index]
        col = layout.column(align=True)
        col.label(text=f"{job.created} · {job.mode} · {job.server_url}")
        if job.frame_count:
            col.label(text=f"{job.frame_count} frames at {job.fps:g} fps")
        if job.message:
            draw_message(col, job.message, "ERROR" if job.status in {"failed", "disconnected"} else "INFO")
        row = layout.row(align=True)
        row.operator("scail.job_reimport", icon="IMPORT")
        row.operator("scail.job_open_folder", icon="FILE_FOLDER", text="Folder")
        row.operator("scail.job_delete", icon="TRASH", text="")


class SCAIL_PT_output(SCAIL_PT_base, bpy.types.Panel):
    bl_idname = "SCAIL_PT_output"
    bl_label = "Output"
    bl_parent_id = "SCAIL_PT_main"

    def draw(self, context):
        layout = self.layout
        settings = context.scene.scail
        layout.prop(settings, "output_to_vse")
        col = layout.column(align=True)
        col.enabled = settings.output_to_vse
        col.prop(settings, "vse_channel")
        col.prop(settings, "vse_frame_start")
        layout.prop(settings, "set_scene_fps")
        layout.prop(settings, "output_to_camera")
        if not bpy.data.filepath:
            layout.label(text="Save the file to keep results in //scail/", icon="ERROR")


classes = (SCAIL_PT_main, SCAIL_PT_reference, SCAIL_PT_extra_views, SCAIL_PT_driving, SCAIL_PT_generate,
           SCAIL_UL_jobs, SCAIL_PT_jobs, SCAIL_PT_output)
register, unregister = bpy.utils.register_classes_factory(classes)
