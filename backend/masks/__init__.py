"""Automatic colour masks (SAM3) for driving clips and reference images.

``make_auto_masks(settings, load_sam3(folder), reference=..., driving=...)`` gives palette masks with the
polarity of the mode, identities coloured left to right; ``check_mask`` reports pixels the model would misread.
"""

from .auto import AutoMasks, make_auto_masks, needs_sam3
from .check import MaskCheck, check_mask
from .driving import MaskResult, make_driving_mask, write_mask_clip
from .reference import make_reference_mask
from .sam3_loader import Sam3Segmenter, check_sam3_folder, load_sam3
from .settings import DEFAULT_PROMPTS, MaskSettings, parse_prompts

__all__ = [
    "DEFAULT_PROMPTS",
    "AutoMasks",
    "MaskCheck",
    "MaskResult",
    "MaskSettings",
    "Sam3Segmenter",
    "check_mask",
    "check_sam3_folder",
    "load_sam3",
    "make_auto_masks",
    "make_driving_mask",
    "make_reference_mask",
    "needs_sam3",
    "parse_prompts",
    "write_mask_clip",
]
