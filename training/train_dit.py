"""Stage 2 of SCAIL-2 Nano: the SCAIL-2 DiT (``SCAIL2Transformer``, small config) trained with flow matching.

Objective (Wan / SCAIL-2 rectified flow): ``x_t = (1 - sigma) x0 + sigma eps``, the model predicts
``v = eps - x0`` at timestep ``1000 sigma``; ``sigma`` is a logit-normal draw pushed towards noise by the same
time shift the sampler uses, ``shift u / (1 + (shift - 1) u)``. The loss is the mean squared error over the
video latents, with cells the target character covers weighted ``1 + CHARACTER_WEIGHT``.

Conditioning is exactly what ``Scail2Pipeline`` feeds the DiT (``nano_data.encode_window``). A fraction
``HISTORY_FRACTION`` of the samples are trained as later windows: their first 2 latent frames (the 5 history
frames) are clean target latents with history-mask channels set to one, as the pipeline pins them, and they carry
no loss. The prompt is one of :func:`nano_config.prompt_bank` through the shipped (random) umT5.

Weights: an exponential moving average (``EMA_DECAY``) is kept and is what ships.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import Tensor

from backend.scail2.conditioning.segments import TEMPORAL_STRIDE
from backend.scail2.models.text_encoder import UMT5TextEncoder
from backend.scail2.models.transformer_scail2 import SCAIL2Transformer, config_from_official
from backend.scail2.pipelines.pipeline_scail2 import HISTORY_MASK_CHANNELS

from .nano_config import DIT_CONFIG, SEGMENT_OVERLAP, TRAIN_SHIFT, prompt_bank
from .nano_data import SETTINGS, WindowBuffer

HISTORY_FRACTION = 0.4
HISTORY_LATENT_FRAMES = (SEGMENT_OVERLAP - 1) // TEMPORAL_STRIDE + 1
CHARACTER_WEIGHT = 2.0
LEARNING_RATE = 4e-4
WEIGHT_DECAY = 0.01
WARMUP_STEPS = 150
EMA_DECAY = 0.998


def build_dit(config: dict | None = None) -> SCAIL2Transformer:
    """A randomly initialised DiT from official constructor arguments."""
    args = dict(config or DIT_CONFIG)
    clip_dim = int(args.pop("clip_dim"))
    return SCAIL2Transformer(**config_from_official(args, clip_dim=clip_dim))


class PromptBank:
    """The training prompts encoded once by the frozen umT5, zero-padded to one length (the DiT zero-pads every
    context to 512 rows, so the padding changes nothing)."""

    def __init__(self, text_encoder: UMT5TextEncoder, device: torch.device):
        encoded = [e.float() for e in text_encoder.encode(prompt_bank())]
        length = max(e.shape[0] for e in encoded)
        self.context = torch.zeros(len(encoded), length, encoded[0].shape[1], device=device)
        for i, embedding in enumerate(encoded):
            self.context[i, : embedding.shape[0]] = embedding.to(device)

    def sample(self, batch: int, generator: torch.Generator) -> Tensor:
        # The empty prompt a third of the time, else any prompt of the bank.
        index = torch.randint(1, self.context.shape[0], (batch,), generator=generator)
        index[torch.rand(batch, generator=generator) < 1 / 3] = 0
        return self.context[index.to(self.context.device)]


def sample_sigmas(batch: int, generator: torch.Generator, shift: float = TRAIN_SHIFT) -> Tensor:
    u = torch.sigmoid(torch.randn(batch, generator=generator))
    return shift * u / (1 + (shift - 1) * u)


def flow_inputs(window: dict[str, Tensor], generator: torch.Generator) -> dict[str, Tensor]:
    """Noisy latents, timesteps, history masks, targets and loss weights for a batch of encoded windows."""
    x0 = window["x0"]
    batch = x0.shape[0]
    device = x0.device
    noise = torch.randn(x0.shape, generator=generator).to(device)
    sigma = sample_sigmas(batch, generator).to(device)
    s = sigma.view(batch, 1, 1, 1, 1)
    latents = (1 - s) * x0 + s * noise
    history = (torch.rand(batch, generator=generator) < HISTORY_FRACTION).to(device)
    history_mask = torch.zeros(batch, HISTORY_MASK_CHANNELS, *x0.shape[2:], device=device)
    history_mask[history, :, :HISTORY_LATENT_FRAMES] = 1.0
    pinned = history_mask[:, :1].bool()
    latents = torch.where(pinned, x0, latents)
    frame_weight = 1.0 - history_mask[:, :1]
    weight = frame_weight * (1.0 + CHARACTER_WEIGHT * window["weight"])
    return {
        "latents": latents,
        "timestep": sigma * 1000.0,
        "history_mask": history_mask,
        "target": noise - x0,
        "weight": weight,
    }


class DitTrainer:
    """AdamW on the DiT with bf16 autocast, gradient clipping and an fp32 EMA of the weights."""

    def __init__(self, model: SCAIL2Transformer, device: torch.device, *, ema: dict[str, Tensor] | None = None,
                 learning_rate: float = LEARNING_RATE, warmup_steps: int = WARMUP_STEPS):  # fmt: skip
        self.model = model.to(device).train().requires_grad_(True)
        self.device = device
        self.learning_rate = learning_rate
        self.warmup_steps = warmup_steps
        decay, no_decay = [], []
        for name, parameter in self.model.named_parameters():
            (no_decay if parameter.ndim < 2 or "norm" in name else decay).append(parameter)
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}],
            lr=learning_rate, betas=(0.9, 0.99), fused=device.type == "cuda",
        )  # fmt: skip
        self.params = [p for _, p in self.model.named_parameters()]
        self.names = [n for n, _ in self.model.named_parameters()]
        source = ema or {n: p.detach() for n, p in self.model.named_parameters()}
        self.ema = [source[n].detach().to(device, torch.float32).clone() for n in self.names]
        self.step = 0
        self.skipped = 0

    def ema_state(self) -> dict[str, Tensor]:
        return {n: e.detach().cpu().contiguous() for n, e in zip(self.names, self.ema, strict=True)}

    def model_state(self) -> dict[str, Tensor]:
        return {n: p.detach().float().cpu().contiguous() for n, p in zip(self.names, self.params, strict=True)}

    def train_step(self, window: dict[str, Tensor], context: Tensor, replace: bool, generator: torch.Generator,
                   lr_scale: float = 1.0) -> dict[str, float]:  # fmt: skip
        inputs = flow_inputs(window, generator)
        scale = min(1.0, (self.step + 1) / self.warmup_steps) * lr_scale
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate * scale
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            velocity = self.model(
                inputs["latents"], inputs["timestep"], context, window["clip"], window["ref_latent"],
                window["ref_mask"], window["pose_latent"], window["driving_masks"], replace=replace,
                history_mask=inputs["history_mask"], return_dict=False,
            )[0]  # fmt: skip
        error = (velocity.float() - inputs["target"]).pow(2) * inputs["weight"]
        loss = error.sum() / (inputs["weight"].sum() * velocity.shape[1])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        if not torch.isfinite(grad_norm):
            self.skipped += 1  # a diverging batch must not poison the weights or the EMA
            return {"loss": loss.item(), "grad_norm": 0.0, "lr": 0.0}
        self.optimizer.step()
        self.step += 1
        decay = min(EMA_DECAY, (1 + self.step) / (10 + self.step))
        torch._foreach_lerp_(self.ema, [p.detach().float() for p in self.params], 1 - decay)
        return {"loss": loss.item(), "grad_norm": grad_norm.item(), "lr": self.learning_rate * scale}


def train_dit(trainer: DitTrainer, buffer: WindowBuffer, prompts: PromptBank, refill: Callable[[], int], *,
              seconds: float, batch: int, seed: int, log: Callable[[dict], None],
              checkpoint: Callable[[], None] | None = None, checkpoint_every: float = 120.0,
              decay_fraction: float = 0.25, log_every: int = 50) -> dict:  # fmt: skip
    """Train for ``seconds`` of wall time. ``refill()`` moves newly streamed windows into ``buffer`` (returns how
    many); the learning rate decays linearly to 20% over the last ``decay_fraction`` of the time."""
    generator = torch.Generator().manual_seed(seed)
    weights = {s.name: s.weight for s in SETTINGS}
    started = time.monotonic()
    last_checkpoint = last_log = started
    recent: list[dict] = []
    steps = 0
    while True:
        elapsed = time.monotonic() - started
        if elapsed >= seconds:
            break
        fetch_started = time.monotonic()
        refill()
        fetch_seconds = time.monotonic() - fetch_started
        names = buffer.settings()
        chosen = torch.multinomial(torch.tensor([weights[n] for n in names]), 1, generator=generator)
        setting = names[int(chosen)]
        window = buffer.sample(setting, batch, generator)
        context = prompts.sample(batch, generator)
        tail = (elapsed / seconds - (1 - decay_fraction)) / decay_fraction if decay_fraction > 0 else 0.0
        lr_scale = 1.0 - 0.8 * min(1.0, max(0.0, tail))
        metrics = trainer.train_step(window, context, setting.startswith("replacement"), generator, lr_scale)
        steps += 1
        metrics["refill_ms"] = 1000 * fetch_seconds
        recent.append(metrics)
        if steps % log_every == 0:
            row = {key: sum(m[key] for m in recent) / len(recent) for key in recent[0]}
            now = time.monotonic()
            row["step_ms"] = 1000 * (now - last_log) / len(recent)
            last_log = now
            log({"stage": "dit", "step": trainer.step, "time": round(now - started, 1),
                 "windows_seen": buffer.added, **row})  # fmt: skip
            recent = []
        if checkpoint is not None and time.monotonic() - last_checkpoint > checkpoint_every:
            checkpoint()
            last_checkpoint = time.monotonic()
    return {"steps": steps, "skipped": trainer.skipped, "seconds": round(time.monotonic() - started, 1),
            "batch": batch, "windows_streamed": buffer.added}  # fmt: skip
