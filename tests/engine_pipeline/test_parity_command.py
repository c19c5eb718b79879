"""``python -m backend.scail2.parity DIR`` over every golden fixture set, as a user would run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
EXPECTED_SETS = {"dit", "t5", "clip", "vae", "masks", "segments", "scheduler", "pipeline"}


def _run(set_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "backend.scail2.parity", str(set_dir)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_every_fixture_set_passes(parity_root: Path):
    set_dirs = sorted(p for p in parity_root.iterdir() if p.is_dir())
    assert EXPECTED_SETS <= {p.name for p in set_dirs}
    # Two at a time: the sets are independent and the CI machine has two cores.
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = dict(zip(set_dirs, pool.map(_run, set_dirs), strict=True))
    for set_dir, run in runs.items():
        assert run.returncode == 0, (
            f"{set_dir.name}: exit {run.returncode}\n{run.stdout}\n{run.stderr[-3000:]}"
        )
        records = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
        assert records, f"{set_dir.name}: no cases reported"
        for record in records:
            assert set(record) >= {"set", "case", "max_rel_err", "tol", "ok"}
            assert record["set"] == set_dir.name and record["ok"] is True
            assert record["max_rel_err"] <= record["tol"]


def test_a_failing_case_exits_nonzero(parity_root: Path, tmp_path: Path):
    # A copy of the segments set with one expected window changed must be reported as not ok, exit 1.
    data = json.loads((parity_root / "segments" / "segments.json").read_text())
    data["cases"][0]["windows"] = [[0, 2]]
    broken = tmp_path / "segments"
    broken.mkdir()
    (broken / "segments.json").write_text(json.dumps(data))
    run = _run(broken)
    assert run.returncode == 1
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert [r["ok"] for r in records].count(False) == 1


@pytest.mark.parametrize("content", [None, "not a fixture"])
def test_unknown_folder_is_a_clear_error(tmp_path: Path, content):
    if content is not None:
        (tmp_path / "notes.txt").write_text(content)
    run = _run(tmp_path)
    assert run.returncode == 1
    record = json.loads(run.stdout.splitlines()[-1])
    assert record["ok"] is False and ("cannot tell" in record["error"] or "not a folder" in record["error"])
