"""``prepare_inputs`` in torch (any device) against the float-numpy path it replaced (issue #15, item 3).

``_numpy_prepare`` below is the earlier implementation, copied from ``conditioning/request.py`` and
``conditioning/masks.py`` as of commit b8f5d33 and kept here only as the oracle: RGBA composited in float32 numpy
at the source size, masks from alpha with ``np.where``, then the float32 bicubic resize in chunks of 16 frames.
On the CPU the torch path must give the same bytes; on a GPU (run when one is present) pixels may round one level
differently.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from backend.scail2 import ExtraReference, GenerationRequest, VideoClip
from backend.scail2.conditioning.masks import PALETTE_RGB, background_colour
from backend.scail2.conditioning.request import (
    COMPUTE_DTYPE,
    _validate,
    composite_over,
    prepare_inputs,
)
from backend.scail2.conditioning.segments import padded_windows
from backend.scail2.pipelines.pipeline_scail2 import FrameSource

# ------------------------------------------------------------------------------------------ the old path (oracle)


def _old_resize_cover_crop(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    count, src_h, src_w = frames.shape[:3]
    if src_w / src_h > width / height:
        new_h, new_w = height, int(src_w * height / src_h)
    else:
        new_h, new_w = int(src_h * width / src_w), width
    top, left = (new_h - height) // 2, (new_w - width) // 2
    out = np.empty((count, height, width, frames.shape[3]), dtype=np.uint8)
    for start in range(0, count, 16):
        chunk = torch.from_numpy(np.ascontiguousarray(frames[start : start + 16]))
        chunk = chunk.permute(0, 3, 1, 2).to(torch.float32)
        if (new_h, new_w) != (src_h, src_w):
            chunk = F.interpolate(chunk, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
        chunk = chunk[:, :, top : top + height, left : left + width].round_().clamp_(0, 255).to(torch.uint8)
        out[start : start + chunk.shape[0]] = chunk.permute(0, 2, 3, 1).numpy()
    return out


def _old_composite_over(frames: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    if frames.shape[-1] == 3:
        return frames
    alpha = frames[..., 3:4].astype(np.float32) / 255.0
    background = np.asarray(colour, dtype=np.float32)
    mixed = frames[..., :3].astype(np.float32) * alpha + background * (1.0 - alpha)
    return np.clip(np.round(mixed), 0, 255).astype(np.uint8)


def _old_mask_from_alpha(alpha: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    subject = np.asarray(PALETTE_RGB[0], dtype=np.uint8)
    return np.where((np.asarray(alpha) > 127)[..., None], subject, np.asarray(background, np.uint8)).astype(np.uint8)


def _numpy_prepare(request: GenerationRequest) -> dict[str, np.ndarray]:
    valid = _validate(request)
    h, w, mode = valid.height, valid.width, request.mode
    ref_bg, drv_bg = background_colour(mode, "reference"), background_colour(mode, "driving")
    reference_mask = valid.reference_mask
    if reference_mask is None:
        reference_mask = _old_mask_from_alpha(valid.reference[..., 3], ref_bg)
    driving_mask = valid.driving_mask
    if driving_mask is None:
        driving_mask = _old_mask_from_alpha(valid.driving[..., 3], drv_bg)
    out = {
        "reference": _old_resize_cover_crop(_old_composite_over(valid.reference, ref_bg)[None], h, w)[0],
        "reference_mask": _old_resize_cover_crop(reference_mask[None], h, w)[0],
        "driving": _old_resize_cover_crop(_old_composite_over(valid.driving, drv_bg), h, w),
        "driving_mask": _old_resize_cover_crop(driving_mask, h, w),
    }
    for index, (image, mask) in enumerate(valid.extras):
        if mask is None:
            mask = _old_mask_from_alpha(image[..., 3], (0, 0, 0))
        out[f"extra_image_{index}"] = _old_resize_cover_crop(_old_composite_over(image, (0, 0, 0))[None], h, w)[0]
        out[f"extra_mask_{index}"] = _old_resize_cover_crop(mask[None], h, w)[0]
    return out


def _as_dict(prepared) -> dict[str, np.ndarray]:
    out = {
        "reference": prepared.reference,
        "reference_mask": prepared.reference_mask,
        "driving": prepared.driving,
        "driving_mask": prepared.driving_mask,
    }
    for index, (image, mask) in enumerate(zip(prepared.extra_images, prepared.extra_masks, strict=True)):
        out[f"extra_image_{index}"] = image
        out[f"extra_mask_{index}"] = mask
    return {key: value.cpu().numpy() for key, value in out.items()}


# ------------------------------------------------------------------------------------------------- requests


def _rgba(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Random colours with an alpha that has an opaque figure, a transparent border and soft edges."""
    pixels = rng.integers(0, 256, (*shape, 4), dtype=np.uint8)
    height, width = shape[-2:]
    alpha = np.zeros((height, width), np.float32)
    alpha[height // 6 : height - height // 6, width // 4 : width - width // 4] = 255
    alpha[height // 6, :] = 128  # a soft row crossing the threshold region
    pixels[..., 3] = alpha.astype(np.uint8)
    pixels[..., 3] = np.where(rng.random(shape) < 0.1, rng.integers(0, 256, shape), pixels[..., 3])
    return pixels


def _palette_mask(shape: tuple[int, ...], background: tuple[int, int, int]) -> np.ndarray:
    mask = np.empty((*shape, 3), np.uint8)
    mask[...] = background
    height, width = shape[-2:]
    mask[..., height // 4 : height - height // 4, width // 3 : width - width // 3, :] = PALETTE_RGB[1]
    return mask


CASES = {
    # name: (reference shape, driving shape, output size, mode, masks given)
    "rgba_downscale_wider": ((90, 150), (9, 90, 150), (64, 96), "animation", False),
    "rgba_upscale_taller": ((37, 29), (5, 37, 29), (96, 64), "replacement", False),
    "rgba_same_size": ((64, 96), (5, 64, 96), (64, 96), "animation", False),
    "rgb_with_masks": ((50, 70), (5, 100, 140), (64, 96), "replacement", True),
}


def _case_request(name: str) -> GenerationRequest:
    ref_shape, drv_shape, size, mode, masks = CASES[name]
    rng = np.random.default_rng(len(name))
    reference, driving = _rgba(rng, ref_shape), _rgba(rng, drv_shape)
    extras = [ExtraReference(_rgba(rng, (40, 70)))]
    settings = {}
    if masks:
        reference, driving = reference[..., :3], driving[..., :3]
        settings = dict(
            reference_mask=_palette_mask(ref_shape, background_colour(mode, "reference")),
            driving_mask=VideoClip(_palette_mask(drv_shape, background_colour(mode, "driving")), 24.0),
        )
        extras.append(ExtraReference(rng.integers(0, 256, (60, 30, 3), dtype=np.uint8),
                                     _palette_mask((60, 30), (255, 255, 255))))
    return GenerationRequest(reference=reference, driving=VideoClip(driving, 24.0), size=size, mode=mode,
                             extra_references=extras, **settings)


# ---------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", sorted(CASES))
def test_cpu_path_gives_the_numpy_paths_bytes(name):
    request = _case_request(name)
    prepared = prepare_inputs(request)
    assert prepared.driving.device.type == "cpu" and prepared.driving.dtype == torch.uint8
    new, old = _as_dict(prepared), _numpy_prepare(request)
    assert sorted(new) == sorted(old)
    for key in old:
        assert new[key].shape == old[key].shape, key
        np.testing.assert_array_equal(new[key], old[key], err_msg=key)


def test_chunking_and_host_storage_change_nothing(monkeypatch):
    request = _case_request("rgba_downscale_wider")
    whole = _as_dict(prepare_inputs(request))
    import backend.scail2.conditioning.request as module

    monkeypatch.setattr(module, "CHUNK_BYTES", 1)  # one frame at a time
    prepared = prepare_inputs(request, "cpu", max_device_bytes=0)  # nothing "fits": host storage path
    for key, value in _as_dict(prepared).items():
        np.testing.assert_array_equal(value, whole[key], err_msg=key)


def test_read_only_inputs_are_accepted():
    request = _case_request("rgba_same_size")
    request.driving.frames.flags.writeable = False
    request.reference.flags.writeable = False
    prepare_inputs(request)


def test_frame_source_windows_from_uint8_tensors_match_numpy():
    request = _case_request("rgba_downscale_wider")
    prepared = prepare_inputs(request)
    driving, mask = prepared.driving.numpy(), prepared.driving_mask.numpy()
    for window in padded_windows(prepared.num_frames, 5, 1):
        index = np.minimum(np.arange(window.start, window.start + window.length), window.end - 1)
        expected_pose = (torch.from_numpy(driving[index]).float() - 127.5) / 127.5
        expected_mask = (torch.from_numpy(mask[index]).float() - 127.5) / 127.5
        for source in (FrameSource(prepared.driving, prepared.driving_mask, "cpu"), FrameSource(driving, mask)):
            assert torch.equal(source.pose(window), expected_pose.permute(0, 3, 1, 2))
            assert torch.equal(source.mask(window), expected_mask.permute(3, 0, 1, 2))


def test_bf16_arithmetic_would_misround_pixels():
    """Why COMPUTE_DTYPE is float32 and not the model's bf16: bf16 cannot hold x.5 above 128, so compositing in
    it moves pixels by more than the one level a GPU kernel's rounding may."""
    assert COMPUTE_DTYPE == torch.float32
    rng = np.random.default_rng(0)
    rgba = torch.from_numpy(rng.integers(0, 256, (64, 64, 4), dtype=np.uint8))
    exact = composite_over(rgba, (255, 255, 255)).int()
    bf16 = composite_over(rgba, (255, 255, 255), dtype=torch.bfloat16).int()
    assert (bf16 - exact).abs().max() > 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", sorted(CASES))
def test_cuda_path_within_one_level(name):
    request = _case_request(name)
    prepared = prepare_inputs(request, "cuda")
    assert prepared.driving.device.type == "cuda"
    old = _numpy_prepare(request)
    for key, value in _as_dict(prepared).items():
        difference = np.abs(value.astype(np.int16) - old[key].astype(np.int16))
        assert difference.max() <= 1, key
        assert (difference > 0).mean() < 0.01, key
