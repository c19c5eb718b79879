"""``Scail2Pipeline``: the official SCAIL-2 sampling loop over windows, with resumable, cancellable progress.

Per generation (official ``SCAIL2Pipeline.generate``, §5 of docs/scail2-reference.md):

1. one noise generator, seeded once; the prompt and the negative prompt (default "") through umT5, the reference
   through CLIP; the reference and any additional references through the VAE; their masks to 28 channels;
2. per window: a fresh scheduler; the driving frames halved bilinearly and VAE-encoded; the driving masks halved
   and compressed; for later windows the previous window's last ``segment_overlap`` decoded frames re-encoded as
   clean history; then exactly one noise draw; the history latent frames pinned before every DiT call and after
   every step; text-only CFG (no unconditional pass when guidance <= 1); decode.

Unlike the official code the tail is kept by default (see ``conditioning.segments.padded_windows``), the output plays at the
driving clip's fps, and ``color_anchor`` can match later windows' colours to the first window's.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..accel import load_module, park_module
from ..accel.step_cache import StepCache, resolve_step_cache
from ..conditioning.masks import (
    compress_driving_mask,
    compress_reference_mask,
    halve_bilinear,
    image_to_unit_range,
    video_to_unit_range,
)
from ..conditioning.request import GenerationRequest, PreparedInputs, prepare_inputs
from ..conditioning.segments import Window, official_windows, padded_windows
from ..errors import CheckpointError, GenerationCancelled, Scail2InputError
from ..loaders.layout import CheckpointLayout, resolve_checkpoint
from ..loaders.lora import LoraManager
from ..loaders.weights import check_file_header
from ..models.image_encoder import ClipImageEncoder
from ..models.text_encoder import UMT5TextEncoder
from ..models.transformer_scail2 import SCAIL2Transformer, config_from_official
from ..models.vae import WanVideoVAE
from ..schedulers.presets import SamplingSettings, check_loras_available
from ..schedulers.samplers import build_sampler

logger = logging.getLogger(__name__)

LATENT_CHANNELS = 16
HISTORY_MASK_CHANNELS = 4
# Driving frames and masks at the output size stay on the device up to this size (about 390 frames at 512x896,
# 190 at 704x1280); a longer clip waits in pinned host memory and each window is uploaded as it starts.
INPUTS_ON_DEVICE_MAX_BYTES = 2**30


@dataclass(frozen=True)
class ProgressEvent:
    """A progress report. ``window`` and ``step`` count from 1 (0 before the first window/step); ``phase`` is one
    of "encode" (prompts and references), "window" (a window's inputs encoded), "step" (a denoising step done),
    "decode" (a window decoded), "done"."""

    phase: str
    window: int
    num_windows: int
    step: int
    num_steps: int

    @property
    def fraction(self) -> float:
        """Overall completion in [0, 1], counting denoising steps."""
        if self.phase == "done":
            return 1.0
        total = max(1, self.num_windows * self.num_steps)
        return min(1.0, (max(0, self.window - 1) * self.num_steps + self.step) / total)


@dataclass
class WindowResult:
    """One finished window: the frames it contributes to the output and what the next window needs.

    ``frames`` [t, H, W, 3] uint8 excludes the history frames and any tail padding. ``history`` holds float32 CPU
    tensors: "tail" [3, overlap, H, W], the decoded frames the next window re-encodes, and with colour
    anchoring "anchor" [2, 3] (the first window's per-channel mean and std), and "seed" [1] int64 (a resumed request
    without a seed takes it from here). Persist it with ``save`` to resume.
    """

    index: int
    frames: np.ndarray
    history: dict[str, torch.Tensor] = field(default_factory=dict)

    def save(self, path: str | Path) -> None:
        """Write this window to one safetensors file, atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"frames": torch.from_numpy(np.ascontiguousarray(self.frames))}
        tensors.update({f"history.{k}": v.contiguous().cpu() for k, v in self.history.items()})
        handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(handle)
        try:
            save_file(tensors, temp, metadata={"index": str(self.index)})
            os.replace(temp, path)
        finally:
            Path(temp).unlink(missing_ok=True)

    @classmethod
    def load(cls, path: str | Path) -> WindowResult:
        from safetensors import safe_open

        path = Path(path)
        try:
            with safe_open(str(path), "pt") as handle:
                index = int((handle.metadata() or {})["index"])
            tensors = load_file(str(path))
        except Exception as exc:
            raise Scail2InputError(f"{path}: not a saved window ({exc})", field="resume") from exc
        history = {k[len("history.") :]: v for k, v in tensors.items() if k.startswith("history.")}
        return cls(index, tensors["frames"].numpy(), history)


