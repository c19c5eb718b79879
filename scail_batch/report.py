"""The batch report next to the .blend: ``<name>_batch.json`` and an HTML contact sheet, one row per shot.

Plain Python (no ``bpy``): it formats the records that ``addon.batch.shot_report`` produced. The contact sheet
links the images beside the .blend (``//scail/...``) by relative paths, so it stays small and opens anywhere the
folder goes.
"""

from __future__ import annotations

import html
import json
import os
import tempfile
import urllib.parse
from pathlib import Path

FRAMES_PER_ROW = 4


def report_paths(blend_path: str | os.PathLike[str]) -> tuple[Path, Path]:
    blend = Path(blend_path)
    return blend.with_name(f"{blend.stem}_batch.json"), blend.with_name(f"{blend.stem}_contact_sheet.html")


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=path.name, dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(report: dict, path: Path) -> None:
    _write_atomic(path, json.dumps(report, indent=1, sort_keys=False) + "\n")


def pick_frames(frames: list[str], count: int = FRAMES_PER_ROW) -> list[str]:
    """``count`` frames spread evenly over the result, first and last included."""
    if len(frames) <= count:
        return list(frames)
    return [frames[round(i * (len(frames) - 1) / (count - 1))] for i in range(count)]


def _src(path: str, base: Path) -> str:
    try:
        relative = os.path.relpath(path, base)
    except ValueError:  # another drive on Windows
        return Path(path).as_uri()
    return urllib.parse.quote(relative.replace(os.sep, "/"))


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} s"


_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #ccc; padding: 6px; vertical-align: top; text-align: left; }
img { height: 120px; margin-right: 4px; background: #888; image-rendering: pixelated; }
.status-failed, .status-canceled, .status-disconnected { color: #b00020; font-weight: bold; }
.status-succeeded, .status-skipped { color: #1b7f3a; font-weight: bold; }
dl { margin: 0; display: grid; grid-template-columns: auto 1fr; column-gap: 8px; font-size: 90%; }
dt { color: #666; }
dd { margin: 0; }
"""


def _settings_html(shot: dict) -> str:
    items: list[tuple[str, object]] = [("camera", shot["camera"]),
                                       ("frames", f"{shot['frame_start']}–{shot['frame_end']}")]
    for key, value in (shot.get("settings") or {}).items():
        items.append((key, json.dumps(value) if isinstance(value, (list, dict)) else value))
    if shot.get("server"):
        items.append(("worker", shot["server"]))
    return "<dl>" + "".join(f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(str(v))}</dd>" for k, v in items) + \
        "</dl>"


def contact_sheet_html(report: dict, base: Path) -> str:
    rows = []
    for shot in report["shots"]:
        reference = (f'<img src="{_src(shot["reference"], base)}" alt="reference">'
                     if shot.get("reference") and os.path.isfile(shot["reference"]) else "—")
        frames = "".join(f'<img src="{_src(frame, base)}" alt="frame {os.path.basename(frame)}">'
                         for frame in pick_frames(shot.get("frames") or []))
        seconds = shot["seconds"]
        timings = (f"render {_seconds(seconds['render'])}<br>generate {_seconds(seconds['generate'])}<br>"
                   f"import {_seconds(seconds['import'])}")
        status = html.escape(shot["status"] or "not run")
        message = f"<br><small>{html.escape(shot['message'])}</small>" if shot.get("message") else ""
        rows.append(
            f"<tr><td><b>{html.escape(shot['name'])}</b><br>"
            f'<span class="status-{status}">{status}</span>{message}</td>'
            f"<td>{reference}</td><td>{frames or '—'}</td><td>{_settings_html(shot)}</td><td>{timings}</td></tr>")
    counts = report["counts"]
    title = f"SCAIL batch: {html.escape(os.path.basename(report['blend']))}"
    summary = (f"{counts['succeeded']} rendered, {counts['skipped']} unchanged, {counts['failed']} failed · "
               f"{report['seconds']:.0f} s · {report['started']}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{title}</h1><p>{html.escape(summary)}</p>"
            "<table><tr><th>Shot</th><th>Reference</th><th>Result frames</th><th>Settings</th><th>Timings</th></tr>"
            + "\n".join(rows) + "</table></body></html>\n")


def write_report(report: dict, blend_path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write the JSON report and the contact sheet beside the .blend; return their paths."""
    json_path, html_path = report_paths(blend_path)
    write_json(report, json_path)
    _write_atomic(html_path, contact_sheet_html(report, html_path.parent))
    return json_path, html_path
