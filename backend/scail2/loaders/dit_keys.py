"""Parameter names of the SCAIL-2 DiT in its three key spaces, and the conversions between them.

* **SAT** — the official training checkpoint ``model/1/fsdp2_rank_0000_checkpoint.pt`` (state dict under
  ``module``, keys prefixed ``model.diffusion_model.``): 987 tensors for 14B, with fused projections
  (``attention.query_key_value`` = q|k|v rows, ``cross_attention.key_value`` = k|v, ``clip_feature_key_value_list.N``
  = k_img|v_img).
* **Wan** — the names of the official ``SCAIL2Model`` / ``convert.py`` output and Comfy-Org's
  ``wan2.1_14B_SCAIL_2_fp16.safetensors`` (1,307 tensors for 14B), optionally prefixed ``diffusion_model.`` or
  ``model.diffusion_model.``.
* **internal** — the diffusers-style module names of :class:`~backend.scail2.models.transformer_scail2.SCAIL2Transformer`
  (``blocks.N.attn1.to_q``, ``condition_embedder.time_embedder.linear_1``, ...).

Conversions are rule tables, so they run in both directions: ``sat_to_wan`` splits fused tensors,
``wan_to_sat_state_dict`` fuses them back (used to write official-layout tiny checkpoints).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from ..errors import CheckpointError

__all__ = [
    "KEY_PREFIXES",
    "detect_key_space",
    "internal_to_wan",
    "internal_to_wan_state_dict",
    "internal_module_to_wan",
    "official_wan_shapes",
    "sat_to_wan",
    "sat_key_for_wan",
    "strip_key_prefix",
    "wan_module_to_internal",
    "wan_to_internal",
    "wan_to_sat_state_dict",
]

# Prefixes that wrap the DiT keys in the files people have (SAT keeps "model.diffusion_model.", ComfyUI
# exports sometimes "diffusion_model."). Longest first.
KEY_PREFIXES = ("model.diffusion_model.", "diffusion_model.")

# --- Wan <-> internal -------------------------------------------------------------------------------------

# Wan module path -> internal module path, for modules outside the blocks.
_GLOBAL_MODULES = {
    "patch_embedding": "patch_embedding",
    "patch_embedding_pose": "pose_patch_embedding",
    "patch_embedding_mask": "mask_patch_embedding",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "img_emb.proj.0": "condition_embedder.image_embedder.norm1",
    "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
    "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2",
    "img_emb.proj.4": "condition_embedder.image_embedder.norm2",
    "head.head": "proj_out",
}

# Wan module path inside ``blocks.N`` -> internal module path inside ``blocks.N``. Note the swap of names:
# Wan's affine cross-attention norm is ``norm3`` (diffusers ``norm2``); the FFN norm has no weights.
_BLOCK_MODULES = {
    "self_attn.q": "attn1.to_q",
    "self_attn.k": "attn1.to_k",
    "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0",
    "self_attn.norm_q": "attn1.norm_q",
    "self_attn.norm_k": "attn1.norm_k",
    "cross_attn.q": "attn2.to_q",
    "cross_attn.k": "attn2.to_k",
    "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0",
    "cross_attn.k_img": "attn2.add_k_proj",
    "cross_attn.v_img": "attn2.add_v_proj",
    "cross_attn.norm_q": "attn2.norm_q",
    "cross_attn.norm_k": "attn2.norm_k",
    "cross_attn.norm_k_img": "attn2.norm_added_k",
    "norm3": "norm2",
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
}

# Bare parameters (no module leaf): Wan name -> internal name.
_GLOBAL_PARAMETERS = {"head.modulation": "scale_shift_table"}
_BLOCK_PARAMETERS = {"modulation": "scale_shift_table"}

_INTERNAL_GLOBAL_MODULES = {v: k for k, v in _GLOBAL_MODULES.items()}
_INTERNAL_BLOCK_MODULES = {v: k for k, v in _BLOCK_MODULES.items()}
_INTERNAL_GLOBAL_PARAMETERS = {v: k for k, v in _GLOBAL_PARAMETERS.items()}
_INTERNAL_BLOCK_PARAMETERS = {v: k for k, v in _BLOCK_PARAMETERS.items()}

_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _translate_module(path: str, global_map: Mapping[str, str], block_map: Mapping[str, str]) -> str | None:
    if path in global_map:
        return global_map[path]
    match = _BLOCK_RE.match(path)
    if match and match.group(2) in block_map:
        return f"blocks.{match.group(1)}.{block_map[match.group(2)]}"
    return None


def _translate_parameter(
    key: str,
    global_modules: Mapping[str, str],
    block_modules: Mapping[str, str],
    global_params: Mapping[str, str],
    block_params: Mapping[str, str],
) -> str | None:
    if key in global_params:
        return global_params[key]
    match = _BLOCK_RE.match(key)
    if match and match.group(2) in block_params:
        return f"blocks.{match.group(1)}.{block_params[match.group(2)]}"
    module, _, leaf = key.rpartition(".")
    if leaf not in ("weight", "bias"):
        return None
    translated = _translate_module(module, global_modules, block_modules)
    return None if translated is None else f"{translated}.{leaf}"


def wan_module_to_internal(module_path: str) -> str | None:
    """``blocks.3.self_attn.q`` -> ``blocks.3.attn1.to_q``; ``None`` for names that are not DiT modules."""
    return _translate_module(module_path, _GLOBAL_MODULES, _BLOCK_MODULES)


def internal_module_to_wan(module_path: str) -> str | None:
    return _translate_module(module_path, _INTERNAL_GLOBAL_MODULES, _INTERNAL_BLOCK_MODULES)


def wan_to_internal(key: str) -> str | None:
    """Wan parameter name (no prefix) -> internal parameter name, or ``None`` if it is not a DiT parameter."""
    return _translate_parameter(key, _GLOBAL_MODULES, _BLOCK_MODULES, _GLOBAL_PARAMETERS, _BLOCK_PARAMETERS)


def internal_to_wan(key: str) -> str | None:
    return _translate_parameter(
        key,
        _INTERNAL_GLOBAL_MODULES,
        _INTERNAL_BLOCK_MODULES,
        _INTERNAL_GLOBAL_PARAMETERS,
        _INTERNAL_BLOCK_PARAMETERS,
    )


# --- SAT <-> Wan -------------------------------------------------------------------------------------------

# (SAT key template, Wan key templates). Several Wan templates mean the SAT tensor is their concatenation
# along dim 0, in this order. {n}: block index, {i}: Sequential index, {p}: weight/bias.
_SAT_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "transformer.layers.{n}.attention.query_key_value.{p}",
        ("blocks.{n}.self_attn.q.{p}", "blocks.{n}.self_attn.k.{p}", "blocks.{n}.self_attn.v.{p}"),
    ),
    ("transformer.layers.{n}.attention.dense.{p}", ("blocks.{n}.self_attn.o.{p}",)),
    ("transformer.layers.{n}.cross_attention.query.{p}", ("blocks.{n}.cross_attn.q.{p}",)),
    (
        "transformer.layers.{n}.cross_attention.key_value.{p}",
        ("blocks.{n}.cross_attn.k.{p}", "blocks.{n}.cross_attn.v.{p}"),
    ),
    ("transformer.layers.{n}.cross_attention.dense.{p}", ("blocks.{n}.cross_attn.o.{p}",)),
    ("transformer.layers.{n}.post_cross_attention_layernorm.{p}", ("blocks.{n}.norm3.{p}",)),
    ("transformer.layers.{n}.mlp.dense_h_to_4h.{p}", ("blocks.{n}.ffn.0.{p}",)),
    ("transformer.layers.{n}.mlp.dense_4h_to_h.{p}", ("blocks.{n}.ffn.2.{p}",)),
    ("mixins.adaln_layer.adaLN_modulations.{n}", ("blocks.{n}.modulation",)),
    ("mixins.adaln_layer.query_layernorm_list.{n}.{p}", ("blocks.{n}.self_attn.norm_q.{p}",)),
    ("mixins.adaln_layer.key_layernorm_list.{n}.{p}", ("blocks.{n}.self_attn.norm_k.{p}",)),
    ("mixins.adaln_layer.cross_query_layernorm_list.{n}.{p}", ("blocks.{n}.cross_attn.norm_q.{p}",)),
    ("mixins.adaln_layer.cross_key_layernorm_list.{n}.{p}", ("blocks.{n}.cross_attn.norm_k.{p}",)),
    ("mixins.adaln_layer.clip_feature_key_layernorm_list.{n}.{p}", ("blocks.{n}.cross_attn.norm_k_img.{p}",)),
    (
        "mixins.adaln_layer.clip_feature_key_value_list.{n}.{p}",
        ("blocks.{n}.cross_attn.k_img.{p}", "blocks.{n}.cross_attn.v_img.{p}"),
    ),
    ("mixins.final_layer.adaLN_modulation", ("head.modulation",)),
    ("mixins.final_layer.linear.{p}", ("head.head.{p}",)),
    ("mixins.patch_embed.proj.{p}", ("patch_embedding.{p}",)),
    ("mixins.patch_embed.proj_pose.{p}", ("patch_embedding_pose.{p}",)),
    ("mixins.patch_embed.proj_mask.{p}", ("patch_embedding_mask.{p}",)),
    ("time_embed.{i}.{p}", ("time_embedding.{i}.{p}",)),
    ("adaln_projection.{i}.{p}", ("time_projection.{i}.{p}",)),
    ("text_embedding.{i}.{p}", ("text_embedding.{i}.{p}",)),
    ("clip_proj.proj.{i}.{p}", ("img_emb.proj.{i}.{p}",)),
)

_PLACEHOLDERS = {"n": r"(?P<n>\d+)", "i": r"(?P<i>\d+)", "p": r"(?P<p>weight|bias)"}


def _template_regex(template: str) -> re.Pattern[str]:
    pattern = re.escape(template)
    for name, group in _PLACEHOLDERS.items():
        pattern = pattern.replace(re.escape("{" + name + "}"), group)
    return re.compile(f"^{pattern}$")


@dataclass(frozen=True)
class _CompiledRule:
    sat_template: str
    sat_regex: re.Pattern[str]
    wan_templates: tuple[str, ...]
    wan_regexes: tuple[re.Pattern[str], ...]


_COMPILED_SAT_RULES = tuple(
    _CompiledRule(sat, _template_regex(sat), wans, tuple(_template_regex(w) for w in wans))
    for sat, wans in _SAT_RULES
)


def sat_to_wan(key: str) -> tuple[str, ...] | None:
    """SAT key (no prefix) -> the Wan keys it holds, concatenated along dim 0 in this order; ``None`` if unknown."""
    for rule in _COMPILED_SAT_RULES:
        match = rule.sat_regex.match(key)
        if match:
            return tuple(t.format(**match.groupdict()) for t in rule.wan_templates)
    return None


def sat_key_for_wan(key: str) -> tuple[str, int, int] | None:
    """Wan key -> ``(SAT key, index of this part, number of fused parts)``; ``None`` if unknown."""
    for rule in _COMPILED_SAT_RULES:
        for index, regex in enumerate(rule.wan_regexes):
            match = regex.match(key)
            if match:
                return rule.sat_template.format(**match.groupdict()), index, len(rule.wan_templates)
    return None


def wan_to_sat_state_dict(
    state_dict: Mapping[str, torch.Tensor], prefix: str = "model.diffusion_model."
) -> dict:
    """Fuse a Wan-key state dict into the official SAT key space (``prefix`` included), e.g. to write a tiny
    official-layout checkpoint. Raises ``KeyError`` for a key with no SAT name or a fused group with parts
    missing."""
    groups: dict[str, list[torch.Tensor | None]] = {}
    for key, tensor in state_dict.items():
        target = sat_key_for_wan(key)
        if target is None:
            raise KeyError(f"{key!r} has no SAT counterpart")
        sat_key, index, parts = target
        groups.setdefault(sat_key, [None] * parts)[index] = tensor
    fused: dict[str, torch.Tensor] = {}
    for sat_key, parts in groups.items():
        if any(p is None for p in parts):
            raise KeyError(f"{sat_key!r} needs {len(parts)} fused parts; some are missing")
        fused[prefix + sat_key] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
    return fused


def internal_to_wan_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an internal-key state dict (``SCAIL2Transformer.state_dict()``) to Wan keys; ``KeyError`` for a
    key with no Wan name."""
    renamed = {}
    for key, tensor in state_dict.items():
        wan_key = internal_to_wan(key)
        if wan_key is None:
            raise KeyError(f"{key!r} has no Wan counterpart")
        renamed[wan_key] = tensor
    return renamed


