"""The SCAIL-2 DiT: Wan2.1-I2V-14B transformer blocks plus SCAIL-2's driving and colour-mask streams.

The blocks, attention processor (and so attention backends, context parallelism, caching hooks, group offloading)
and the time/text/image condition embedder are diffusers' Wan building blocks. What this module adds is what
SCAIL-2 adds to Wan2.1-I2V:

* three patch embeddings: ``patch_embedding`` (reference and video latents, 16 + 4 channels),
  ``pose_patch_embedding`` (the half-resolution driving latents, 16 + 4 ones) and ``mask_patch_embedding`` (the
  28-channel colour masks, shared by the reference-mask and driving-mask streams);
* the 4 extra input channels: zeros (or the history mask) on the video, ones on every reference and the driving
  stream;
* the token sequence ``[extra refs][ref][video][driving]`` with the per-segment RoPE of :mod:`.rope`;
* unpatchifying only the video tokens.

Loading (:meth:`SCAIL2Transformer.from_single_file`) accepts the official SAT checkpoint, Wan-named files
(``convert.py`` output, Comfy-Org fp16) with or without ``diffusion_model.`` prefixes, and this module's own names;
see :mod:`..loaders.dit_keys`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput
from diffusers.models.attention import AttentionMixin
from diffusers.models.cache_utils import CacheMixin
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import FP32LayerNorm
from diffusers.models.transformers.transformer_wan import WanTimeTextImageEmbedding, WanTransformerBlock
from diffusers.utils import apply_lora_scale
from torch import nn

from ..errors import CheckpointError
from ..loaders.dit_keys import detect_key_space, internal_to_wan, sat_key_for_wan, sat_to_wan, wan_to_internal
from ..loaders.weights import LazyStateDict, TensorRef, load_into, meta_init, open_state_dict
from .rope import SCAIL2RotaryPosEmbed, TokenLayout

__all__ = [
    "SCAIL2Transformer",
    "SCAIL2TransformerBlock",
    "config_from_official",
    "infer_config_from_shapes",
    "to_internal_keys",
]

# diffusers' WanAttnProcessor splits the cross-attention context at ``len - 512``: the text part is always
# zero-padded to 512 rows, as in the official model.
TEXT_CONTEXT_TOKENS = 512
# Channels appended to each 16-channel latent before its patch embedding.
EXTRA_INPUT_CHANNELS = 4
# The 14B model's head size; used to infer num_heads when a checkpoint comes without a config.
DEFAULT_HEAD_DIM = 128

# Parameters kept in float32 when the model is loaded in half precision: the time embedding, modulation tables
# and output head (the official model computes them in fp32) and the norms. All small.
_FP32_MODULE_NAMES = frozenset(
    {"time_embedder", "time_proj", "scale_shift_table", "norm1", "norm2", "norm3", "proj_out"}
)


def _timestep_sinusoid(timestep: torch.Tensor, freq_dim: int) -> torch.Tensor:
    """Official ``sinusoidal_embedding_1d``: float64, ``[cos, sin]``, base 10000, cast to float32."""
    half = freq_dim // 2
    position = timestep.to(torch.float64).reshape(-1)
    frequencies = torch.pow(
        10000.0, -torch.arange(half, dtype=torch.float64, device=position.device).div(half)
    )
    sinusoid = torch.outer(position, frequencies)
    return torch.cat([torch.cos(sinusoid), torch.sin(sinusoid)], dim=1).float()


def _append_channels(latents: torch.Tensor, value: float | torch.Tensor) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        extra = value.to(dtype=latents.dtype, device=latents.device)
    else:
        b, _, t, h, w = latents.shape
        extra = latents.new_full((b, EXTRA_INPUT_CHANNELS, t, h, w), value)
    return torch.cat([latents, extra], dim=1)


def _tokens(embedded: torch.Tensor) -> torch.Tensor:
    """``[B, C, T, H, W]`` -> ``[B, T*H*W, C]`` in (t, h, w) order."""
    return embedded.flatten(2).transpose(1, 2)


class SCAIL2TransformerBlock(WanTransformerBlock):
    """diffusers' ``WanTransformerBlock`` (same modules, names and parameters) with the official block's precision.

    diffusers rounds the residual stream to the activation dtype after every add
    (``(hidden.float() + out * gate).type_as(hidden)``). The official Wan/SCAIL-2 block keeps the residual stream,
    the gates and the adds in float32 and rounds only what enters a linear. This block does the same: it takes and
    returns a float32 ``hidden_states``; the norms, modulation, gates and adds run in float32, and the inputs of
    the attention and feed-forward are cast to the activation dtype, that of ``encoder_hidden_states`` (the
    text/image context the model's own embedders produce in the weights' dtype, or under autocast). In float32 it
    computes exactly what ``WanTransformerBlock`` computes. Only the stream is wider: parameters stay as loaded.
    """

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        temb: torch.Tensor,
        rotary_emb: torch.Tensor,
    ) -> torch.Tensor:
        compute_dtype = encoder_hidden_states.dtype
        residual = hidden_states.float()
        shift_msa, scale_msa, gate_msa, c_shift_msa, c_scale_msa, c_gate_msa = (
            self.scale_shift_table + temb.float()
        ).chunk(6, dim=1)

        # 1. Self-attention
        norm_hidden_states = (self.norm1(residual) * (1 + scale_msa) + shift_msa).to(compute_dtype)
        attn_output = self.attn1(norm_hidden_states, None, None, rotary_emb)
        residual = residual + attn_output.float() * gate_msa

        # 2. Cross-attention (no gate, as in the official block)
        norm_hidden_states = self.norm2(residual).to(compute_dtype)
        attn_output = self.attn2(norm_hidden_states, encoder_hidden_states, None, None)
        residual = residual + attn_output.float()

        # 3. Feed-forward
        norm_hidden_states = (self.norm3(residual) * (1 + c_scale_msa) + c_shift_msa).to(compute_dtype)
        ff_output = self.ffn(norm_hidden_states)
        return residual + ff_output.float() * c_gate_msa


class SCAIL2Transformer(ModelMixin, ConfigMixin, PeftAdapterMixin, CacheMixin, AttentionMixin):
    r"""SCAIL-2 diffusion transformer (the official ``SCAIL2Model``) on diffusers' Wan blocks.

    Config (official constructor names; the defaults are the released 14B model):
        dim (5120), ffn_dim (13824), freq_dim (256), num_heads (40), num_layers (40), in_dim (20 = 16 latent + 4
        extra channels), mask_dim (28 colour-mask channels), out_dim (16), text_dim (4096, umT5-XXL),
        text_len (512), clip_dim (1280, CLIP ViT-H/14 width), patch_size ((1, 2, 2)), eps (1e-6).
    """

    _supports_gradient_checkpointing = True
    _skip_layerwise_casting_patterns = ["patch_embedding", "condition_embedder", "norm"]
    _no_split_modules = ["SCAIL2TransformerBlock"]
    _keep_in_fp32_modules = sorted(_FP32_MODULE_NAMES)
    _repeated_blocks = ["SCAIL2TransformerBlock"]
    # Sequence-parallel plan: the RoPE tables and the token sequence are split along the sequence, the text and
    # image context is not (257 + 512 rows), and the head output is gathered before the video tokens are cut.
    _cp_plan = {
        "rope": {
            0: ContextParallelInput(split_dim=1, expected_dims=4, split_output=True),
            1: ContextParallelInput(split_dim=1, expected_dims=4, split_output=True),
        },
        "blocks.0": {
            "hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False),
        },
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
    }

    @register_to_config
    def __init__(
        self,
        dim: int = 5120,
        ffn_dim: int = 13824,
        freq_dim: int = 256,
        num_heads: int = 40,
        num_layers: int = 40,
        in_dim: int = 20,
        mask_dim: int = 28,
        out_dim: int = 16,
        text_dim: int = 4096,
        text_len: int = 512,
        clip_dim: int = 1280,
        patch_size: tuple[int, int, int] = (1, 2, 2),
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be a multiple of num_heads ({num_heads})")
        if text_len != TEXT_CONTEXT_TOKENS:
            raise ValueError(
                f"text_len must be {TEXT_CONTEXT_TOKENS}: the Wan cross-attention splits its context at len - 512"
            )
        if in_dim != 16 + EXTRA_INPUT_CHANNELS:
            raise ValueError(f"in_dim must be 20 (16 latent channels + 4 extra channels), got {in_dim}")
        patch_size = tuple(patch_size)
        head_dim = dim // num_heads

        self.rope = SCAIL2RotaryPosEmbed(head_dim)
        self.patch_embedding = nn.Conv3d(in_dim, dim, kernel_size=patch_size, stride=patch_size)
        self.pose_patch_embedding = nn.Conv3d(in_dim, dim, kernel_size=patch_size, stride=patch_size)
        self.mask_patch_embedding = nn.Conv3d(mask_dim, dim, kernel_size=patch_size, stride=patch_size)

        self.condition_embedder = WanTimeTextImageEmbedding(
            dim=dim,
            time_freq_dim=freq_dim,
            time_proj_dim=dim * 6,
            text_embed_dim=text_dim,
            image_embed_dim=clip_dim,
        )
        # I2V cross-attention: the image tokens are already projected to `dim` by the image embedder.
        self.blocks = nn.ModuleList(
            [
                SCAIL2TransformerBlock(
                    dim,
                    ffn_dim,
                    num_heads,
                    "rms_norm_across_heads",
                    cross_attn_norm=True,
                    eps=eps,
                    added_kv_proj_dim=dim,
                )
                for _ in range(num_layers)
            ]
        )
        self.norm_out = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.proj_out = nn.Linear(dim, out_dim * math.prod(patch_size))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)
        self.gradient_checkpointing = False

    # ------------------------------------------------------------------------------------------------ forward

    @apply_lora_scale("attention_kwargs")
    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        clip_features: torch.Tensor,
        ref_latents: torch.Tensor,
        ref_masks: torch.Tensor,
        pose_latents: torch.Tensor,
        driving_masks: torch.Tensor,
        replace: bool = False,
        history_mask: torch.Tensor | None = None,
        extra_ref_latents: torch.Tensor | None = None,
        extra_ref_masks: torch.Tensor | None = None,
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        r"""Predict the flow-matching velocity of the video latents.

        Shapes (``B`` batch, ``T`` latent frames, ``h x w`` latent size with ``h, w`` multiples of 4, ``N``
        additional references):

        Args:
            latents: ``[B, 16, T, h, w]`` noisy video latents.
            timestep: ``[B]`` (or a scalar) diffusion timestep in ``[0, 1000]``; one per sample.
            context: ``[B, L, text_dim]`` umT5 embeddings trimmed to the prompt length ``L <= text_len``; the
                model zero-pads them to ``text_len`` rows (the padded rows are attended, as in the original).
            clip_features: ``[B, 257, clip_dim]`` CLIP penultimate tokens of the primary reference.
            ref_latents: ``[B, 16, 1, h, w]`` reference latents.
            ref_masks: ``[B, 28, 1 + T, h, w]`` (reference mask then zeros for the video frames, the pipeline's
                layout) or ``[B, 28, 1, h, w]`` (zero frames appended here).
            pose_latents: ``[B, 16, T, h/2, w/2]`` driving-video latents at half resolution.
            driving_masks: ``[B, 28, T, h/2, w/2]`` driving colour masks.
            replace: replacement mode (``True``) or animation mode; changes the RoPE shifts.
            history_mask: ``[B, 4, T, h, w]`` ones on clean history frames, or ``None`` (zeros).
            extra_ref_latents, extra_ref_masks: ``[B, 16, N, h, w]`` and ``[B, 28, N, h, w]`` additional
                references (both or neither).
            return_dict: return a ``Transformer2DModelOutput`` (``.sample``) instead of a tuple.
            attention_kwargs: passed to diffusers' LoRA scaling (``{"scale": s}`` with PEFT adapters).

        Returns:
            ``[B, 16, T, h, w]`` float32 velocity for the video tokens only.
        """
        config = self.config
        p_t, p_h, p_w = config.patch_size
        batch, channels, frames, height, width = latents.shape
        layout = self._validate_inputs(
            latents,
            context,
            clip_features,
            ref_latents,
            ref_masks,
            pose_latents,
            driving_masks,
            history_mask,
            extra_ref_latents,
            extra_ref_masks,
            replace,
        )
        dtype = self.patch_embedding.weight.dtype

        # 1. Input streams: 4 extra channels, patch embeddings, mask embeddings.
        video = _append_channels(latents.to(dtype), history_mask if history_mask is not None else 0.0)
        ref = _append_channels(ref_latents.to(dtype), 1.0)
        if ref_masks.shape[2] == 1:
            ref_masks = torch.cat(
                [ref_masks, ref_masks.new_zeros(batch, ref_masks.shape[1], frames, height, width)], 2
            )
        main = self.patch_embedding(torch.cat([ref, video], dim=2)) + self.mask_patch_embedding(
            ref_masks.to(dtype)
        )
        driving = self.pose_patch_embedding(_append_channels(pose_latents.to(dtype), 1.0))
        driving = driving + self.mask_patch_embedding(driving_masks.to(dtype))
        streams = [_tokens(main), _tokens(driving)]
        if extra_ref_latents is not None:
            extra = self.patch_embedding(_append_channels(extra_ref_latents.to(dtype), 1.0))
            extra = extra + self.mask_patch_embedding(extra_ref_masks.to(dtype))
            streams.insert(0, _tokens(extra))
        # The residual stream is float32 from here to the head, as in the official model (see SCAIL2TransformerBlock).
        hidden_states = torch.cat(streams, dim=1).float().contiguous()

        # 2. Conditions: time embedding in fp32 from a float64 sinusoid; text zero-padded to text_len.
        embedder = self.condition_embedder
        timestep = timestep.reshape(-1).expand(batch) if timestep.numel() == 1 else timestep.reshape(batch)
        sinusoid = _timestep_sinusoid(timestep, config.freq_dim)
        device_type = hidden_states.device.type
        # The official model computes the time embedding and the head in fp32 even under bf16 autocast.
        with torch.autocast(device_type, enabled=False):
            temb = embedder.time_embedder(sinusoid.to(embedder.time_embedder.linear_1.weight.dtype)).float()
            timestep_proj = embedder.time_proj(embedder.act_fn(temb).to(embedder.time_proj.weight.dtype))
            timestep_proj = timestep_proj.float().unflatten(1, (6, -1))

        text_dtype = embedder.text_embedder.linear_1.weight.dtype
        padded = context.new_zeros(batch, config.text_len, context.shape[2])
        padded[:, : context.shape[1]] = context
        text = embedder.text_embedder(padded.to(text_dtype))
        image = embedder.image_embedder(clip_features.to(embedder.image_embedder.ff.net[0].proj.weight.dtype))
        encoder_hidden_states = torch.cat([image.to(text.dtype), text], dim=1)

        # 3. Blocks.
        rotary_emb = self.rope(layout, hidden_states.device)
        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden_states = self._gradient_checkpointing_func(
                    block, hidden_states, encoder_hidden_states, timestep_proj, rotary_emb
                )
            else:
                hidden_states = block(hidden_states, encoder_hidden_states, timestep_proj, rotary_emb)

        # 4. Head on the whole sequence (so a context-parallel gather sees every token), then the video tokens.
        with torch.autocast(device_type, enabled=False):
            shift, scale = (self.scale_shift_table.float() + temb.unsqueeze(1)).chunk(2, dim=1)
            hidden_states = self.norm_out(hidden_states.float()) * (1 + scale) + shift
            hidden_states = self.proj_out(hidden_states.to(self.proj_out.weight.dtype))
        hidden_states = hidden_states[:, layout.video_offset : layout.video_offset + layout.video_tokens]

        post_t, post_h, post_w = frames // p_t, height // p_h, width // p_w
        hidden_states = hidden_states.reshape(batch, post_t, post_h, post_w, p_t, p_h, p_w, -1)
        output = (
            hidden_states.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3).float()
        )
        if not return_dict:
            return (output,)
        return Transformer2DModelOutput(sample=output)

    def _validate_inputs(
        self,
        latents,
        context,
        clip_features,
        ref_latents,
        ref_masks,
        pose_latents,
        driving_masks,
        history_mask,
        extra_ref_latents,
        extra_ref_masks,
        replace,
    ) -> TokenLayout:
        config = self.config
        p_t, p_h, p_w = config.patch_size
        if latents.ndim != 5:
            raise ValueError(f"latents must be [B, C, T, h, w], got shape {list(latents.shape)}")
        batch, channels, frames, height, width = latents.shape
        latent_channels = config.in_dim - EXTRA_INPUT_CHANNELS
        if height % (2 * p_h) or width % (2 * p_w) or frames % p_t:
            raise ValueError(
                f"latent size {height}x{width} must be a multiple of {2 * p_h}x{2 * p_w} (driving stream at half "
                "resolution, 2x2 patches)"
            )

        def expect(name: str, tensor: torch.Tensor | None, shape: tuple[int, ...]) -> None:
            if tensor is not None and tuple(tensor.shape) != shape:
                raise ValueError(f"{name} must have shape {list(shape)}, got {list(tensor.shape)}")

        expect("latents", latents, (batch, latent_channels, frames, height, width))
        expect("ref_latents", ref_latents, (batch, latent_channels, 1, height, width))
        if ref_masks.shape[2] == 1:
            expect("ref_masks", ref_masks, (batch, config.mask_dim, 1, height, width))
        else:
            expect("ref_masks", ref_masks, (batch, config.mask_dim, 1 + frames, height, width))
        expect("pose_latents", pose_latents, (batch, latent_channels, frames, height // 2, width // 2))
        expect("driving_masks", driving_masks, (batch, config.mask_dim, frames, height // 2, width // 2))
        expect("history_mask", history_mask, (batch, EXTRA_INPUT_CHANNELS, frames, height, width))
        if context.ndim != 3 or context.shape[0] != batch or context.shape[2] != config.text_dim:
            raise ValueError(f"context must be [B, L, {config.text_dim}], got {list(context.shape)}")
        if context.shape[1] > config.text_len:
            raise ValueError(f"context has {context.shape[1]} tokens; at most text_len={config.text_len}")
        if (
            clip_features.ndim != 3
            or clip_features.shape[0] != batch
            or clip_features.shape[2] != config.clip_dim
        ):
            raise ValueError(
                f"clip_features must be [B, tokens, {config.clip_dim}], got {list(clip_features.shape)}"
            )
        extra_frames = 0
        if (extra_ref_latents is None) != (extra_ref_masks is None):
            raise ValueError("extra_ref_latents and extra_ref_masks must be given together")
        if extra_ref_latents is not None:
            extra_frames = extra_ref_latents.shape[2]
            expect(
                "extra_ref_latents", extra_ref_latents, (batch, latent_channels, extra_frames, height, width)
            )
            expect("extra_ref_masks", extra_ref_masks, (batch, config.mask_dim, extra_frames, height, width))
            if extra_frames == 0:
                raise ValueError("extra_ref_latents has no frames; pass None for no additional references")
        return TokenLayout(
            frames=frames // p_t,
            height=height // p_h,
            width=width // p_w,
            extra_ref_frames=extra_frames // p_t,
            replace=bool(replace),
        )

    # ------------------------------------------------------------------------------------------------ loading

    @staticmethod
    def keeps_fp32(name: str) -> bool:
        """Whether parameter ``name`` stays float32 when the model is loaded in half precision."""
        return any(part in _FP32_MODULE_NAMES for part in name.split("."))

    @classmethod
    def from_single_file(
        cls,
        path: str | Path,
        config: Mapping[str, Any] | None = None,
        *,
        torch_dtype: torch.dtype | None = None,
        device: torch.device | str = "cpu",
    ) -> SCAIL2Transformer:
        """Load a DiT checkpoint file in any supported key space, tensor by tensor.

        ``path``: the official SAT ``fsdp2_rank_0000_checkpoint.pt``, a Wan-named ``.safetensors``/``.pt``
        (``convert.py`` output, Comfy-Org ``wan2.1_14B_SCAIL_2_fp16.safetensors``, with or without a
        ``diffusion_model.``/``model.diffusion_model.`` prefix) or a file with this module's own names.
        ``config``: constructor arguments; ``None`` infers them from the tensor shapes (head size 128).
        ``torch_dtype``: parameter dtype (``None`` = float32); time embedding, modulation and norms stay float32.
        Each tensor is read from the memory-mapped file straight onto ``device``; raises
        :class:`CheckpointError` naming the file and every missing, unexpected or mis-shaped tensor.
        """
        return cls.from_state_dict(open_state_dict(path), config, torch_dtype=torch_dtype, device=device)

    @classmethod
    def from_state_dict(
        cls,
        state: LazyStateDict | Mapping[str, torch.Tensor],
        config: Mapping[str, Any] | None = None,
        *,
        torch_dtype: torch.dtype | None = None,
        device: torch.device | str = "cpu",
    ) -> SCAIL2Transformer:
        """Like :meth:`from_single_file` for an opened :class:`LazyStateDict` or a plain ``{key: tensor}`` dict
        (tensors may be on the ``meta`` device, which checks keys and shapes without allocating)."""
        if not isinstance(state, LazyStateDict):
            state = LazyStateDict(
                {k: TensorRef(tuple(v.shape), v.dtype, lambda v=v: v, k) for k, v in state.items()},
                "<state dict>",
            )
        internal, space, prefix = to_internal_keys(state)
        if config is None:
            config = infer_config_from_shapes(internal)
        # Drop diffusers bookkeeping entries ("_class_name", "_diffusers_version") of a saved config.
        config = {k: v for k, v in dict(config).items() if not k.startswith("_")}
        with meta_init():
            model = cls(**config)
        _check_keys(model, internal, space, prefix)
        if torch.device(device).type == "meta":
            _load_shapes_only(model, internal, torch_dtype, cls.keeps_fp32)
        else:
            load_into(model, internal, dtype=torch_dtype, device=device, keep_fp32=cls.keeps_fp32)
        model.eval()
        model.requires_grad_(False)
        # Kept so LoRA strengths can later be re-applied onto the pristine weights (see loaders.lora.LoraManager).
        model.checkpoint_state = internal
        return model


def to_internal_keys(state: LazyStateDict) -> tuple[LazyStateDict, str, str]:
    """Convert a DiT checkpoint's keys (SAT, Wan or internal, any known prefix) to internal names, lazily.

    Returns ``(internal state, key space, prefix)`` (see :func:`..loaders.dit_keys.detect_key_space`). Fused SAT
    tensors become slices read on demand. Keys that convert to nothing keep their file name, so the strict load
    reports them as unexpected.
    """
    space, prefix = detect_key_space(state.keys(), state.source)
    refs: dict[str, TensorRef] = {}

    def put(key: str, ref: TensorRef) -> None:
        if key in refs:
            raise CheckpointError(
                f"{state.source}: keys {refs[key].origin!r} and {ref.origin!r} both map to {key!r}"
            )
        refs[key] = ref

    for key in state.keys():
        ref = state[key]
        bare = key[len(prefix) :]
        if space == "internal":
            put(bare, ref)
            continue
        wan_keys: tuple[str, ...] | None = (bare,) if space == "wan" else sat_to_wan(bare)
        if wan_keys is None:
            put(key, ref)
            continue
        parts = len(wan_keys)
        if parts > 1 and (not ref.shape or ref.shape[0] % parts):
            raise CheckpointError(
                f"{state.source}: fused tensor {key!r} has shape {list(ref.shape)}; its first dimension must split "
                f"into {parts} equal parts ({', '.join(wan_keys)})"
            )
        for index, wan_key in enumerate(wan_keys):
            internal = wan_to_internal(wan_key)
            if internal is None:
                put(key, ref)
                break
            if parts == 1:
                put(internal, ref)
            else:
                rows = ref.shape[0] // parts
                put(
                    internal,
                    ref.derive((rows, *ref.shape[1:]), lambda t, i=index, r=rows: t[i * r : (i + 1) * r]),
                )
    return LazyStateDict(refs, state.source), space, prefix


def _load_shapes_only(model: nn.Module, state: LazyStateDict, dtype: torch.dtype | None, keep_fp32) -> None:
    """The ``meta``-device load: read every (meta) tensor through its key conversion, check the shape it really
    has, and assign it. ``loaders.weights.load_into`` treats parameters left on ``meta`` as unloaded, so it is not used
    for this shape-only check."""
    for key in state:
        tensor = state.read(key)
        if tuple(tensor.shape) != state[key].shape:
            raise CheckpointError(
                f"{state.source}: tensor {state[key].origin!r} read as {list(tensor.shape)}, "
                f"declared {list(state[key].shape)}"
            )
        to_dtype = torch.float32 if keep_fp32(key) else (dtype or torch.float32)
        module_name, _, leaf = key.rpartition(".")
        module = model.get_submodule(module_name)
        module._parameters[leaf] = nn.Parameter(tensor.to(device="meta", dtype=to_dtype), requires_grad=False)


def _file_key(internal_key: str, space: str, prefix: str) -> str:
    """How the checkpoint file names an internal parameter (for error messages)."""
    if space == "internal":
        return prefix + internal_key
    wan_key = internal_to_wan(internal_key) or internal_key
    if space == "wan":
        return prefix + wan_key
    sat = sat_key_for_wan(wan_key)
    if sat is None:
        return wan_key
    sat_key, index, parts = sat
    return prefix + sat_key + (f" (part {index + 1} of {parts}: {wan_key})" if parts > 1 else "")


def _check_keys(model: nn.Module, state: LazyStateDict, space: str, prefix: str) -> None:
    """Strict key and shape check whose message names tensors the way the user's file does."""
    targets = {name: tuple(p.shape) for name, p in model.state_dict(keep_vars=True).items()}
    missing = sorted(set(targets) - set(state))
    unexpected = sorted(state[k].origin for k in set(state) - set(targets))
    mismatched = sorted(
        f"{_file_key(k, space, prefix)}: expected {list(targets[k])}, found {list(state[k].shape)}"
        for k in set(state) & set(targets)
        if state[k].shape != targets[k]
    )
    if not (missing or unexpected or mismatched):
        return
    lines = [f"{state.source}: does not match the SCAIL-2 DiT config ({space} key names)."]
    if missing:
        lines.append(
            f"Missing {len(missing)} tensors: " + _shorten([_file_key(k, space, prefix) for k in missing])
        )
    if unexpected:
        hint = ""
        if any("scale_weight" in k or "comfy_quant" in k or "scale_input" in k for k in unexpected):
            hint = " (a ComfyUI fp8/quantized file: use the fp16 file or the official checkpoint)"
        lines.append(f"Unexpected {len(unexpected)} tensors{hint}: " + _shorten(unexpected))
    if mismatched:
        lines.append(f"Mis-shaped {len(mismatched)} tensors: " + _shorten(mismatched, sep="; "))
    lines.append("Check that the file is the SCAIL-2 DiT and that the config (model size) matches it.")
    raise CheckpointError("\n".join(lines))


