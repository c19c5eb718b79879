"""Wan2.1 video VAE: diffusers ``AutoencoderKLWan`` loaded from the official ``Wan2.1_VAE.pth``.

The official file holds the ``WanVAE_`` state dict; its keys are converted in memory to the diffusers layout (the
mapping below is derived from the two module trees: the official decoder keeps one flat ``upsamples`` list, diffusers
groups it per resolution stage). A diffusers ``vae/`` folder loads as is.

:class:`WanVideoVAE` wraps the model with the official latent convention: ``encode`` returns the posterior mean
normalised as ``(mu - mean) * (1 / std)`` with the 16-channel Wan2.1 constants, and ``decode`` undoes it, decodes one
latent frame at a time with causal caches (``1 + 4 (T - 1)`` frames) and clamps to [-1, 1]. diffusers' causal
chunking (first frame alone, then chunks of 4) is the official one; the ``vae`` parity fixture checks it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan

from ..errors import CheckpointError
from ..loaders.layout import CheckpointLayout
from ..loaders.weights import (
    LazyStateDict,
    TensorRef,
    find_weights_file,
    load_into,
    meta_init,
    open_state_dict,
    read_json,
)

__all__ = [
    "official_vae_shapes",
    "WAN21_LATENT_MEAN",
    "WAN21_LATENT_STD",
    "WanVAEConfig",
    "WanVideoVAE",
    "convert_official_vae_keys",
]

WAN21_LATENT_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN21_LATENT_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip


@dataclass(frozen=True)
class WanVAEConfig:
    """The official ``_video_vae`` constructor arguments (defaults: the released Wan2.1 VAE)."""

    dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()
    temperal_downsample: tuple[bool, ...] = (False, True, True)
    latent_mean: tuple[float, ...] = field(default=WAN21_LATENT_MEAN)
    latent_std: tuple[float, ...] = field(default=WAN21_LATENT_STD)

    @classmethod
    def from_official_args(cls, args: Mapping) -> WanVAEConfig:
        known = {k: args[k] for k in cls.__dataclass_fields__ if k in args}
        for key in ("dim_mult", "attn_scales", "temperal_downsample", "latent_mean", "latent_std"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)

    def __post_init__(self):
        if self.attn_scales:
            raise CheckpointError(f"Wan VAE with attn_scales={list(self.attn_scales)} is not supported (Wan2.1 uses [])")
        if len(self.latent_mean) != self.z_dim or len(self.latent_std) != self.z_dim:
            raise CheckpointError(f"Wan VAE latent mean/std need {self.z_dim} values each")

    def to_diffusers_kwargs(self) -> dict:
        return dict(
            base_dim=self.dim,
            z_dim=self.z_dim,
            dim_mult=list(self.dim_mult),
            num_res_blocks=self.num_res_blocks,
            attn_scales=list(self.attn_scales),
            temperal_downsample=list(self.temperal_downsample),
            dropout=0.0,
            latents_mean=list(self.latent_mean),
            latents_std=list(self.latent_std),
        )

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


# Official residual-block sub-keys -> diffusers WanResidualBlock.
_RESIDUAL_KEYS = {
    "residual.0.gamma": "norm1.gamma",
    "residual.2.weight": "conv1.weight",
    "residual.2.bias": "conv1.bias",
    "residual.3.gamma": "norm2.gamma",
    "residual.6.weight": "conv2.weight",
    "residual.6.bias": "conv2.bias",
    "shortcut.weight": "conv_shortcut.weight",
    "shortcut.bias": "conv_shortcut.bias",
}
_TOP_KEYS = {
    "conv1": "quant_conv",
    "conv2": "post_quant_conv",
    "encoder.conv1": "encoder.conv_in",
    "decoder.conv1": "decoder.conv_in",
    "encoder.head.0": "encoder.norm_out",
    "encoder.head.2": "encoder.conv_out",
    "decoder.head.0": "decoder.norm_out",
    "decoder.head.2": "decoder.conv_out",
}
_INDEXED = re.compile(r"(encoder|decoder)\.(downsamples|upsamples|middle)\.(\d+)\.(.+)")


def _decoder_index_table(config: WanVAEConfig) -> dict[int, str]:
    """Official flat ``decoder.upsamples.N`` -> diffusers ``up_blocks.S.resnets.J`` / ``up_blocks.S.upsamplers.0``.

    The official decoder appends, per stage, ``num_res_blocks + 1`` residual blocks and then (except in the last
    stage) one upsampler; diffusers keeps the same order grouped by stage.
    """
    table: dict[int, str] = {}
    index = 0
    stages = len(config.dim_mult)
    for stage in range(stages):
        for j in range(config.num_res_blocks + 1):
            table[index] = f"up_blocks.{stage}.resnets.{j}"
            index += 1
        if stage != stages - 1:
            table[index] = f"up_blocks.{stage}.upsamplers.0"
            index += 1
    return table


def convert_official_vae_keys(state: LazyStateDict, config: WanVAEConfig) -> LazyStateDict:
    """Official ``WanVAE_`` keys (``Wan2.1_VAE.pth``) -> diffusers ``AutoencoderKLWan``."""
    decoder_table = _decoder_index_table(config)

    def rename(key: str) -> str:
        module, _, leaf = key.rpartition(".")
        if module in _TOP_KEYS:
            return f"{_TOP_KEYS[module]}.{leaf}"
        match = _INDEXED.fullmatch(key)
        if not match:
            return key  # unknown: reported as unexpected under its own name
        side, group, index, rest = match.group(1), match.group(2), int(match.group(3)), match.group(4)
        if group == "middle":
            # middle = [residual, attention, residual]
            if index == 1:
                return f"{side}.mid_block.attentions.0.{rest}"
            return f"{side}.mid_block.resnets.{index // 2}.{_RESIDUAL_KEYS.get(rest, rest)}"
        if group == "downsamples":
            return f"{side}.down_blocks.{index}.{_RESIDUAL_KEYS.get(rest, rest)}"
        if index not in decoder_table:
            return key
        target = decoder_table[index]
        if target.endswith("upsamplers.0"):
            return f"{side}.{target}.{rest}"  # resample.1.* and time_conv.* keep their names
        return f"{side}.{target}.{_RESIDUAL_KEYS.get(rest, rest)}"

    return state.rename(rename)


def _as_5d(tensor: torch.Tensor, what: str) -> tuple[torch.Tensor, bool]:
    if tensor.ndim == 4:
        return tensor[None], True
    if tensor.ndim == 5:
        return tensor, False
    raise ValueError(f"{what} must be [C, T, H, W] or [B, C, T, H, W], got {list(tensor.shape)}")


class WanVideoVAE:
    """The Wan2.1 VAE with the official normalised-latent convention."""

    def __init__(self, model: AutoencoderKLWan):
        self.model = model.eval().requires_grad_(False)
        self.model.disable_tiling()
        self.model.disable_slicing()
        config = model.config
        self.z_dim = config.z_dim
        # The official wrapper stores 1/std and multiplies; dividing instead changes the last float bit.
        self.latent_mean = torch.tensor(config.latents_mean, dtype=torch.float32)
        self.latent_inv_std = 1.0 / torch.tensor(config.latents_std, dtype=torch.float32)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.decoder.conv_out.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.decoder.conv_out.weight.device

    @classmethod
    def from_official(
        cls,
        weights: str | Path,
        config: WanVAEConfig | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> WanVideoVAE:
        """From ``Wan2.1_VAE.pth`` (or any file with official ``WanVAE_`` keys)."""
        config = config or WanVAEConfig()
        state = convert_official_vae_keys(open_state_dict(weights), config)
        with meta_init():
            model = AutoencoderKLWan(**config.to_diffusers_kwargs())
        return cls(load_into(model, state, dtype=dtype, device=device))

    @classmethod
    def from_diffusers(
        cls,
        vae_dir: str | Path,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> WanVideoVAE:
        """From a diffusers ``vae/`` folder (config.json + diffusion_pytorch_model.safetensors)."""
        folder = Path(vae_dir)
        config = read_json(folder / "config.json")
        with meta_init():
            model = AutoencoderKLWan.from_config(config)
        state = open_state_dict(find_weights_file(folder, "diffusion_pytorch_model"))
        return cls(load_into(model, state, dtype=dtype, device=device))

    @classmethod
    def from_layout(
        cls, layout: CheckpointLayout, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
    ) -> WanVideoVAE:
        """From a resolved checkpoint folder (official file or diffusers folder; a config in scail2_config.json honoured)."""
        if layout.vae.format == "diffusers":
            return cls.from_diffusers(layout.vae.path, dtype=dtype, device=device)
        config = WanVAEConfig.from_official_args(layout.configs.get("vae", {}))
        return cls.from_official(layout.vae.path, config, dtype=dtype, device=device)

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, self.z_dim, 1, 1, 1)
        return (
            self.latent_mean.to(like.device, like.dtype).view(shape),
            self.latent_inv_std.to(like.device, like.dtype).view(shape),
        )

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Video [3, T, H, W] or [B, 3, T, H, W] in [-1, 1] -> normalised latents [.., 16, 1 + (T-1)//4, H/8, W/8].

        Returns float32. ``T`` should be ``1 + 4k``; extra frames past the last full chunk of 4 are ignored, as in
        the official encoder.
        """
        video, squeeze = _as_5d(video, "video")
        moments = self.model.encode(video.to(device=self.device, dtype=self.dtype)).latent_dist
        mu = moments.mode().float()
        mean, inv_std = self._stats(mu)
        latents = (mu - mean) * inv_std
        return latents[0] if squeeze else latents

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [16, T, h, w] or [B, 16, T, h, w] -> video [.., 3, 1 + 4(T-1), 8h, 8w] in [-1, 1].

        Returns float32, clamped to [-1, 1].
        """
        latents, squeeze = _as_5d(latents, "latents")
        latents = latents.to(device=self.device, dtype=torch.float32)
        mean, inv_std = self._stats(latents)
        z = latents / inv_std + mean
        video = self.model.decode(z.to(self.dtype), return_dict=False)[0].float().clamp_(-1, 1)
        return video[0] if squeeze else video


def official_vae_shapes(config: WanVAEConfig) -> dict[str, tuple[int, ...]]:
    """The ``WanVAE_`` key set: the diffusers module tree's shapes under their official names.

    The official names are enumerated from the Wan VAE structure (flat encoder/decoder lists) and mapped with the
    loader's own conversion; every diffusers parameter must be hit exactly once.
    """
    with meta_init():
        model = AutoencoderKLWan(**config.to_diffusers_kwargs())
    target_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    residual = ("residual.0.gamma", "residual.2.weight", "residual.2.bias", "residual.3.gamma",
                "residual.6.weight", "residual.6.bias", "shortcut.weight", "shortcut.bias")  # fmt: skip
    resample = ("resample.1.weight", "resample.1.bias", "time_conv.weight", "time_conv.bias")
    attention = ("norm.gamma", "to_qkv.weight", "to_qkv.bias", "proj.weight", "proj.bias")
    candidates = ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"]
    for side in ("encoder", "decoder"):
        candidates += [f"{side}.conv1.{p}" for p in ("weight", "bias")]
        candidates += [f"{side}.head.0.gamma", f"{side}.head.2.weight", f"{side}.head.2.bias"]
        candidates += [f"{side}.middle.{i}.{leaf}" for i in (0, 2) for leaf in residual]
        candidates += [f"{side}.middle.1.{leaf}" for leaf in attention]
    stages = len(config.dim_mult)
    flat_length = stages * (config.num_res_blocks + 1)  # generous upper bound for both flat lists
    for index in range(flat_length + stages):
        for side, group in (("encoder", "downsamples"), ("decoder", "upsamples")):
            candidates += [f"{side}.{group}.{index}.{leaf}" for leaf in residual + resample]
    probe = LazyStateDict(
        {k: TensorRef((), torch.float32, lambda: torch.empty(()), k) for k in candidates}, "<vae key probe>"
    )
    converted = convert_official_vae_keys(probe, config)
    shapes = {ref.origin: target_shapes[key] for key, ref in converted.items() if key in target_shapes}
    if len(shapes) != len(target_shapes):
        missed = sorted(set(target_shapes) - {k for k in converted if k in target_shapes})
        raise RuntimeError(f"VAE key enumeration missed diffusers keys: {missed[:10]}")
    return shapes