# --- key space detection -----------------------------------------------------------------------------------


def strip_key_prefix(keys: Iterable[str]) -> str:
    """The prefix (one of :data:`KEY_PREFIXES` or ``""``) that every key carries."""
    keys = list(keys)
    for prefix in KEY_PREFIXES:
        if keys and all(k.startswith(prefix) for k in keys):
            return prefix
    return ""


def detect_key_space(keys: Iterable[str], source: str = "checkpoint") -> tuple[str, str]:
    """``(space, prefix)`` of a DiT checkpoint's keys: space is ``"sat"``, ``"wan"`` or ``"internal"``.

    Raises :class:`CheckpointError` naming ``source`` when the keys are none of these (e.g. a VAE or T5 file).
    """
    keys = list(keys)
    prefix = strip_key_prefix(keys)
    bare = [k[len(prefix) :] for k in keys]
    votes = {
        "sat": sum(sat_to_wan(k) is not None for k in bare),
        "wan": sum(wan_to_internal(k) is not None for k in bare),
        "internal": sum(internal_to_wan(k) is not None for k in bare),
    }
    space, count = max(votes.items(), key=lambda item: item[1])
    if count == 0:
        raise CheckpointError(
            f"{source}: no SCAIL-2 DiT keys found (first keys: {sorted(keys)[:5]}). Expected the official SAT "
            "checkpoint, Wan-named keys (convert.py / Comfy-Org file) or this project's diffusers-style names."
        )
    return space, prefix


