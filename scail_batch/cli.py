"""``scail-batch``: render every enabled shot of a .blend on a render node, then save it with the results.

    scail-batch scene.blend [--shots A,B] [--server URL --token T ...] [--local-python PY] [--checkpoint DIR]
                [--color-anchor auto|on|off]

or, with a Blender binary instead of the ``bpy`` module (the add-on installed there, or loaded from this tree):

    blender -b scene.blend --python-expr "import scail_batch.cli as c; c.main()" -- [--shots A,B] [...]

Workers: each ``--server`` (with its ``--token``, or one ``--token`` for all) and/or a local worker started from
``--local-python`` on ``--checkpoint``; without either, the add-on's preferences (or ``SCAIL_BACKEND_URL`` /
``SCAIL_TOKEN``). Shots go to the least busy worker. Prints a progress bar, saves the .blend, writes
``<name>_batch.json`` and ``<name>_contact_sheet.html`` beside it. Exit code: 0 when every shot succeeded or was
unchanged, 1 when a shot failed, 2 when the batch could not start (bad arguments, no worker, no shots).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .report import write_report

ADDON_ID = "scail_motion"
SOURCE_REPO = "scail_batch_source"  # the extension repository that points at this source tree
EXIT_OK, EXIT_FAILED, EXIT_SETUP = 0, 1, 2
REPO = Path(__file__).resolve().parents[1]  # the extension's root folder (blender_manifest.toml)


class SetupError(Exception):
    """The batch cannot start; the message says what to fix."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scail-batch", description="Render the SCAIL shots of a .blend and save it with the results.")
    parser.add_argument("blend", nargs="?", help="the .blend file (optional inside blender -b FILE)")
    parser.add_argument("--shots", default="", help="comma-separated shot names (default: every enabled shot)")
    parser.add_argument("--server", action="append", default=[], metavar="URL",
                        help="a worker URL; repeat for several workers")
    parser.add_argument("--token", action="append", default=[], metavar="T",
                        help="the token of each --server in order, or one token for all")
    parser.add_argument("--local-python", metavar="PY",
                        help="start a local worker with this Python (an environment with the SCAIL backend)")
    parser.add_argument("--checkpoint", metavar="DIR", help="checkpoint folder for the local worker")
    parser.add_argument("--device", default="cuda", help="torch device of the local worker (default: cuda)")
    parser.add_argument("--no-save", action="store_true", help="do not save the .blend afterwards")
    parser.add_argument("--color-anchor", choices=("auto", "on", "off"),
                        help="colour anchoring against drift between the windows of long clips, set as the scene's "
                        "setting (saved with the .blend; shots with their own setting keep it). auto: on for clips "
                        "longer than one window (the default of a new scene)")
    args = parser.parse_args(argv)
    if args.token and len(args.token) not in {1, len(args.server)}:
        parser.error(f"give one --token for all servers or one per --server ({len(args.server)})")
    if args.token and not args.server:
        parser.error("--token needs a --server")
    return args


def _blender_argv() -> list[str] | None:
    """Our arguments when running inside a Blender binary (after ``--``), else None."""
    import bpy

    if not bpy.app.binary_path:
        return None
    return sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []


# ---------------------------------------------------------------------------------------------------------------
# The add-on


def enabled_addon() -> str | None:
    import bpy

    return next((a.module for a in bpy.context.preferences.addons if a.module.rsplit(".", 1)[-1] == ADDON_ID),
                None)


