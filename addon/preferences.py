"""Machine-wide settings: which worker to use and how to reach it."""

from __future__ import annotations

import bpy
from bpy.props import CollectionProperty, EnumProperty, FloatProperty, StringProperty

from . import ADDON_PACKAGE
from .connection import LOCAL_WORKER, env_override
from .servers import SCAIL_PG_server, draw_servers


class SCAIL_AddonPreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_PACKAGE

    backend: EnumProperty(
        name="Backend",
        items=[
            ("LOCAL", "Local", "Start a worker on this computer from a Python environment with the backend"),
            ("REMOTE", "Remote", "Use a worker running on a GPU server"),
        ],
        default="LOCAL",
    )
    python_path: StringProperty(
        name="Python", subtype="FILE_PATH",
        description="Python interpreter of an environment where the SCAIL backend is installed "
                    "(e.g. .venv/bin/python)",
    )
    checkpoint_dir: StringProperty(name="Checkpoint", subtype="DIR_PATH",
                                   description="Folder with the SCAIL-2 weights")
    device: StringProperty(name="Device", default="cuda", description="Torch device for the local worker")
    sam3_dir: StringProperty(
        name="SAM3 Folder", subtype="DIR_PATH",
        description="Optional folder with the SAM3 weights (facebook/sam3 layout): lets the local worker make "
                    "automatic masks (Preview Masks, Mask: Automatic)",
    )
    data_dir: StringProperty(name="Job Store", subtype="DIR_PATH",
                             description="Where the local worker keeps its jobs; empty uses the add-on's folder")
    remote_url: StringProperty(name="URL", default="http://127.0.0.1:8765")
    remote_token: StringProperty(name="Token", subtype="PASSWORD",
                                 description="Bearer token of the remote worker (stored in your preferences)")
    timeout: FloatProperty(name="Timeout", default=30.0, min=1.0, max=600.0, unit="TIME_ABSOLUTE",
                           description="Seconds to wait for one request")
    servers: CollectionProperty(type=SCAIL_PG_server, name="Batch Servers",
                                description="More workers for batch renders (registered by addon/servers.py)")

    def draw(self, context):
        layout = self.layout
        override = env_override()
        if override:
            layout.label(text=f"SCAIL_BACKEND_URL overrides these settings: {override[0]}", icon="INFO")
        layout.row().prop(self, "backend", expand=True)
        if self.backend == "LOCAL":
            col = layout.column()
            col.prop(self, "python_path")
            col.prop(self, "checkpoint_dir")
            col.prop(self, "sam3_dir")
            col.prop(self, "device")
            col.prop(self, "data_dir")
            draw_local_worker_status(col)
        else:
            col = layout.column()
            col.prop(self, "remote_url")
            col.prop(self, "remote_token")
            if not bpy.app.online_access:
                col.label(text="Online access is off: only localhost workers can be reached", icon="ERROR")
            col.operator("scail.test_connection", icon="LINKED")
        layout.prop(self, "timeout")
        draw_servers(layout, self)


def draw_local_worker_status(layout) -> None:
    state = LOCAL_WORKER.state
    row = layout.row()
    if state in {"starting", "ready"}:
        row.operator("scail.local_worker_stop", icon="CANCEL")
    else:
        row.operator("scail.local_worker_start", icon="PLAY")
    icon = {"ready": "CHECKMARK", "starting": "SORTTIME", "failed": "ERROR"}.get(state, "RADIOBUT_OFF")
    layout.label(text=f"Local worker: {state}" + (f" - {LOCAL_WORKER.message}" if LOCAL_WORKER.message else ""),
                 icon=icon)
    health = LOCAL_WORKER.health
    if health:
        for line in describe_health(health):
            layout.label(text=line)


def describe_health(health: dict) -> list[str]:
    """Short lines for GPU, memory and model state from ``GET /v1/health``."""
    lines = []
    gpu = health.get("gpu") or {}
    device = health.get("device", "")
    if isinstance(gpu, dict) and gpu.get("name"):
        used, total = gpu.get("memory_reserved_mb"), gpu.get("memory_total_mb")
        memory = f", {used / 1024:.1f}/{total / 1024:.1f} GiB in use" if used is not None and total else ""
        lines.append(f"GPU: {gpu['name']}{memory}")
    elif device:
        lines.append(f"Device: {device}")
    model = health.get("model") or {}
    if isinstance(model, dict):
        state = "loaded" if model.get("loaded") else "not loaded"
        lines.append(f"Model: {state} {model.get('dtype', '')}".rstrip())
    queue = health.get("queue") or {}
    if isinstance(queue, dict) and queue:
        lines.append(f"Jobs: {queue.get('running', 0)} running, {queue.get('queued', 0)} queued")
    return lines


classes = (SCAIL_AddonPreferences,)


def register() -> None:
    for cls in classes:
        bpy.utils.register_class(cls)


def unregister() -> None:
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
