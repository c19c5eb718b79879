"""Sampling settings and the three presets.

| preset   | sampler | steps | CFG | shift | LoRAs                     | source                                 |
|----------|---------|-------|-----|-------|---------------------------|----------------------------------------|
| quality  | UniPC   | 40    | 5.0 | 3.0   | none                      | official ``generate.py`` defaults      |
| balanced | UniPC   | 8     | 1.0 | 5.0   | lightx2v 1.0              | step/CFG-distilled recipe              |
| fast     | Euler   | 6     | 1.0 | 5.0   | lightx2v 0.8 + dpo 1.0    | the ComfyUI SCAIL-2 template recipe    |

CFG 1 needs the LightX2V step/CFG-distill LoRA; without it, 6-8 steps at CFG 1 give blurry, off-model results.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from ..errors import Scail2InputError
from .samplers import normalize_sampler_name

NoiseMode = Literal["official", "cpu"]
PRESET_NAMES = ("quality", "balanced", "fast")
# Step caching (``accel.step_cache``, which keeps the same names): "auto" caches windows of >= 20 steps (the quality
# preset) with TaylorSeer and leaves the few-step presets alone.
STEP_CACHE_NAMES = ("auto", "off", "taylorseer", "first_block")
DEFAULT_STEP_CACHE = "auto"


@dataclass(frozen=True)
class SamplingSettings:
    """How one generation is sampled.

    ``seed`` None draws a random seed (reported in the result). ``noise_mode`` "official" draws the noise with a
    generator on the pipeline's device, in the official order (on CUDA this matches an official CUDA run, on the
    CPU the golden fixtures); "cpu" draws the same sequence on the CPU and moves it, so a seed gives the same
    video on any machine. ``loras`` are the preset's LoRA strengths (a request may override them).
    ``step_cache`` skips DiT forwards of many-step sampling (``auto``: TaylorSeer from 20 steps on, i.e. the quality
    preset; ``off``; ``taylorseer``; ``first_block``; see ``accel/step_cache.py`` and docs/PERFORMANCE.md).
    """

    sampler: str = "unipc"
    steps: int = 40
    guidance: float = 5.0
    shift: float = 3.0
    seed: int | None = None
    noise_mode: NoiseMode = "cpu"
    loras: Mapping[str, float] = field(default_factory=dict)
    preset: str | None = None
    step_cache: str = DEFAULT_STEP_CACHE

    def __post_init__(self) -> None:
        object.__setattr__(self, "sampler", normalize_sampler_name(self.sampler))
        object.__setattr__(self, "loras", dict(self.loras))
        if not isinstance(self.steps, int) or not 1 <= self.steps <= 200:
            raise Scail2InputError(f"steps must be an integer in 1..200, got {self.steps!r}", field="steps")
        if not 0.0 <= float(self.guidance) <= 30.0:
            raise Scail2InputError(f"guidance must be in 0..30, got {self.guidance!r}", field="guidance")
        if not 0.0 < float(self.shift) <= 100.0:
            raise Scail2InputError(f"shift must be in (0, 100], got {self.shift!r}", field="shift")
        if self.seed is not None and not (isinstance(self.seed, int) and 0 <= self.seed < 2**63):
            raise Scail2InputError(f"seed must be a non-negative integer, got {self.seed!r}", field="seed")
        if self.noise_mode not in ("official", "cpu"):
            raise Scail2InputError(
                f"noise_mode must be 'official' or 'cpu', got {self.noise_mode!r}", field="noise_mode"
            )
        if self.step_cache not in STEP_CACHE_NAMES:
            raise Scail2InputError(
                f"step_cache must be one of {', '.join(STEP_CACHE_NAMES)}, got {self.step_cache!r}",
                field="step_cache",
            )
        for name, strength in self.loras.items():
            if not -4.0 <= float(strength) <= 4.0:
                raise Scail2InputError(
                    f"LoRA {name!r} strength must be in -4..4, got {strength!r}", field="loras"
                )

    @property
    def uses_cfg(self) -> bool:
        """Whether the unconditional pass runs (skipped when guidance <= 1, as the official loop does)."""
        return self.guidance > 1.0

    def with_seed(self) -> SamplingSettings:
        """These settings with a concrete seed (a random one if none was given)."""
        return self if self.seed is not None else replace(self, seed=random.randrange(2**31))

    @classmethod
    def from_preset(
        cls,
        name: str,
        *,
        steps: int | None = None,
        guidance: float | None = None,
        shift: float | None = None,
        sampler: str | None = None,
        seed: int | None = None,
        noise_mode: NoiseMode | None = None,
        loras: Mapping[str, float] | None = None,
        step_cache: str | None = None,
    ) -> SamplingSettings:
        """A preset with any of its values overridden (None keeps the preset's value)."""
        if name not in PRESETS:
            raise Scail2InputError(
                f"unknown preset {name!r}: choose one of {', '.join(PRESET_NAMES)}", field="preset"
            )
        base = PRESETS[name]
        overrides = {
            key: value
            for key, value in {
                "steps": steps,
                "guidance": guidance,
                "shift": shift,
                "sampler": sampler,
                "seed": seed,
                "noise_mode": noise_mode,
                "loras": loras,
                "step_cache": step_cache,
            }.items()
            if value is not None
        }
        return replace(base, **overrides)


PRESETS: dict[str, SamplingSettings] = {
    "quality": SamplingSettings(
        sampler="unipc", steps=40, guidance=5.0, shift=3.0, loras={}, preset="quality"
    ),
    "balanced": SamplingSettings(
        sampler="unipc", steps=8, guidance=1.0, shift=5.0, loras={"lightx2v": 1.0}, preset="balanced"
    ),
    "fast": SamplingSettings(
        sampler="euler", steps=6, guidance=1.0, shift=5.0, loras={"lightx2v": 0.8, "dpo": 1.0}, preset="fast"
    ),
}


def check_loras_available(
    loras: Mapping[str, float], available: Mapping[str, object], preset: str | None
) -> None:
    """Fail clearly when a LoRA with a non-zero strength is not in the checkpoint folder."""
    missing = [name for name, strength in loras.items() if strength != 0.0 and name not in available]
    if not missing:
        return
    where = f"the {preset!r} preset needs" if preset else "the request asks for"
    hints = {
        "lightx2v": "lightx2v_I2V_14B_480p_cfg_step_distill_rank128_bf16.safetensors (Kijai/WanVideo_comfy, "
        "Lightx2v/) under <checkpoint>/loras/",
        "dpo": "model/bias-aware-dpo-lora.pt (zai-org/SCAIL-2) or wan2.1_SCAIL_2_DPO_lora_bf16.safetensors "
        "(Comfy-Org/SCAIL-2 loras/)",
        "relight": "model/relighting-lora.pt (zai-org/SCAIL-2) or wan2.1_SCAIL_2_relight_lora_bf16.safetensors",
    }
    details = "; ".join(f"{name}: {hints.get(name, 'a LoRA file with this stem')}" for name in missing)
    have = ", ".join(sorted(available)) or "none"
    raise Scail2InputError(
        f"{where} the LoRA(s) {', '.join(missing)}, which the checkpoint folder lacks (found: {have}). "
        f"Download {details}; or set their strength to 0, or use the 'quality' preset.",
        field="loras",
    )
