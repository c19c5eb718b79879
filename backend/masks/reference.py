"""Reference-image masks: from the alpha channel when the image has one, else SAM3 image segmentation.

Polarity (README "Mask Semantics"): animation paints the subject on white (the reference's background should
show), replacement on black. Identities are ordered left to right and coloured like the driving clip's, so the
leftmost subject is blue in both unless the colours are overridden.
"""

from __future__ import annotations

import numpy as np
import torch

from backend.scail2.conditioning.masks import background_colour, mask_from_alpha
from backend.scail2.errors import Scail2InputError

from .check import check_mask
from .results import MaskResult, describe_identities
from .sam3_loader import Sam3Segmenter
from .settings import MaskSettings
from .tracking import Track, identity_colours, paint_frame, resolve_identities

# Sam3Processor.post_process_instance_segmentation defaults: keep instances scoring above 0.3, masks above 0.5.
IMAGE_SCORE_THRESHOLD = 0.3
MASK_PROBABILITY = 0.5


# An alpha channel is a cut-out only when both the subject and the cleared background cover at least this much
# of the image; a nearly opaque alpha (a few stray pixels) carries no subject and goes to SAM3 instead.
MIN_ALPHA_SIDE_FRACTION = 0.01


def has_useful_alpha(image: np.ndarray) -> bool:
    """True when ``image`` is RGBA and its alpha (> 127 = subject) separates a subject from a background."""
    if image.ndim != 3 or image.shape[-1] != 4:
        return False
    inside = float(np.mean(image[..., 3] > 127))
    return MIN_ALPHA_SIDE_FRACTION <= inside <= 1.0 - MIN_ALPHA_SIDE_FRACTION


@torch.inference_mode()
def segment_image(segmenter: Sam3Segmenter, image: np.ndarray, settings: MaskSettings) -> list[Track]:
    """SAM3 concept segmentation of one [H, W, 3|4] uint8 image: one single-frame ``Track`` per instance."""
    detector = segmenter.model.detector_model
    pixel_values = segmenter.image_preprocessing(image, segmenter.device, segmenter.dtype)[None]
    vision_embeds = detector.get_vision_features(pixel_values=pixel_values)
    threshold = (
        IMAGE_SCORE_THRESHOLD if settings.detection_threshold is None else settings.detection_threshold
    )
    tracks: list[Track] = []
    for prompt, input_ids, attention_mask in segmenter.encode_prompts(settings.prompts):
        outputs = detector(vision_embeds=vision_embeds, input_ids=input_ids, attention_mask=attention_mask)
        scores = outputs.pred_logits.float().sigmoid()[0]
        if outputs.presence_logits is not None:
            scores = scores * outputs.presence_logits.float().sigmoid()[0]
        probabilities = outputs.pred_masks.float().sigmoid()[0]  # [queries, h, w] at the detector's mask size
        for query in torch.nonzero(scores > threshold).flatten().tolist():
            mask = (probabilities[query] > MASK_PROBABILITY).cpu().numpy()
            if mask.any():
                tracks.append(Track(len(tracks), {0: mask}, float(scores[query]), prompt))
    return tracks


def make_reference_mask(
    image: np.ndarray,
    settings: MaskSettings,
    segmenter: Sam3Segmenter | None = None,
) -> MaskResult:
    """The reference mask for ``image`` ([H, W, 3|4] uint8): from alpha if it has a useful one, else SAM3.

    Without alpha a ``segmenter`` is required; the error says how to provide one.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] not in (3, 4) or image.dtype != np.uint8:
        raise Scail2InputError(
            f"reference: expected an [H, W, 3|4] uint8 image, got {image.shape} {image.dtype}",
            field="reference",
        )
    background = background_colour(settings.mode, "reference")
    colours = identity_colours(1, settings.colours)
    if has_useful_alpha(image):
        painted = mask_from_alpha(image[..., 3], settings.mode, "reference", colours[0])
        track = Track(0, {0: image[..., 3] > 127}, 1.0, "alpha")
        return MaskResult(
            describe_identities([track], colours),
            check_mask(painted, background, name="reference_mask"),
            image=painted,
            source="alpha",
        )
    if segmenter is None:
        raise Scail2InputError(
            "reference: the image has no alpha, so its automatic mask needs SAM3 (start the worker with --sam3 DIR)"
            " or send a reference mask",
            field="reference_mask",
        )
    tracks = segment_image(segmenter, image, settings)
    identities = resolve_identities(
        tracks, settings.mode, settings.identity_limit, settings.min_area_fraction
    )
    colours = identity_colours(len(identities), settings.colours)
    painted = paint_frame(identities, colours, 0, image.shape[:2], background)
    result = MaskResult(
        describe_identities(identities, colours),
        check_mask(painted, background, name="reference_mask"),
        image=painted,
    )
    if not identities:
        result.warnings.append(
            f"SAM3 found no subject for the prompts {', '.join(settings.prompts)}: the reference mask is all "
            "background; add a prompt that names the subject or send a mask / an RGBA reference"
        )
    return result
