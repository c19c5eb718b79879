"""The collectives of Ulysses sequence parallelism, on [batch, tokens, heads, head_dim] tensors.

All of them go through torch's functional collectives, which run eagerly on NCCL and gloo alike and can be traced
by ``torch.compile``. Every rank holds the same number of tokens (the sequence is padded to a multiple of the
group size first), so each exchange is one equal-split all-to-all or all-gather.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol


def _all_to_all(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """Equal-split all-to-all along dim 0 (its size must be the group size)."""
    shape = x.shape
    out = funcol.all_to_all_single(x.contiguous().flatten(), None, None, group)
    return funcol.wait_tensor(out).reshape(shape)


def sequence_to_heads(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """[..., B, S_local, H, D] sharded by tokens -> [..., B, S_local * N, H / N, D] sharded by heads.

    Leading dims (e.g. q, k and v stacked as one tensor so that they travel in one exchange) are carried along.
    Rank ``j`` keeps heads ``[j * H/N, (j+1) * H/N)`` of every token, tokens in rank order.
    """
    world = dist.get_world_size(group)
    *lead, batch, tokens, heads, head_dim = x.shape
    local_heads = heads // world
    # [..., B, S, N, H/N, D] -> [N, ..., B, S, H/N, D]: chunk j of dim 0 goes to rank j.
    x = x.reshape(*lead, batch, tokens, world, local_heads, head_dim).movedim(-3, 0)
    x = _all_to_all(x, group)
    # dim 0 now indexes the source rank, i.e. the token chunk: put it in front of the token dim and merge.
    x = x.movedim(0, -4)
    return x.reshape(*lead, batch, world * tokens, local_heads, head_dim)


def heads_to_sequence(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """Inverse of `sequence_to_heads`: [B, S_local * N, H / N, D] -> [B, S_local, H, D]."""
    world = dist.get_world_size(group)
    batch, tokens, local_heads, head_dim = x.shape
    local_tokens = tokens // world
    # [B, N, S/N, H/N, D] -> [N, B, S/N, H/N, D]: token chunk j goes back to rank j.
    x = x.reshape(batch, world, local_tokens, local_heads, head_dim).movedim(1, 0)
    x = _all_to_all(x, group)
    # dim 0 now indexes the source rank, i.e. the head group: put it in front of the head dim and merge.
    x = x.movedim(0, 2)
    return x.reshape(batch, local_tokens, world * local_heads, head_dim)


# `all_gather_single` replaces `all_gather_tensor` in newer torch (the old name warns there); GPU images may ship
# an older torch that only has the old one.
_all_gather_dim0 = getattr(funcol, "all_gather_single", None) or funcol.all_gather_tensor


def all_gather_stacked(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """Stack every rank's tensor along a new leading dim, in rank order."""
    gathered = _all_gather_dim0(x.contiguous().unsqueeze(0), 0, group)
    return funcol.wait_tensor(gathered)


def all_gather_tokens(x: torch.Tensor, group: dist.ProcessGroup, dim: int = 1) -> torch.Tensor:
    """Concatenate every rank's equal-length token shard along ``dim``, in rank order."""
    dim = dim % x.dim()
    stacked = all_gather_stacked(x, group)  # [N, ...]
    # Put the rank dim just before `dim` and merge the two: rank-major, i.e. tokens in sequence order.
    return stacked.movedim(0, dim).flatten(dim, dim + 1)
