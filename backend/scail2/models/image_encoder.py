"""CLIP ViT-H/14 visual tower: transformers ``CLIPVisionModel`` loaded from the official open-clip file.

The official ``models_clip_open-clip-xlm-roberta-large-vit-huge-14-onlyvisual.pth`` holds ``visual.*`` keys (fused
``to_qkv``) plus a scalar ``log_scale``. SCAIL-2 uses the output of the penultimate block (``use_31_block``: all
blocks but the last, no post-norm, no head), so the model is built with one block fewer and its
``last_hidden_state`` is exactly that output; the last block, ``visual.head`` and ``log_scale`` are checked to be
present in the file and then skipped. A diffusers ``image_encoder/`` folder (Wan2.1-I2V-Diffusers) loads the same
way.

Preprocessing is the official one: stretch the [-1, 1] image to 224x224 with bicubic interpolation
(``align_corners=False``, no antialias), map to [0, 1], normalise with the CLIP mean/std.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel

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
    "official_clip_shapes",
    "CLIP_MEAN",
    "CLIP_STD",
    "ClipVisionConfig",
    "ClipImageEncoder",
    "convert_official_clip_keys",
    "preprocess_clip_image",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ClipVisionConfig:
    """The official ``XLMRobertaCLIP`` visual-tower constructor arguments (defaults: ViT-H/14)."""

    image_size: int = 224
    patch_size: int = 14
    vision_dim: int = 1280
    vision_mlp_ratio: int = 4
    vision_heads: int = 16
    vision_layers: int = 32
    vision_pre_norm: bool = True
    activation: str = "gelu"
    norm_eps: float = 1e-5

    @classmethod
    def from_official_args(cls, args: Mapping) -> ClipVisionConfig:
        """From official constructor arguments (text-tower and pooling arguments are ignored)."""
        return cls(**{k: args[k] for k in cls.__dataclass_fields__ if k in args})

    def to_transformers(self) -> CLIPVisionConfig:
        """The penultimate-block tower: ``vision_layers - 1`` transformer layers."""
        if not self.vision_pre_norm:
            raise CheckpointError("CLIP towers without pre-norm are not the ViT-H/14 used by SCAIL-2")
        if self.activation != "gelu":
            raise CheckpointError(f"CLIP activation {self.activation!r} unsupported; ViT-H/14 uses exact 'gelu'")
        return CLIPVisionConfig(
            hidden_size=self.vision_dim,
            intermediate_size=self.vision_dim * self.vision_mlp_ratio,
            num_hidden_layers=self.vision_layers - 1,
            num_attention_heads=self.vision_heads,
            image_size=self.image_size,
            patch_size=self.patch_size,
            hidden_act="gelu",
            layer_norm_eps=self.norm_eps,
            attention_dropout=0.0,
        )

    def as_dict(self) -> dict:
        return asdict(self)


_CLIP_BLOCK_KEYS = {
    "norm1.weight": "layer_norm1.weight",
    "norm1.bias": "layer_norm1.bias",
    "norm2.weight": "layer_norm2.weight",
    "norm2.bias": "layer_norm2.bias",
    "attn.proj.weight": "self_attn.out_proj.weight",
    "attn.proj.bias": "self_attn.out_proj.bias",
    "mlp.0.weight": "mlp.fc1.weight",
    "mlp.0.bias": "mlp.fc1.bias",
    "mlp.2.weight": "mlp.fc2.weight",
    "mlp.2.bias": "mlp.fc2.bias",
}
_CLIP_TOP_KEYS = {
    "visual.patch_embedding.weight": "embeddings.patch_embedding.weight",
    "visual.pre_norm.weight": "pre_layrnorm.weight",
    "visual.pre_norm.bias": "pre_layrnorm.bias",
    "visual.post_norm.weight": "post_layernorm.weight",
    "visual.post_norm.bias": "post_layernorm.bias",
}
# In the file, unused by SCAIL-2's penultimate-block features.
_CLIP_UNUSED_KEYS = ("visual.head", "log_scale")
_CLIP_BLOCK_PATTERN = re.compile(r"visual\.transformer\.(\d+)\.(.+)")


def convert_official_clip_keys(state: LazyStateDict, config: ClipVisionConfig) -> LazyStateDict:
    """Official open-clip ``visual.*`` keys -> ``CLIPVisionModel`` with ``vision_layers - 1`` layers."""
    last_block = config.vision_layers - 1

    def convert(source: LazyStateDict) -> dict[str, TensorRef]:
        absent = [k for k in _CLIP_UNUSED_KEYS if k not in source]
        if not any(k.startswith(f"visual.transformer.{last_block}.") for k in source):
            absent.append(f"visual.transformer.{last_block}.*")
        if absent:
            raise CheckpointError(
                f"{source.source}: not an open-clip ViT visual tower with {config.vision_layers} blocks: "
                f"missing {absent}"
            )
        converted: dict[str, TensorRef] = {}
        for key, ref in source.items():
            if key in _CLIP_UNUSED_KEYS:
                continue
            if key in _CLIP_TOP_KEYS:
                converted[_CLIP_TOP_KEYS[key]] = ref
            elif key == "visual.cls_embedding":  # [1, 1, D] -> [D]
                converted["embeddings.class_embedding"] = ref.derive(ref.shape[-1:], lambda t: t.reshape(-1))
            elif key == "visual.pos_embedding":  # [1, N, D] -> [N, D]
                converted["embeddings.position_embedding.weight"] = ref.derive(ref.shape[1:], lambda t: t[0])
            elif match := _CLIP_BLOCK_PATTERN.fullmatch(key):
                index, rest = int(match.group(1)), match.group(2)
                if index == last_block:
                    continue  # the last block's output is not used
                prefix = f"encoder.layers.{index}."
                if rest in ("attn.to_qkv.weight", "attn.to_qkv.bias"):
                    kind = rest.rsplit(".", 1)[1]
                    rows = ref.shape[0] // 3
                    for part, name in enumerate(("q_proj", "k_proj", "v_proj")):
                        converted[f"{prefix}self_attn.{name}.{kind}"] = ref.derive(
                            (rows, *ref.shape[1:]), lambda t, p=part, r=rows: t[p * r : (p + 1) * r]
                        )
                else:
                    converted[prefix + _CLIP_BLOCK_KEYS.get(rest, rest)] = ref
            else:
                converted[key] = ref  # unknown: reported as unexpected under its own name
        return converted

    return state.convert(convert)


def convert_transformers_clip_keys(state: LazyStateDict, num_hidden_layers: int) -> LazyStateDict:
    """A saved ``CLIPVisionModel``/``...WithProjection`` (diffusers ``image_encoder/``) -> the penultimate tower."""
    last_layer = f"encoder.layers.{num_hidden_layers - 1}."

    def rename(key: str) -> str | None:
        key = key.removeprefix("vision_model.")
        if key.startswith(last_layer) or key.startswith("visual_projection."):
            return None
        return key

    return state.rename(rename)


def preprocess_clip_image(image: torch.Tensor, image_size: int = 224) -> torch.Tensor:
    """[3, H, W] or [B, 3, H, W] in [-1, 1] -> normalised [B, 3, image_size, image_size] (official recipe)."""
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"expected an image [3, H, W] or [B, 3, H, W], got {list(image.shape)}")
    pixels = F.interpolate(image, size=(image_size, image_size), mode="bicubic", align_corners=False)
    pixels = pixels * 0.5 + 0.5
    mean = torch.tensor(CLIP_MEAN, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    return (pixels - mean) / std


class ClipImageEncoder:
    """Reference image -> CLIP penultimate-block tokens [B, 257, vision_dim]."""

    def __init__(self, model: CLIPVisionModel):
        self.model = model.eval().requires_grad_(False)

    @property
    def image_size(self) -> int:
        return self.model.config.image_size

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @classmethod
    def from_official(
        cls,
        weights: str | Path,
        config: ClipVisionConfig | None = None,
        *,
        dtype: torch.dtype = torch.float16,
        device: torch.device | str = "cpu",
    ) -> ClipImageEncoder:
        """From the open-clip ``...-vit-huge-14-onlyvisual.pth`` (or a file with the same keys)."""
        config = config or ClipVisionConfig()
        state = convert_official_clip_keys(open_state_dict(weights), config)
        return cls(_build(config.to_transformers(), state, dtype=dtype, device=device))

    @classmethod
    def from_diffusers(
        cls,
        image_encoder_dir: str | Path,
        *,
        dtype: torch.dtype = torch.float16,
        device: torch.device | str = "cpu",
    ) -> ClipImageEncoder:
        """From a diffusers/transformers ``image_encoder/`` folder (full tower; the last layer is skipped)."""
        folder = Path(image_encoder_dir)
        config = CLIPVisionConfig.from_dict(read_json(folder / "config.json"))
        full_layers = config.num_hidden_layers
        config.num_hidden_layers = full_layers - 1
        state = convert_transformers_clip_keys(open_state_dict(find_weights_file(folder, "model")), full_layers)
        return cls(_build(config, state, dtype=dtype, device=device))

    @classmethod
    def from_layout(
        cls, layout: CheckpointLayout, *, dtype: torch.dtype = torch.float16, device: torch.device | str = "cpu"
    ) -> ClipImageEncoder:
        """From a resolved checkpoint folder (official file or diffusers folder; a config in scail2_config.json honoured)."""
        if layout.image_encoder.format == "diffusers":
            return cls.from_diffusers(layout.image_encoder.path, dtype=dtype, device=device)
        config = ClipVisionConfig.from_official_args(layout.configs.get("clip", {}))
        return cls.from_official(layout.image_encoder.path, config, dtype=dtype, device=device)

    @torch.no_grad()
    def encode_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Preprocessed pixels [B, 3, S, S] -> penultimate tokens [B, 1 + (S/patch)^2, dim]."""
        pixel_values = pixel_values.to(device=self.device, dtype=self.dtype)
        return self.model(pixel_values=pixel_values).last_hidden_state

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Image [3, H, W] or [B, 3, H, W] in [-1, 1] -> [B, 257, dim] (official preprocessing included)."""
        return self.encode_pixels(preprocess_clip_image(image.float(), self.image_size))


def _build(
    config: CLIPVisionConfig, state: LazyStateDict, *, dtype: torch.dtype, device: torch.device | str
) -> CLIPVisionModel:
    with meta_init():
        model = CLIPVisionModel(config)
    return load_into(model, state, dtype=dtype, device=device)


def official_clip_shapes(config: ClipVisionConfig, embed_dim: int = 1024) -> dict[str, tuple[int, ...]]:
    """Every key of the official ``-onlyvisual.pth`` with its shape; ``embed_dim`` is ``visual.head``'s width."""
    d, p = config.vision_dim, config.patch_size
    tokens = (config.image_size // p) ** 2 + 1
    mlp = d * config.vision_mlp_ratio
    shapes: dict[str, tuple[int, ...]] = {
        "log_scale": (),
        "visual.patch_embedding.weight": (d, 3, p, p),
        "visual.cls_embedding": (1, 1, d),
        "visual.pos_embedding": (1, tokens, d),
        "visual.pre_norm.weight": (d,),
        "visual.pre_norm.bias": (d,),
        "visual.post_norm.weight": (d,),
        "visual.post_norm.bias": (d,),
        "visual.head": (d, embed_dim),
    }
    for n in range(config.vision_layers):
        block = f"visual.transformer.{n}"
        for norm in ("norm1", "norm2"):
            shapes[f"{block}.{norm}.weight"] = (d,)
            shapes[f"{block}.{norm}.bias"] = (d,)
        shapes[f"{block}.attn.to_qkv.weight"] = (3 * d, d)
        shapes[f"{block}.attn.to_qkv.bias"] = (3 * d,)
        shapes[f"{block}.attn.proj.weight"] = (d, d)
        shapes[f"{block}.attn.proj.bias"] = (d,)
        shapes[f"{block}.mlp.0.weight"] = (mlp, d)
        shapes[f"{block}.mlp.0.bias"] = (mlp,)
        shapes[f"{block}.mlp.2.weight"] = (d, mlp)
        shapes[f"{block}.mlp.2.bias"] = (d,)
    return shapes
