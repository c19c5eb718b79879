"""Stage 1 of SCAIL-2 Nano: a small Wan VAE (diffusers ``AutoencoderKLWan``) trained on motion-pair frames.

Clips of ``CLIP_FRAMES`` frames are cut at random from the driving and target videos of the streamed pairs (their
first frame is encoded alone, as the causal VAE does for every window's first frame and for reference images);
batches are random 64x64 crops or halved frames (the scale at which the pipeline encodes driving videos).
Loss: L1 reconstruction with character pixels weighted ``CHARACTER_WEIGHT`` times (silhouettes are what the
motion-transfer score measures) plus a small KL term on the posterior. The decoder is run without diffusers'
final clamp so saturated pixels (white masks, bright backgrounds) still get gradients.

After training, :func:`latent_statistics` measures the per-channel mean and std of the posterior means; they go
into the VAE config as ``latents_mean``/``latents_std``, which the engine's ``WanVideoVAE`` uses to normalise
latents, so the DiT sees unit-scale latents exactly as SCAIL-2 sees the Wan2.1 ones.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from torch import Tensor

from backend.scail2.conditioning.masks import halve_bilinear, video_to_unit_range

from .nano_config import VAE_CONFIG
from .nano_data import ChunkFeeder

CLIP_FRAMES = 9
CHARACTER_WEIGHT = 3.0
KL_WEIGHT = 1e-4
LOGVAR_INIT = -8.0
LEARNING_RATE = 1e-3
WARMUP_STEPS = 50
DECAY_FRACTION = 0.3  # the learning rate falls linearly to 10% over this last part of the stage
CHUNK_REUSE = 8  # batches cut from one streamed chunk before the next is taken (unpacking a chunk costs time)
CHUNK_REUSE_MAX = 32  # while no fresh chunk is ready, keep cutting batches from the last one up to this many
HALF_RESOLUTION_FRACTION = 0.3
CROP = 64


def build_vae(config: dict | None = None) -> AutoencoderKLWan:
    """A new VAE whose posterior starts nearly deterministic (see :func:`init_posterior`)."""
    model = AutoencoderKLWan(**(config or VAE_CONFIG))
    init_posterior(model)
    return model


def init_posterior(model: AutoencoderKLWan, logvar: float = LOGVAR_INIT) -> None:
    """Start every latent's log-variance at ``logvar`` (std ~0.02) instead of ~0 (std ~1).

    With diffusers' default initialisation the sampled latent is the posterior mean (a few tenths at first) plus
    unit noise; the decoder then cannot read the mean and settles on blurred grey shapes. The first H200 run
    stalled there at ~17 dB PSNR. The log-variance half of ``quant_conv`` gets zero weights and this bias; the
    KL term can still raise it later.
    """
    z_dim = model.config.z_dim
    with torch.no_grad():
        model.quant_conv.weight[z_dim:].zero_()
        model.quant_conv.bias[z_dim:].fill_(logvar)


def decode_unclamped(model: AutoencoderKLWan, z: Tensor) -> Tensor:
    """diffusers' causal ``_decode`` (one latent frame at a time with feature caches) without the final clamp."""
    model.clear_cache()
    hidden = model.post_quant_conv(z)
    frames = []
    for index in range(hidden.shape[2]):
        model._conv_idx = [0]
        frames.append(
            model.decoder(hidden[:, :, index : index + 1], feat_cache=model._feat_map, feat_idx=model._conv_idx,
                          first_chunk=index == 0)  # fmt: skip
        )
    model.clear_cache()
    return torch.cat(frames, dim=2)


def vae_loss(model: AutoencoderKLWan, video: Tensor, weight: Tensor) -> tuple[Tensor, dict[str, float]]:
    """``video`` [B, 3, T, H, W] in [-1, 1]; ``weight`` [B, 1, T, H, W]."""
    posterior = DiagonalGaussianDistribution(model._encode(video))
    recon = decode_unclamped(model, posterior.sample())
    l1 = ((recon.float() - video).abs() * weight).sum() / (weight.sum() * 3)
    kl = 0.5 * (posterior.mean.float().pow(2) + posterior.var.float() - 1.0 - posterior.logvar.float()).mean()
    loss = l1 + KL_WEIGHT * kl
    with torch.no_grad():
        mse = (recon.detach().float().clamp(-1, 1) - video).pow(2).mean().item()
    return loss, {"l1": l1.item(), "kl": kl.item(), "psnr": 10 * math.log10(4.0 / max(mse, 1e-10))}