def load_addon_from_source(temporary: list[str]) -> str:
    """Enable the extension from this source tree through a local extension repository (no zip, no copy)."""
    import addon_utils
    import bpy

    prefs = bpy.context.preferences
    folder = Path(tempfile.mkdtemp(prefix="scail_batch_ext_"))
    temporary.append(str(folder))
    link = folder / ADDON_ID
    try:
        link.symlink_to(REPO, target_is_directory=True)
    except OSError:  # no symlinks (Windows without the privilege): a copy of the add-on's files
        shutil.copytree(REPO, link, ignore=shutil.ignore_patterns(
            ".*", "__pycache__", "tests", "benchmarks", "docs", "demo", "demo_out", "scail_batch", "training", "*.blend*"))
    if SOURCE_REPO not in {repo.module for repo in prefs.extensions.repos}:
        prefs.extensions.repos.new(name=SOURCE_REPO, module=SOURCE_REPO, custom_directory=str(folder),
                                   source="USER")
    errors: list[BaseException] = []
    module = f"bl_ext.{SOURCE_REPO}.{ADDON_ID}"
    if addon_utils.enable(module, default_set=True, handle_error=errors.append) is None or errors:
        raise SetupError(f"could not enable the SCAIL add-on from {REPO}: {errors}")
    return module


def configure_workers(module: str, args: argparse.Namespace, temporary: list[str]) -> bool:
    """Put the command line's workers into the preferences; return True when a local worker was started."""
    import bpy

    prefs = bpy.context.preferences.addons[module].preferences
    if args.server:
        tokens = args.token if len(args.token) == len(args.server) else args.token * len(args.server) or \
            [""] * len(args.server)
        prefs.backend, prefs.remote_url, prefs.remote_token = "REMOTE", args.server[0].rstrip("/"), tokens[0]
        prefs.servers.clear()
        for url, token in zip(args.server[1:], tokens[1:], strict=True):
            server = prefs.servers.add()
            server.url, server.token = url.rstrip("/"), token
    if not (args.local_python or args.checkpoint):
        return False
    if not args.checkpoint:
        raise SetupError("--local-python needs --checkpoint DIR (the folder with the SCAIL-2 weights)")
    python = args.local_python or ("" if bpy.app.binary_path else sys.executable)
    if not python:
        raise SetupError("inside Blender, give --local-python: the Python of an environment with the backend")
    if args.server:  # the local worker becomes the preferences' backend; the servers join it in the pool
        server = prefs.servers.add()
        server.url, server.token = prefs.remote_url, prefs.remote_token
    prefs.backend, prefs.python_path, prefs.checkpoint_dir = "LOCAL", python, os.path.abspath(args.checkpoint)
    prefs.device = args.device
    prefs.data_dir = tempfile.mkdtemp(prefix="scail_batch_worker_")  # results are downloaded beside the .blend
    temporary.append(prefs.data_dir)
    try:
        bpy.ops.scail.local_worker_start()
    except RuntimeError as error:  # the operator's error report
        raise SetupError(str(error).removeprefix("Error: ").strip()) from None
    return True


# ---------------------------------------------------------------------------------------------------------------
# Progress


class ProgressBar:
    """One line per change of a shot's state (or every few seconds); redrawn in place on a terminal."""

    WIDTH = 30

    def __init__(self, stream=None, every_seconds: float = 5.0):
        self.stream = stream or sys.stderr
        self.every = every_seconds
        self.last_text = ""
        self.last_key = ""
        self.last_time = 0.0
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def update(self, run) -> None:
        scene = run.scene()
        if scene is None:
            return
        from_shots = [(shot.name, shot.status, shot.progress) for shot in scene.scail_batch.shots
                      if shot.name in run.names]
        fraction = scene.scail_batch.progress
        filled = int(round(fraction * self.WIDTH))
        ended = sum(status in {"succeeded", "skipped", "failed", "canceled", "disconnected"}
                    for _n, status, _p in from_shots)
        states = " | ".join(f"{name} {status}" + (f" {progress * 100:.0f}%" if 0 < progress < 1 else "")
                            for name, status, progress in from_shots)
        text = f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {fraction * 100:3.0f}% {ended}/{len(from_shots)} " \
               f"shots | {states}"
        now = time.monotonic()
        key = " | ".join(f"{name} {status}" for name, status, _p in from_shots)
        if self.tty:
            self.stream.write("\r" + text[:200].ljust(len(self.last_text[:200])))
            if run.finished:
                self.stream.write("\n")
        elif key != self.last_key or now - self.last_time >= self.every or run.finished:
            self.stream.write(text + "\n")
        else:
            return
        self.stream.flush()
        self.last_text, self.last_key, self.last_time = text, key, now


