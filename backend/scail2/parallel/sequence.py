"""Sequence parallelism for the SCAIL-2 transformer (Ulysses all-to-all over heads).

Where the sequence is split. The transformer embeds its token streams (``[extra refs][ref][video][driving]``, each
at its own resolution) into one flat sequence and builds one RoPE table row per token; from then on every operation
except self-attention treats tokens independently (adaLN, the q/k RMS norm over the full ``dim``, RoPE, cross
attention to the text/CLIP context, the FFN). So the split happens on the flat sequence at the entry of the first
block, together with the RoPE tables, and the segment layout needs no special treatment: each rank holds a contiguous
run of ``S_pad / N`` tokens with their own RoPE rows, whatever streams they come from.

Padding. The sequence is zero-padded at its end to a multiple of N. Padded tokens are excluded from attention
exactly, not by a mask: after the all-to-all every rank holds the keys and values of all ``S_pad`` tokens in order,
and slices them to the first ``S`` before attending. Padded queries produce rows that are cut off when the token
shards are gathered back.

Self-attention (Ulysses). q/k/v of the local tokens are computed and RMS-normalised across the full ``dim`` (all
heads, as the model does before the head split), RoPE is applied with the local table rows, then one all-to-all
turns "all heads of S/N tokens" into "H/N heads of all tokens", attention runs over the whole sequence for those
heads, and a second all-to-all turns the result back. When the head count does not divide by N, each rank instead
all-gathers the keys and values of every token (all heads) and attends its own queries to them: exact as well,
with more communication.

Gather. The per-token hidden states are gathered after the last block (or after a given head module), padding
stripped, so the head, the video-token slice and unpatchify run unchanged on the full sequence.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from diffusers.models.attention_dispatch import dispatch_attention_fn
from torch import nn

from .collectives import all_gather_tokens, heads_to_sequence, sequence_to_heads

logger = logging.getLogger(__name__)

ULYSSES = "ulysses"
ALL_GATHER_KV = "all_gather_kv"


@dataclass(frozen=True)
class SequenceShard:
    """How a sequence of ``full_len`` tokens is split over ``world`` ranks: padded to ``padded_len``, rank ``rank``
    holding tokens ``[start, start + local_len)`` of the padded sequence."""

    full_len: int
    world: int
    rank: int

    @property
    def local_len(self) -> int:
        return math.ceil(self.full_len / self.world)

    @property
    def padded_len(self) -> int:
        return self.local_len * self.world

    @property
    def start(self) -> int:
        return self.rank * self.local_len

    def take(self, x: torch.Tensor, dim: int, pad_value: float = 0.0) -> torch.Tensor:
        """This rank's slice of ``x`` along ``dim``, padding with ``pad_value`` past the end of the sequence."""
        if x.shape[dim] != self.full_len:
            raise ValueError(
                f"expected {self.full_len} tokens along dim {dim}, got a tensor of shape {tuple(x.shape)}"
            )
        # A rank past the end of a very short sequence holds padding only.
        start = min(self.start, self.full_len)
        end = min(self.start + self.local_len, self.full_len)
        local = x.narrow(dim, start, end - start)
        missing = self.local_len - local.shape[dim]
        if missing:
            pad_shape = list(x.shape)
            pad_shape[dim] = missing
            local = torch.cat([local, x.new_full(pad_shape, pad_value)], dim=dim)
        return local


