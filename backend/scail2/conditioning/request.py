"""The generation request, its validation, and the official resize-to-cover + centre crop of every input.

Every image, mask and frame goes through the same resize as the official ``resize_for_rectangle_crop``: a bicubic
(antialiased) resize so the picture covers the target size with its aspect kept, then a centre crop. The target
size comes from ``size``: "512p" / "704p" pick a 512x896 / 704x1280 class size whose orientation follows the
reference image (square-ish references get 512x512 / 704x704), or an explicit (height, width) with sides that are
multiples of 32.

RGBA inputs: where no mask is given, alpha becomes the mask (the subject in blue on the mode's background), and
the picture is composited over that same background colour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import Scail2InputError
from ..schedulers.presets import SamplingSettings
from .masks import BLACK, Mode, background_colour, mask_from_alpha, validate_mask
from .media import VideoClip
from .segments import padded_windows

SIZE_MULTIPLE = 32
MIN_SIDE = 64
MAX_SIDE = 2048
MAX_EXTRA_REFERENCES = 7
# Size classes: (short side, long side). A reference whose long/short ratio is below SQUARE_RATIO is treated as
# square (the geometric midpoint between 1:1 and 16:9-ish 1.75).
SIZE_CLASSES = {"512p": (512, 896), "704p": (704, 1280)}
SQUARE_RATIO = math.sqrt(896 / 512)
RESIZE_CHUNK = 16  # frames resized at a time, to bound float temporaries for long clips
TailMode = Literal["pad", "drop"]


@dataclass
class ExtraReference:
    """An additional reference view (beta): an image and its palette mask.

    The mask uses the subject's colour on black for extra views of a character, or white over the usable area
    of a background plate. None takes the mask from the image's alpha (subject colour on black).
    """

    image: np.ndarray
    mask: np.ndarray | None = None


@dataclass
class GenerationRequest:
    """Everything one generation needs. See docs/ARCHITECTURE.md for the field semantics.

    ``loras`` None uses the preset's LoRAs (``sampling.loras``). ``segment_len``/``segment_overlap`` are the
    window and history lengths in frames (4k+1; the model was trained at 81/5). ``tail`` "pad" keeps every
    driving frame (ours); "drop" reproduces the official windows, which drop the frames after the last full
    window. ``color_anchor`` matches each later window's colour statistics to the first window's.
    """

    reference: np.ndarray
    driving: VideoClip
    prompt: str = ""
    mode: Mode = "animation"
    reference_mask: np.ndarray | None = None
    driving_mask: VideoClip | None = None
    extra_references: list[ExtraReference] = field(default_factory=list)
    negative_prompt: str = ""
    size: tuple[int, int] | str = "512p"
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    loras: dict[str, float] | None = None
    segment_len: int = 81
    segment_overlap: int = 5
    tail: TailMode = "pad"
    color_anchor: bool = False

    @property
    def effective_loras(self) -> dict[str, float]:
        return dict(self.sampling.loras if self.loras is None else self.loras)


@dataclass
class PreparedInputs:
    """Validated inputs at the target size, all uint8 RGB: what the pipeline turns into tensors."""

    height: int
    width: int
    reference: np.ndarray  # [H, W, 3]
    reference_mask: np.ndarray  # [H, W, 3]
    driving: np.ndarray  # [T, H, W, 3]
    driving_mask: np.ndarray  # [T, H, W, 3]
    extra_images: list[np.ndarray]  # each [H, W, 3]
    extra_masks: list[np.ndarray]  # each [H, W, 3]
    fps: float

    @property
    def num_frames(self) -> int:
        return int(self.driving.shape[0])


def resolve_size(size: tuple[int, int] | str, reference_hw: tuple[int, int]) -> tuple[int, int]:
    """(height, width) of the output. Named sizes follow the reference's orientation; explicit ones are kept."""
    if isinstance(size, str):
        text = size.strip().lower()
        if text in SIZE_CLASSES:
            short, long = SIZE_CLASSES[text]
            ref_h, ref_w = reference_hw
            ratio = max(ref_h, ref_w) / max(1, min(ref_h, ref_w))
            if ratio < SQUARE_RATIO:
                return short, short
            return (short, long) if ref_w >= ref_h else (long, short)
        parts = text.replace("×", "x").split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise Scail2InputError(
                f"size {size!r}: use '512p', '704p' or 'WIDTHxHEIGHT' (e.g. '896x512')", field="size"
            )
        size = (int(parts[1]), int(parts[0]))  # text is W x H, the tuple is (H, W)
    if not (isinstance(size, tuple | list) and len(size) == 2 and all(isinstance(s, int) for s in size)):
        raise Scail2InputError(f"size must be '512p', '704p' or (height, width), got {size!r}", field="size")
    height, width = size
    for name, side in (("height", height), ("width", width)):
        if side % SIZE_MULTIPLE or not MIN_SIDE <= side <= MAX_SIDE:
            problem = (f"is not a multiple of {SIZE_MULTIPLE}" if side % SIZE_MULTIPLE else
                       "is below the smallest allowed side" if side < MIN_SIDE else "is above the largest allowed side")
            nearest = min(MAX_SIDE, max(MIN_SIDE, round(side / SIZE_MULTIPLE) * SIZE_MULTIPLE))
            raise Scail2InputError(
                f"size {width}x{height}: the {name} {side} {problem}; sides must be multiples of {SIZE_MULTIPLE} "
                f"from {MIN_SIDE} to {MAX_SIDE} (nearest: {nearest})",
                field="size",
            )
    return int(height), int(width)


