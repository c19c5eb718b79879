"""Checks that need several processes; run under torchrun by test_distributed.py (gloo, CPU).

    torchrun --nproc-per-node 2 tests/parallel/distributed_checks.py
    torchrun --nproc-per-node 4 tests/parallel/distributed_checks.py --cfg-parallel   # CFG 2 x sequence 2

Every rank runs the same checks; rank 0 prints one JSON line per check: ``{"check", "max_abs_err", ...}``.
Each compares a split computation with the same computation done whole in this process before splitting.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

from backend.scail2.accel import compile_blocks
from backend.scail2.models.transformer_scail2 import SCAIL2Transformer
from backend.scail2.parallel import (
    enable_cfg_parallel,
    enable_sequence_parallel,
    init_parallel,
    parallelize_transformer,
)
from backend.scail2.parallel.collectives import all_gather_tokens, heads_to_sequence, sequence_to_heads


def tiny_transformer(num_heads: int, seed: int = 0) -> SCAIL2Transformer:
    torch.manual_seed(seed)
    model = SCAIL2Transformer(
        dim=16 * num_heads, ffn_dim=32, freq_dim=16, num_heads=num_heads, num_layers=2, text_dim=24, clip_dim=20
    )
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.2)  # nothing left at its zero/one init, so no comparison is vacuous
    return model.eval()


def tiny_inputs(batch: int, frames: int, extra_refs: int, seed: int) -> dict[str, torch.Tensor]:
    """Latent 4x4 (2x2 video tokens per frame, 1 driving token): the token count is odd for most frame counts."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    inputs = {
        "latents": rand(batch, 16, frames, 4, 4),
        "timestep": torch.tensor([700.0] * batch),
        "context": rand(batch, 5, 24),
        "clip_features": rand(batch, 257, 20),
        "ref_latents": rand(batch, 16, 1, 4, 4),
        "ref_masks": rand(batch, 28, 1 + frames, 4, 4),
        "pose_latents": rand(batch, 16, frames, 2, 2),
        "driving_masks": rand(batch, 28, frames, 2, 2),
    }
    if extra_refs:
        inputs["extra_ref_latents"] = rand(batch, 16, extra_refs, 4, 4)
        inputs["extra_ref_masks"] = rand(batch, 28, extra_refs, 4, 4)
    return inputs


def report(check: str, error: float, **extra) -> None:
    if dist.get_rank() == 0:
        print(json.dumps({"check": check, "max_abs_err": error, **extra}), flush=True)


def check_collectives(world: int, rank: int) -> None:
    """sequence_to_heads gives each rank its heads of every token in order; heads_to_sequence undoes it."""
    g = torch.Generator().manual_seed(7)
    full = torch.randn(3, 2, 5 * world, 2 * world, 4, generator=g)  # [qkv, B, S, H, D], same on every rank
    local = full[:, :, rank * 5 : (rank + 1) * 5]
    by_heads = sequence_to_heads(local, dist.group.WORLD)
    expected = full[:, :, :, rank * 2 : (rank + 1) * 2]
    back = heads_to_sequence(by_heads[0], dist.group.WORLD)
    gathered = all_gather_tokens(local[0], dist.group.WORLD, dim=1)
    error = max(
        float((by_heads - expected).abs().max()),
        float((back - local[0]).abs().max()),
        float((gathered - full[0]).abs().max()),
    )
    report("collectives", error)


