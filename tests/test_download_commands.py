"""The download commands the README, the docs and error messages give a user run in the environment that
``pip install -e .`` makes: the ``hf`` command of huggingface_hub (``huggingface-cli`` is gone), with options it has."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HF = Path(sys.executable).with_name("hf")


def tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files", "*.md", "*.py"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()
    return [REPO / name for name in names if name != "tests/test_download_commands.py"]


def download_commands() -> list[tuple[str, list[str]]]:
    """Every ``hf download ...`` in tracked docs and code, continuation lines joined, as (where, argv)."""
    found = []
    for path in tracked_text_files():
        text = path.read_text().replace("\\\n", " ")
        for match in re.finditer(r"hf download [^`\n)\"']*", text):
            found.append((f"{path.relative_to(REPO)}: {match.group(0)}", shlex.split(match.group(0))))
    return found


def test_no_one_is_told_to_run_huggingface_cli():
    stale = [str(p.relative_to(REPO)) for p in tracked_text_files() if "huggingface-cli" in p.read_text()]
    assert not stale, f"huggingface-cli is not installed any more; use `hf download` in {stale}"


def test_every_download_command_uses_options_hf_has():
    assert HF.is_file(), f"{HF} is missing: huggingface_hub's `hf` command comes with the package's dependencies"
    help_text = subprocess.run([str(HF), "download", "--help"], capture_output=True, text=True, timeout=60,
                               check=True).stdout
    known = set(re.findall(r"--[a-z][a-z-]*", help_text))
    commands = download_commands()
    assert len(commands) >= 5, commands  # README, ENGINE.md (weights, repack, LoRA, SAM3), error messages
    for where, argv in commands:
        assert argv[:2] == ["hf", "download"] and "/" in argv[2], where
        unknown = {arg.split("=")[0] for arg in argv if arg.startswith("--")} - known
        assert not unknown, f"{where}: `hf download` has no option {unknown}"
