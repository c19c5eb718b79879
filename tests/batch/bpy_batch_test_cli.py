"""``scail-batch``: a .blend rendered by the command line (the ``bpy`` module in its own process), its report,
contact sheet and exit codes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import bpy
from batch_helpers import job_ids, setup_shots, strip_of

REPO = Path(__file__).resolve().parents[2]


def scail_batch(args: list[str], user_dir: Path, console_script: bool = False) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("scail-batch")
    command = [str(script)] if console_script else [sys.executable, "-m", "scail_batch"]
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(user_dir))
    env.pop("SCAIL_BATCH_SUITE", None)
    return subprocess.run([*command, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_command_line_renders_reports_and_exits_with_the_right_code(scene, workers, broken_clip, tmp_path,
                                                                    tiny_checkpoint_dir):
    shots = setup_shots(scene, [("CamB", 1, 1), ("CamC", 11, 1)])
    shots[1].driving_file = str(broken_clip)
    bpy.ops.wm.save_mainfile()
    blend = bpy.data.filepath
    bpy.ops.wm.read_homefile(use_empty=True)  # the file belongs to the command now
    servers = [arg for worker in workers for arg in ("--server", worker.url, "--token", worker.token)]

    result = scail_batch([blend, *servers], tmp_path / "user1")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output  # one shot failed
    assert re.search(r"\[[#.]{30}\] 100% 2/2 shots", result.stderr), output  # the progress bar's last line
    assert "CamC: failed - could not decode the driving video" in result.stderr

    report = json.loads((tmp_path / "scene_batch.json").read_text())
    assert report["counts"] == {"shots": 2, "succeeded": 1, "skipped": 0, "failed": 1}
    assert report["exit_code"] == 1 and report["failed"] == ["CamC"]
    assert sorted(report["workers"]) == sorted(worker.url for worker in workers)
    good, bad = report["shots"]
    assert good["status"] == "succeeded" and len(good["frames"]) == 3 and all(map(os.path.isfile, good["frames"]))
    assert os.path.isfile(good["reference"]) and os.path.isfile(good["video"])
    assert good["settings"]["steps"] == 1 and good["settings"]["frame_range"] == [0, 3]
    assert good["seconds"]["generate"] > 0 and good["job"]["frames"] == 3
    assert bad["status"] == "failed" and "broken.mp4" in bad["message"] and bad["job"] is None

    sheet = (tmp_path / "scene_contact_sheet.html").read_text()
    assert sheet.count("<tr>") == 3  # header + one row per shot
    sources = re.findall(r'<img src="([^"]+)"', sheet)
    assert len(sources) == 1 + 3 + 1  # good: reference + 3 frames; bad: its reference
    assert all((tmp_path / source).is_file() for source in sources)

    # The .blend was saved with the shot's result on the timeline.
    bpy.ops.wm.open_mainfile(filepath=blend)
    scene = bpy.context.scene
    shot = scene.scail_batch.shots["CamB"]
    assert shot.status == "succeeded" and shot.content_hash
    strip = strip_of(scene, shot.result_key)
    assert (strip.channel, strip.frame_final_start, strip.frame_final_duration) == (2, 1, 3)

    # Again through the console script, only the good shot: nothing to render, exit 0.
    before = job_ids(workers)
    result = scail_batch([blend, "--shots", "CamB", *servers], tmp_path / "user2", console_script=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert job_ids(workers) == before
    report = json.loads((tmp_path / "scene_batch.json").read_text())
    assert report["counts"] == {"shots": 1, "succeeded": 0, "skipped": 1, "failed": 0}

    # --color-anchor sets the scene's colour anchoring: the shot's settings changed, so it renders again.
    result = scail_batch([blend, "--shots", "CamB", "--color-anchor", "off", *servers], tmp_path / "user5")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "scene_batch.json").read_text())
    assert report["counts"]["succeeded"] == 1 and report["shots"][0]["settings"]["color_anchor"] is False

    # A shot that does not exist: the batch does not start.
    result = scail_batch([blend, "--shots", "Nope", *servers], tmp_path / "user3")
    assert result.returncode == 2 and "no shot named 'Nope'" in result.stderr, result.stdout + result.stderr

    # With its own local worker instead of servers (the Python running the command has the backend).
    result = scail_batch([blend, "--shots", "CamB", "--checkpoint", str(tiny_checkpoint_dir), "--device", "cpu"],
                         tmp_path / "user4")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "scene_batch.json").read_text())
    assert report["counts"]["skipped"] == 1 and report["workers"][0].startswith("http://127.0.0.1:")