# --- the official 14B key set ----------------------------------------------------------------------------


def official_wan_shapes(
    dim: int = 5120,
    ffn_dim: int = 13824,
    num_layers: int = 40,
    in_dim: int = 20,
    mask_dim: int = 28,
    text_dim: int = 4096,
    freq_dim: int = 256,
    out_dim: int = 16,
    clip_dim: int = 1280,
    patch_size: tuple[int, int, int] = (1, 2, 2),
) -> dict[str, tuple[int, ...]]:
    """Every Wan key of the official ``SCAIL2Model`` state dict with its shape (1,307 keys with the defaults),
    written from the model definition (``scail2-reference.md`` §2.3), independent of this project's modules."""
    p_t, p_h, p_w = patch_size
    shapes: dict[str, tuple[int, ...]] = {
        "patch_embedding.weight": (dim, in_dim, p_t, p_h, p_w),
        "patch_embedding.bias": (dim,),
        "patch_embedding_pose.weight": (dim, in_dim, p_t, p_h, p_w),
        "patch_embedding_pose.bias": (dim,),
        "patch_embedding_mask.weight": (dim, mask_dim, p_t, p_h, p_w),
        "patch_embedding_mask.bias": (dim,),
        "text_embedding.0.weight": (dim, text_dim),
        "text_embedding.0.bias": (dim,),
        "text_embedding.2.weight": (dim, dim),
        "text_embedding.2.bias": (dim,),
        "time_embedding.0.weight": (dim, freq_dim),
        "time_embedding.0.bias": (dim,),
        "time_embedding.2.weight": (dim, dim),
        "time_embedding.2.bias": (dim,),
        "time_projection.1.weight": (6 * dim, dim),
        "time_projection.1.bias": (6 * dim,),
        "img_emb.proj.0.weight": (clip_dim,),
        "img_emb.proj.0.bias": (clip_dim,),
        "img_emb.proj.1.weight": (clip_dim, clip_dim),
        "img_emb.proj.1.bias": (clip_dim,),
        "img_emb.proj.3.weight": (dim, clip_dim),
        "img_emb.proj.3.bias": (dim,),
        "img_emb.proj.4.weight": (dim,),
        "img_emb.proj.4.bias": (dim,),
        "head.head.weight": (out_dim * p_t * p_h * p_w, dim),
        "head.head.bias": (out_dim * p_t * p_h * p_w,),
        "head.modulation": (1, 2, dim),
    }
    for n in range(num_layers):
        block = f"blocks.{n}"
        for attn, projections in (
            ("self_attn", "qkvo"),
            ("cross_attn", ("q", "k", "v", "o", "k_img", "v_img")),
        ):
            for proj in projections:
                shapes[f"{block}.{attn}.{proj}.weight"] = (dim, dim)
                shapes[f"{block}.{attn}.{proj}.bias"] = (dim,)
        for norm in (
            "self_attn.norm_q",
            "self_attn.norm_k",
            "cross_attn.norm_q",
            "cross_attn.norm_k",
            "cross_attn.norm_k_img",
        ):
            shapes[f"{block}.{norm}.weight"] = (dim,)
        shapes[f"{block}.norm3.weight"] = (dim,)
        shapes[f"{block}.norm3.bias"] = (dim,)
        shapes[f"{block}.ffn.0.weight"] = (ffn_dim, dim)
        shapes[f"{block}.ffn.0.bias"] = (ffn_dim,)
        shapes[f"{block}.ffn.2.weight"] = (dim, ffn_dim)
        shapes[f"{block}.ffn.2.bias"] = (dim,)
        shapes[f"{block}.modulation"] = (1, 6, dim)
    return shapes
