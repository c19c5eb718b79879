"""Time the SCAIL-2 engine on one GPU: DiT forwards and whole windows, full-size models with random weights.

Compute does not depend on the weight values, so every model (the 14B DiT, umT5-XXL, CLIP ViT-H/14, the Wan
VAE) is built on the meta device and filled with random numbers directly on the GPU: no checkpoint, no host
copy. Each case is warmed up (compile/autotune time recorded as `warmup_s`), then timed with CUDA events;
`seconds` is the median. Records go to `--out` (a JSON list, rewritten atomically after each case) and a table
is printed at the end.

    # forwards in bf16, then the same forwards after converting the linears to fp8 (error vs bf16 reported)
    python benchmarks/scail2_bench.py --forward 512x896,704x1280 --fp8 --out benchmarks/results/forward.json
    # fast-preset windows end to end (T5, CLIP, VAE encode, 6 forwards, VAE decode) through Scail2Pipeline
    python benchmarks/scail2_bench.py --window 512x896 --fp8 --out benchmarks/results/window.json
    # low-VRAM mode: blocks streamed from pinned host memory under a 24 GB allocator cap
    python benchmarks/scail2_bench.py --window 512x896 --low-vram --memory-cap-gib 23.5 --out ...
    # the same code at tiny size on the CPU (what the tests and development use)
    python benchmarks/scail2_bench.py --tiny --device cpu --forward 64x96 --window 64x96 --fp8 --out /tmp/b.json
    # prepare_inputs alone (no model is built): 81-frame windows on the CPU and on --device when it is a GPU
    python benchmarks/scail2_bench.py --prepare-inputs 512x896,704x1280 --out benchmarks/results/prepare.json

Run from the repository root.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.models.transformers.transformer_wan import WanTransformerBlock
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from backend.scail2.accel import (  # noqa: E402
    PerformanceSettings,
    apply_performance_settings,
    compile_blocks,
    convert_blocks_to_fp8,
    enable_block_streaming,
    select_attention_backend,
    set_attention_backend,
    transformer_blocks,
)
from backend.scail2.conditioning.media import VideoClip  # noqa: E402
from backend.scail2.conditioning.request import GenerationRequest  # noqa: E402
from backend.scail2.loaders.weights import meta_init  # noqa: E402
from backend.scail2.models.image_encoder import ClipImageEncoder, ClipVisionConfig  # noqa: E402
from backend.scail2.models.text_encoder import T5EncoderConfig, UMT5TextEncoder, load_tokenizer  # noqa: E402
from backend.scail2.models.transformer_scail2 import (  # noqa: E402
    SCAIL2Transformer,
    SCAIL2TransformerBlock,
    config_from_official,
)
from backend.scail2.models.vae import WanVAEConfig, WanVideoVAE  # noqa: E402
from backend.scail2.pipelines.pipeline_scail2 import Scail2Pipeline  # noqa: E402
from backend.scail2.schedulers.presets import SamplingSettings  # noqa: E402
from backend.scail2.testing.tiny import TINY_CONFIGS, write_tiny_tokenizer  # noqa: E402

FRAMES = 81
PROMPT = "a dancer in a red dress spins on a bright stage, soft light, the camera follows her"


# ----------------------------------------------------------------------------------------------- environment


def environment(device: torch.device) -> dict[str, Any]:
    driver = "n/a"
    gpu = "cpu"
    if device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            driver = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20, check=True,
            ).stdout.strip().splitlines()[0]
    commit = os.environ.get("BENCH_COMMIT")
    if not commit:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                    text=True, timeout=20, check=True).stdout.strip()
    return {
        "gpu": gpu,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "driver": driver,
        "commit": commit or "unknown",
    }


# ----------------------------------------------------------------------------------------------- random models


def materialize_random(module: nn.Module, device: torch.device, dtype_of: Callable[[str], torch.dtype],
                       seed: int) -> nn.Module:
    """Give a module built under `meta_init` random values on `device` (buffers keep their real values).

    Matrices get N(0, 1/fan_in) (activations keep unit scale through the depth, as trained weights do),
    biases N(0, 0.02), vectors such as norm scales N(1, 0.05). Nothing is zero, so no kernel sees zeros.
    """
    buffers = {name: buffer.detach().clone() for name, buffer in module.named_buffers()}
    for name, param in module.named_parameters():
        param.data = param.data.to(dtype_of(name))
    module.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.ndim >= 2:
                param.normal_(0.0, param[0].numel() ** -0.5, generator=generator)
            elif name.endswith("bias"):
                param.normal_(0.0, 0.02, generator=generator)
            else:
                param.normal_(1.0, 0.05, generator=generator)
        for name, buffer in buffers.items():
            owner_name, _, leaf = name.rpartition(".")
            owner = module.get_submodule(owner_name) if owner_name else module
            owner._buffers[leaf] = buffer.to(device)
    return module.eval().requires_grad_(False)


def build_transformer(tiny: bool, device: torch.device, dtype: torch.dtype, seed: int = 0,
                      num_layers: int | None = None) -> SCAIL2Transformer:
    config = {} if num_layers is None else {"num_layers": num_layers}
    if tiny:
        official = {k: v for k, v in TINY_CONFIGS["dit"].items() if k != "clip_dim"}
        config = {**config_from_official(official, clip_dim=TINY_CONFIGS["dit"]["clip_dim"]), **config}
    with meta_init():
        model = SCAIL2Transformer(**config)
    return materialize_random(
        model, device, lambda name: torch.float32 if SCAIL2Transformer.keeps_fp32(name) else dtype, seed)


def build_encoders(tiny: bool, device: torch.device, dtype: torch.dtype, tokenizer_dir: Path, seed: int = 1):
    t5_config = T5EncoderConfig(**TINY_CONFIGS["t5"]) if tiny else T5EncoderConfig()
    clip_args = {k: v for k, v in TINY_CONFIGS["clip"].items() if k != "embed_dim"} if tiny else {}
    clip_config = ClipVisionConfig(**clip_args)
    vae_args = dict(TINY_CONFIGS["vae"]) if tiny else {}
    vae_config = WanVAEConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in vae_args.items()})
    from diffusers import AutoencoderKLWan
    from transformers import CLIPVisionModel, UMT5EncoderModel

    with meta_init():
        t5 = UMT5EncoderModel(t5_config.to_transformers())
        clip = CLIPVisionModel(clip_config.to_transformers())
        vae = AutoencoderKLWan(**vae_config.to_diffusers_kwargs())
    t5.tie_weights()
    write_tiny_tokenizer(tokenizer_dir)  # any tokenizer: T5 always runs on 512 padded tokens
    text_encoder = UMT5TextEncoder(materialize_random(t5, device, lambda _: dtype, seed),
                                   load_tokenizer(tokenizer_dir), text_len=t5_config.text_len)
    image_encoder = ClipImageEncoder(materialize_random(clip, device, lambda _: dtype, seed + 1))
    video_vae = WanVideoVAE(materialize_random(vae, device, lambda _: dtype, seed + 2))
    return text_encoder, image_encoder, video_vae


# ----------------------------------------------------------------------------------------------- timing


class Timer:
    """Wall time of a GPU region with CUDA events (host clock on the CPU)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            result = fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1000.0, result
        begin = time.perf_counter()
        result = fn()
        return time.perf_counter() - begin, result


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak(device: torch.device) -> dict[str, float]:
    if device.type != "cuda":
        return {"peak_gb": None, "peak_gib": None, "peak_reserved_gib": None}
    allocated = torch.cuda.max_memory_allocated(device)
    return {
        "peak_gb": round(allocated / 1e9, 2),
        "peak_gib": round(allocated / 2**30, 2),
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved(device) / 2**30, 2),
    }


