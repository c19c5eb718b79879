"""The job spec sent to the worker (``docs/API.md``), built from plain values; no ``bpy`` here."""

from __future__ import annotations

from dataclasses import dataclass


class SpecError(ValueError):
    """A setting cannot be sent as given; the message names the field."""


def parse_loras(text: str) -> dict[str, float]:
    """``"lightx2v=0.8, dpo=1"`` -> ``{"lightx2v": 0.8, "dpo": 1.0}``; empty text -> preset defaults."""
    loras: dict[str, float] = {}
    for item in (part.strip() for part in text.replace(";", ",").split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise SpecError(f"LoRAs: {item!r} must look like name=strength")
        try:
            loras[name.strip()] = float(value)
        except ValueError:
            raise SpecError(f"LoRAs: the strength of {name.strip()!r} is not a number: {value.strip()!r}") from None
    return loras


@dataclass
class GenerateSettings:
    mode: str
    prompt: str
    negative_prompt: str
    preset: str
    size: tuple[int, int]  # (width, height)
    steps: int = 0
    guidance: float = 0.0
    shift: float = 0.0
    seed: int = -1
    sampler: str = ""  # "" uses the preset's
    step_cache: str = ""  # "" uses the worker's default (auto: TaylorSeer for >= 20 steps) | off | taylorseer | first_block
    loras: str = ""
    frame_range: tuple[int, int] | None = None
    fps: float | None = None
    reference_mask: str = "alpha"  # alpha | file | auto
    driving_mask: str = "auto"  # alpha | file | auto
    mask_prompts: str = ""  # SAM3 prompts for "auto" masks, e.g. "person, character, cat"; "" = worker default
    color_anchor: str = "AUTO"  # AUTO (the worker's default: on past one window) | ON | OFF


def build_spec(settings: GenerateSettings) -> dict:
    width, height = settings.size
    if width % 32 or height % 32:
        raise SpecError(f"size {width}x{height}: both sides must be multiples of 32")
    spec: dict = {
        "mode": settings.mode,
        "prompt": settings.prompt,
        "negative_prompt": settings.negative_prompt,
        "preset": settings.preset,
        "size": f"{width}x{height}",
        "reference_mask": settings.reference_mask,
        "driving_mask": settings.driving_mask,
    }
    if settings.steps > 0:
        spec["steps"] = settings.steps
    if settings.guidance > 0:
        spec["guidance"] = settings.guidance
    if settings.shift > 0:
        spec["shift"] = settings.shift
    if settings.seed >= 0:
        spec["seed"] = settings.seed
    if settings.sampler:
        spec["sampler"] = settings.sampler
    if settings.step_cache:
        spec["step_cache"] = settings.step_cache
    loras = parse_loras(settings.loras)
    if loras:
        spec["loras"] = loras
    if settings.frame_range is not None:
        spec["frame_range"] = list(settings.frame_range)
    if settings.fps:
        spec["fps"] = round(float(settings.fps), 6)
    if settings.color_anchor != "AUTO":
        spec["color_anchor"] = settings.color_anchor == "ON"
    prompts = mask_prompt_text(settings.mask_prompts)
    if prompts and "auto" in (settings.reference_mask, settings.driving_mask):
        spec["mask_prompts"] = prompts
    return spec


def mask_prompt_text(text: str) -> str:
    """``" person,, cat ;bear "`` -> ``"person, cat, bear"``: the comma-separated SAM3 prompts, tidied."""
    return ", ".join(part.strip() for part in text.replace(";", ",").split(",") if part.strip())
