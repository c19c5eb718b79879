"""The "Shots" section: the batch's shot list, the selected shot's settings and Batch Render with progress."""

from __future__ import annotations

import bpy

from ..addon import batch, compat
from ..addon.shots import BUSY_STATUSES, driving_range
from .main import SCAIL_PT_base, draw_message

SHOT_ICONS = {
    "succeeded": "CHECKMARK", "skipped": "CHECKMARK", "failed": "ERROR", "canceled": "CANCEL",
    "disconnected": "UNLINKED", "queued": "SORTTIME", "rendering": "RENDER_STILL", "uploading": "EXPORT",
    "running": "PLAY", "downloading": "IMPORT",
}


class SCAIL_UL_shots(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_property, index=0, flt_flag=0):
        row = layout.row(align=True)
        row.prop(item, "enabled", text="")
        row.prop(item, "name", text="", emboss=False)
        row.label(text=f"{item.frame_start}-{item.frame_end}")
        text = item.status or "new"
        if item.status in BUSY_STATUSES and item.progress > 0:
            text = f"{item.status} {item.progress * 100:.0f}%"
        row.label(text=text, icon=SHOT_ICONS.get(item.status, "BLANK1"))


class SCAIL_PT_shots(SCAIL_PT_base, bpy.types.Panel):
    bl_idname = "SCAIL_PT_shots"
    bl_label = "Shots"
    bl_parent_id = "SCAIL_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        scene_batch = context.scene.scail_batch
        row = layout.row()
        row.template_list("SCAIL_UL_shots", "", scene_batch, "shots", scene_batch, "shot_index", rows=4)
        side = row.column(align=True)
        side.operator("scail.shot_add", icon="ADD", text="")
        side.operator("scail.shot_remove", icon="REMOVE", text="")
        side.operator("scail.shot_duplicate", icon="DUPLICATE", text="")
        up = side.operator("scail.shot_move", icon="TRIA_UP", text="")
        up.direction = "UP"
        down = side.operator("scail.shot_move", icon="TRIA_DOWN", text="")
        down.direction = "DOWN"
        row = layout.row(align=True)
        row.operator("scail.shot_add_from_cameras", icon="OUTLINER_OB_CAMERA", text="From Cameras")
        row.operator("scail.shot_add_from_markers", icon="MARKER_HLT", text="From Markers")
        if 0 <= scene_batch.shot_index < len(scene_batch.shots):
            layout.prop(scene_batch, "show_details", icon="PREFERENCES")
            if scene_batch.show_details:
                draw_shot(layout, scene_batch.shots[scene_batch.shot_index])
        draw_batch_status(layout, scene_batch)


def draw_shot(layout, shot) -> None:
    box = layout.box()
    col = box.column()
    col.prop(shot, "camera")
    sub = col.row(align=True)
    sub.prop(shot, "frame_start")
    sub.prop(shot, "frame_end")
    col.separator()
    col.prop(shot, "driving_source")
    source = shot.driving_source
    if source == "FILE":
        col.prop(shot, "driving_file")
    elif source == "MOVIECLIP":
        col.prop(shot, "driving_clip")
    elif source == "STRIP":
        col.prop(shot, "driving_strip")
    elif source == "SEQUENCE":
        col.prop(shot, "driving_sequence")
        col.prop(shot, "driving_sequence_fps")
    else:
        col.prop(shot, "driving_camera")
    if source != "SCENE":
        sub = col.row(align=True)
        sub.prop(shot, "driving_frame_in")
        sub.prop(shot, "driving_frame_out")
    start, end = driving_range(shot)
    col.label(text=f"Driving frames {start}-{end}", icon="INFO")
    col.prop(shot, "driving_mask_source")
    if shot.driving_mask_source == "FILE":
        col.prop(shot, "driving_mask_file")
    col.separator()
    col.row().prop(shot, "mode", expand=True)
    col.prop(shot, "prompt")
    col.prop(shot, "preset")
    sub = col.column(align=True)
    for name in ("steps", "guidance", "shift", "seed", "loras", "color_anchor"):
        sub.prop(shot, name)
    col.separator()
    sub = col.row(align=True)
    sub.prop(shot, "output_to_vse")
    channel = sub.row(align=True)
    channel.enabled = shot.output_to_vse
    channel.prop(shot, "vse_channel")
    col.prop(shot, "output_to_camera")
    if shot.message:
        draw_message(box, shot.message, "ERROR" if shot.status == "failed" else "INFO")


def draw_batch_status(layout, scene_batch) -> None:
    run = batch.active_run()
    running = run is not None and not run.finished
    row = layout.row(align=True)
    row.scale_y = 1.4
    row.operator("scail.batch_render", icon="RENDER_ANIMATION")
    if running:
        row.operator("scail.batch_cancel", icon="CANCEL", text="")
    if scene_batch.status == "running" and running:
        compat.layout_progress(layout, scene_batch.progress, scene_batch.message)
        for shot in scene_batch.shots:
            if shot.status in BUSY_STATUSES:
                compat.layout_progress(layout, shot.progress, f"{shot.name}: {shot.message or shot.status}")
    elif scene_batch.message:
        draw_message(layout, f"Last batch: {scene_batch.message}",
                     "ERROR" if scene_batch.status == "failed" else "INFO")


classes = (SCAIL_UL_shots, SCAIL_PT_shots)
register, unregister = bpy.utils.register_classes_factory(classes)