class SequenceParallelState:
    """What the hooks and attention processors of one transformer share during a forward."""

    def __init__(self, group: dist.ProcessGroup, num_heads: int, rope_seq_dim: int) -> None:
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.num_heads = num_heads
        self.rope_seq_dim = rope_seq_dim
        self.mode = ULYSSES if num_heads % self.world == 0 else ALL_GATHER_KV
        self.shard: SequenceShard | None = None
        # The full RoPE tables of the current forward and their local rows, so each block reuses one slice.
        self._full_rope: tuple[torch.Tensor, ...] | None = None
        self._local_rope: tuple[torch.Tensor, ...] | None = None
        self.forwards = 0
        self.token_counts: set[int] = set()

    def begin(self, full_len: int) -> SequenceShard:
        self.shard = SequenceShard(full_len, self.world, self.rank)
        self._full_rope = self._local_rope = None
        self.forwards += 1
        self.token_counts.add(full_len)
        return self.shard

    def summary(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "world": self.world,
            "mode": self.mode,
            "heads": self.num_heads,
            "split_forwards": self.forwards,
            "token_counts": sorted(self.token_counts),
            "local_tokens": sorted(math.ceil(n / self.world) for n in self.token_counts),
        }

    def local_rope(self, rope: Any) -> Any:
        """The local rows of the per-token RoPE tables (a tensor or a tuple of tensors such as (cos, sin))."""
        if rope is None:
            return None
        if self.shard is None:
            raise RuntimeError("sequence-parallel block called before the first block split the sequence")
        tables = (rope,) if torch.is_tensor(rope) else tuple(rope)
        if self._full_rope is None or any(a is not b for a, b in zip(tables, self._full_rope, strict=False)):
            # Padded rows are an identity rotation (cos 1, sin 0); their queries are discarded anyway.
            self._local_rope = tuple(
                self.shard.take(t, self.rope_seq_dim, pad_value=1.0 if i == 0 else 0.0) for i, t in enumerate(tables)
            )
            self._full_rope = tables
        return self._local_rope[0] if torch.is_tensor(rope) else type(rope)(self._local_rope)

    def end(self) -> None:
        self._full_rope = self._local_rope = None


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on adjacent lane pairs, the formula of diffusers' ``WanAttnProcessor`` (tables repeat each value twice)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos = cos[..., 0::2]
    sin = sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


class UlyssesAttnProcessor:
    """Self-attention of a diffusers ``WanAttention`` over a token sequence split across the processes of a group.

    Computes exactly what ``WanAttnProcessor`` computes for self-attention (projections, RMS q/k norm over the full
    dim on each token, head split, RoPE, SDPA through diffusers' dispatcher with the same backend, output
    projection); only the attention op sees the whole sequence, through the collectives described in the module
    docstring.
    """

    def __init__(
        self,
        state: SequenceParallelState,
        attention_backend: Any = None,
        rotary: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] = apply_rotary,
    ) -> None:
        self.state = state
        self._attention_backend = attention_backend
        self._parallel_config = None
        self.rotary = rotary

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise RuntimeError("UlyssesAttnProcessor handles unmasked self-attention only")
        state = self.state
        if state.shard is None or hidden_states.shape[1] != state.shard.local_len:
            raise RuntimeError(
                f"self-attention got {hidden_states.shape[1]} tokens, but this rank's shard holds "
                f"{None if state.shard is None else state.shard.local_len}: the sequence was not split by the "
                "sequence-parallel hooks"
            )

        if getattr(attn, "fused_projections", False):
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        # RMS over the full dim (every head) of each token, before the head split: token-local, so exact here.
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        query, key, value = (t.unflatten(2, (attn.heads, -1)) for t in (query, key, value))
        if rotary_emb is not None:
            query = self.rotary(query, *rotary_emb)
            key = self.rotary(key, *rotary_emb)

        full_len = state.shard.full_len
        if state.mode == ULYSSES:
            qkv = sequence_to_heads(torch.stack([query, key, value]), state.group)
            query, key, value = qkv.unbind(0)
            # Keys and values of padded tokens are sliced off: they take no part in the softmax.
            out = dispatch_attention_fn(
                query, key[:, :full_len], value[:, :full_len], backend=self._attention_backend
            )
            out = heads_to_sequence(out, state.group)
        else:
            kv = all_gather_tokens(torch.stack([key, value]), state.group, dim=2)
            out = dispatch_attention_fn(
                query, kv[0][:, :full_len], kv[1][:, :full_len], backend=self._attention_backend
            )

        out = out.flatten(2, 3).type_as(query)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)


def _find_arg(args: tuple, kwargs: dict, name: str, index: int) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else None


def _replace_arg(args: tuple, kwargs: dict, name: str, index: int, value: Any) -> tuple[tuple, dict]:
    if name in kwargs or len(args) <= index:
        kwargs = {**kwargs, name: value}
    else:
        args = args[:index] + (value,) + args[index + 1 :]
    return args, kwargs