def chunk_clips(chunk: dict, device: torch.device, generator: torch.Generator, batch: int, *,
                training: bool = True) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``batch`` random clips of ``CLIP_FRAMES`` frames from a chunk's driving and target videos: video in
    [-1, 1] [B, 3, T, H, W] and the loss weight [B, 1, T, H, W].

    ``training``: a batch is either halved whole frames (``HALF_RESOLUTION_FRACTION``, the scale the pipeline
    encodes driving videos at) or random ``CROP`` x ``CROP`` crops at latent-grid offsets (the convolutional VAE
    learns the same from a quarter of the pixels); otherwise whole frames (for the latent statistics)."""
    pairs, frames = chunk["driving"].shape[:2]
    pick = torch.randint(2 * pairs, (batch,), generator=generator)
    start = torch.randint(frames - CLIP_FRAMES + 1, (batch,), generator=generator)
    clips, clip_ids = [], []
    for index, first in zip(pick.tolist(), start.tolist(), strict=True):
        role = "driving" if index < pairs else "target"
        clips.append(chunk[role][index % pairs, first : first + CLIP_FRAMES])
        clip_ids.append(chunk[f"{role}_ids"][index % pairs, first : first + CLIP_FRAMES])
    clips = torch.stack(clips).to(device)
    character = (torch.stack(clip_ids).to(device) > 0).float().unsqueeze(2)
    video = video_to_unit_range(clips)  # [B, T, 3, H, W]
    if training and torch.rand((), generator=generator) < HALF_RESOLUTION_FRACTION:
        video = halve_bilinear(video.flatten(0, 1)).unflatten(0, video.shape[:2])
        character = halve_bilinear(character.flatten(0, 1)).unflatten(0, character.shape[:2])
    elif training:
        height, width = video.shape[-2:]
        rows = torch.randint((height - CROP) // 8 + 1, (batch,), generator=generator) * 8
        cols = torch.randint((width - CROP) // 8 + 1, (batch,), generator=generator) * 8
        video = torch.stack([v[..., r : r + CROP, c : c + CROP] for v, r, c in zip(video, rows, cols, strict=True)])
        character = torch.stack(
            [m[..., r : r + CROP, c : c + CROP] for m, r, c in zip(character, rows, cols, strict=True)]
        )
    weight = 1.0 + (CHARACTER_WEIGHT - 1.0) * character
    return video.transpose(1, 2), weight.transpose(1, 2)


def train_vae(model: AutoencoderKLWan, feeder: ChunkFeeder, *, device: torch.device, seconds: float, batch: int,
              seed: int, log: Callable[[dict], None], keep: list[dict] | None = None,
              keep_limit: int = 0) -> dict:  # fmt: skip
    """Train for ``seconds`` of wall time; returns a summary. ``log`` receives a row every few steps. The chunks
    used are appended to ``keep`` (up to ``keep_limit``), so the DiT stage can encode them instead of waiting
    for new ones. A chunk is used ``CHUNK_REUSE`` times, or up to ``CHUNK_REUSE_MAX`` while none is ready."""
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.99), weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    started = time.monotonic()
    step = skipped = 0
    chunk = None
    uses = 0
    recent: list[dict] = []
    while time.monotonic() - started < seconds:
        if chunk is None or uses >= CHUNK_REUSE:
            fresh = feeder.take(1)
            if fresh or chunk is None or uses >= CHUNK_REUSE_MAX:
                chunk = fresh[0] if fresh else feeder.wait()
                uses = 0
                if keep is not None and len(keep) < keep_limit:
                    keep.append(chunk)
        uses += 1
        video, weight = chunk_clips(chunk, device, generator, batch)
        elapsed = time.monotonic() - started
        tail = min(1.0, max(0.0, (elapsed / seconds - (1 - DECAY_FRACTION)) / DECAY_FRACTION))
        scale = min(1.0, (step + 1) / WARMUP_STEPS) * (1.0 - 0.9 * tail)
        for group in optimizer.param_groups:
            group["lr"] = LEARNING_RATE * scale
        with autocast:
            loss, metrics = vae_loss(model, video, weight)
        optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            skipped += 1  # a diverging batch must not poison the weights
            continue
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        recent.append(metrics)
        if step % 25 == 0 or time.monotonic() - started >= seconds:
            row = {key: sum(m[key] for m in recent) / len(recent) for key in recent[0]}
            log({"stage": "vae", "step": step, "time": round(time.monotonic() - started, 1), **row})
            recent = []
    model.eval()
    return {"steps": step, "skipped": skipped, "seconds": round(time.monotonic() - started, 1), "batch": batch}


@torch.no_grad()
def latent_statistics(model: AutoencoderKLWan, feeder: ChunkFeeder, *, device: torch.device, clips: int = 64,
                      seed: int = 0) -> tuple[list[float], list[float]]:  # fmt: skip
    """Per-channel mean and std of the posterior means over ``clips`` fresh clips."""
    generator = torch.Generator().manual_seed(seed)
    means = []
    while sum(m.shape[0] for m in means) < clips:
        video, _ = chunk_clips(feeder.wait(), device, generator, min(16, clips), training=False)
        means.append(DiagonalGaussianDistribution(model._encode(video)).mean.float())
    flat = torch.cat(means).transpose(0, 1).reshape(model.config.z_dim, -1)
    return flat.mean(dim=1).tolist(), flat.std(dim=1).clamp_min(1e-3).tolist()


def set_latent_statistics(model: AutoencoderKLWan, mean: list[float], std: list[float]) -> None:
    """Record the statistics in the model's config (what ``save_pretrained``/the engine read)."""
    model.register_to_config(latents_mean=[round(v, 6) for v in mean], latents_std=[round(v, 6) for v in std])
