"""Backend operators: start/stop the local worker, test the remote connection."""

from __future__ import annotations

import os
import threading

import bpy

from ..addon import ADDON_PACKAGE, connection
from .common import register_factory, report_errors


def _local_paths(prefs) -> tuple[str, str, str, str]:
    python = bpy.path.abspath(prefs.python_path).strip()
    checkpoint = bpy.path.abspath(prefs.checkpoint_dir).strip()
    if not python or not os.path.isfile(python):
        raise connection.BackendUnavailable(
            f"Python interpreter not found: {python or '(empty)'}; set the path of a Python environment with "
            "the SCAIL backend installed in the add-on preferences")
    if not checkpoint or not os.path.isdir(checkpoint):
        raise connection.BackendUnavailable(f"checkpoint folder not found: {checkpoint or '(empty)'}")
    data_dir = bpy.path.abspath(prefs.data_dir).strip()
    if not data_dir:
        try:
            data_dir = bpy.utils.extension_path_user(ADDON_PACKAGE, path="worker", create=True)
        except (ValueError, RuntimeError):
            raise connection.BackendUnavailable("set a Job Store folder for the local worker") from None
    os.makedirs(data_dir, exist_ok=True)
    return python, checkpoint, data_dir, os.path.join(data_dir, "worker.log")


def _sam3_dir(prefs) -> str:
    """The optional SAM3 folder; a set but missing one is an error (else auto masks would fail much later)."""
    folder = bpy.path.abspath(prefs.sam3_dir).strip()
    if folder and not os.path.isdir(folder):
        raise connection.BackendUnavailable(f"SAM3 folder not found: {folder}; clear SAM3 Folder in the add-on "
                                            "preferences to start the worker without automatic masks")
    return folder


class SCAIL_OT_local_worker_start(bpy.types.Operator):
    """Start the local worker (loads the model; the status shows when it is ready)"""

    bl_idname = "scail.local_worker_start"
    bl_label = "Start Local Worker"

    def execute(self, context):
        def action():
            prefs = connection.preferences(context)
            python, checkpoint, data_dir, log_path = _local_paths(prefs)
            args = (python, checkpoint, data_dir, prefs.device, log_path, _sam3_dir(prefs))
            if bpy.app.background:
                try:
                    worker = connection.LOCAL_WORKER.start(*args)
                except Exception as error:  # noqa: BLE001 - reported with the launcher's message
                    self.report({"ERROR"}, f"the local worker failed to start: {error} (log: {log_path})")
                    return {"CANCELLED"}
                self.report({"INFO"}, f"Local worker ready at {worker.url}")
                return {"FINISHED"}

            def start_quietly():
                try:
                    connection.LOCAL_WORKER.start(*args)
                except Exception:  # noqa: BLE001 - the manager keeps the message for the status line
                    pass

            threading.Thread(target=start_quietly, daemon=True, name="scail-local-worker").start()
            from ..addon import jobs

            jobs.ensure_timer()
            self.report({"INFO"}, "Starting the local worker")
            return {"FINISHED"}

        return report_errors(self, action)


class SCAIL_OT_local_worker_stop(bpy.types.Operator):
    """Stop the local worker"""

    bl_idname = "scail.local_worker_stop"
    bl_label = "Stop Local Worker"

    def execute(self, context):
        connection.LOCAL_WORKER.stop()
        self.report({"INFO"}, "Local worker stopped")
        return {"FINISHED"}


class SCAIL_OT_test_connection(bpy.types.Operator):
    """Check that the worker answers and accepts the token"""

    bl_idname = "scail.test_connection"
    bl_label = "Test Connection"

    def execute(self, context):
        def action():
            from ..addon.jobs import describe_error

            target = connection.resolve_target(context)
            client = connection.make_client(target)
            try:
                health = client.health()
                client.list_jobs()  # health is public; listing jobs proves the token
            except Exception as error:  # noqa: BLE001 - shown to the user
                _status, message = describe_error(error, target)
                self.report({"ERROR"}, message)
                return {"CANCELLED"}
            model = health.get("model") or {}
            self.report({"INFO"}, f"Connected to {target.url}: {health.get('status', 'ok')}, device "
                                  f"{health.get('device', '?')}, model {'loaded' if model.get('loaded') else 'not loaded'}")
            return {"FINISHED"}

        return report_errors(self, action)


classes = (SCAIL_OT_local_worker_start, SCAIL_OT_local_worker_stop, SCAIL_OT_test_connection)
register, unregister = register_factory(classes)
