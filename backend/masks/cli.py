"""Automatic masks from the command line.

    python -m backend.masks.cli --sam3 ~/models/sam3 --mode animation \\
        --reference ref.png --driving dance.mp4 --prompts "person, character" --out masks/

writes ``masks/reference_mask.png``, ``masks/driving_mask.mkv`` (FFV1, lossless, the clip's fps; ``--png`` for a
PNG folder instead) and ``masks/masks.json`` (identities, checks, warnings). Inspect them, fix what is wrong, and
pass them to ``scail2-generate --reference-mask ... --driving-mask ...``.

``scail2-generate --driving-mask auto`` makes them on the fly with the same options (`arguments`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from backend.scail2.errors import Scail2Error

from .arguments import add_auto_mask_arguments, load_segmenter, settings_from_args

EXIT_USER_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m backend.masks.cli",
        description="Make SCAIL-2 colour masks with SAM3 for a reference image and/or a driving clip.",
    )
    parser.add_argument("--mode", choices=("animation", "replacement"), default="animation")
    parser.add_argument("--reference", type=Path, help="reference image (an RGBA cut-out uses its alpha)")
    parser.add_argument("--driving", type=Path, help="driving video, zip/folder of PNG frames")
    parser.add_argument("--fps", type=float, help="frame rate of PNG-sequence driving inputs")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--png", action="store_true", help="write the driving mask as PNG frames, not FFV1")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    add_auto_mask_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Make and write the masks ``args`` asks for; returns the ``masks.json`` summary."""
    from backend.scail2.conditioning.media import read_clip, read_image, write_image

    from .auto import make_auto_masks, needs_sam3
    from .driving import write_mask_clip

    if args.reference is None and args.driving is None:
        raise Scail2Error("nothing to do: give --reference and/or --driving")
    settings = settings_from_args(args)
    reference = read_image(args.reference, field="reference") if args.reference else None
    driving = read_clip(args.driving, field="driving", fps=args.fps) if args.driving else None
    segmenter = load_segmenter(args.sam3, args.device) if needs_sam3(reference, driving) else None
    masks = make_auto_masks(settings, segmenter, reference=reference, driving=driving)
    out = args.out.expanduser()
    out.mkdir(parents=True, exist_ok=True)
    summary = masks.as_dict()
    if masks.reference is not None:
        write_image(masks.reference.image, out / "reference_mask.png")
        summary["reference"]["file"] = "reference_mask.png"
    if masks.driving is not None:
        name = "driving_mask" if args.png else "driving_mask.mkv"
        write_mask_clip(masks.driving.clip, out / name)
        summary["driving"].update(file=name, fps=masks.driving.clip.fps, frames=masks.driving.clip.num_frames)
    summary["mode"] = settings.mode
    summary["prompts"] = list(settings.prompts)
    (out / "masks.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = run(args)
    except Scail2Error as exc:
        print(f"masks: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    for warning in summary["warnings"]:
        print(f"masks: warning: {warning}", file=sys.stderr)
    for role in ("reference", "driving"):
        if summary[role] is not None:
            colours = ", ".join(i["colour"] for i in summary[role]["identities"]) or "none"
            print(f"{role} mask: {summary[role]['file']} (identities: {colours})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
