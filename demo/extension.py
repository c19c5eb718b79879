"""Build, validate and install the repository as a Blender extension with the tools inside the ``bpy`` wheel.

Used by ``make demo`` and the add-on tests; no Blender binary is needed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ADDON_ID = "scail_motion"


class ExtensionBuildError(RuntimeError):
    """The manifest or the package does not validate; the message is the builder's output."""


def extension_cli() -> tuple[Path, Path]:
    """The wheel's ``blender_ext.py`` and the tag list ``blender --command extension`` passes to it."""
    import bpy

    scripts = Path(bpy.utils.system_resource("SCRIPTS"))
    return (scripts / "addons_core" / "bl_pkg" / "cli" / "blender_ext.py",
            scripts / "modules" / "_bpy_internal" / "extensions" / "tags.py")


def run_extension_cli(command: str, *args: str) -> subprocess.CompletedProcess:
    cli, tags = extension_cli()
    return subprocess.run([sys.executable, str(cli), command, f"--valid-tags={tags}", *args],
                          capture_output=True, text=True, timeout=300)


def _check(result: subprocess.CompletedProcess, what: str) -> None:
    if result.returncode != 0:
        raise ExtensionBuildError(f"{what} failed:\n{result.stdout}{result.stderr}")


def build_extension(out_dir: Path) -> Path:
    """Validate the source tree, build the zip into ``out_dir``, validate the zip; return its path."""
    _check(run_extension_cli("validate", str(REPO)), "validating the extension source")
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob(f"{ADDON_ID}-*.zip"):
        old.unlink()
    _check(run_extension_cli("build", "--source-dir", str(REPO), "--output-dir", str(out_dir)), "building")
    (zip_path,) = out_dir.glob(f"{ADDON_ID}-*.zip")
    _check(run_extension_cli("validate", str(zip_path)), "validating the built zip")
    return zip_path


def install_extension(zip_path: Path, repo: str = "user_default") -> str:
    """Install and enable the zip in the current ``bpy`` session; return the add-on's module name."""
    import bpy

    result = bpy.ops.extensions.package_install_files(repo=repo, filepath=str(zip_path), enable_on_install=True)
    if result != {"FINISHED"}:
        raise ExtensionBuildError(f"installing {zip_path} returned {result}")
    return next(a.module for a in bpy.context.preferences.addons if a.module.endswith(f".{ADDON_ID}"))


def main(argv: list[str] | None = None) -> int:
    """``python -m demo.extension [OUT_DIR]`` (``make addon``): build and validate the zip into OUT_DIR (dist)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m demo.extension", description=main.__doc__)
    parser.add_argument("out_dir", nargs="?", type=Path, default=REPO / "dist",
                        help="folder for the zip, made if missing (default: dist/ in the repository)")
    args = parser.parse_args(argv)
    try:
        zip_path = build_extension(args.out_dir.resolve())
    except ExtensionBuildError as error:
        print(error, file=sys.stderr)
        return 1
    print(f"{zip_path}: built and validated; install it with Edit > Preferences > Get Extensions > Install from Disk")
    return 0


if __name__ == "__main__":
    sys.exit(main())
