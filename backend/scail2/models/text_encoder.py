"""umT5-XXL text encoder: transformers ``UMT5EncoderModel`` loaded from the official Wan ``T5Encoder`` file.

The official file ``umt5-xxl/models_t5_umt5-xxl-enc-bf16.pth`` holds the Wan ``T5Encoder`` state dict; its keys are
converted in memory to the transformers layout. A diffusers-format ``text_encoder/`` folder (Wan2.1-I2V-Diffusers)
loads as is. The prompt goes through Wan's cleaning (ftfy, HTML unescape, whitespace collapse), is tokenised to
``text_len`` (512) tokens with ``</s>`` appended, and the encoder output is trimmed to each prompt's true length,
exactly as Wan's ``T5EncoderModel.__call__`` does; the DiT zero-pads it back to 512 rows itself.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import UMT5Config, UMT5EncoderModel

from ..errors import CheckpointError
from ..loaders.layout import CheckpointLayout
from ..loaders.weights import (
    LazyStateDict,
    find_weights_file,
    load_into,
    meta_init,
    open_state_dict,
    read_json,
)

__all__ = [
    "official_t5_shapes",
    "T5EncoderConfig",
    "build_umt5",
    "UMT5TextEncoder",
    "clean_prompt",
    "convert_official_t5_keys",
    "load_tokenizer",
]


@dataclass(frozen=True)
class T5EncoderConfig:
    """The official ``umt5_xxl(encoder_only=True, ...)`` constructor arguments (defaults: umT5-XXL)."""

    vocab_size: int = 256384
    dim: int = 4096
    dim_attn: int = 4096
    dim_ffn: int = 10240
    num_heads: int = 64
    encoder_layers: int = 24
    num_buckets: int = 32
    shared_pos: bool = False
    text_len: int = 512

    @classmethod
    def from_official_args(cls, args: Mapping) -> T5EncoderConfig:
        """From official constructor arguments (unknown ones such as ``decoder_layers``/``dropout`` are ignored)."""
        known = {k: args[k] for k in cls.__dataclass_fields__ if k in args}
        return cls(**known)

    def to_transformers(self) -> UMT5Config:
        if self.shared_pos:
            raise CheckpointError("T5 with shared_pos=True is not umT5 (one relative bias per layer is expected)")
        return UMT5Config(
            vocab_size=self.vocab_size,
            d_model=self.dim,
            d_kv=self.dim_attn // self.num_heads,
            d_ff=self.dim_ffn,
            num_layers=self.encoder_layers,
            num_heads=self.num_heads,
            relative_attention_num_buckets=self.num_buckets,
            relative_attention_max_distance=128,
            feed_forward_proj="gated-gelu",  # Wan's T5 FFN: tanh-GELU gate times a linear branch
            dropout_rate=0.0,
            layer_norm_epsilon=1e-6,
            is_encoder_decoder=False,
            use_cache=False,
        )

    def as_dict(self) -> dict:
        return asdict(self)


# Official Wan T5Encoder block sub-keys -> transformers UMT5 encoder block sub-keys.
_T5_BLOCK_KEYS = {
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm1.weight": "layer.0.layer_norm.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
_T5_BLOCK_PATTERN = re.compile(r"blocks\.(\d+)\.(.+)")


def _official_t5_key(key: str) -> str | None:
    if key == "token_embedding.weight":
        return "shared.weight"
    if key == "norm.weight":
        return "encoder.final_layer_norm.weight"
    match = _T5_BLOCK_PATTERN.fullmatch(key)
    if match and match.group(2) in _T5_BLOCK_KEYS:
        return f"encoder.block.{match.group(1)}.{_T5_BLOCK_KEYS[match.group(2)]}"
    return key  # left as is: load_into reports it as unexpected, under its file name


def convert_official_t5_keys(state: LazyStateDict) -> LazyStateDict:
    """Official ``T5Encoder`` keys (``models_t5_umt5-xxl-enc-bf16.pth``) -> transformers ``UMT5EncoderModel``."""
    return state.rename(_official_t5_key)


_WHITESPACE = re.compile(r"\s+")


def clean_prompt(text: str) -> str:
    """Wan's ``clean='whitespace'``: ftfy fix, HTML unescape (twice), then collapse whitespace."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return _WHITESPACE.sub(" ", text).strip()


def load_tokenizer(folder: str | Path):
    """The umT5 tokenizer from a folder with ``tokenizer.json`` (preferred) or ``spiece.model``.

    Both the official ``umt5-xxl/`` folder and a diffusers ``tokenizer/`` folder qualify.
    """
    from transformers import AutoTokenizer, T5Tokenizer

    folder = Path(folder)
    has_json = (folder / "tokenizer.json").is_file()
    has_spiece = (folder / "spiece.model").is_file()
    if not (has_json or has_spiece):
        raise CheckpointError(f"{folder}: no umT5 tokenizer here (looked for tokenizer.json and spiece.model)")
    try:
        if (folder / "tokenizer_config.json").is_file():
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
        else:
            tokenizer = T5Tokenizer.from_pretrained(str(folder), extra_ids=0)
    except ImportError as exc:
        raise CheckpointError(
            f"{folder}: reading spiece.model without tokenizer.json needs the protobuf package "
            f"(pip install protobuf), or add the tokenizer.json that ships with umt5-xxl ({exc})"
        ) from exc
    except Exception as exc:
        raise CheckpointError(f"{folder}: cannot load the umT5 tokenizer ({exc})") from exc
    if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
        raise CheckpointError(f"{folder}: tokenizer lacks a pad or eos token; is this the umT5 tokenizer?")
    return tokenizer


