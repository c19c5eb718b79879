"""A user's clone carries everything the suite and the demo read: test data with its origin, nothing outside.

These checks read the git index, so they describe what a fresh clone gets, not this machine's working tree.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
MAX_TRACKED_BYTES = 5 * 1024 * 1024
# What code that reads the team folder beside the repository looks like (a relative path or a path join).
# (written with [d] so that this line is not a match itself)
OUTSIDE_READ = re.compile(r'\.\./share[d]|parents?\[?\d*\]? */ *"share[d]"|"share[d]" */ *"(media|parity)"')


def tracked_files() -> list[str]:
    listing = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True)
    return [name for name in listing.stdout.split("\0") if name]


def test_nothing_reads_a_folder_beside_the_repository():
    offenders = []
    for name in tracked_files():
        path = REPO / name
        if path.suffix in {".md", ".safetensors", ".mp4", ".png"} or not path.is_file():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            if OUTSIDE_READ.search(line):
                offenders.append(f"{name}:{number}: {line.strip()}")
    assert not offenders, "the repository must carry what it reads:\n" + "\n".join(offenders)


def test_test_data_is_tracked_small_and_documented():
    tracked = set(tracked_files())
    data_files = [p for p in DATA.rglob("*") if p.is_file()]
    assert data_files
    untracked = [str(p.relative_to(REPO)) for p in data_files if str(p.relative_to(REPO)) not in tracked]
    assert not untracked, f"test data a clone would not get (ignored or never added): {untracked}"
    too_big = [name for name in tracked if (REPO / name).is_file() and (REPO / name).stat().st_size > MAX_TRACKED_BYTES]
    assert not too_big, f"tracked files over 5 MB: {too_big}"

    licences = (DATA / "media" / "README.md").read_text()
    for media in (DATA / "media").iterdir():
        if media.name != "README.md":
            assert f"| {media.name} |" in licences, f"{media.name} has no row in tests/data/media/README.md"

    origins = (DATA / "README.md").read_text()
    for fixture_set in (p for p in (DATA / "parity").iterdir() if p.is_dir()):
        assert (fixture_set / "config.json").is_file(), fixture_set
        assert f"## {fixture_set.name}/" in (DATA / "parity" / "README.md").read_text(), (
            f"parity set {fixture_set.name} is not described in tests/data/parity/README.md"
        )
    assert "official" in origins and "parity/README.md" in origins


def test_the_suite_runs_in_a_clone_named_like_the_project(tmp_path):
    """`git clone …/scail-motion` makes a folder whose name is no Python identifier. The repository root is the
    Blender extension (it has an ``__init__.py``); pytest must not try to import it as a package, or every test
    errors before it starts."""
    clone = tmp_path / "scail-motion"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=120)
    subprocess.run(["git", "-C", str(clone), "checkout", "--quiet", "--detach",
                    subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                   check=True).stdout.strip()], check=True, timeout=60)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "tests/test_repository_data.py::test_test_data_is_tracked_small_and_documented"],
                         cwd=clone, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "1 passed" in run.stdout
