"""What a generation will hold in memory, estimated before it starts, so that a size or clip that cannot fit fails
in a second with the setting to change instead of in an allocator traceback minutes later.

Two parts, each with the figures the pipeline really allocates:

- **frames** (host memory): the driving frames and masks resized to the output size, the result (the per-window
  pieces and their concatenation), and one window's decoded video in float32 on its way to uint8;
- **window** (the compute device; host memory on the CPU): the larger of the DiT's activations over one window's
  tokens (hidden states, q/k/v, attention output and FFN hidden layer for the video, pose, reference and extra
  reference tokens) and the VAE decode (its full-resolution stage over one causal chunk of 4 frames, plus the
  window's decoded video). They do not overlap: the DiT is done when the VAE decodes.

The model weights are not counted: the check runs after loading, against the memory left free. For the 14B model
at 704x1280 the window estimate is 12 GiB; the H100 run in docs/PERFORMANCE.md peaked at 48.3 GB over about 33 GB
of resident weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..conditioning.segments import Window
from ..errors import Scail2InputError

GIB = 2**30
# Live [tokens, dim]-sized tensors in a block at its peak (hidden state, norm, q, k, v, attention out, residual,
# modulated input) and [tokens, ffn_dim]-sized ones (the FFN's hidden layer before and after its GELU).
DIT_DIM_TENSORS = 8
DIT_FFN_TENSORS = 2
# The VAE decoder's full-resolution stage: a causal chunk of 4 frames, its cache, and a few live tensors.
VAE_CHUNK_FRAMES = 4
VAE_LIVE_TENSORS = 6


@dataclass(frozen=True)
class MemoryEstimate:
    frames_bytes: int  # host memory: resized inputs, the result, one window's decoded video
    window_bytes: int  # the device: one window's DiT activations or VAE decode, whichever is larger
    device: torch.device

    def host_bytes(self) -> int:
        return self.frames_bytes + (self.window_bytes if self.device.type == "cpu" else 0)


def estimate_generation_memory(pipe, num_frames: int, height: int, width: int, windows: list[Window],
                               extra_references: int = 0) -> MemoryEstimate:
    """The memory ``pipe.generate`` needs for ``num_frames`` output frames of ``height`` x ``width``."""
    frame = height * width * 3
    length = max(window.length for window in windows)
    frames_bytes = num_frames * frame * 4 + length * frame * 4 * 2  # inputs x2, result x2; float window + copy

    config = pipe.transformer.config
    latent_frames = (length - 1) // 4 + 1
    tokens_per_frame = (height // 16) * (width // 16)
    tokens = latent_frames * tokens_per_frame * 5 // 4 + (1 + extra_references) * tokens_per_frame  # + pose 1/4
    act_bytes = torch.finfo(pipe.transformer.dtype).bits // 8
    dit = tokens * (DIT_DIM_TENSORS * config.dim + DIT_FFN_TENSORS * config.ffn_dim) * act_bytes
    vae_bytes = torch.finfo(pipe.vae.dtype).bits // 8
    decode = (pipe.vae.model.config.base_dim * VAE_CHUNK_FRAMES * VAE_LIVE_TENSORS * height * width * vae_bytes
              + length * frame * 4 * 2)
    return MemoryEstimate(frames_bytes, max(dit, decode), torch.device(pipe.device))


def free_host_memory() -> int | None:
    """Bytes of host memory the system reports available (Linux MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_generation_memory(estimate: MemoryEstimate, describe: str, limit_bytes: int | None = None,
                            advice: str = "use a smaller size, fewer frames or shorter windows") -> None:
    """Raise one line naming ``describe`` (what was asked for) and ``advice`` when the estimate does not fit:
    the host part against ``limit_bytes`` (default: what the system has free), the window against the GPU's free
    memory."""
    host_free = limit_bytes if limit_bytes is not None else free_host_memory()
    host_need = estimate.host_bytes()
    if host_free is not None and host_need > host_free:
        source = "the given limit" if limit_bytes is not None else "free"
        raise Scail2InputError(
            f"{describe} needs about {host_need / GIB:.1f} GiB of memory for frames"
            f"{' and activations' if estimate.device.type == 'cpu' else ''}, more than the "
            f"{host_free / GIB:.1f} GiB {source}; {advice}",
            field="size",
        )
    if estimate.device.type == "cuda":
        device_free, _total = torch.cuda.mem_get_info(estimate.device)
        if estimate.window_bytes > device_free:
            raise Scail2InputError(
                f"{describe} needs about {estimate.window_bytes / GIB:.1f} GiB of GPU memory per window, more than "
                f"the {device_free / GIB:.1f} GiB free on {estimate.device} after loading the model; {advice}",
                field="size",
            )
