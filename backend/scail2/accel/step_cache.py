"""Step caching for many-step sampling (the `quality` preset): skip most DiT forwards, through diffusers' hooks.

The transformer is a diffusers ``CacheMixin``, so the caches are diffusers' own, enabled for one window's
denoising loop and removed after it:

* ``taylorseer`` (the default for samplers with many steps): TaylorSeer in its lite form
  (``TaylorSeerCacheConfig(use_lite_mode=True)``). On computed steps every block runs; on the others the blocks
  are skipped and the output projection is extrapolated to first order from the last two computed steps. The
  schedule is fixed: steps ``0..warmup-1``, then every ``interval``-th step (40 steps, warm-up 3, interval 3:
  15 computed, 25 skipped). A skipped forward still runs the embeddings and the head (measured cost in
  docs/PERFORMANCE.md).
* ``first_block``: First Block Cache. Block 0 always runs; when its residual changed by less than ``threshold``
  (relative mean absolute change) since the last full step, the other blocks are skipped and their cached
  residual is added. How many steps it skips depends on the model's behaviour, so its speed-up is not fixed.
  Not available with low-VRAM block streaming (the hook iterates the block list, which streaming replaces).

SCAIL-2's two CFG passes run under separate cache contexts (``cond``, ``uncond``; ``cfg`` when both run as one
batch), so each pass extrapolates its own history. History frames need nothing special: the pipeline pins the
clean history latents after every step, whatever the velocity there. The cache state is dropped at the end of
every window (the next window starts from fresh noise).

``auto`` (the named default, `DEFAULT_STEP_CACHE`) resolves to ``taylorseer`` when a window has at least
`AUTO_MIN_STEPS` steps (the quality preset's 40) and to ``off`` below that: the 6- and 8-step presets have no
steps to spare.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from torch import nn

STEP_CACHE_CHOICES = ("auto", "off", "taylorseer", "first_block")
DEFAULT_STEP_CACHE = "auto"
AUTO_MIN_STEPS = 20
TAYLORSEER_WARMUP = 3  # full steps before the first skip
TAYLORSEER_INTERVAL = 3  # then one full step in every 3
FIRST_BLOCK_THRESHOLD = 0.05  # diffusers' default


def check_step_cache(name: str) -> str:
    if name not in STEP_CACHE_CHOICES:
        raise ValueError(f"step_cache={name!r} is not one of {', '.join(STEP_CACHE_CHOICES)}")
    return name


def resolve_step_cache(name: str, steps: int) -> str:
    """The cache a window of ``steps`` steps runs with: ``auto`` becomes ``taylorseer`` or ``off``."""
    check_step_cache(name)
    if name == "auto":
        return "taylorseer" if steps >= AUTO_MIN_STEPS else "off"
    return name


def taylorseer_computed_steps(steps: int, warmup: int = TAYLORSEER_WARMUP,
                              interval: int = TAYLORSEER_INTERVAL) -> list[int]:
    """The step indices TaylorSeer computes in full (the rule of diffusers' ``TaylorSeerCacheHook``)."""
    return [s for s in range(steps) if s < warmup or (s - warmup - 1) % interval == 0]


def cache_config(name: str) -> Any:
    """The diffusers cache config for a resolved cache name (not ``auto``/``off``)."""
    import torch
    from diffusers.hooks import FirstBlockCacheConfig, TaylorSeerCacheConfig

    if name == "taylorseer":
        return TaylorSeerCacheConfig(
            cache_interval=TAYLORSEER_INTERVAL,
            disable_cache_before_step=TAYLORSEER_WARMUP,
            max_order=1,
            taylor_factors_dtype=torch.float32,
            use_lite_mode=True,
        )
    if name == "first_block":
        return FirstBlockCacheConfig(threshold=FIRST_BLOCK_THRESHOLD)
    raise ValueError(f"no cache config for step_cache={name!r}")


def _register_block_class(block_class: type) -> None:
    """Tell diffusers' block-level caches (First Block Cache) where a block's output is: like the Wan block it
    derives from, the block returns the hidden states alone."""
    from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry

    try:
        TransformerBlockRegistry.get(block_class)
    except ValueError:
        TransformerBlockRegistry.register(
            block_class, TransformerBlockMetadata(return_hidden_states_index=0, return_encoder_hidden_states_index=None)
        )


@dataclass
class StepCacheStats:
    """What one window's cache did: forwards requested and forwards whose blocks really ran."""

    name: str
    forwards: int = 0
    computed: int = 0
    contexts: dict[str, list[bool]] = field(default_factory=dict)

    @property
    def skipped(self) -> int:
        return self.forwards - self.computed

    def to_dict(self) -> dict[str, Any]:
        return {"step_cache": self.name, "forwards": self.forwards, "computed_forwards": self.computed,
                "skipped_forwards": self.skipped}


class StepCache:
    """Step caching on a SCAIL-2 transformer for one window: ``with cache.window(): ... cache.context("cond")``.

    ``name`` is a resolved name (`resolve_step_cache`); ``off`` makes every method a no-op, so the pipeline calls
    the same code either way.
    """

    def __init__(self, transformer: nn.Module, name: str, config: Any = None) -> None:
        self.transformer = transformer
        self.name = check_step_cache(name)
        if name == "auto":
            raise ValueError("resolve 'auto' with resolve_step_cache(name, steps) first")
        self.config = config  # None: `cache_config(name)`; benchmarks pass their own schedule
        self.stats = StepCacheStats(name)
        self._ran = False

    @property
    def enabled(self) -> bool:
        return self.name != "off"

    @contextlib.contextmanager
    def window(self) -> Iterator[StepCacheStats]:
        """Enable the cache for one denoising loop; always removed (state and hooks) on the way out."""
        if not self.enabled:
            yield self.stats
            return
        from .streaming import StreamedBlockList

        blocks = self.transformer.blocks
        if self.name == "first_block" and isinstance(blocks, StreamedBlockList):
            raise ValueError("step_cache='first_block' does not work with low-VRAM block streaming; use "
                             "'taylorseer' or 'off'")
        _register_block_class(type(list(blocks._modules.values())[0]))
        last = list(blocks._modules.values())[-1]
        inner = last.forward

        def counting_forward(*args, **kwargs):  # runs only when the cache lets the last block compute
            self._ran = True
            return inner(*args, **kwargs)

        last.forward = counting_forward
        try:
            self.transformer.enable_cache(self.config if self.config is not None else cache_config(self.name))
            try:
                yield self.stats
            finally:
                self.transformer.disable_cache()
        finally:
            last.forward = inner

    @contextlib.contextmanager
    def context(self, name: str) -> Iterator[None]:
        """One forward of the CFG pass ``name`` (``cond``, ``uncond`` or ``cfg``), counted in `stats`."""
        if not self.enabled:
            yield
            return
        self._ran = False
        with self.transformer.cache_context(name):
            yield
        self.stats.forwards += 1
        self.stats.computed += int(self._ran)
        self.stats.contexts.setdefault(name, []).append(self._ran)