class SequenceParallel:
    """Sequence parallelism installed on a transformer made of diffusers ``WanTransformerBlock``-style blocks.

    Installed with `enable_sequence_parallel`; `remove` restores the original processors and drops the hooks.
    The blocks are called as ``block(hidden_states, encoder_hidden_states, temb, rotary_emb)`` (positionally or by
    keyword); their ``attn1`` is the self-attention.
    """

    def __init__(
        self,
        transformer: nn.Module,
        group: dist.ProcessGroup,
        *,
        blocks: nn.ModuleList,
        gather_after: nn.Module | None = None,
        rope_seq_dim: int = 1,
        rotary: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] = apply_rotary,
    ) -> None:
        if len(blocks) == 0:
            raise ValueError("the transformer has no blocks to split")
        self.transformer = transformer
        first_attn = blocks[0].attn1
        self.state = SequenceParallelState(group, num_heads=first_attn.heads, rope_seq_dim=rope_seq_dim)
        if self.state.mode == ALL_GATHER_KV:
            logger.warning(
                "%d attention heads do not divide over %d processes: self-attention all-gathers keys and values "
                "instead of the Ulysses all-to-all (exact, more communication)",
                self.state.num_heads,
                self.state.world,
            )
        self._original_processors: list[tuple[nn.Module, Any]] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

        for block in blocks:
            attn = block.attn1
            self._original_processors.append((attn, attn.processor))
            processor = UlyssesAttnProcessor(
                self.state, getattr(attn.processor, "_attention_backend", None), rotary=rotary
            )
            # Assigned directly: `set_processor` would warn-and-pop attributes it does not know.
            attn.processor = processor
            self._handles.append(block.register_forward_pre_hook(self._enter_block, with_kwargs=True))
        self._first_block = blocks[0]
        gather_module = gather_after if gather_after is not None else blocks[-1]
        self._handles.append(gather_module.register_forward_hook(self._gather))

    def _enter_block(self, block: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if block is self._first_block:
            hidden_states = _find_arg(args, kwargs, "hidden_states", 0)
            shard = self.state.begin(hidden_states.shape[1])
            args, kwargs = _replace_arg(args, kwargs, "hidden_states", 0, shard.take(hidden_states, dim=1))
        rope = _find_arg(args, kwargs, "rotary_emb", 3)
        if rope is not None:
            args, kwargs = _replace_arg(args, kwargs, "rotary_emb", 3, self.state.local_rope(rope))
        return args, kwargs

    def _gather(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        shard = self.state.shard
        if shard is None:
            raise RuntimeError("sequence-parallel gather reached before the sequence was split")
        full = all_gather_tokens(output, self.state.group, dim=1)[:, : shard.full_len]
        self.state.end()
        return full

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        for attn, processor in self._original_processors:
            attn.processor = processor
        self._handles.clear()
        self._original_processors.clear()
        if getattr(self.transformer, "_sequence_parallel", None) is self:
            del self.transformer._sequence_parallel


def enable_sequence_parallel(
    transformer: nn.Module,
    group: dist.ProcessGroup | None = None,
    *,
    gather_after: str | None = None,
    rope_seq_dim: int = 1,
) -> SequenceParallel | None:
    """Split every forward of ``transformer`` over the processes of ``group`` (default: the whole world).

    Returns the installed `SequenceParallel` (call ``.remove()`` to undo), or None when the group has one process.
    ``gather_after`` names the submodule whose per-token output is gathered (default: the last block); a later,
    narrower point such as the output projection moves fewer bytes. Every rank must call the transformer with the
    same inputs.
    """
    if group is None:
        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised: call init_parallel() first")
        group = dist.group.WORLD
    if dist.get_world_size(group) == 1:
        return None
    if getattr(transformer, "_sequence_parallel", None) is not None:
        raise RuntimeError("sequence parallelism is already enabled on this transformer")
    blocks = getattr(transformer, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise TypeError(f"{type(transformer).__name__} has no `blocks` ModuleList to split the sequence across")
    sequence_parallel = SequenceParallel(
        transformer,
        group,
        blocks=blocks,
        gather_after=transformer.get_submodule(gather_after) if gather_after else None,
        rope_seq_dim=rope_seq_dim,
    )
    transformer._sequence_parallel = sequence_parallel
    return sequence_parallel