@dataclass
class GenerationResult:
    """The generated video: ``frames`` [T, H, W, 3] uint8 at ``fps`` (the driving clip's), and what produced it."""

    frames: np.ndarray
    fps: float
    seed: int
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


@dataclass
class EncodedConditions:
    """Everything every window shares, already on the pipeline device."""

    context: torch.Tensor  # [1, L, text_dim]
    context_null: torch.Tensor | None  # [1, L', text_dim]; None when CFG is off
    clip_features: torch.Tensor  # [1, 257, clip_dim]
    ref_latent: torch.Tensor  # [16, 1, h, w]
    ref_mask: torch.Tensor  # [28, 1, h, w]
    extra_latents: torch.Tensor | None = None  # [16, N, h, w]
    extra_masks: torch.Tensor | None = None  # [28, N, h, w]


class FrameSource:
    """Driving frames and masks for one window as float tensors on ``device``, converted from uint8 only when
    needed.

    Frames past the clip's end (tail padding) repeat the last frame.
    """

    def __init__(
        self,
        driving: torch.Tensor | np.ndarray,
        driving_mask: torch.Tensor | np.ndarray,
        device: torch.device | str | None = None,
    ):
        """``driving``: [T, 3, H, W] float in [-1, 1] or [T, H, W, 3] uint8; ``driving_mask``: [3, T, H, W]
        float in [-1, 1] or [T, H, W, 3] uint8 (uint8 as a tensor on any device, or a numpy array). A window's
        uint8 frames are moved to ``device`` (default: where they are) and converted there."""
        self.driving = torch.from_numpy(driving) if isinstance(driving, np.ndarray) else driving
        self.driving_mask = torch.from_numpy(driving_mask) if isinstance(driving_mask, np.ndarray) else driving_mask
        self.device = None if device is None else torch.device(device)

    @staticmethod
    def _indices(window: Window, device: torch.device) -> torch.Tensor:
        index = torch.arange(window.start, window.start + window.length, device=device)
        return index.clamp_(max=window.end - 1)

    def _uint8_window(self, frames: torch.Tensor, window: Window) -> torch.Tensor:
        """[length, H, W, 3] in [-1, 1] on ``device`` from [T, H, W, 3] uint8."""
        window_frames = frames[self._indices(window, frames.device)]
        return video_to_unit_range(window_frames.to(self.device or frames.device, non_blocking=True))

    def pose(self, window: Window) -> torch.Tensor:
        """[length, 3, H, W] in [-1, 1]."""
        if self.driving.dtype == torch.uint8:
            return self._uint8_window(self.driving, window).permute(0, 3, 1, 2)
        return self.driving[self._indices(window, self.driving.device)]

    def mask(self, window: Window) -> torch.Tensor:
        """[3, length, H, W] in [-1, 1]."""
        if self.driving_mask.dtype == torch.uint8:
            return self._uint8_window(self.driving_mask, window).permute(3, 0, 1, 2)
        return self.driving_mask[:, self._indices(window, self.driving_mask.device)]


def frames_to_uint8(video: torch.Tensor) -> np.ndarray:
    """[3, T, H, W] in [-1, 1] -> [T, H, W, 3] uint8 (rounded)."""
    pixels = ((video.float().clamp(-1, 1) + 1.0) * 127.5).round_().to(torch.uint8)
    return pixels.permute(1, 2, 3, 0).cpu().numpy()


def _channel_stats(video: torch.Tensor) -> torch.Tensor:
    """[3, T, H, W] -> [2, 3]: per-channel mean and std."""
    flat = video.float().transpose(0, 1).reshape(video.shape[1], 3, -1).transpose(0, 1).reshape(3, -1)
    return torch.stack([flat.mean(dim=1), flat.std(dim=1)])