def _shorten(items: list[str], limit: int = 12, sep: str = ", ") -> str:
    shown = sep.join(items[:limit])
    return shown + (f"{sep}... ({len(items) - limit} more)" if len(items) > limit else "")


def infer_config_from_shapes(
    state: Mapping[str, TensorRef], head_dim: int = DEFAULT_HEAD_DIM
) -> dict[str, Any]:
    """Constructor arguments read off an internal-key checkpoint's shapes (``num_heads = dim / head_dim``)."""

    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise CheckpointError(
                f"{getattr(state, 'source', 'checkpoint')}: missing {key!r}; cannot infer the config"
            )
        return state[key].shape

    dim, in_dim, p_t, p_h, p_w = shape("patch_embedding.weight")
    num_layers = 1 + max(
        (int(k.split(".")[1]) for k in state if k.startswith("blocks.") and k.split(".")[1].isdigit()),
        default=-1,
    )
    if dim % head_dim:
        raise CheckpointError(
            f"{getattr(state, 'source', 'checkpoint')}: dim {dim} is not a multiple of {head_dim}; pass a config "
            "with num_heads"
        )
    return {
        "dim": dim,
        "ffn_dim": shape("blocks.0.ffn.net.0.proj.weight")[0],
        "freq_dim": shape("condition_embedder.time_embedder.linear_1.weight")[1],
        "num_heads": dim // head_dim,
        "num_layers": num_layers,
        "in_dim": in_dim,
        "mask_dim": shape("mask_patch_embedding.weight")[1],
        "out_dim": shape("proj_out.weight")[0] // (p_t * p_h * p_w),
        "text_dim": shape("condition_embedder.text_embedder.linear_1.weight")[1],
        "clip_dim": shape("condition_embedder.image_embedder.norm1.weight")[0],
        "patch_size": (p_t, p_h, p_w),
    }