def resize_cover_crop(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """[N, h, w, C] uint8 -> [N, height, width, C] uint8: bicubic resize to cover (aspect kept), centre crop.

    Matches the official ``resize_for_rectangle_crop(reshape_mode="center")`` on uint8 tensors: the scaled side
    is truncated to an int, the crop offsets are floor-halved, and the bicubic output is rounded and clamped.
    """
    count, src_h, src_w = frames.shape[:3]
    if src_w / src_h > width / height:
        new_h, new_w = height, int(src_w * height / src_h)
    else:
        new_h, new_w = int(src_h * width / src_w), width
    top, left = (new_h - height) // 2, (new_w - width) // 2
    out = np.empty((count, height, width, frames.shape[3]), dtype=np.uint8)
    for start in range(0, count, RESIZE_CHUNK):
        chunk = torch.from_numpy(np.ascontiguousarray(frames[start : start + RESIZE_CHUNK]))
        chunk = chunk.permute(0, 3, 1, 2).to(torch.float32)
        if (new_h, new_w) != (src_h, src_w):
            chunk = F.interpolate(
                chunk, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True
            )
        chunk = chunk[:, :, top : top + height, left : left + width].round_().clamp_(0, 255).to(torch.uint8)
        out[start : start + chunk.shape[0]] = chunk.permute(0, 2, 3, 1).numpy()
    return out


def composite_over(frames: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """[..., 4] uint8 RGBA -> [..., 3] RGB composited over ``colour``; RGB input is returned unchanged."""
    if frames.shape[-1] == 3:
        return frames
    alpha = frames[..., 3:4].astype(np.float32) / 255.0
    background = np.asarray(colour, dtype=np.float32)
    mixed = frames[..., :3].astype(np.float32) * alpha + background * (1.0 - alpha)
    return np.clip(np.round(mixed), 0, 255).astype(np.uint8)


def _check_pixels(array: object, field: str, video: bool) -> np.ndarray:
    expected = "[T, H, W, 3|4]" if video else "[H, W, 3|4]"
    if not isinstance(array, np.ndarray):
        raise Scail2InputError(
            f"{field}: expected a numpy array {expected} uint8, got {type(array).__name__}", field=field
        )
    if array.ndim != (4 if video else 3) or array.shape[-1] not in (3, 4):
        raise Scail2InputError(f"{field}: expected shape {expected}, got {array.shape}", field=field)
    if array.dtype != np.uint8:
        raise Scail2InputError(f"{field}: expected uint8 pixels, got {array.dtype}", field=field)
    if 0 in array.shape:
        raise Scail2InputError(f"{field}: empty (shape {array.shape})", field=field)
    if min(array.shape[-3:-1]) < 16:
        raise Scail2InputError(
            f"{field}: {array.shape[-2]}x{array.shape[-3]} pixels is too small", field=field
        )
    return array


def _check_same_aspect(a: np.ndarray, b: np.ndarray, field: str, other: str) -> None:
    a_h, a_w = a.shape[-3:-1]
    b_h, b_w = b.shape[-3:-1]
    if abs(a_w / a_h - b_w / b_h) > 0.01 * (b_w / b_h):
        raise Scail2InputError(
            f"{field} is {a_w}x{a_h} but {other} is {b_w}x{b_h}: a mask must have its picture's aspect ratio",
            field=field,
        )


def _mask_or_alpha(
    mask: np.ndarray | None,
    picture: np.ndarray,
    mode: Mode,
    role: str,
    field: str,
    picture_field: str,
    video: bool,
) -> np.ndarray:
    """The given palette mask (validated), or one made from the picture's alpha channel."""
    if mask is not None:
        mask = _check_pixels(mask, field, video)[..., :3]
        _check_same_aspect(mask, picture, field, picture_field)
        validate_mask(mask, field, background_colour(mode, role))
        return mask
    if picture.shape[-1] == 4:
        return mask_from_alpha(picture[..., 3], mode, role)
    raise Scail2InputError(
        f"{field} is required: give a palette mask (subject in blue on "
        f"{'white' if background_colour(mode, role) == (255, 255, 255) else 'black'}) or an RGBA {picture_field} "
        "whose alpha marks the subject",
        field=field,
    )


@dataclass
class _ValidInputs:
    height: int
    width: int
    reference: np.ndarray
    reference_mask: np.ndarray
    driving: np.ndarray
    driving_mask: np.ndarray
    extras: list[tuple[np.ndarray, np.ndarray]]
    fps: float


def validate_request(request: GenerationRequest) -> tuple[int, int]:
    """Check every input of ``request`` without resizing anything; returns the output (height, width).

    Cheap enough to run before loading the model, so that a bad input fails in seconds, not after minutes.
    """
    valid = _validate(request)
    return valid.height, valid.width


def prepare_inputs(request: GenerationRequest) -> PreparedInputs:
    """Validate every input of ``request`` and bring it to the target size (uint8 RGB)."""
    valid = _validate(request)
    height, width = valid.height, valid.width
    mode = request.mode
    reference_rgb = composite_over(valid.reference, background_colour(mode, "reference"))
    driving_rgb = composite_over(valid.driving, background_colour(mode, "driving"))
    return PreparedInputs(
        height=height,
        width=width,
        reference=resize_cover_crop(reference_rgb[None], height, width)[0],
        reference_mask=resize_cover_crop(valid.reference_mask[None], height, width)[0],
        driving=resize_cover_crop(driving_rgb, height, width),
        driving_mask=resize_cover_crop(valid.driving_mask, height, width),
        extra_images=[
            resize_cover_crop(composite_over(image, BLACK)[None], height, width)[0]
            for image, _ in valid.extras
        ],
        extra_masks=[resize_cover_crop(mask[None], height, width)[0] for _, mask in valid.extras],
        fps=valid.fps,
    )


def _validate(request: GenerationRequest) -> _ValidInputs:
    mode = request.mode
    if mode not in ("animation", "replacement"):
        raise Scail2InputError(f"mode must be 'animation' or 'replacement', got {mode!r}", field="mode")
    if not isinstance(request.prompt, str) or not isinstance(request.negative_prompt, str):
        raise Scail2InputError("prompt and negative_prompt must be strings", field="prompt")
    reference = _check_pixels(request.reference, "reference", video=False)
    if not isinstance(request.driving, VideoClip):
        raise Scail2InputError("driving must be a VideoClip(frames, fps)", field="driving")
    driving = _check_pixels(request.driving.frames, "driving", video=True)
    fps = float(request.driving.fps)
    if not 0 < fps <= 240:
        raise Scail2InputError(
            f"driving fps must be in (0, 240], got {request.driving.fps!r}", field="driving"
        )
    if len(request.extra_references) > MAX_EXTRA_REFERENCES:
        raise Scail2InputError(
            f"at most {MAX_EXTRA_REFERENCES} additional references are supported, got {len(request.extra_references)}",
            field="extra_references",
        )
    height, width = resolve_size(request.size, reference.shape[:2])

    reference_mask = _mask_or_alpha(
        request.reference_mask, reference, mode, "reference", "reference_mask", "reference", video=False
    )
    driving_mask_frames = None if request.driving_mask is None else request.driving_mask.frames
    if driving_mask_frames is not None:
        driving_mask_frames = _check_pixels(driving_mask_frames, "driving_mask", video=True)
        if driving_mask_frames.shape[0] != driving.shape[0]:
            raise Scail2InputError(
                f"driving_mask has {driving_mask_frames.shape[0]} frames but the driving video has "
                f"{driving.shape[0]}: they must match one to one",
                field="driving_mask",
            )
    driving_mask = _mask_or_alpha(
        driving_mask_frames, driving, mode, "driving", "driving_mask", "driving", video=True
    )

    extras = []
    for index, extra in enumerate(request.extra_references):
        field = f"extra_references[{index}]"
        image = _check_pixels(extra.image, f"{field}.image", video=False)
        if extra.mask is not None:
            mask = _check_pixels(extra.mask, f"{field}.mask", video=False)[..., :3]
            _check_same_aspect(mask, image, f"{field}.mask", f"{field}.image")
            # Either polarity is valid here: white marks a usable background plate, black the views of a subject.
            validate_mask(mask, f"{field}.mask", expected_background=None, require_subject=False)
        elif image.shape[-1] == 4:
            mask = mask_from_alpha(image[..., 3], "replacement", "reference")  # subject colour on black
        else:
            raise Scail2InputError(
                f"{field}.mask is required (palette colour on black for a view of the subject, white over a "
                "background plate), or give an RGBA image",
                field=f"{field}.mask",
            )
        extras.append((image, mask))

    _check_windows(request, driving.shape[0])
    return _ValidInputs(height, width, reference, reference_mask, driving, driving_mask, extras, fps)


def _check_windows(request: GenerationRequest, num_frames: int) -> None:
    if request.tail not in ("pad", "drop"):
        raise Scail2InputError(f"tail must be 'pad' or 'drop', got {request.tail!r}", field="tail")
    try:
        padded_windows(num_frames, request.segment_len, request.segment_overlap)
    except ValueError as exc:
        raise Scail2InputError(str(exc), field="segment_len") from exc