def anchor_colours(video: torch.Tensor, anchor: torch.Tensor, measured_frames: int | None = None) -> torch.Tensor:
    """Shift and scale each channel of ``video`` [3, T, H, W] so its mean/std equal ``anchor`` [2, 3].

    The statistics are measured on the first ``measured_frames`` frames (default all), so that tail padding
    (copies of the last frame) does not weigh in.
    """
    stats = _channel_stats(video[:, :measured_frames]).to(video.device)
    anchor = anchor.to(video.device)
    scale = anchor[1] / stats[1].clamp_min(1e-6)
    out = (video.float() - stats[0].view(3, 1, 1, 1)) * scale.view(3, 1, 1, 1) + anchor[0].view(3, 1, 1, 1)
    return out.clamp_(-1, 1)


class Scail2Pipeline:
    """SCAIL-2 inference from one checkpoint folder. See docs/ARCHITECTURE.md and docs/ENGINE.md."""

    def __init__(
        self,
        transformer: SCAIL2Transformer,
        text_encoder: UMT5TextEncoder,
        image_encoder: ClipImageEncoder,
        vae: WanVideoVAE,
        *,
        device: torch.device | str = "cpu",
        layout: CheckpointLayout | None = None,
        lora_manager: LoraManager | None = None,
        offload_encoders: bool | None = None,
        batch_cfg: bool | None = None,
    ):
        """``offload_encoders`` (default: True on CUDA) keeps umT5 and CLIP on the CPU between encodings, moving
        them to the device only while they encode; they are not needed during denoising. ``batch_cfg``: see
        ``batches_cfg``."""
        self.transformer = transformer
        self.text_encoder = text_encoder
        self.image_encoder = image_encoder
        self.vae = vae
        self.device = torch.device(device)
        self.layout = layout
        self.lora_manager = lora_manager
        self.offload_encoders = self.device.type == "cuda" if offload_encoders is None else offload_encoders
        self.batch_cfg = batch_cfg
        # Per window of the last `generate`: which step cache ran and how many forwards it skipped.
        self.step_cache_stats: list[dict[str, Any]] = []
        if self.offload_encoders:
            self._park_encoders()

    # ------------------------------------------------------------------------------------------- loading

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        device: torch.device | str = "cuda",
        dtype: torch.dtype = torch.bfloat16,
        *,
        extra_roots: Sequence[str | Path] = (),
        vae_dtype: torch.dtype = torch.float32,
        offload_encoders: bool | None = None,
        transformer_device: torch.device | str | None = None,
    ) -> Scail2Pipeline:
        """Build the pipeline from a checkpoint folder in any supported layout (see ``loaders.layout.resolve_checkpoint``).

        ``dtype`` is the DiT and encoder weight dtype (the official code runs umT5 in bf16 and CLIP in fp16; both
        follow ``dtype`` here). The VAE stays float32 by default, as in the official decode.
        ``transformer_device``: where the DiT's weights load (default ``device``). "cpu" when
        ``accel.apply_to_pipeline`` will stream its blocks (low-VRAM): its bf16 weights need not fit the GPU.
        """
        device = torch.device(device)
        layout = resolve_checkpoint(folder, extra_roots)
        for path in layout.weight_files():
            # Headers only: a truncated file (a LoRA that only a later job would use included) fails now, naming
            # itself, instead of after minutes of loading or in that later job.
            check_file_header(path)
        if layout.untrained:
            logger.warning("%s is an UNTRAINED test checkpoint: its output is noise", layout.root)
        elif layout.name:
            logger.info("%s: %s. %s", layout.root, layout.name, layout.note)
        encoder_device = (
            "cpu" if (offload_encoders is None and device.type == "cuda") or offload_encoders else device
        )
        transformer = load_transformer(layout, device=transformer_device or device, dtype=dtype)
        text_encoder = UMT5TextEncoder.from_layout(layout, dtype=dtype, device=encoder_device)
        image_encoder = ClipImageEncoder.from_layout(layout, dtype=dtype, device=encoder_device)
        vae = WanVideoVAE.from_layout(layout, dtype=vae_dtype, device=device)
        lora_manager = LoraManager(transformer)
        return cls(
            transformer,
            text_encoder,
            image_encoder,
            vae,
            device=device,
            layout=layout,
            lora_manager=lora_manager,
            offload_encoders=offload_encoders,
        )

    def available_loras(self) -> dict[str, Path]:
        """LoRA files found in the checkpoint folder, by canonical name ("lightx2v", "dpo", "relight", stems)."""
        return dict(self.layout.loras) if self.layout is not None else {}

    def set_loras(self, loras: dict[str, float], preset: str | None = None) -> None:
        """Make the fused LoRAs exactly ``loras`` (name -> strength; 0 = off). Unchanged strengths cost nothing;
        changed ones are recomputed from the pristine checkpoint weights (engine ``lora.LoraManager``)."""
        active = {name: float(s) for name, s in loras.items() if float(s) != 0.0}
        available = self.available_loras()
        check_loras_available(active, available, preset)
        if self.lora_manager is None:
            if active:
                raise Scail2InputError("this pipeline was built without LoRA support", field="loras")
            return
        self.lora_manager.apply({name: (available[name], strength) for name, strength in active.items()})

    # ------------------------------------------------------------------------------------------- encoders

    def _park_encoders(self) -> None:
        # Weights wait in one pinned host buffer (accel.park_module): parking drops the device copy without
        # copying back, and the next job loads them in one transfer instead of per-tensor pageable copies.
        for encoder in (self.text_encoder, self.image_encoder):
            if encoder is not None and encoder.device.type != "cpu":
                park_module(encoder.model)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _encoder_on_device(self, encoder):
        if self.offload_encoders and encoder.device != self.device:
            load_module(encoder.model, self.device)
        return encoder

    @torch.no_grad()
    def encode_prompts(
        self, prompt: str, negative_prompt: str, cfg: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        encoder = self._encoder_on_device(self.text_encoder)
        prompts = [prompt, negative_prompt] if cfg else [prompt]
        contexts = [encoder.encode([p])[0] for p in prompts]
        context = contexts[0][None].to(self.device)
        context_null = contexts[1][None].to(self.device) if cfg else None
        return context, context_null

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """[3, H, W] in [-1, 1] -> CLIP tokens [1, 257, clip_dim] on the device."""
        encoder = self._encoder_on_device(self.image_encoder)
        return encoder.encode(image.to(encoder.device)).to(self.device)

    @torch.no_grad()
    def encode_references(
        self,
        reference: torch.Tensor,
        reference_mask: torch.Tensor,
        extra_images: Sequence[torch.Tensor] = (),
        extra_masks: Sequence[torch.Tensor] = (),
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """References [3, H, W] in [-1, 1] -> (ref latent, ref 28-ch mask, extra latents, extra masks)."""
        ref_latent = self.vae.encode(reference[:, None].to(self.device)).to(self.device)
        ref_mask = compress_reference_mask(reference_mask).to(self.device)
        if not extra_images:
            return ref_latent, ref_mask, None, None
        extra_latents = torch.cat(
            [self.vae.encode(img[:, None].to(self.device)) for img in extra_images], dim=1
        )
        extra_mask = torch.cat([compress_reference_mask(m) for m in extra_masks], dim=1)
        return ref_latent, ref_mask, extra_latents.to(self.device), extra_mask.to(self.device)

    # ------------------------------------------------------------------------------------------- generate

    @torch.no_grad()
    def generate(
        self,
        request: GenerationRequest,
        progress: Callable[[ProgressEvent], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
        on_window: Callable[[WindowResult], None] | None = None,
        resume: Sequence[WindowResult] | None = None,
    ) -> GenerationResult:
        """Generate the video for ``request``. See the module docstring and docs/ARCHITECTURE.md.

        ``resume``: windows a previous run of the same request (same seed) finished; they are not recomputed and
        the result is identical to an uninterrupted run. Raises ``GenerationCancelled`` when ``should_cancel()``
        returns True (checked between steps), ``Scail2InputError`` for bad inputs.
        """
        sampling = _seed_for_resume(request.sampling, resume).with_seed()
        # Bad inputs fail before any weights change. The pixels are prepared on the device.
        prepared = prepare_inputs(request, self.device, max_device_bytes=INPUTS_ON_DEVICE_MAX_BYTES)
        self.set_loras(request.effective_loras, sampling.preset)
        windows = self.plan_windows(prepared.num_frames, request)
        report = _Reporter(progress, len(windows), sampling.steps)
        report("encode", 0, 0)
        self.step_cache_stats = []

        reference = image_to_unit_range(prepared.reference.permute(2, 0, 1))
        reference_mask = image_to_unit_range(prepared.reference_mask.permute(2, 0, 1))
        conditions = self.encode_conditions(request, prepared, reference, reference_mask, sampling)
        frames = FrameSource(prepared.driving, prepared.driving_mask, self.device)
        video_windows = self.denoise_windows(
            conditions,
            frames,
            windows,
            sampling,
            replace=request.mode == "replacement",
            height=prepared.height,
            width=prepared.width,
            color_anchor=request.color_anchor,
            report=report,
            should_cancel=should_cancel,
            on_window=on_window,
            resume=resume,
        )
        output = np.concatenate([w.frames for w in video_windows], axis=0)
        report("done", len(windows), sampling.steps)
        return GenerationResult(
            frames=output,
            fps=prepared.fps,
            seed=int(sampling.seed),
            settings={
                "mode": request.mode,
                "height": prepared.height,
                "width": prepared.width,
                "frames": int(output.shape[0]),
                "fps": prepared.fps,
                "sampler": sampling.sampler,
                "steps": sampling.steps,
                "guidance": sampling.guidance,
                "shift": sampling.shift,
                "seed": int(sampling.seed),
                "noise_mode": sampling.noise_mode,
                "preset": sampling.preset,
                "step_cache": resolve_step_cache(sampling.step_cache, sampling.steps),
                "loras": request.effective_loras,
                "windows": len(windows),
                "segment_len": request.segment_len,
                "segment_overlap": request.segment_overlap,
                "tail": request.tail,
                "color_anchor": request.color_anchor,
                "extra_references": len(prepared.extra_images),
            },
        )

    @staticmethod
    def plan_windows(num_frames: int, request: GenerationRequest) -> list[Window]:
        build = padded_windows if request.tail == "pad" else official_windows
        if request.tail not in ("pad", "drop"):
            raise Scail2InputError(f"tail must be 'pad' or 'drop', got {request.tail!r}", field="tail")
        try:
            return build(num_frames, request.segment_len, request.segment_overlap)
        except ValueError as exc:
            raise Scail2InputError(str(exc), field="segment_len") from exc

    def encode_conditions(
        self,
        request: GenerationRequest,
        prepared: PreparedInputs,
        reference: torch.Tensor,
        reference_mask: torch.Tensor,
        sampling: SamplingSettings,
    ) -> EncodedConditions:
        context, context_null = self.encode_prompts(
            request.prompt, request.negative_prompt, sampling.uses_cfg
        )
        clip_features = self.encode_image(reference)
        if self.offload_encoders:
            self._park_encoders()  # umT5 and CLIP are not needed again for this request
        extra_images = [image_to_unit_range(i.permute(2, 0, 1)) for i in prepared.extra_images]
        extra_masks = [image_to_unit_range(m.permute(2, 0, 1)) for m in prepared.extra_masks]
        ref_latent, ref_mask, extra_latents, extra_mask = self.encode_references(
            reference, reference_mask, extra_images, extra_masks
        )
        return EncodedConditions(
            context, context_null, clip_features, ref_latent, ref_mask, extra_latents, extra_mask
        )

    def _generator(self, sampling: SamplingSettings) -> torch.Generator:
        device = self.device if sampling.noise_mode == "official" else torch.device("cpu")
        generator = torch.Generator(device=device)
        generator.manual_seed(int(sampling.seed))
        return generator

    @property
    def batches_cfg(self) -> bool:
        """Whether CFG runs as one forward of batch 2 (cond, uncond) instead of two forwards of batch 1.

        ``batch_cfg`` None (the default) batches only when the transformer is CFG-parallel (``parallel.cfg``
        splits a batch of 2 over two process groups); on one device two sequential forwards need less memory.
        """
        if self.batch_cfg is not None:
            return self.batch_cfg
        return getattr(self.transformer, "_cfg_parallel", None) is not None

    def _velocity(
        self,
        latent: torch.Tensor,
        timestep: torch.Tensor,
        conditions: EncodedConditions,
        window_inputs: dict[str, torch.Tensor | None],
        replace: bool,
        guidance: float,
        trace_step: dict[str, list[torch.Tensor]] | None,
        step_cache: StepCache | None = None,
    ) -> torch.Tensor:
        """The guided velocity ``uncond + g * (cond - uncond)`` (just ``cond`` when g <= 1): text-only CFG, every
        visual input shared by both passes. ``step_cache``: each pass runs under its own cache context."""
        use_cfg = guidance > 1.0 and conditions.context_null is not None
        cache = step_cache if step_cache is not None else StepCache(self.transformer, "off")

        def optional(value: torch.Tensor | None, batch: int) -> torch.Tensor | None:
            return None if value is None else value[None].expand(batch, *value.shape)

        def run(context: torch.Tensor) -> torch.Tensor:
            batch = context.shape[0]
            return self.transformer(
                latent[None].expand(batch, *latent.shape),
                timestep.to(self.device).reshape(1).expand(batch),
                context,
                conditions.clip_features.expand(batch, *conditions.clip_features.shape[1:]),
                optional(conditions.ref_latent, batch),
                optional(window_inputs["ref_masks"], batch),
                optional(window_inputs["pose_latent"], batch),
                optional(window_inputs["driving_masks"], batch),
                replace=replace,
                history_mask=optional(window_inputs["history_mask"], batch),
                extra_ref_latents=optional(conditions.extra_latents, batch),
                extra_ref_masks=optional(conditions.extra_masks, batch),
                return_dict=False,
            )[0].float()

        if use_cfg and self.batches_cfg:
            # Zero rows appended to the shorter context change nothing: the model zero-pads both to text_len.
            length = max(conditions.context.shape[1], conditions.context_null.shape[1])
            contexts = torch.zeros(
                2,
                length,
                conditions.context.shape[2],
                dtype=conditions.context.dtype,
                device=conditions.context.device,
            )
            contexts[0, : conditions.context.shape[1]] = conditions.context[0]
            contexts[1, : conditions.context_null.shape[1]] = conditions.context_null[0]
            with cache.context("cfg"):
                cond, uncond = run(contexts)
        else:
            with cache.context("cond"):
                cond = run(conditions.context)[0]
            uncond = None
            if use_cfg:
                with cache.context("uncond"):
                    uncond = run(conditions.context_null)[0]
        if trace_step is not None:
            trace_step["v_cond"].append(cond.cpu())
            if uncond is not None:
                trace_step["v_uncond"].append(uncond.cpu())
        if uncond is None:
            return cond
        return uncond + guidance * (cond - uncond)

    def denoise_windows(
        self,
        conditions: EncodedConditions,
        frames: FrameSource,
        windows: Sequence[Window],
        sampling: SamplingSettings,
        *,
        replace: bool,
        height: int,
        width: int,
        color_anchor: bool = False,
        report: _Reporter | None = None,
        should_cancel: Callable[[], bool] | None = None,
        on_window: Callable[[WindowResult], None] | None = None,
        resume: Sequence[WindowResult] | None = None,
        trace: dict[str, torch.Tensor] | None = None,
    ) -> list[WindowResult]:
        """The official per-window loop. Returns one ``WindowResult`` per window (resumed ones included).

        ``trace``, when given, is filled with the official pipeline's intermediate tensors (``w{i}_noise``,
        ``w{i}_dit_inputs``, ...), for the parity check.
        """
        report = report or _Reporter(None, len(windows), sampling.steps)
        finished = _check_resume(resume, windows, height, width)
        generator = self._generator(sampling)
        latent_h, latent_w = height // 8, width // 8
        results: list[WindowResult] = list(finished)
        previous_tail: torch.Tensor | None = None
        anchor: torch.Tensor | None = None
        if finished:
            previous_tail = finished[-1].history.get("tail")
            anchor = finished[-1].history.get("anchor")
            if color_anchor and anchor is None:
                raise Scail2InputError(
                    "resume: the saved windows were made without colour anchoring; resume with color_anchor=False",
                    field="resume",
                )

        for window in windows:
            shape = (LATENT_CHANNELS, window.latent_frames, latent_h, latent_w)
            if window.index < len(finished):
                # Keep the generator where the uninterrupted run would have it: one draw per window.
                torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)
                continue
            _check_cancel(should_cancel)
            sampler = build_sampler(sampling.sampler, sampling.steps, sampling.shift)

            pose = halve_bilinear(frames.pose(window)).permute(1, 0, 2, 3)  # [3, length, H/2, W/2]
            pose_latent = self.vae.encode(pose.to(self.device)).to(self.device)
            driving_masks = compress_driving_mask(frames.mask(window)).to(self.device)
            ref_masks = torch.cat(
                [
                    conditions.ref_mask,
                    conditions.ref_mask.new_zeros(28, window.latent_frames, latent_h, latent_w),
                ],
                dim=1,
            )
            history_latent = history_mask = None
            if window.history:
                if previous_tail is None or previous_tail.shape[1] != window.history:
                    raise RuntimeError(f"window {window.index} needs {window.history} history frames")
                history_latent = self.vae.encode(previous_tail.to(self.device)).to(self.device)
                history_mask = torch.zeros(HISTORY_MASK_CHANNELS, *shape[1:], device=self.device)
                history_mask[:, : window.history_latent_frames] = 1.0
            noise = torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)
            latent = noise.to(self.device)

            latent = _pin_history(latent, history_latent)
            window_inputs = {
                "pose_latent": pose_latent,
                "driving_masks": driving_masks,
                "ref_masks": ref_masks,
                "history_mask": history_mask,
            }
            trace_step: dict[str, list[torch.Tensor]] | None = (
                {"dit_inputs": [], "v_cond": [], "v_uncond": []} if trace is not None else None
            )
            report("window", window.index + 1, 0)
            step_cache = StepCache(self.transformer, resolve_step_cache(sampling.step_cache, sampler.num_steps))
            with step_cache.window():
                for step in range(sampler.num_steps):
                    _check_cancel(should_cancel)
                    latent = _pin_history(latent, history_latent)
                    if trace_step is not None:
                        trace_step["dit_inputs"].append(latent.cpu())
                    velocity = self._velocity(
                        latent,
                        sampler.timesteps[step],
                        conditions,
                        window_inputs,
                        replace,
                        sampling.guidance,
                        trace_step,
                        step_cache,
                    )
                    latent = _pin_history(sampler.step(velocity, step, latent), history_latent)
                    report("step", window.index + 1, step + 1)
            self.step_cache_stats.append(step_cache.stats.to_dict())

            video = self.vae.decode(latent)  # [3, length, H, W] in [-1, 1]
            if color_anchor:
                if anchor is None:
                    anchor = _channel_stats(video[:, : window.end - window.start]).cpu()
                else:
                    video = anchor_colours(video, anchor, window.end - window.start)
            real = video[:, : window.end - window.start]
            history = {}
            if window.index + 1 < len(windows):
                previous_tail = real[:, -windows[window.index + 1].history :].float().cpu().contiguous()
                history["tail"] = previous_tail
            if anchor is not None:
                history["anchor"] = anchor
            history["seed"] = torch.tensor([int(sampling.seed)], dtype=torch.int64)
            result = WindowResult(window.index, frames_to_uint8(real[:, window.history :]), history)
            results.append(result)
            if trace is not None:
                self._record_trace(
                    trace,
                    window,
                    noise,
                    pose_latent,
                    driving_masks,
                    ref_masks,
                    history_mask,
                    history_latent,
                    sampler.timesteps,
                    trace_step,
                    latent,
                    real,
                )
            report("decode", window.index + 1, sampler.num_steps)
            if on_window is not None:
                on_window(result)
        return results

    @staticmethod
    def _record_trace(
        trace,
        window,
        noise,
        pose_latent,
        driving_masks,
        ref_masks,
        history_mask,
        history_latent,
        timesteps,
        trace_step,
        latent,
        real,
    ) -> None:
        prefix = f"w{window.index}_"
        trace[prefix + "noise"] = noise.cpu()
        trace[prefix + "pose_latent"] = pose_latent.cpu()
        trace[prefix + "driving_masks"] = driving_masks.cpu()
        trace[prefix + "ref_masks"] = ref_masks.cpu()
        if history_mask is not None:
            trace[prefix + "history_mask"] = history_mask.cpu()
            trace[prefix + "history_latent"] = history_latent.cpu()
        trace[prefix + "timesteps"] = timesteps.clone()
        for key, values in trace_step.items():
            if values:
                trace[prefix + key] = torch.stack(values)
        trace[prefix + "final_latent"] = latent.cpu()
        trace[prefix + "video"] = real.cpu()


class _Reporter:
    def __init__(self, callback: Callable[[ProgressEvent], None] | None, num_windows: int, num_steps: int):
        self.callback = callback
        self.num_windows = num_windows
        self.num_steps = num_steps

    def __call__(self, phase: str, window: int, step: int) -> None:
        if self.callback is not None:
            self.callback(ProgressEvent(phase, window, self.num_windows, step, self.num_steps))


def _pin_history(latent: torch.Tensor, history_latent: torch.Tensor | None) -> torch.Tensor:
    """``latent`` with its first frames replaced by the clean history latent (if any)."""
    if history_latent is None:
        return latent
    pinned = latent.clone()
    pinned[:, : history_latent.shape[1]] = history_latent
    return pinned


def _check_cancel(should_cancel: Callable[[], bool] | None) -> None:
    if should_cancel is not None and should_cancel():
        raise GenerationCancelled("generation cancelled")


def _seed_for_resume(sampling: SamplingSettings, resume: Sequence[WindowResult] | None) -> SamplingSettings:
    """A resumed job must reuse the seed of its finished windows: taken from them when the request has none."""
    saved = {int(w.history["seed"][0]) for w in resume or () if "seed" in w.history}
    if not saved:
        return sampling
    if len(saved) > 1:
        raise Scail2InputError(
            f"resume: the windows come from runs with different seeds {sorted(saved)}", field="resume"
        )
    seed = saved.pop()
    if sampling.seed is None:
        return dataclasses.replace(sampling, seed=seed)
    if sampling.seed != seed:
        raise Scail2InputError(
            f"resume: the finished windows were made with seed {seed}, this request has seed {sampling.seed}",
            field="resume",
        )
    return sampling


def _check_resume(
    resume: Sequence[WindowResult] | None, windows: Sequence[Window], height: int, width: int
) -> list[WindowResult]:
    """The resumable prefix of ``resume``, checked against this request's windows."""
    if not resume:
        return []
    finished = sorted(resume, key=lambda w: w.index)
    for position, result in enumerate(finished):
        if result.index != position:
            raise Scail2InputError(
                f"resume: windows must be 0..k-1 without gaps, got {[w.index for w in finished]}",
                field="resume",
            )
        if position >= len(windows):
            raise Scail2InputError(
                f"resume: window {position} does not exist; this request has {len(windows)} windows",
                field="resume",
            )
        window = windows[position]
        expected = (window.end - window.output_start, height, width, 3)
        if tuple(result.frames.shape) != expected:
            raise Scail2InputError(
                f"resume: window {position} has frames {tuple(result.frames.shape)}, expected {expected}; it "
                "belongs to a different request",
                field="resume",
            )
    last = finished[-1]
    if last.index + 1 < len(windows) and "tail" not in last.history:
        raise Scail2InputError(f"resume: window {last.index} lacks its history 'tail' frames", field="resume")
    return finished


# ----------------------------------------------------------------------------------------------- loaders


def load_transformer(
    layout: CheckpointLayout, *, device: torch.device | str, dtype: torch.dtype
) -> SCAIL2Transformer:
    """The DiT of ``layout``: the 14B config, or the ``dit`` section of the folder's ``scail2_config.json``
    (official argument names)."""
    args = dict(layout.configs.get("dit") or {})
    config = None
    if args:
        clip_dim = int(args.pop("clip_dim", 1280))
        try:
            config = config_from_official(args, clip_dim=clip_dim)
        except ValueError as exc:
            raise CheckpointError(
                f"{layout.root}: unusable 'dit' section in scail2_config.json ({exc})"
            ) from exc
    return SCAIL2Transformer.from_single_file(layout.dit, config, torch_dtype=dtype, device=device)