# Official constructor arguments this implementation fixes; anything else is rejected rather than ignored.
_OFFICIAL_FIXED = {
    "model_type": "i2v",
    "window_size": [-1, -1],
    "qk_norm": True,
    "cross_attn_norm": True,
    "pose_rope_shift": [0, 0, 120],
}
_OFFICIAL_PASSED = (
    "dim",
    "ffn_dim",
    "freq_dim",
    "num_heads",
    "num_layers",
    "in_dim",
    "mask_dim",
    "out_dim",
    "text_dim",
    "text_len",
    "patch_size",
    "eps",
)


def config_from_official(constructor_args: Mapping[str, Any], clip_dim: int = 1280) -> dict[str, Any]:
    """Map the official ``SCAIL2Model`` constructor arguments (e.g. ``config-14b.json``, a fixture's
    ``constructor_args``) to this model's config. Raises ``ValueError`` for settings this model does not
    implement (t2v, windowed attention, no qk-norm, other pose shifts)."""
    config: dict[str, Any] = {"clip_dim": clip_dim}
    for key, value in constructor_args.items():
        if key in _OFFICIAL_FIXED:
            expected = _OFFICIAL_FIXED[key]
            if (list(value) if isinstance(value, (list, tuple)) else value) != expected:
                raise ValueError(
                    f"unsupported SCAIL-2 setting {key}={value!r}; only {expected!r} is implemented"
                )
        elif key in _OFFICIAL_PASSED:
            config[key] = tuple(value) if key == "patch_size" else value
        elif not key.startswith("_"):
            raise ValueError(f"unknown SCAIL-2 constructor argument {key!r}")
    return config
