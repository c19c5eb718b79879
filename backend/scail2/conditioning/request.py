"""The generation request, its validation, and the official resize-to-cover + centre crop of every input.

Every image, mask and frame goes through the same resize as the official ``resize_for_rectangle_crop``: a bicubic
(antialiased) resize so the picture covers the target size with its aspect kept, then a centre crop. The target
size comes from ``size``: "512p" / "704p" pick a 512x896 / 704x1280 class size whose orientation follows the
reference image (square-ish references get 512x512 / 704x704), or an explicit (height, width) with sides that are
multiples of 32.

RGBA inputs: where no mask is given, alpha becomes the mask (the subject in blue on the mode's background), and
the picture is composited over that same background colour.

Validation runs on the host (numpy, no pixel arithmetic). The pixel work (compositing, masks from alpha, resize and
crop) is torch on any device: ``prepare_inputs(request, device)`` uploads each uint8 frame once, in chunks, and
computes in float32 there. On the CPU it gives exactly the numbers of the earlier float-numpy path; on a GPU its
kernels may round a pixel differently (at most one level, docs/PERFORMANCE.md).
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
from .masks import BLACK, MaskRole, Mode, background_colour, mask_from_alpha, validate_mask
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
# Source frames are composited and resized this many float32 bytes at a time: bounds the temporaries of long
# clips (about 70 RGBA frames at 512x896, 8 at 4096x4096).
CHUNK_BYTES = 256 * 2**20
# The arithmetic dtype. float32, not the model's bf16: bf16 keeps 8 significant bits, so between 128 and 255 it
# cannot hold the fraction that decides how a pixel rounds (tests/engine_pipeline/test_inputs_device.py).
COMPUTE_DTYPE = torch.float32
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
    """Validated inputs at the target size, all uint8 RGB torch tensors (channels last).

    The references live on the device ``prepare_inputs`` worked on; the driving frames and masks there too, or in
    host memory when they exceed its ``max_device_bytes`` (``FrameSource`` uploads one window at a time then).
    """

    height: int
    width: int
    reference: torch.Tensor  # [H, W, 3]
    reference_mask: torch.Tensor  # [H, W, 3]
    driving: torch.Tensor  # [T, H, W, 3]
    driving_mask: torch.Tensor  # [T, H, W, 3]
    extra_images: list[torch.Tensor]  # each [H, W, 3]
    extra_masks: list[torch.Tensor]  # each [H, W, 3]
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


def cover_geometry(src_h: int, src_w: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(new_h, new_w, top, left): the size a ``src_h x src_w`` picture is resized to so it covers
    ``height x width`` with its aspect kept, and the offsets of the centre crop.

    As the official ``resize_for_rectangle_crop(reshape_mode="center")``: the scaled side is truncated to an int,
    the crop offsets are floor-halved.
    """
    if src_w / src_h > width / height:
        new_h, new_w = height, int(src_w * height / src_h)
    else:
        new_h, new_w = int(src_h * width / src_w), width
    return new_h, new_w, (new_h - height) // 2, (new_w - width) // 2


def resize_cover_crop(frames: torch.Tensor, height: int, width: int, dtype: torch.dtype = COMPUTE_DTYPE) -> torch.Tensor:
    """[N, h, w, C] uint8 -> [N, height, width, C] uint8 on the same device: bicubic (antialiased) resize to cover
    (aspect kept), centre crop (``cover_geometry``), computed in ``dtype``, rounded and clamped.

    Matches the official ``resize_for_rectangle_crop`` on uint8 tensors. The whole batch is worked on at once;
    ``prepare_inputs`` bounds it by ``CHUNK_BYTES``.
    """
    src_h, src_w = frames.shape[1:3]
    new_h, new_w, top, left = cover_geometry(src_h, src_w, height, width)
    pixels = frames.permute(0, 3, 1, 2).to(dtype)
    if (new_h, new_w) != (src_h, src_w):
        pixels = F.interpolate(pixels, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
    pixels = pixels[:, :, top : top + height, left : left + width].round_().clamp_(0, 255)
    return pixels.to(torch.uint8).permute(0, 2, 3, 1)


def composite_over(
    frames: torch.Tensor, colour: tuple[int, int, int], dtype: torch.dtype = COMPUTE_DTYPE
) -> torch.Tensor:
    """[..., 4] uint8 RGBA -> [..., 3] RGB composited over ``colour`` (computed in ``dtype``, rounded); RGB input
    is returned unchanged."""
    if frames.shape[-1] == 3:
        return frames
    alpha = frames[..., 3:4].to(dtype) / 255.0
    background = torch.tensor(colour, dtype=dtype, device=frames.device)
    mixed = frames[..., :3].to(dtype) * alpha + background * (1.0 - alpha)
    return mixed.round_().clamp_(0, 255).to(torch.uint8)


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
) -> np.ndarray | None:
    """The given palette mask (validated), or None when the picture's alpha channel will make it."""
    if mask is not None:
        mask = _check_pixels(mask, field, video)[..., :3]
        _check_same_aspect(mask, picture, field, picture_field)
        validate_mask(mask, field, background_colour(mode, role))
        return mask
    if picture.shape[-1] == 4:
        return None
    raise Scail2InputError(
        f"{field} is required: give a palette mask (subject in blue on "
        f"{'white' if background_colour(mode, role) == (255, 255, 255) else 'black'}) or an RGBA {picture_field} "
        "whose alpha marks the subject",
        field=field,
    )


