"""Warm-up at worker start: pay the compile and autotune of each window size once, before the ready line.

With regional ``torch.compile`` (the GPU default) the first window at a new size compiles the transformer block
and plans its kernels: 15-25 s at 512p, more at 704p (docs/PERFORMANCE.md). ``--warmup 512p,704p`` runs one
synthetic one-step generation per size through the same ``generate`` path jobs take, so those graphs exist before
the first job arrives. Its time is reported in ``/v1/health`` (``performance.warmup``); every job then records in
its timings whether it still compiled anything (``warmup_paid``, measured from dynamo's graph counter).

After the sizes, the block shapes are frozen (``accel.freeze_block_shapes``) and one short window runs, which
compiles the block graph with a dynamic token count: a job's shorter last window, another ``segment_len``, extra
references or a size not warmed up then run that graph instead of compiling mid-job (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .logs import get_logger

log = get_logger("scail.worker.warmup")

NAMED_SIZES = {"512p": (512, 896), "704p": (704, 1280)}  # landscape, as the engine's size classes
DEFAULT_WINDOW_FRAMES = 81  # the engine's window length (spec.segment_len default)
_ENTRY = re.compile(r"^(?P<size>512p|704p|(?P<w>\d+)x(?P<h>\d+))(?::(?P<frames>\d+))?$")
WARMUP_PROMPT = "warm-up"


@dataclass(frozen=True)
class WarmupSize:
    """One warm-up case: an output size and the window length in frames."""

    label: str  # as given, e.g. "512p" or "896x512:41"
    height: int
    width: int
    frames: int = DEFAULT_WINDOW_FRAMES


def parse_warmup(text: str | None) -> list[WarmupSize]:
    """``--warmup`` value: comma-separated ``512p``, ``704p`` or ``<W>x<H>`` (multiples of 32), each optionally
    ``:FRAMES`` (4k+1 from 9, default 81); ``none`` or empty for no warm-up. ValueError names the bad entry."""
    if text is None or text.strip().lower() in ("", "none"):
        return []
    sizes: list[WarmupSize] = []
    for entry in (part.strip().lower() for part in text.split(",")):
        match = _ENTRY.match(entry)
        if not match:
            raise ValueError(f"{entry!r} is not 512p, 704p or <W>x<H>, optionally followed by :FRAMES "
                             "(e.g. 512p,704p or 512x896:41)")
        if match.group("w"):
            height, width = int(match.group("h")), int(match.group("w"))
            if height % 32 or width % 32 or min(height, width) < 64:
                raise ValueError(f"{entry!r}: both sides must be multiples of 32 and at least 64")
        else:
            height, width = NAMED_SIZES[match.group("size")]
        frames = int(match.group("frames") or DEFAULT_WINDOW_FRAMES)
        if frames < 9 or (frames - 1) % 4:  # a window must be longer than its 5 history frames
            raise ValueError(f"{entry!r}: the window length must be 4k+1 frames from 9 (e.g. 41 or 81), got {frames}")
        sizes.append(WarmupSize(entry, height, width, frames))
    return sizes


def compiled_graph_count() -> int:
    """How many graphs torch.compile has built in this process so far (0 when nothing was compiled)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # a torch without dynamo compiles nothing
        return 0
    return int(counters["stats"]["unique_graphs"])


def warmup_request(size: WarmupSize, loras: dict[str, float]) -> Any:
    """A one-step synthetic generation of one full window at ``size``: an opaque centred figure (RGBA alpha is
    the mask) on flat colour. ``loras``: the set already fused, so the warm-up changes no weights."""
    from backend.scail2.conditioning.media import VideoClip
    from backend.scail2.conditioning.request import GenerationRequest
    from backend.scail2.schedulers.presets import SamplingSettings

    height, width = size.height, size.width
    reference = np.full((height, width, 4), 128, np.uint8)
    driving = np.full((size.frames, height, width, 4), 96, np.uint8)
    for image in (reference[None], driving):
        image[..., 3] = 0
        image[:, height // 8 : height - height // 8, width // 4 : width - width // 4, 3] = 255
    return GenerationRequest(
        reference=reference,
        driving=VideoClip(frames=driving, fps=16.0),
        prompt=WARMUP_PROMPT,
        size=(height, width),
        sampling=SamplingSettings.from_preset("fast", steps=1, guidance=1.0, seed=0),
        loras=loras,
        segment_len=size.frames,
    )


def warm_up(pipe: Any, sizes: list[WarmupSize]) -> dict[str, Any]:
    """Run one synthetic window per size, then (compiled blocks only) the dynamic-token graph's window; returns
    the ``performance.warmup`` report of ``/v1/health``."""
    fused = dict(pipe.lora_manager.fused) if getattr(pipe, "lora_manager", None) is not None else {}
    graphs_before = compiled_graph_count()
    seconds: dict[str, float] = {}
    for size in sizes:
        started = time.monotonic()
        pipe.generate(warmup_request(size, fused))
        seconds[size.label] = round(time.monotonic() - started, 2)
        log.info("warm-up done", extra={"size": size.label, "height": size.height, "width": size.width,
                                        "frames": size.frames, "seconds": seconds[size.label]})
    dynamic_s = warm_up_dynamic_tokens(pipe, sizes, fused) if sizes else None
    return {
        "sizes": [f"{size.width}x{size.height}:{size.frames}" for size in sizes],
        "seconds": seconds,
        "dynamic_tokens_s": dynamic_s,
        "total_s": round(sum(seconds.values()) + (dynamic_s or 0.0), 2),
        "compiled_graphs": compiled_graph_count() - graphs_before,
    }


def warm_up_dynamic_tokens(pipe: Any, sizes: list[WarmupSize], loras: dict[str, float]) -> float | None:
    """Freeze the static block shapes and compile the dynamic-token graph with one short window at the first
    size (the shortest window length whose token count the sizes did not warm up). Seconds taken; None when the
    blocks are not compiled."""
    from backend.scail2.accel import block_shapes, freeze_block_shapes

    transformer = getattr(pipe, "transformer", None)
    if transformer is None or not freeze_block_shapes(transformer):
        return None
    shapes = block_shapes(transformer)
    started = time.monotonic()
    first = sizes[0]
    for frames in range(9, max(first.frames, 9) + 1, 4):  # 9: the shortest window a 5-frame history allows
        calls = shapes.dynamic_calls
        pipe.generate(warmup_request(WarmupSize(f"{first.label}:{frames}", first.height, first.width, frames),
                                     loras))
        if shapes.dynamic_calls > calls:
            break
    seconds = round(time.monotonic() - started, 2)
    log.info("warm-up done", extra={"size": "dynamic tokens", "height": first.height, "width": first.width,
                                    "frames": frames, "seconds": seconds})
    return seconds
