"""Flow-matching samplers: UniPC (the official default), DPM++ 2M and Euler, all with a sigma shift.

The sigma schedules and the int64 timesteps are computed exactly as the official Wan/SCAIL-2 code does; the
solver arithmetic comes from diffusers, fed with those sigmas:

- UniPC: Wan's ``FlowUniPCMultistepScheduler.set_timesteps(steps, shift)`` uses ``linspace(sigma_max, 0, N+1)[:-1]``
  with ``sigma_max = float32(0.999)``, shifted by ``s*sigma / (1 + (s-1)*sigma)``. diffusers'
  ``UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=1)`` given those sigmas as a float64 numpy array
  reproduces the official solve (its own ``flow_shift=s`` path starts at sigma 1.0 and drifts by ~1e-3).
- DPM++: the official pipeline passes ``get_sampling_sigmas(steps, shift)`` (``linspace(1, 0, N+1)[:N]`` shifted).
  diffusers' ``DPMSolverMultistepScheduler.set_timesteps`` takes no sigmas, so the computed schedule replaces the
  one it builds (same solver, same flow-sigma conversion).
- Euler: ``x + (sigma_next - sigma) * v`` on the float32 UniPC sigmas (diffusers' flow-match Euler).

Timesteps handed to the DiT are ``int64(sigma * 1000)`` (truncated), as in the official code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from ..errors import Scail2InputError

NUM_TRAIN_TIMESTEPS = 1000
SAMPLERS = ("unipc", "dpm++", "euler")
# float32(0.999) widened to float64: the first sigma of Wan's flow UniPC schedule before shifting.
_UNIPC_SIGMA_MAX = float(np.float32(0.999))


def shift_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """The flow-matching time shift ``s*sigma / (1 + (s-1)*sigma)`` (identity for s = 1)."""
    return shift * sigmas / (1.0 + (shift - 1.0) * sigmas)


def unipc_sigmas(steps: int, shift: float) -> np.ndarray:
    """The N shifted float64 sigmas of the official flow UniPC schedule (the trailing 0 not included)."""
    return shift_sigmas(np.linspace(_UNIPC_SIGMA_MAX, 0.0, steps + 1)[:-1], shift)


def dpmpp_sigmas(steps: int, shift: float) -> np.ndarray:
    """The N shifted float64 sigmas of the official ``get_sampling_sigmas`` (the trailing 0 not included)."""
    return shift_sigmas(np.linspace(1.0, 0.0, steps + 1)[:steps], shift)


def timesteps_from_sigmas(sigmas: np.ndarray) -> torch.Tensor:
    """The DiT timesteps: ``sigma * 1000`` truncated to int64, as the official schedulers store them."""
    return torch.from_numpy(sigmas * NUM_TRAIN_TIMESTEPS).to(torch.int64)


def normalize_sampler_name(name: str) -> str:
    """Accept the common spellings of the three samplers (``uni_pc``, ``dpmpp``, ``DPM++`` ...)."""
    key = name.strip().lower().replace("_", "").replace("-", "")
    aliases = {"unipc": "unipc", "dpm++": "dpm++", "dpmpp": "dpm++", "dpmsolver++": "dpm++", "euler": "euler"}
    if key not in aliases:
        raise Scail2InputError(
            f"unknown sampler {name!r}: choose one of {', '.join(SAMPLERS)}", field="sampler"
        )
    return aliases[key]


@dataclass
class FlowSampler:
    """One window's sampling schedule and solver state (rebuilt per window, as the official loop does).

    ``timesteps[i]`` is what the DiT receives at step ``i``; ``sigmas`` has N+1 float32 entries ending in 0.
    """

    name: str
    timesteps: torch.Tensor
    sigmas: torch.Tensor
    _scheduler: Any

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.numel())

    def step(self, model_output: torch.Tensor, step_index: int, sample: torch.Tensor) -> torch.Tensor:
        """Advance ``sample`` (any shape) from step ``step_index`` to the next sigma given the velocity."""
        solver_timestep = self._scheduler.timesteps[step_index]
        return self._scheduler.step(
            model_output.unsqueeze(0), solver_timestep, sample.unsqueeze(0), return_dict=False
        )[0][0]


def build_sampler(name: str, steps: int, shift: float) -> FlowSampler:
    """A fresh solver for ``steps`` steps with the given shift (``name`` is one of ``SAMPLERS`` or an alias)."""
    name = normalize_sampler_name(name)
    if steps < 1:
        raise Scail2InputError(f"steps must be at least 1, got {steps}", field="steps")
    if not shift > 0:
        raise Scail2InputError(f"shift must be positive, got {shift}", field="shift")

    if name == "dpm++":
        sigmas = dpmpp_sigmas(steps, shift)
        scheduler = DPMSolverMultistepScheduler(
            num_train_timesteps=NUM_TRAIN_TIMESTEPS,
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            flow_shift=1.0,
            algorithm_type="dpmsolver++",
            solver_order=2,
            lower_order_final=True,
            final_sigmas_type="zero",
        )
        scheduler.set_timesteps(steps)
        # Replace diffusers' own schedule with the official one; the solver reads only these two tensors.
        scheduler.sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))
        scheduler.timesteps = timesteps_from_sigmas(sigmas)
        return FlowSampler(name, timesteps_from_sigmas(sigmas), scheduler.sigmas.clone(), scheduler)

    sigmas = unipc_sigmas(steps, shift)
    if name == "unipc":
        scheduler = UniPCMultistepScheduler(
            num_train_timesteps=NUM_TRAIN_TIMESTEPS,
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            flow_shift=1.0,
        )
        scheduler.set_timesteps(sigmas=np.asarray(sigmas, dtype=np.float64))
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=1.0)
        scheduler.set_timesteps(sigmas=sigmas.astype(np.float32))
    stored = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))
    return FlowSampler(name, timesteps_from_sigmas(sigmas), stored, scheduler)
