"""Loading the engine a worker runs jobs on: the pipeline on its device(s), then the performance settings.

One function for both places that hold a model: ``scail-worker serve`` (the single-machine worker) and, in
gateway mode, every engine actor on a Ray node (``backend.worker.cluster``). ``EngineConfig`` is plain data, so
the gateway can send it to a node, where the settings are resolved for that node's own GPU (its memory class).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from typing import Any

from .logs import get_logger
from .warmup import WarmupSize

log = get_logger("scail.worker.engine")


class EngineStartError(Exception):
    """The engine cannot start with this configuration; ``code`` is the CLI's exit status (2 bad flags,
    3 checkpoint or device)."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class EngineConfig:
    """What to load and how: the checkpoint folder, device, dtype and the performance flags given explicitly
    (``performance_overrides``; the rest default to the GPU's memory class)."""

    checkpoint: str
    device: str = "cuda"
    dtype: str | None = None  # any --dtype spelling (bf16, bfloat16 ...); None: bfloat16 on CUDA, float32 on the CPU
    gpus: int = 1  # > 1: each job runs sequence-parallel over this many GPUs (MultiProcessPipeline)
    performance: dict[str, Any] = field(default_factory=dict)
    loras: dict[str, float] | None = None  # fused at start (with fp8: pinned); None: the checkpoint's default
    warmup: tuple[WarmupSize, ...] | None = None  # None: 512p on CUDA when compiling, else none

    @property
    def dtype_name(self) -> str:
        from backend.scail2.accel.options import resolve_dtype

        return resolve_dtype(self.dtype, self.device)

    def check(self, gpus_flag: str = "--gpus") -> None:
        """Flag combinations no engine can run (raised before anything loads; ``gpus_flag`` names ``gpus``)."""
        if self.gpus > 1 and (self.performance.get("fp8_linear") or self.loras is not None or self.warmup):
            # The rank processes neither pin LoRAs (which fp8 needs) nor warm up.
            raise EngineStartError(f"--fp8, --loras and --warmup apply to single-GPU workers; with {gpus_flag} > 1 "
                                   "use the other performance flags only")


@dataclass
class LoadedEngine:
    """A loaded pipeline with its settings applied; ``performance`` is the ``/v1/health`` report."""

    pipeline: Any
    device: str
    dtype: str
    performance: dict[str, Any]
    load_s: float


def load_engine(config: EngineConfig) -> LoadedEngine:
    """Load the pipeline on ``config.device`` and apply the performance settings (fuse/pin LoRAs, warm up).

    Raises ``EngineStartError`` with a message naming what to fix.
    """
    import torch

    from backend.scail2 import CheckpointError, Scail2Pipeline
    from backend.scail2.accel.options import settings_for, transformer_load_device

    config.check()
    dtype = getattr(torch, config.dtype_name)
    # Resolved before loading: low-VRAM loads the DiT into host memory. With gpus > 1 every rank applies them.
    settings = settings_for(config.device, argparse.Namespace(**config.performance))
    started = time.monotonic()
    try:
        if config.gpus > 1:
            from backend.scail2.pipelines.multi_process import MultiProcessPipeline

            pipeline = MultiProcessPipeline.start(config.checkpoint, processes=config.gpus,
                                                  device=torch.device(config.device).type, dtype=dtype,
                                                  performance=settings)
        else:
            pipeline = Scail2Pipeline.from_pretrained(config.checkpoint, device=config.device, dtype=dtype,
                                                      transformer_device=transformer_load_device(settings,
                                                                                                 config.device))
    except CheckpointError as exc:
        raise EngineStartError(f"cannot load the checkpoint: {exc}", 3) from exc
    except (ValueError, RuntimeError, TimeoutError) as exc:
        if config.gpus <= 1:
            raise
        raise EngineStartError(f"cannot start the {config.gpus} GPU processes: {exc}", 3) from exc
    load_s = round(time.monotonic() - started, 2)
    log.info("model loaded", extra={"seconds": load_s})
    if config.gpus > 1:
        # What rank 0 applied; every rank applies the same settings to its share of the DiT.
        performance = {**pipeline.acceleration, "pinned_loras": None, "warmup": None}
    else:
        performance = _prepare_performance(pipeline, config.device, settings, config.loras, config.warmup)
    return LoadedEngine(pipeline=pipeline, device=config.device, dtype=config.dtype_name, performance=performance,
                        load_s=load_s)


def _prepare_performance(pipeline: Any, device: str, settings: Any, start_loras: dict[str, float] | None,
                         warmup_sizes: tuple[WarmupSize, ...] | None) -> dict[str, Any]:
    """Apply the performance flags to the loaded pipeline, fuse (and with fp8 pin) the LoRAs, warm up.

    Returns the ``performance`` report of ``/v1/health``: the resolved settings, the pinned LoRAs and the warm-up.
    """
    import torch

    from backend.scail2 import SamplingSettings, Scail2InputError
    from backend.scail2.accel.options import format_loras, performance_report, prepare_pipeline

    from .warmup import parse_warmup, warm_up

    loras = start_loras
    if settings.fp8_linear and loras is None:
        # Jobs default to the 'fast' preset, so its LoRAs are the set most jobs can run with.
        loras = dict(SamplingSettings.from_preset("fast").loras)
    try:
        state = prepare_pipeline(pipeline, settings, loras)
    except Scail2InputError as exc:
        hint = "" if start_loras is not None else " (--fp8 fuses the 'fast' preset's LoRAs unless --loras says otherwise)"
        raise EngineStartError(f"--loras {format_loras(loras or {})}: {exc}{hint}") from exc
    except RuntimeError as exc:  # an fp8 or attention-backend request this device cannot run
        raise EngineStartError(str(exc)) from exc
    report = performance_report(pipeline, state)
    log.info("performance settings applied", extra={"performance": report})
    sizes = list(warmup_sizes) if warmup_sizes is not None else parse_warmup(
        "512p" if device.startswith("cuda") and settings.compile_blocks else "none")
    report["warmup"] = None
    if sizes:
        try:
            report["warmup"] = warm_up(pipeline, sizes)
        except torch.OutOfMemoryError as exc:
            raise EngineStartError(f"--warmup ran out of GPU memory ({exc}); warm up fewer or smaller sizes, or add "
                                   "--low-vram") from exc
    return report
