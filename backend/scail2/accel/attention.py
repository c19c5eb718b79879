"""Attention backend selection: a table of preferences per GPU, checked by a quick probe, overridable.

The transformer's attention processors route through diffusers' `dispatch_attention_fn`, which reads the
processor's `_attention_backend`. Selecting a backend therefore means setting that attribute on every
processor; nothing in the model's code changes.
"""

from __future__ import annotations

import importlib.util
import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)

# Our short names -> diffusers' AttentionBackendName values.
DIFFUSERS_BACKENDS = {
    "cudnn": "_native_cudnn",  # PyTorch SDPA forced to cuDNN: ~560 TFLOP/s on H100 vs ~360 for FA2
    "flash3": "_flash_3",  # FlashAttention-3 (flash_attn_interface), Hopper only
    "flash": "flash",  # FlashAttention-2 package
    "sage": "sage",  # SageAttention (8-bit QK), where installed
    "torch_flash": "_native_flash",  # PyTorch's built-in FlashAttention-2 kernel
    "efficient": "_native_efficient",
    "native": "native",  # PyTorch SDPA, its own kernel choice
    "math": "_native_math",
}


def _backend_installed(name: str) -> bool:
    module = {"flash3": "flash_attn_interface", "flash": "flash_attn", "sage": "sageattention"}.get(name)
    return module is None or importlib.util.find_spec(module) is not None


def preferred_backends(device: torch.device, eight_bit: bool = False) -> list[str]:
    """Candidate backends for `device`, best first (measured on H100: cuDNN 1.6x FA2; FA3 ≥ cuDNN)."""
    if device.type != "cuda":
        return ["native"]
    major, _ = torch.cuda.get_device_capability(device)
    candidates: list[str] = []
    if eight_bit:
        candidates.append("sage")
    if major == 9:
        candidates += ["flash3", "cudnn"]
    elif major >= 10:
        candidates += ["cudnn"]
    elif major == 8:
        candidates += ["flash"]
    candidates.append("native")
    return [name for name in candidates if _backend_installed(name)]


def probe_backend(name: str, device: torch.device, dtype: torch.dtype = torch.bfloat16) -> bool:
    """True when backend `name` runs on `device` and agrees with exact attention on a small random input."""
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    if name not in DIFFUSERS_BACKENDS or not _backend_installed(name):
        return False
    generator = torch.Generator(device="cpu").manual_seed(0)
    # Layout (batch, tokens, heads, head_dim), the one the Wan processors pass; 40-token keys mimic
    # cross-attention lengths that are not multiples of 64.
    query, key, value = (
        torch.randn(1, n, 2, 128, generator=generator).to(device=device, dtype=dtype) for n in (96, 40, 40)
    )
    try:
        out = dispatch_attention_fn(query, key, value, backend=DIFFUSERS_BACKENDS[name])
    except Exception as error:  # any failure (missing kernel, unsupported arch) means "not this one"
        logger.info("attention backend %s unusable on %s: %s", name, device, error)
        return False
    reference = torch.nn.functional.scaled_dot_product_attention(
        *(t.float().transpose(1, 2) for t in (query, key, value))
    ).transpose(1, 2)
    error = (out.float() - reference).norm() / reference.norm()
    tolerance = 0.08 if name == "sage" else 0.02
    if not torch.isfinite(error) or error > tolerance:
        logger.warning("attention backend %s disagrees with exact attention (rel %.3g)", name, float(error))
        return False
    return True


def select_attention_backend(
    requested: str, device: torch.device | str, eight_bit: bool = False
) -> str:
    """Resolve `requested` ("auto" or a name in DIFFUSERS_BACKENDS) to a backend that works on `device`.

    An explicit request that fails the probe raises, naming what to install; "auto" falls back down the
    preference list and ends at "native" (PyTorch SDPA), which always runs.
    """
    device = torch.device(device)
    if requested != "auto":
        if requested not in DIFFUSERS_BACKENDS:
            raise ValueError(f"attention backend {requested!r} is not one of auto, {', '.join(DIFFUSERS_BACKENDS)}")
        if not probe_backend(requested, device):
            raise RuntimeError(
                f"attention backend {requested!r} does not run on {device}"
                f"{'' if _backend_installed(requested) else ' (its package is not installed)'}; "
                "pick another with --attention-backend or use auto"
            )
        return requested
    for name in preferred_backends(device, eight_bit=eight_bit):
        if probe_backend(name, device):
            return name
    return "native"


def set_attention_backend(model: nn.Module, name: str, cross_name: str | None = None) -> int:
    """Point every attention processor of `model` at backend `name`; returns how many were set.

    `cross_name` (when given) is used instead for cross-attention modules (`is_cross_attention`), whose
    keys are the 257 + 512 context tokens: a kernel tuned for long keys is not always the best there.
    """
    from diffusers.models.attention_dispatch import AttentionBackendName

    count = 0
    for module in model.modules():
        processor = getattr(module, "processor", None)
        if processor is None or not hasattr(processor, "_attention_backend"):
            continue
        chosen = cross_name if cross_name and getattr(module, "is_cross_attention", False) else name
        processor._attention_backend = AttentionBackendName(DIFFUSERS_BACKENDS[chosen])
        count += 1
    return count
