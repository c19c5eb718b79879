"""Automatic masks from the command line, and the ``--driving-mask auto`` hook for ``scail2-generate``.

    python -m backend.masks.cli --sam3 ~/models/sam3 --mode animation \\
        --reference ref.png --driving dance.mp4 --prompts "person, character" --out masks/

writes ``masks/reference_mask.png``, ``masks/driving_mask.mkv`` (FFV1, lossless, the clip's fps; ``--png`` for a
PNG folder instead) and ``masks/masks.json`` (identities, checks, warnings). Inspect them, fix what is wrong, and
pass them to ``scail2-generate --reference-mask ... --driving-mask ...``.

``scail2-generate`` can make them on the fly: ``add_auto_mask_arguments(parser)`` adds ``--sam3 DIR``,
``--mask-prompts``, ``--mask-identities`` and ``--mask-colours``; with ``--driving-mask auto`` and/or
``--reference-mask auto``, ``AutoMaskHook.take(args)`` before ``build_request(args)`` and ``hook.apply(request)``
after it fill the masks in.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from backend.scail2.errors import Scail2Error

from .settings import DEFAULT_PROMPTS, MaskSettings

AUTO = "auto"
EXIT_USER_ERROR = 2


def add_auto_mask_arguments(parser: argparse.ArgumentParser) -> None:
    """The SAM3 options shared by this CLI and ``scail2-generate``."""
    group = parser.add_argument_group("automatic masks (SAM3)")
    group.add_argument("--sam3", type=Path, default=None, help="SAM3 weights folder (facebook/sam3 layout)")
    group.add_argument(
        "--mask-prompts",
        default=", ".join(DEFAULT_PROMPTS),
        help="comma-separated SAM3 text prompts naming the subjects (default: %(default)s)",
    )
    group.add_argument(
        "--mask-identities",
        type=int,
        default=None,
        help="most subjects to colour (default 2 animation, 1 replacement)",
    )
    group.add_argument(
        "--mask-colours",
        default=None,
        help="colour per subject, left to right, e.g. 'red,blue' (default blue, red, green, magenta, cyan, yellow)",
    )
    group.add_argument(
        "--mask-threshold",
        type=float,
        default=None,
        help="SAM3 detection threshold (default: the checkpoint's)",
    )


def settings_from_args(args: argparse.Namespace) -> MaskSettings:
    return MaskSettings.build(
        args.mode,
        prompts=args.mask_prompts,
        max_identities=args.mask_identities,
        colours=args.mask_colours,
        detection_threshold=args.mask_threshold,
    )


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _load(folder: Path | None, device: str | None):
    import torch

    from .sam3_loader import load_sam3

    device = device or _default_device()
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    return load_sam3(folder, device=device, dtype=dtype)


@dataclasses.dataclass
class AutoMaskHook:
    """Which masks ``scail2-generate`` should make itself; ``take`` removes the ``auto`` values from ``args``."""

    settings: MaskSettings | None = None
    folder: Path | None = None
    device: str | None = None
    reference: bool = False
    driving: bool = False

    @classmethod
    def take(cls, args: argparse.Namespace) -> AutoMaskHook:
        hook = cls()
        for role in ("reference", "driving"):
            name = f"{role}_mask"
            if getattr(args, name, None) is not None and str(getattr(args, name)) == AUTO:
                setattr(hook, role, True)
                setattr(args, name, None)
        if hook.reference or hook.driving:
            hook.settings = settings_from_args(args)
            hook.folder = args.sam3
            hook.device = getattr(args, "device", None)
        return hook

    def apply(self, request: Any) -> Any:
        """The request with its ``auto`` masks made (SAM3 is loaded only if an input needs it, then freed)."""
        if not (self.reference or self.driving):
            return request
        from .auto import make_auto_masks, needs_sam3

        reference = request.reference if self.reference else None
        driving = request.driving if self.driving else None
        segmenter = _load(self.folder, self.device) if needs_sam3(reference, driving) else None
        masks = make_auto_masks(self.settings, segmenter, reference=reference, driving=driving)
        del segmenter
        for warning in masks.warnings:
            print(f"masks: warning: {warning}", file=sys.stderr)
        changes = {}
        if masks.reference is not None:
            changes["reference_mask"] = masks.reference.image
        if masks.driving is not None:
            changes["driving_mask"] = masks.driving.clip
        return dataclasses.replace(request, **changes)


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
    from backend.scail2.media import read_clip, read_image, write_image

    from .auto import make_auto_masks, needs_sam3
    from .driving import write_mask_clip

    if args.reference is None and args.driving is None:
        raise Scail2Error("nothing to do: give --reference and/or --driving")
    settings = settings_from_args(args)
    reference = read_image(args.reference, field="reference") if args.reference else None
    driving = read_clip(args.driving, field="driving", fps=args.fps) if args.driving else None
    segmenter = _load(args.sam3, args.device) if needs_sam3(reference, driving) else None
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