@dataclass
class _ValidInputs:
    """The request's arrays, checked. A mask of None comes from its picture's alpha channel."""

    height: int
    width: int
    reference: np.ndarray
    reference_mask: np.ndarray | None
    driving: np.ndarray
    driving_mask: np.ndarray | None
    extras: list[tuple[np.ndarray, np.ndarray | None]]
    fps: float


@dataclass(frozen=True)
class InputSummary:
    """What validating a request tells without touching its pixels."""

    height: int
    width: int
    num_frames: int
    fps: float
    extra_references: int


def summarize_request(request: GenerationRequest) -> InputSummary:
    """Check every input of ``request`` as ``prepare_inputs`` does, without any pixel work; returns its summary.

    Cheap enough to run before loading the model or on upload, so that a bad input fails in seconds.
    """
    valid = _validate(request)
    return InputSummary(valid.height, valid.width, int(valid.driving.shape[0]), valid.fps, len(valid.extras))


def validate_request(request: GenerationRequest) -> tuple[int, int]:
    """Check every input of ``request`` without resizing anything; returns the output (height, width)."""
    summary = summarize_request(request)
    return summary.height, summary.width


def prepare_inputs(
    request: GenerationRequest,
    device: torch.device | str | None = None,
    max_device_bytes: int | None = None,
) -> PreparedInputs:
    """Validate every input of ``request`` and bring it to the target size: uint8 RGB tensors on ``device``.

    Each source frame is uploaded once (in chunks of ``CHUNK_BYTES``); compositing, masks from alpha, resize and
    crop run there in float32. ``max_device_bytes``: when the driving frames and masks at the target size would
    take more, they are kept in host memory (pinned when ``device`` is a GPU) instead; the references always stay
    on ``device``. None (the default) keeps everything on ``device``; the CPU when ``device`` is None.
    """
    valid = _validate(request)
    height, width = valid.height, valid.width
    mode = request.mode
    device = torch.device("cpu" if device is None else device)
    video_bytes = 2 * valid.driving.shape[0] * height * width * 3
    storage = device if max_device_bytes is None or video_bytes <= max_device_bytes else torch.device("cpu")

    def prepare(pictures, masks, background, alpha_mask, storage=device):
        return _prepare_frames(pictures, masks, background, alpha_mask, height, width, device, storage)

    reference, reference_mask = prepare(
        valid.reference[None], _frames(valid.reference_mask), background_colour(mode, "reference"),
        (mode, "reference"),
    )
    driving, driving_mask = prepare(
        valid.driving, valid.driving_mask, background_colour(mode, "driving"), (mode, "driving"), storage
    )
    extras = [
        prepare(image[None], _frames(mask), BLACK, ("replacement", "reference"))  # subject colour on black
        for image, mask in valid.extras
    ]
    return PreparedInputs(
        height=height,
        width=width,
        reference=reference[0],
        reference_mask=reference_mask[0],
        driving=driving,
        driving_mask=driving_mask,
        extra_images=[image[0] for image, _ in extras],
        extra_masks=[mask[0] for _, mask in extras],
        fps=valid.fps,
    )


def _frames(image: np.ndarray | None) -> np.ndarray | None:
    return None if image is None else image[None]


def _upload(frames: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 host frames -> a tensor on ``device`` (one copy; a read-only array is copied on the host first)."""
    if not frames.flags.writeable or not frames.flags.c_contiguous:
        frames = np.array(frames)
    return torch.from_numpy(frames).to(device)


def _prepare_frames(
    pictures: np.ndarray,
    masks: np.ndarray | None,
    background: tuple[int, int, int],
    alpha_mask: tuple[Mode, MaskRole],
    height: int,
    width: int,
    device: torch.device,
    storage: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, h, w, 3|4] pictures and their [N, h', w', 3] masks (None: from the pictures' alpha, ``mask_from_alpha``
    with ``alpha_mask`` = (mode, role)) -> both [N, height, width, 3] uint8 on ``storage``, worked on ``device``.

    Pictures are composited over ``background`` before the resize; masks are resized like pictures (bicubic, so
    their edges blend as in the official code).
    """
    count = pictures.shape[0]
    pin = storage.type == "cpu" and device.type == "cuda"
    pictures_out, masks_out = (
        torch.empty((count, height, width, 3), dtype=torch.uint8, device=storage, pin_memory=pin) for _ in range(2)
    )
    largest = max(pictures.shape[1] * pictures.shape[2], 0 if masks is None else masks.shape[1] * masks.shape[2])
    step = max(1, CHUNK_BYTES // (largest * 4 * COMPUTE_DTYPE.itemsize))
    for start in range(0, count, step):
        stop = min(count, start + step)
        chunk = _upload(pictures[start:stop], device)
        pictures_out[start:stop] = resize_cover_crop(composite_over(chunk, background), height, width)
        if masks is None:
            mask = mask_from_alpha(chunk[..., 3], *alpha_mask)
        else:
            mask = _upload(masks[start:stop], device)
        masks_out[start:stop] = resize_cover_crop(mask, height, width)
    return pictures_out, masks_out


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
            mask = None  # from alpha when prepared: subject colour on black
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