# ---------------------------------------------------------------------------------------------------------------


def build_report(pkg, scene, run, blend: str) -> dict:
    shots = [pkg.addon.batch.shot_report(scene, shot) for shot in scene.scail_batch.shots if shot.name in run.names]
    failed = [s["name"] for s in shots if s["status"] in {"failed", "canceled", "disconnected"}]
    return {
        "blend": blend,
        "started": datetime.datetime.fromtimestamp(run.started_at).isoformat(timespec="seconds"),
        "seconds": round(run.finished_at - run.started_at, 3),
        "workers": [target.url for target in run.pool],
        "notes": run.notes + run.warnings,
        "counts": {"shots": len(shots), "succeeded": sum(s["status"] == "succeeded" for s in shots),
                   "skipped": sum(s["status"] == "skipped" for s in shots), "failed": len(failed)},
        "failed": failed,
        "exit_code": EXIT_FAILED if failed else EXIT_OK,
        "shots": shots,
    }


def run(argv: list[str] | None = None) -> int:
    """The whole command; returns the exit code."""
    blender_args = None
    if argv is None and "bpy" in sys.modules:
        blender_args = _blender_argv()
    args = parse_args(blender_args if blender_args is not None else (sys.argv[1:] if argv is None else argv))
    temporary: list[str] = []  # folders this run made: the add-on link and the local worker's job store
    try:
        return _run(args, temporary)
    except SetupError as error:
        print(f"scail-batch: {error}", file=sys.stderr, flush=True)
        return EXIT_SETUP
    finally:
        for folder in temporary:
            shutil.rmtree(folder, ignore_errors=True)


def _run(args: argparse.Namespace, temporary: list[str]) -> int:
    if args.blend and not os.path.isfile(args.blend):
        raise SetupError(f"{args.blend}: no such .blend file")
    import bpy  # the module (console script) or Blender's own

    if not args.blend and not bpy.data.filepath:
        raise SetupError("give the .blend file to render")
    module = enabled_addon() or load_addon_from_source(temporary)
    pkg = importlib.import_module(module)
    started_worker = configure_workers(module, args, temporary)
    try:
        if args.blend and (not bpy.data.filepath or not os.path.samefile(args.blend, bpy.data.filepath)):
            bpy.ops.wm.open_mainfile(filepath=os.path.abspath(args.blend))
        scene = bpy.context.scene
        if args.color_anchor:
            scene.scail.color_anchor = args.color_anchor.upper()
        names = [name.strip() for name in args.shots.split(",") if name.strip()] or None
        bar = ProgressBar()
        try:
            batch_run = pkg.addon.batch.run_batch(scene, names, bpy.context, on_step=bar.update)
        except (pkg.addon.batch.BatchError, pkg.addon.connection.BackendUnavailable) as error:
            raise SetupError(str(error)) from None
        for note in batch_run.notes + batch_run.warnings:
            print(f"scail-batch: note: {note}", file=sys.stderr)
        if not args.no_save:
            bpy.ops.wm.save_mainfile()
        report = build_report(pkg, scene, batch_run, bpy.data.filepath)
        json_path, html_path = write_report(report, bpy.data.filepath)
    finally:
        if started_worker:
            pkg.addon.connection.LOCAL_WORKER.stop()
    for shot in report["shots"]:
        line = f"  {shot['name']}: {shot['status']}" + (f" - {shot['message']}" if shot["message"] else "")
        print(line, file=sys.stderr if shot["name"] in report["failed"] else sys.stdout)
    print(f"scail-batch: {report['counts']['succeeded']} rendered, {report['counts']['skipped']} unchanged, "
          f"{report['counts']['failed']} failed; report {json_path}, contact sheet {html_path}", flush=True)
    return report["exit_code"]


def main(argv: list[str] | None = None) -> None:
    code = run(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    if "bpy" in sys.modules and not sys.modules["bpy"].app.binary_path:
        # The bpy module's own exit teardown can hang after worker threads ran; the verdict is known here.
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    main()