class UMT5TextEncoder:
    """Prompts -> list of ``[L_i, dim]`` umT5 embeddings, each trimmed to the prompt's true token count."""

    def __init__(self, model: UMT5EncoderModel, tokenizer, text_len: int = 512):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.text_len = text_len

    @property
    def device(self) -> torch.device:
        return self.model.shared.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.shared.weight.dtype

    @classmethod
    def from_official(
        cls,
        weights: str | Path,
        tokenizer_dir: str | Path,
        config: T5EncoderConfig | None = None,
        *,
        dtype: torch.dtype = torch.bfloat16,
        device: torch.device | str = "cpu",
    ) -> UMT5TextEncoder:
        """From ``models_t5_umt5-xxl-enc-bf16.pth`` (or any file with official ``T5Encoder`` keys)."""
        config = config or T5EncoderConfig()
        state = convert_official_t5_keys(open_state_dict(weights))
        model = build_umt5(config.to_transformers(), state, dtype=dtype, device=device)
        return cls(model, load_tokenizer(tokenizer_dir), text_len=config.text_len)

    @classmethod
    def from_diffusers(
        cls,
        text_encoder_dir: str | Path,
        tokenizer_dir: str | Path,
        *,
        text_len: int = 512,
        dtype: torch.dtype = torch.bfloat16,
        device: torch.device | str = "cpu",
    ) -> UMT5TextEncoder:
        """From a diffusers ``text_encoder/`` folder (config.json + safetensors) and a ``tokenizer/`` folder."""
        text_encoder_dir = Path(text_encoder_dir)
        config = UMT5Config.from_dict(read_json(text_encoder_dir / "config.json"))
        state = open_state_dict(find_weights_file(text_encoder_dir, "model"))
        # Encoder-only saves may or may not carry the tied copy "encoder.embed_tokens.weight"; both load.
        model = build_umt5(config, state, dtype=dtype, device=device)
        return cls(model, load_tokenizer(tokenizer_dir), text_len=text_len)

    @classmethod
    def from_layout(
        cls, layout: CheckpointLayout, *, dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu"
    ) -> UMT5TextEncoder:
        """From a resolved checkpoint folder (official file or diffusers folder; a config in scail2_config.json honoured)."""
        if layout.text_encoder.format == "diffusers":
            return cls.from_diffusers(layout.text_encoder.path, layout.tokenizer, dtype=dtype, device=device)
        config = T5EncoderConfig.from_official_args(layout.configs.get("t5", {}))
        return cls.from_official(layout.text_encoder.path, layout.tokenizer, config, dtype=dtype, device=device)

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Clean and tokenise to ``text_len`` ids with ``</s>``; returns ``(ids, mask)``, both [B, text_len] int64."""
        batch = self.tokenizer(
            [clean_prompt(p) for p in prompts],
            padding="max_length",
            truncation=True,
            max_length=self.text_len,
            add_special_tokens=True,
            return_tensors="pt",
        )
        return batch.input_ids, batch.attention_mask

    @torch.no_grad()
    def encode_ids(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Encode token ids [B, L] (or [L]); ``mask`` defaults to ``ids != pad``. Returns trimmed [L_i, dim]."""
        if ids.ndim == 1:
            ids = ids[None]
        if mask is None:
            pad_id = self.tokenizer.pad_token_id if self.tokenizer is not None else 0  # T5 pads with 0
            mask = (ids != pad_id).long()
        elif mask.ndim == 1:
            mask = mask[None]
        ids = ids.to(self.device)
        mask = mask.to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        lengths = mask.gt(0).sum(dim=1).tolist()
        return [row[:length] for row, length in zip(hidden, lengths, strict=True)]

    def encode(self, prompts: str | Sequence[str]) -> list[torch.Tensor]:
        """Prompts -> list of trimmed [L_i, dim] embeddings (the empty prompt gives just ``</s>``)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        ids, mask = self.tokenize(prompts)
        return self.encode_ids(ids, mask)


def build_umt5(
    config: UMT5Config,
    state: LazyStateDict,
    *,
    dtype: torch.dtype,
    device: torch.device | str,
) -> UMT5EncoderModel:
    """Build ``UMT5EncoderModel(config)`` on meta and load ``state`` (transformers key names) strictly into it."""
    with meta_init():
        model = UMT5EncoderModel(config)
    # Meta initialisation registers each module's parameters separately; re-tie the shared token embedding so
    # that "shared.weight" alone loads both names.
    model.tie_weights()
    load_into(model, state, dtype=dtype, device=device)
    return model.eval().requires_grad_(False)


def official_t5_shapes(config: T5EncoderConfig) -> dict[str, tuple[int, ...]]:
    """Every key of the official ``T5Encoder`` state dict with its shape (written from the module structure)."""
    d, attn, ffn = config.dim, config.dim_attn, config.dim_ffn
    shapes = {"token_embedding.weight": (config.vocab_size, d), "norm.weight": (d,)}
    for n in range(config.encoder_layers):
        block = f"blocks.{n}"
        for proj in "qkv":
            shapes[f"{block}.attn.{proj}.weight"] = (attn, d)
        shapes[f"{block}.attn.o.weight"] = (d, attn)
        shapes[f"{block}.pos_embedding.embedding.weight"] = (config.num_buckets, config.num_heads)
        shapes[f"{block}.norm1.weight"] = (d,)
        shapes[f"{block}.norm2.weight"] = (d,)
        shapes[f"{block}.ffn.gate.0.weight"] = (ffn, d)
        shapes[f"{block}.ffn.fc1.weight"] = (ffn, d)
        shapes[f"{block}.ffn.fc2.weight"] = (d, ffn)
    return shapes