def rel_err(value: torch.Tensor, reference: torch.Tensor) -> float:
    value, reference = value.double().cpu(), reference.double().cpu()
    return float((value - reference).norm() / reference.norm().clamp(min=1e-30))


def parse_size(text: str) -> tuple[int, int, int | None]:
    """"HxW" or "HxW*R" (R timed repeats after the warm-up, overriding the default for that size)."""
    text, _, repeats = text.partition("*")
    if repeats and not repeats.isdigit():
        raise argparse.ArgumentTypeError(f"repeat count in {text!r}*{repeats!r} must be an integer")
    height, _, width = text.lower().partition("x")
    if not (height.isdigit() and width.isdigit()) or int(height) % 32 or int(width) % 32:
        raise argparse.ArgumentTypeError(f"size {text!r} must be HEIGHTxWIDTH with both multiples of 32")
    return int(height), int(width), int(repeats) if repeats else None


# ----------------------------------------------------------------------------------------------- cases


def forward_inputs(model: SCAIL2Transformer, height: int, width: int, device: torch.device, seed: int):
    config = model.config
    frames = 1 + (FRAMES - 1) // 4
    h, w = height // 8, width // 8
    generator = torch.Generator(device="cpu").manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=generator).to(device)

    return dict(
        latents=rand(1, 16, frames, h, w),
        timestep=torch.tensor([900.0], device=device),
        context=rand(1, 64, config.text_dim),  # a 64-token prompt; the model pads to 512
        clip_features=rand(1, 257, config.clip_dim),
        ref_latents=rand(1, 16, 1, h, w),
        ref_masks=rand(1, config.mask_dim, 1, h, w).sigmoid(),
        pose_latents=rand(1, 16, frames, h // 2, w // 2),
        driving_masks=rand(1, config.mask_dim, frames, h // 2, w // 2).sigmoid(),
        return_dict=False,
    )


def time_forward(model, inputs, device, repeats: int) -> dict[str, Any]:
    timer = Timer(device)
    reset_peak(device)
    with torch.no_grad():
        warmup_s, output = timer(lambda: model(**inputs)[0])
        times = [timer(lambda: model(**inputs)[0])[0] for _ in range(repeats)]
    median = statistics.median(times) if times else warmup_s  # no repeats: the one (cold) run
    return {"seconds": round(median, 3), "times": [round(t, 3) for t in times],
            "warmup_s": round(warmup_s, 2), "compile_s": round(max(warmup_s - median, 0.0), 2),
            **peak(device), "_output": output.float().cpu()}


def window_request(height: int, width: int, seed: int, source: tuple[int, int] | None = None) -> GenerationRequest:
    """A fast-preset request for one 81-frame window at ``height x width``; the media are RGBA at that size, or at
    ``source`` (height, width), e.g. 1080x1920, which ``prepare_inputs`` then resizes and crops."""
    rng = np.random.default_rng(seed)
    src_h, src_w = source or (height, width)
    # RGBA media: the alpha channels give the reference and driving masks (an opaque centred figure).
    reference = rng.integers(0, 256, (src_h, src_w, 4), dtype=np.uint8)
    driving = rng.integers(0, 256, (FRAMES, src_h, src_w, 4), dtype=np.uint8)
    for image in (reference[None], driving):
        image[..., 3] = 0
        image[:, src_h // 8 : src_h - src_h // 8, src_w // 4 : src_w - src_w // 4, 3] = 255
    return GenerationRequest(
        reference=reference,
        driving=VideoClip(frames=driving, fps=16.0),
        prompt=PROMPT,
        size=(height, width),
        sampling=SamplingSettings.from_preset("fast", seed=seed),
        loras={},  # LoRAs are fused into the weights before a job: no effect on compute
    )


def time_window(pipe: Scail2Pipeline, request: GenerationRequest, device: torch.device,
                repeats: int) -> dict[str, Any]:
    runs = []
    for _ in range(1 + repeats):
        events: list[tuple[str, float]] = []
        reset_peak(device)
        begin = time.perf_counter()
        result = pipe.generate(request, progress=lambda ev, events=events, begin=begin: events.append(
            (ev.phase, time.perf_counter() - begin)))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        runs.append((time.perf_counter() - begin, result, events, peak(device)))
    timed = runs[1:] if repeats else runs
    median = statistics.median(r[0] for r in timed)
    last_events = timed[-1][2]
    first_step = next((t for phase, t in last_events if phase == "step"), None)
    return {
        "seconds": round(median, 3),
        "times": [round(r[0], 3) for r in timed],
        "warmup_s": round(runs[0][0], 2),
        "compile_s": round(max(runs[0][0] - median, 0.0), 2),
        # Host-side phase marks of the last run (approximate: GPU work is asynchronous between syncs).
        "phase_marks_s": [(phase, round(t, 2)) for phase, t in last_events if phase != "step"],
        "first_step_mark_s": None if first_step is None else round(first_step, 2),
        **max((r[3] for r in timed), key=lambda p: p["peak_gb"] or 0),
        "_output": torch.from_numpy(timed[-1][1].frames.astype(np.float32) / 127.5 - 1.0),
    }


def time_prepare_inputs(request: GenerationRequest, device: torch.device, repeats: int,
                        reference: Any = None) -> dict[str, Any]:
    """``prepare_inputs`` of one request on ``device`` (synchronised): median of ``repeats`` runs after one warm-up
    run, the host-side validation alone, and how far the output is from ``reference`` (the CPU's output)."""
    from backend.scail2.conditioning.request import prepare_inputs, validate_request

    def run() -> tuple[float, Any]:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        begin = time.perf_counter()
        prepared = prepare_inputs(request, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - begin, prepared

    reset_peak(device)
    warmup_s, prepared = run()
    times = [run()[0] for _ in range(repeats)]
    begin = time.perf_counter()
    validate_request(request)
    validate_s = time.perf_counter() - begin
    result = {"seconds": round(statistics.median(times) if times else warmup_s, 4),
              "times": [round(t, 4) for t in times], "warmup_s": round(warmup_s, 3),
              "validate_s": round(validate_s, 4), **peak(device), "_output": None, "_prepared": prepared}
    if reference is not None:
        worst, differing, total = 0, 0, 0
        for name in ("reference", "reference_mask", "driving", "driving_mask"):
            difference = (getattr(prepared, name).cpu().int() - getattr(reference, name).int()).abs()
            worst = max(worst, int(difference.max()))
            differing += int((difference > 0).sum())
            total += difference.numel()
        result.update(max_abs_diff_vs_cpu=worst, fraction_differing_vs_cpu=differing / total)
    return result


def prepare_inputs_cases(recorder: Recorder, sizes, sources: list[str], device: torch.device, repeats: int,
                         cpu_repeats: int, label: str) -> None:
    """``--prepare-inputs``: each size x source on the CPU, then on ``device`` when it is a GPU."""
    devices = [torch.device("cpu")] + ([device] if device.type != "cpu" else [])
    for height, width, count in sizes:
        for source in sources:
            source_hw = None if source == "same" else tuple(int(x) for x in source.split("x"))
            request = window_request(height, width, seed=7, source=source_hw)
            src_h, src_w = source_hw or (height, width)
            reference = None
            for where in devices:
                case = {"kind": "prepare_inputs", "height": height, "width": width, "frames": FRAMES,
                        "source": f"{src_h}x{src_w} RGBA", "device": where.type, "label": label,
                        "torch_threads": torch.get_num_threads()}
                runs = (cpu_repeats if where.type == "cpu" else repeats) if count is None else count
                try:
                    result = time_prepare_inputs(request, where, runs, reference)
                except Exception as error:  # record and go on
                    traceback.print_exc()
                    recorder.add({**case, "error": f"{type(error).__name__}: {error}"[:2000]})
                    continue
                result.pop("_output")
                prepared = result.pop("_prepared")
                if where.type == "cpu":
                    reference = prepared
                recorder.add({**case, **result})
                del prepared
            del request, reference


def time_stages(pipe: Scail2Pipeline, request: GenerationRequest, device: torch.device) -> dict[str, Any]:
    """Each non-DiT stage of a window on its own, synchronised: where the time outside the forwards goes."""
    from backend.scail2.conditioning.masks import halve_bilinear
    from backend.scail2.conditioning.request import prepare_inputs
    from backend.scail2.pipelines.pipeline_scail2 import frames_to_uint8

    def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        begin = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return round(time.perf_counter() - begin, 3), result

    stages: dict[str, float] = {}
    stages["prepare_inputs_device"], prepared = timed(lambda: prepare_inputs(request, device))
    encoder = pipe.text_encoder
    if pipe.offload_encoders:
        stages["t5_load"], _ = timed(lambda: pipe._encoder_on_device(encoder))
    stages["t5_encode"], _ = timed(lambda: encoder.encode([request.prompt]))
    reference = prepared.reference.permute(2, 0, 1).float().div(127.5).sub(1.0)
    stages["clip_load_encode"], _ = timed(lambda: pipe.encode_image(reference))
    if pipe.offload_encoders:
        stages["encoders_park"], _ = timed(pipe._park_encoders)
    stages["vae_encode_reference"], _ = timed(lambda: pipe.vae.encode(reference[:, None].to(device)))
    driving = prepared.driving[:FRAMES].permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    pose = halve_bilinear(driving).permute(1, 0, 2, 3)
    stages["vae_encode_driving_half_res"], _ = timed(lambda: pipe.vae.encode(pose.to(device)))
    height, width = prepared.height, prepared.width
    latents = torch.randn(16, 1 + (FRAMES - 1) // 4, height // 8, width // 8, device=device)
    stages["vae_decode"], video = timed(lambda: pipe.vae.decode(latents))
    stages["frames_to_uint8"], _ = timed(lambda: frames_to_uint8(video))
    return {"stages_s": stages, "seconds": round(sum(stages.values()), 3), "_output": None}


class RoundingBlock(SCAIL2TransformerBlock):
    """The path before issue #15: diffusers' Wan block, which rounds the residual stream to bf16 after every add."""

    def forward(self, hidden_states, encoder_hidden_states, temb, rotary_emb):
        return WanTransformerBlock.forward(self, hidden_states.to(encoder_hidden_states.dtype), encoder_hidden_states,
                                           temb, rotary_emb)


def error_stats(value: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """mean|v - r| / mean|r| (the issue's "mean relative error") and the L2 ratio ||v - r|| / ||r||."""
    value, reference = value.double().cpu(), reference.double().cpu()
    diff = value - reference
    return {"mean_rel": float(diff.abs().mean() / reference.abs().mean()),
            "l2_rel": float(diff.norm() / reference.norm())}


def _set_block_class(transformer: SCAIL2Transformer, cls: type, compile_after: bool) -> None:
    from backend.scail2.accel.compile import uncompile_blocks

    uncompile_blocks(transformer)
    for block in transformer_blocks(transformer):
        block.__class__ = cls
    if compile_after:
        compile_blocks(transformer)


def fidelity_case(transformer: SCAIL2Transformer, state, settings: PerformanceSettings, height: int, width: int,
                  device: torch.device, bf16_output: torch.Tensor | None, bf16_record: dict | None) -> dict[str, Any]:
    """Ours-bf16 (fp32 residual stream) and the old bf16 path (rounded stream) against ours-fp32, same weights.

    The fp32 model is the same random bf16 weights cast up (exact), run eagerly with PyTorch's SDPA choice (the
    memory-efficient kernel in fp32) and TF32 off. Afterwards the weights go back to bf16 (exact again) and the
    blocks are compiled as before.
    """
    inputs = forward_inputs(transformer, height, width, device, seed=height + width)
    result: dict[str, Any] = {}
    if bf16_output is None:
        timed = time_forward(transformer, inputs, device, 1)
        bf16_output = timed.pop("_output")
        bf16_record = timed
    result["new_bf16"] = {k: bf16_record.get(k) for k in ("seconds", "warmup_s", "peak_gb")}
    try:
        # The old path, compiled the same way: its time and memory are the cost of the change.
        _set_block_class(transformer, RoundingBlock, settings.compile_blocks)
        old = time_forward(transformer, inputs, device, 1)
        old_output = old.pop("_output")
        result["old_bf16"] = {k: old.get(k) for k in ("seconds", "warmup_s", "peak_gb")}
        _set_block_class(transformer, SCAIL2TransformerBlock, False)
        # fp32: every parameter up-cast in place; the attention backend left to PyTorch (cuDNN has no fp32 kernel).
        del inputs
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        set_attention_backend(transformer, "native")
        transformer.float()
        inputs = forward_inputs(transformer, height, width, device, seed=height + width)
        fp32 = time_forward(transformer, inputs, device, 0)
        fp32_output = fp32.pop("_output")
        result["fp32"] = {"seconds": fp32["warmup_s"], "peak_gb": fp32["peak_gb"]}
        del inputs
    finally:  # whatever happened: bf16 weights (exact round trip), the new block, the chosen kernels, compiled
        _set_block_class(transformer, SCAIL2TransformerBlock, False)
        for name, param in transformer.named_parameters():
            if not SCAIL2Transformer.keeps_fp32(name) and param.dtype != torch.bfloat16:
                param.data = param.data.to(torch.bfloat16)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        set_attention_backend(transformer, state.attention_backend,
                              None if settings.cross_attention_backend == "same" else state.cross_attention_backend)
        if settings.compile_blocks:
            compile_blocks(transformer)
    new_err, old_err = error_stats(bf16_output, fp32_output), error_stats(old_output, fp32_output)
    result.update(
        mean_rel_err_bf16_vs_fp32=round(new_err["mean_rel"], 6), l2_rel_err_bf16_vs_fp32=round(new_err["l2_rel"], 6),
        old_mean_rel_err_bf16_vs_fp32=round(old_err["mean_rel"], 6),
        old_l2_rel_err_bf16_vs_fp32=round(old_err["l2_rel"], 6),
        target_mean_rel_err=4.5e-3, seconds=result["new_bf16"]["seconds"], _output=None,
    )
    return result


def step_cache_costs(transformer: SCAIL2Transformer, height: int, width: int, device: torch.device,
                     name: str) -> dict[str, Any]:
    """One computed and one skipped forward under a step cache: what a skipped step costs.

    TaylorSeer (lite) runs with a schedule that skips the second forward; First Block Cache skips it because the
    inputs repeat (its first block's residual does not change). The cache hooks sit outside the compiled blocks.
    """
    from diffusers.hooks import TaylorSeerCacheConfig

    from backend.scail2.accel.step_cache import StepCache

    config = None
    if name == "taylorseer":
        config = TaylorSeerCacheConfig(cache_interval=1000, disable_cache_before_step=1, max_order=1,
                                       taylor_factors_dtype=torch.float32, use_lite_mode=True)
    inputs = forward_inputs(transformer, height, width, device, seed=height + width)
    cache = StepCache(transformer, name, config)
    timer = Timer(device)
    times = []
    reset_peak(device)
    with torch.no_grad(), cache.window():
        for _ in range(2):
            with cache.context("cond"):
                seconds, output = timer(lambda: transformer(**inputs)[0])
            times.append(seconds)
    ran = cache.stats.contexts["cond"]
    skipped = [t for t, r in zip(times, ran, strict=True) if not r]
    computed = [t for t, r in zip(times, ran, strict=True) if r]
    return {"step_cache": name, "computed": ran, "times": [round(t, 4) for t in times],
            "computed_forward_s": round(statistics.median(computed), 4) if computed else None,
            "skipped_forward_s": round(statistics.median(skipped), 4) if skipped else None,
            "seconds": round(statistics.median(skipped), 4) if skipped else None, **peak(device),
            "_output": None}


def probe_attention(recorder: Recorder, device: torch.device, tokens: int, backends: list[str],
                    cross: bool = True) -> None:
    """Time self-attention (N x N) and the two cross-attentions (N x 257, N x 512) per backend, alone.

    Each record also gives the backend's error against exact attention (fp32 math over the first 1024 queries).
    ``sage`` is SageAttention 1.x called directly (its Triton kernel, 8-bit QK), when installed.
    """
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    from backend.scail2.accel.attention import DIFFUSERS_BACKENDS

    heads, head_dim = 40, 128
    generator = torch.Generator(device=device).manual_seed(3)
    query = torch.randn(1, tokens, heads, head_dim, device=device, dtype=torch.bfloat16, generator=generator)
    cases = ((tokens, "self"), (257, "cross_image"), (512, "cross_text")) if cross else ((tokens, "self"),)
    for kv_tokens, what in cases:
        key, value = (torch.randn(1, kv_tokens, heads, head_dim, device=device, dtype=torch.bfloat16,
                                  generator=generator) for _ in range(2))
        rows = 1024
        exact = torch.nn.functional.scaled_dot_product_attention(
            *(t.float().transpose(1, 2) for t in (query[:, :rows], key, value))).transpose(1, 2)
        for name in backends:
            if name == "sage":
                def call(key=key, value=value):
                    from sageattention import sageattn

                    # sageattn subtracts the key mean in place (smooth_k): hand it a copy.
                    return sageattn(query, key.clone(), value, tensor_layout="NHD", is_causal=False)
            else:
                def call(name=name, key=key, value=value):
                    return dispatch_attention_fn(query, key, value, backend=DIFFUSERS_BACKENDS[name])
            try:
                out = call()
                call()
                timer = Timer(device)
                times = [timer(call)[0] for _ in range(5)]
            except Exception as error:  # a backend that cannot run this shape
                recorder.add({"kind": "attention", "what": what, "backend": name, "tokens": tokens,
                              "kv_tokens": kv_tokens, "error": f"{type(error).__name__}: {error}"[:500]})
                continue
            median = statistics.median(times)
            err = error_stats(out[:, :rows].float(), exact)
            recorder.add({"kind": "attention", "what": what, "backend": name, "tokens": tokens,
                          "kv_tokens": kv_tokens, "seconds": round(median, 5),
                          "tflops": round(4 * tokens * kv_tokens * heads * head_dim / median / 1e12, 1),
                          "rel_err_vs_exact": round(err["l2_rel"], 5)})
            del out


def profile_forward(model, inputs, device, path: Path) -> None:
    """One profiled forward: the top CUDA kernels by time go to the log and to `path`."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        model(**inputs)
        torch.cuda.synchronize(device)
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=70)
    print(table, flush=True)
    path.write_text(table)


# ----------------------------------------------------------------------------------------------- driver


class Recorder:
    def __init__(self, path: Path, env: dict[str, Any]) -> None:
        self.path = path
        self.env = env
        self.records: list[dict[str, Any]] = []
        if path.exists():
            self.records = json.loads(path.read_text())

    def add(self, record: dict[str, Any]) -> None:
        record = {**record, **self.env}
        self.records.append({k: v for k, v in record.items() if not k.startswith("_")})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=self.path.parent, delete=False, suffix=".tmp") as handle:
            json.dump(self.records, handle, indent=1)
        os.replace(handle.name, self.path)
        shown = {k: record.get(k) for k in ("kind", "height", "width", "dtype", "mode", "device", "source", "seconds",
                                             "peak_gb", "max_abs_diff_vs_cpu",
                                             "warmup_s", "rel_err_vs_bf16", "what", "backend", "tflops", "error")
                 if record.get(k) is not None}
        print("RECORD", json.dumps(shown), flush=True)


def print_table(records: list[dict[str, Any]]) -> None:
    columns = ("kind", "mode", "height", "width", "dtype", "device", "source", "seconds", "warmup_s", "peak_gb",
               "rel_err_vs_bf16", "max_abs_diff_vs_cpu", "attention_backend_resolved",
               "cross_attention_backend_resolved")
    print("\n" + " | ".join(columns))
    for record in records:
        print(" | ".join(str(record.get(c, "")) for c in columns))


def run_case(recorder: Recorder, case: dict[str, Any], fn: Callable[[], dict[str, Any]],
             references: dict[tuple, torch.Tensor]) -> None:
    """Run one case, record it (or its error), and keep its output to compare fp8 against bf16."""
    try:
        result = fn()
    except Exception as error:  # record and go on: one failing case must not lose the others
        traceback.print_exc()
        recorder.add({**case, "error": f"{type(error).__name__}: {error}"[:2000]})
        return
    output = result.pop("_output")
    key = (case["kind"], case["height"], case["width"])
    if output is None:
        recorder.add({**case, **result})
        return
    mode = case.get("mode", "resident")
    if case["dtype"] == "bf16" and mode == "resident":
        references[key] = output
        result["rel_err_vs_bf16"] = 0.0
    elif key in references:
        result["rel_err_vs_bf16"] = round(rel_err(output, references[key]), 5)
    else:
        result["rel_err_vs_bf16"] = None
    if mode == "resident":
        references[(*key, case["dtype"])] = output
    elif (*key, case["dtype"]) in references:  # streamed: should equal the resident run of the same dtype
        result["rel_err_vs_resident"] = round(rel_err(output, references[(*key, case["dtype"])]), 6)
    recorder.add({**case, **result})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sizes = lambda text: [parse_size(x) for x in text.split(",") if x]  # noqa: E731
    parser.add_argument("--forward", type=sizes, default=[], help="sizes HxW,... to time DiT forwards at")
    parser.add_argument("--window", type=sizes, default=[], help="sizes HxW,... to time fast-preset windows at")
    parser.add_argument("--fp8", action="store_true", help="after the bf16 cases, convert to fp8 and repeat them")
    parser.add_argument("--low-vram", action="store_true",
                        help="after the resident bf16 cases, stream the blocks from pinned host memory under "
                             "--memory-cap-gib and repeat them")
    parser.add_argument("--memory-cap-gib", type=float, default=23.5, help="allocator cap of the low-VRAM pass")
    parser.add_argument("--low-vram-window", type=sizes, default=None,
                        help="window sizes of the low-VRAM pass (default: --window)")
    parser.add_argument("--prepare-inputs", type=sizes, default=[],
                        help="sizes HxW,... to time prepare_inputs of an 81-frame window at, on the CPU and on "
                             "--device (a GPU); builds no model, runs first")
    parser.add_argument("--prepare-sources", default="same,1080x1920",
                        help="media sizes for --prepare-inputs: 'same' (RGBA at the output size, as --window uses) "
                             "and/or HxW sources that get resized and cropped")
    parser.add_argument("--prepare-repeats", type=int, default=5, help="timed prepare_inputs runs on the GPU")
    parser.add_argument("--prepare-cpu-repeats", type=int, default=2, help="timed prepare_inputs runs on the CPU")
    parser.add_argument("--stages", action="store_true", help="also time each non-DiT stage of a window")
    parser.add_argument("--profile", action="store_true", help="profile one forward at the first --forward size")
    parser.add_argument("--low-vram-vae-tiling", default="settings", choices=("settings", "on", "off", "both"))
    parser.add_argument("--attention-backend", default="auto")
    parser.add_argument("--cross-attention-backend", default="same")
    parser.add_argument("--strided-ab", action="store_true",
                        help="after the bf16 forwards, switch to the strided-SDPA processor and repeat them; "
                             "the later cases keep it unless it failed")
    parser.add_argument("--fp8-forward", type=sizes, default=None, help="forward sizes of the fp8 pass")
    parser.add_argument("--attention-probe", type=lambda t: [int(x) for x in t.split(",") if x], default=[],
                        help="time attention backends alone at these token counts (48832 = 512p, 95920 = 704p; "
                             "the cross-attentions at the first only), after the windows")
    parser.add_argument("--attention-backends", default="cudnn,torch_flash,sage",
                        help="backends the probe times (sage: when sageattention is installed)")
    parser.add_argument("--step-cache-costs", default="",
                        help="after the bf16 forwards, the cost of a skipped forward under these step caches "
                             "(taylorseer,first_block) at the first --forward size")
    parser.add_argument("--fidelity", type=sizes, default=[],
                        help="after the windows: ours-bf16 and the old rounded-stream path against ours-fp32 at "
                             "this size (same weights; needs ~66 GB more for the fp32 copy)")
    parser.add_argument("--fp8-window", type=sizes, default=None, help="window sizes of the fp8 pass "
                        "(default: --window)")
    parser.add_argument("--fp8-low-vram", type=sizes, default=[],
                        help="after the fp8 cases, stream the fp8 blocks from pinned host memory and time forwards "
                             "at these sizes (output compared with the resident fp8 forward)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--repeats", type=int, default=2, help="timed forwards after the warm-up")
    parser.add_argument("--window-repeats", type=int, default=1, help="timed windows after the warm-up")
    parser.add_argument("--tiny", action="store_true", help="tiny configs (CPU development)")
    parser.add_argument("--num-layers", type=int, default=None,
                        help="DiT depth (default: the config's, 40 for the 14B); a shallow full-width DiT lets a "
                             "CPU run the fidelity check")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--label", default="", help="free text stored with each record")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.fp8 and args.low_vram:
        parser.error("run --fp8 and --low-vram in separate invocations (both rewrite the blocks)")

    device = torch.device(args.device)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    env = environment(device)
    recorder = Recorder(args.out, env)
    print("ENV", json.dumps(env), flush=True)

    total_gib = torch.cuda.get_device_properties(device).total_memory / 2**30 if device.type == "cuda" else None
    overrides: dict[str, Any] = {"attention_backend": args.attention_backend,
                                 "cross_attention_backend": args.cross_attention_backend}
    if args.no_compile:
        overrides["compile_blocks"] = False
    settings = PerformanceSettings.for_memory(total_gib, **overrides)

    if args.prepare_inputs:
        prepare_inputs_cases(recorder, args.prepare_inputs, [x for x in args.prepare_sources.split(",") if x],
                             device, args.prepare_repeats, args.prepare_cpu_repeats, args.label)
        if not (args.forward or args.window or args.attention_probe):
            print_table(recorder.records)
            return 0

    dtype = torch.bfloat16
    begin = time.perf_counter()
    transformer = build_transformer(args.tiny, device, dtype, num_layers=args.num_layers)
    base_layers = {"num_layers": transformer.config.num_layers, "dim": transformer.config.dim}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    build_s = time.perf_counter() - begin
    state = apply_performance_settings(transformer, settings, device)
    base = {"attention_backend_resolved": state.attention_backend,
            "cross_attention_backend_resolved": state.cross_attention_backend, "frames": FRAMES, "label": args.label,
            "tiny": args.tiny, "build_s": round(build_s, 1), "memory_cap_gib": None, **base_layers}
    print("SETTINGS", json.dumps(state.to_dict()), flush=True)

    references: dict[tuple, torch.Tensor] = {}
    pipe: Scail2Pipeline | None = None

    def forward_cases(precision: str, mode: str, forward_sizes=None) -> bool:
        failed = False
        for index, (height, width, repeats) in enumerate(args.forward if forward_sizes is None else forward_sizes):
            inputs = forward_inputs(transformer, height, width, device, seed=height + width)
            case = {**base, "kind": "forward", "height": height, "width": width, "dtype": precision,
                    "mode": mode, "settings": state.to_dict()}
            count = args.repeats if repeats is None else repeats
            run_case(recorder, case, lambda inputs=inputs, count=count: time_forward(
                transformer, inputs, device, count), references)
            failed |= "error" in recorder.records[-1]
            if args.profile and index == 0 and device.type == "cuda":
                profile_forward(transformer, inputs, device,
                                args.out.with_name(f"{args.out.stem}_profile_{precision}_{mode}.txt"))
            del inputs
        return failed

    def window_cases(precision: str, mode: str, window_sizes) -> None:
        nonlocal pipe
        if not window_sizes:
            return
        if pipe is None:
            with tempfile.TemporaryDirectory() as tokenizer_dir:
                # Encoders are built on the GPU (random values straight into device memory); the pipeline
                # parks them on the host between encodings when settings.offload_encoders is on.
                text_encoder, image_encoder, vae = build_encoders(
                    args.tiny, device, dtype, Path(tokenizer_dir) / "tokenizer")
            pipe = Scail2Pipeline(transformer, text_encoder, image_encoder, vae, device=device,
                                  offload_encoders=state.settings.offload_encoders)
        if state.settings.vae_tiling:
            pipe.vae.model.enable_tiling()
        else:
            pipe.vae.model.disable_tiling()
        for height, width, repeats in window_sizes:
            request = window_request(height, width, seed=7)
            case = {**base, "kind": "window", "preset": "fast", "steps": 6, "height": height, "width": width,
                    "dtype": precision, "mode": mode, "settings": state.to_dict()}
            count = args.window_repeats if repeats is None else repeats
            run_case(recorder, case, lambda request=request, count=count: time_window(
                pipe, request, device, count), references)
            if args.stages:
                run_case(recorder, {**case, "kind": "stages"},
                         lambda request=request: time_stages(pipe, request, device), references)

    forward_cases("bf16", "resident")
    if args.step_cache_costs and args.forward:
        height, width, _ = args.forward[0]
        for name in args.step_cache_costs.split(","):
            case = {**base, "kind": "step_cache", "height": height, "width": width, "dtype": "bf16",
                    "mode": "resident"}
            run_case(recorder, case, lambda name=name: step_cache_costs(transformer, height, width, device, name),
                     references)
    if args.strided_ab:
        from backend.scail2.accel import use_strided_attention

        original = {m: m.processor for m in transformer.modules() if hasattr(m, "processor")}
        use_strided_attention(transformer, state.attention_backend)
        if settings.compile_blocks:
            torch._dynamo.reset()
            compile_blocks(transformer)
        state.settings = dataclasses.replace(state.settings, strided_attention=True)
        if forward_cases("bf16", "strided"):
            for module, processor in original.items():  # back to the diffusers processor for what follows
                module.set_processor(processor)
            state.settings = dataclasses.replace(state.settings, strided_attention=False)
            if settings.compile_blocks:
                torch._dynamo.reset()
                compile_blocks(transformer)
    window_cases("bf16", "resident", args.window)

    for height, width, _ in args.fidelity:
        bf16_record = next((r for r in recorder.records if r.get("kind") == "forward" and r.get("height") == height
                            and r.get("width") == width and r.get("dtype") == "bf16" and "error" not in r), None)
        case = {**base, "kind": "fidelity", "height": height, "width": width, "dtype": "bf16", "mode": "resident"}
        run_case(recorder, case, lambda h=height, w=width, r=bf16_record: fidelity_case(
            transformer, state, settings, h, w, device, references.get(("forward", h, w)), r), references)

    if args.attention_probe and device.type == "cuda":
        import importlib.util

        backends = [b for b in args.attention_backends.split(",")
                    if b != "sage" or importlib.util.find_spec("sageattention") is not None]
        for index, tokens in enumerate(args.attention_probe):
            probe_attention(recorder, device, tokens, backends, cross=index == 0)

    if args.low_vram:
        # Same model, now streamed: outputs must equal the resident run's (rel_err_vs_bf16 ~ 0).
        state.streamer = enable_block_streaming(transformer, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            torch.cuda.set_per_process_memory_fraction(min(1.0, args.memory_cap_gib / total_gib), device)
        base["memory_cap_gib"] = args.memory_cap_gib
        low = PerformanceSettings.for_memory(args.memory_cap_gib, **overrides)
        tilings = {"settings": [low.vae_tiling], "on": [True], "off": [False], "both": [False, True]}
        for tiling in tilings[args.low_vram_vae_tiling]:
            state.settings = dataclasses.replace(low, vae_tiling=tiling)
            forward_cases("bf16", "low_vram")
            window_cases("bf16", "low_vram", args.window if args.low_vram_window is None else args.low_vram_window)
            args.forward = []  # forwards do not use the VAE: once is enough

    if args.fp8:
        begin = time.perf_counter()
        state.fp8_linears = convert_blocks_to_fp8(nn.ModuleList(transformer_blocks(transformer)))
        state.settings = dataclasses.replace(state.settings, fp8_linear=True)
        state.attention_backend = select_attention_backend(settings.attention_backend, device, eight_bit=True)
        cross = None if settings.cross_attention_backend == "same" else settings.cross_attention_backend
        set_attention_backend(transformer, state.attention_backend, cross)
        if settings.compile_blocks:
            torch._dynamo.reset()  # the blocks changed: compile the fp8 graph afresh
            compile_blocks(transformer)
        base["fp8_convert_s"] = round(time.perf_counter() - begin, 1)
        base["attention_backend_resolved"] = state.attention_backend
        forward_cases("fp8", "resident", args.fp8_forward)
        window_cases("fp8", "resident", args.window if args.fp8_window is None else args.fp8_window)
        if args.fp8_low_vram:
            # fp8 blocks streamed from pinned host memory; the encoders go, so the peak is the DiT's alone.
            pipe = None
            import gc

            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            begin = time.perf_counter()
            state.streamer = enable_block_streaming(transformer, device)
            base["stream_setup_s"] = round(time.perf_counter() - begin, 1)
            state.settings = dataclasses.replace(state.settings, low_vram=True)
            forward_cases("fp8", "low_vram", args.fp8_low_vram)

    print_table(recorder.records)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