@torch.no_grad()
def check_sequence_parallel(num_heads: int, frames: int, extra_refs: int, replace: bool) -> None:
    model = tiny_transformer(num_heads)
    inputs = tiny_inputs(1, frames, extra_refs, seed=frames + extra_refs)
    whole = model(**inputs, replace=replace).sample
    parallel = enable_sequence_parallel(model, dist.group.WORLD, gather_after="proj_out")
    split = model(**inputs, replace=replace).sample
    again = model(**inputs, replace=replace).sample  # cached RoPE rows must not leak between forwards
    parallel.remove()
    restored = model(**inputs, replace=replace).sample
    tokens = parallel.state.shard.full_len
    report(
        f"sequence_parallel_h{num_heads}_t{frames}_x{extra_refs}_{'replace' if replace else 'animate'}",
        max(float((split - whole).abs().max()), float((again - whole).abs().max())),
        restored_err=float((restored - whole).abs().max()),
        tokens=tokens,
        padded=parallel.state.shard.padded_len - tokens,
        mode=parallel.state.mode,
        scale=float(whole.abs().max()),
    )


@torch.no_grad()
def check_cfg_parallel() -> None:
    """A batch of (conditional, unconditional) split over the ranks equals the whole batch in one process."""
    model = tiny_transformer(2, seed=3)
    inputs = tiny_inputs(1, 2, 0, seed=11)
    batched = {k: torch.cat([v, v]) for k, v in inputs.items()}
    batched["context"] = torch.cat([inputs["context"], torch.zeros_like(inputs["context"])])  # differs per half
    whole = model(**batched, return_dict=False)[0]
    cfg = enable_cfg_parallel(model, dist.group.WORLD)
    split = model(**batched, return_dict=False)[0]
    single = model(**inputs).sample  # batch 1: not split, every rank computes it
    cfg.remove()
    report(
        "cfg_parallel",
        max(float((split - whole).abs().max()), float((single - whole[:1]).abs().max())),
        split_forwards=cfg.split_forwards,
        halves_differ=float((whole[0] - whole[1]).abs().max()),
    )


@torch.no_grad()
def check_compiled_blocks() -> None:
    """The worker compiles each block with fullgraph=True: the hooks and collectives must trace without breaks."""
    model = tiny_transformer(2, seed=5)
    inputs = tiny_inputs(1, 3, 0, seed=13)
    whole = model(**inputs).sample
    enable_sequence_parallel(model, dist.group.WORLD, gather_after="proj_out")
    compile_blocks(model, backend="aot_eager", fullgraph=True)
    split = model(**inputs).sample
    report("compiled_blocks", float((split - whole).abs().max()), scale=float(whole.abs().max()))


@torch.no_grad()
def check_cfg_times_sequence(runtime) -> None:
    """The runtime's layout: CFG halves on two groups, each half sequence-parallel within its group."""
    model = tiny_transformer(2 * runtime.sp_degree, seed=9)
    inputs = tiny_inputs(1, 3, 1, seed=17)
    batched = {k: torch.cat([v, v]) for k, v in inputs.items()}
    batched["context"] = torch.cat([inputs["context"], torch.zeros_like(inputs["context"])])
    whole = model(**batched).sample
    parallel = parallelize_transformer(model, runtime)
    split = model(**batched).sample
    report(
        "cfg_times_sequence",
        float((split - whole).abs().max()),
        sp_degree=runtime.sp_degree,
        cfg_degree=runtime.cfg_degree,
        split_forwards=parallel.cfg.split_forwards,
        sequence_forwards=parallel.sequence.state.forwards,
        scale=float(whole.abs().max()),
    )


def main() -> None:
    if "--cfg-parallel" in sys.argv:
        runtime = init_parallel(backend="gloo", cfg_parallel=True)
        check_cfg_times_sequence(runtime)
        runtime.shutdown()
        return
    runtime = init_parallel(backend="gloo")
    world, rank = runtime.world_size, runtime.rank
    check_collectives(world, rank)
    check_sequence_parallel(num_heads=2 * world, frames=3, extra_refs=0, replace=False)
    check_sequence_parallel(num_heads=2 * world, frames=3, extra_refs=1, replace=True)
    check_sequence_parallel(num_heads=3, frames=3, extra_refs=0, replace=False)  # heads do not divide: all-gather
    check_cfg_parallel()
    check_compiled_blocks()
    runtime.shutdown()


if __name__ == "__main__":
    main()
