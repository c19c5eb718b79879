"""The automatic-mask command-line options and the ``--*-mask auto`` hook, shared by two command lines.

``python -m backend.masks.cli`` and ``scail2-generate`` both take ``--sam3 DIR``, ``--mask-prompts``,
``--mask-identities``, ``--mask-colours`` and ``--mask-threshold`` (`add_auto_mask_arguments`). In
``scail2-generate``, ``--driving-mask auto`` and/or ``--reference-mask auto`` make the masks on the fly:
``AutoMaskHook.take(args)`` before ``build_request(args)`` and ``hook.apply(request)`` after it fill them in. This is
a library module, so neither command line imports the other.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from .settings import DEFAULT_PROMPTS, MaskSettings

AUTO = "auto"


def add_auto_mask_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the SAM3 options (``--sam3``, ``--mask-prompts``, ...) to ``parser``."""
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


def load_segmenter(folder: Path | None, device: str | None):
    """SAM3 from ``folder`` on ``device`` (default: cuda if available, else cpu), bf16 on CUDA."""
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
        segmenter = load_segmenter(self.folder, self.device) if needs_sam3(reference, driving) else None
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
