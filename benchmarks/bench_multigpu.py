"""Multi-GPU scaling of one SCAIL-2 job: DiT forwards and fast-preset windows on 1, 2, 4, 8 GPUs of one host.

The driver starts one ``torchrun --standalone --nproc-per-node N`` per GPU count; under it every rank builds the
full-size models with random weights on its own GPU (compute does not depend on the values; see
``scail2_bench.py``), the DiT is made sequence-parallel (Ulysses over the N ranks, NCCL, NVLink multicast off),
then the per-GPU performance settings are applied (attention backend, regional compile) exactly as on one GPU.
Rank 0 times the cases (warm-up, then the median of the repeats) and writes them; the driver adds
``speedup = T1 / TN`` and ``efficiency = speedup / N`` against the one-GPU run of the same case, and
``rel_err_vs_1gpu`` between the N-GPU and the one-GPU output. Records go to ``--out`` as a JSON list (rewritten
atomically after each GPU count) with the fields of ``scail2_bench.py`` plus ``gpus``, ``sp_degree``,
``cfg_degree``, ``sp_mode``.

    # the issue's measurement: 704p window (and forward) on 1, 2, 4, 8 H200s
    python benchmarks/bench_multigpu.py --gpus 1,2,4,8 --forward 704x1280 --window 704x1280 \\
        --out benchmarks/results/multigpu_h200.json
    # CFG-parallel (2) x Ulysses (N/2): batched CFG forwards (batch 2 at every count), and windows with guidance
    # (the pipeline batches CFG when the DiT is CFG-parallel; the one-GPU baseline runs the two passes in turn)
    python benchmarks/bench_multigpu.py --gpus 1,2,4,8 --cfg-parallel --forward 704x1280 --out ...
    python benchmarks/bench_multigpu.py --gpus 1,2,4,8 --cfg-parallel --guidance 5 --window 704x1280 --out ...
    # on ONE GPU: one rank's share of an N-GPU 704p forward for N = 2, 4, 8 (compute only, no communication)
    python benchmarks/bench_multigpu.py --gpus 1 --forward 704x1280 --emulate-ranks 2,4,8 --out ...
    # the same code on the CPU at tiny size (gloo; what development uses)
    python benchmarks/bench_multigpu.py --tiny --device cpu --gpus 1,2 --forward 64x96 --window 64x96 --out /tmp/m.json

Run from the repository root.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from backend.scail2.parallel import NVLINK_MULTICAST_OFF, init_parallel, parallelize_transformer  # noqa: E402

# The DiT at 40 heads: the GPU counts whose Ulysses split needs no fallback.
DEFAULT_GPUS = (1, 2, 4, 8)


# ----------------------------------------------------------------------------------------------- rank side


def forced_split_forward(transformer, inputs, device, repeats: int) -> dict[str, Any]:
    """On one GPU: time the forward plain, then through the sequence-parallel hooks over a one-process group.

    Every all-to-all and gather is then a copy, so this measures what the split path costs by itself and checks
    that the CUDA/bf16/compiled path gives the plain forward's output.
    """
    import scail2_bench as bench
    import torch.distributed as dist

    from backend.scail2.parallel.sequence import SequenceParallel

    plain = bench.time_forward(transformer, inputs, device, repeats)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", device_id=device
                                if device.type == "cuda" else None)
    hooks = SequenceParallel(transformer, dist.group.WORLD, blocks=transformer.blocks,
                             gather_after=transformer.proj_out)
    try:
        split = bench.time_forward(transformer, inputs, device, repeats)
    finally:
        hooks.remove()
    split["seconds_plain"] = plain["seconds"]
    split["warmup_s_plain"] = plain["warmup_s"]
    split["rel_err_vs_plain"] = round(bench.rel_err(split["_output"], plain["_output"]), 6)
    return split



def run_rank(args: argparse.Namespace) -> int:
    """Body of one torchrun rank: build, parallelize, time; rank 0 writes its records to --rank-out."""
    import scail2_bench as bench

    from backend.scail2.accel import PerformanceSettings, apply_performance_settings
    from backend.scail2.pipelines.pipeline_scail2 import Scail2Pipeline
    from backend.scail2.schedulers.presets import SamplingSettings

    runtime = init_parallel(cfg_parallel=args.cfg_parallel, backend=None if args.device == "cuda" else "gloo")
    device = runtime.device
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    env = bench.environment(device)

    begin = time.perf_counter()
    transformer = bench.build_transformer(args.tiny, device, dtype)
    parallel = parallelize_transformer(transformer, runtime)
    total_gib = torch.cuda.get_device_properties(device).total_memory / 2**30 if device.type == "cuda" else None
    overrides: dict[str, Any] = {"attention_backend": args.attention_backend}
    if args.no_compile or device.type != "cuda":
        overrides["compile_blocks"] = False
    state = apply_performance_settings(transformer, PerformanceSettings.for_memory(total_gib, **overrides), device)
    build_s = time.perf_counter() - begin

    base = {
        **env,
        "gpus": runtime.world_size,
        "sp_degree": runtime.sp_degree,
        "cfg_degree": runtime.cfg_degree,
        "sp_mode": parallel.sequence.state.mode if parallel and parallel.sequence else None,
        "frames": bench.FRAMES,
        "dtype": "bf16" if dtype == torch.bfloat16 else "fp32",
        "tiny": args.tiny,
        "label": args.label,
        "build_s": round(build_s, 1),
        "attention_backend_resolved": state.attention_backend,
        "settings": state.to_dict(),
        "nvlink_multicast": "off",
    }
    records: list[dict[str, Any]] = []
    outputs: dict[str, torch.Tensor] = {}

    def record(case: dict[str, Any], measure) -> None:
        try:
            result = measure()
        except Exception as error:  # one failing case must not lose the others
            records.append({**base, **case, "error": f"{type(error).__name__}: {error}"[:2000]})
            return
        outputs[f"{case['kind']}_{case['height']}x{case['width']}"] = result.pop("_output")
        records.append({**base, **case, **result})

    for height, width in args.forward:
        inputs = bench.forward_inputs(transformer, height, width, device, seed=height + width)
        if args.cfg_parallel:
            # One batched CFG forward: the conditional and unconditional halves (the latter with a zero context),
            # what CFG-parallel splits. The one-GPU baseline runs the same batch of 2.
            inputs = {k: torch.cat([v, v]) if torch.is_tensor(v) and v.ndim and k != "timestep" else v
                      for k, v in inputs.items()}
            inputs["context"][1:] = 0
            inputs["timestep"] = inputs["timestep"].expand(2)
        if args.emulate_ranks and runtime.world_size == 1:
            plain = bench.time_forward(transformer, inputs, device, args.repeats)
            plain.pop("_output")
            case = {"kind": "forward_rank_emulated", "height": height, "width": width}
            records.append({**base, **case, "emulated_world": 1, **plain})
            for emulated in emulated_rank_forwards(transformer, inputs, device, args.repeats, args.emulate_ranks):
                world = emulated["emulated_world"]
                emulated["compute_efficiency"] = round(plain["seconds"] / emulated["seconds"] / world, 3)
                records.append({**base, **case, **emulated})
        elif args.sp_on_one_gpu and runtime.world_size == 1:
            record({"kind": "forward", "height": height, "width": width, "sp_forced": True},
                   lambda inputs=inputs: forced_split_forward(transformer, inputs, device, args.repeats))
        else:
            record({"kind": "forward", "height": height, "width": width, "batch": 2 if args.cfg_parallel else 1},
                   lambda inputs=inputs: bench.time_forward(transformer, inputs, device, args.repeats))
        del inputs

    if args.window:
        with tempfile.TemporaryDirectory() as tokenizer_dir:
            text_encoder, image_encoder, vae = bench.build_encoders(
                args.tiny, device, dtype, Path(tokenizer_dir) / "tokenizer")
        pipe = Scail2Pipeline(transformer, text_encoder, image_encoder, vae, device=device,
                              offload_encoders=state.settings.offload_encoders)
        for height, width in args.window:
            request = bench.window_request(height, width, seed=7)
            if args.guidance is not None:
                request = dataclasses.replace(
                    request, sampling=SamplingSettings.from_preset("fast", seed=7, guidance=args.guidance))
            record({"kind": "window", "preset": "fast", "steps": request.sampling.steps,
                    "guidance": request.sampling.guidance, "height": height, "width": width},
                   lambda request=request: bench.time_window(pipe, request, device, args.window_repeats))

    if runtime.is_main:
        out = Path(args.rank_out)
        torch.save({"records": records, "outputs": outputs}, out.with_suffix(".tmp"))
        os.replace(out.with_suffix(".tmp"), out)
    runtime.shutdown()
    return 0


@contextlib.contextmanager
def emulated_rank_collectives(world: int):
    """Replace the sequence-parallel exchanges by local tensors of the shapes one rank of ``world`` would receive.

    Only for timing on one GPU: the values are meaningless, the work is one rank's (S/N tokens outside attention,
    H/N heads over all S tokens inside it). No communication is timed.
    """
    from backend.scail2.parallel import sequence as sequence_module

    def to_heads(x, group):
        heads = x.shape[-2] // world
        return x[..., :heads, :].repeat_interleave(world, dim=-3) if world > 1 else x

    def to_sequence(x, group):
        local = x.shape[1] // world
        return x[:, :local].repeat_interleave(world, dim=2)

    def gather(x, group, dim=1):
        return torch.cat([x] * world, dim=dim)

    saved = (sequence_module.sequence_to_heads, sequence_module.heads_to_sequence, sequence_module.all_gather_tokens)
    sequence_module.sequence_to_heads, sequence_module.heads_to_sequence = to_heads, to_sequence
    sequence_module.all_gather_tokens = gather
    try:
        yield
    finally:
        (sequence_module.sequence_to_heads, sequence_module.heads_to_sequence,
         sequence_module.all_gather_tokens) = saved


def emulated_rank_forwards(transformer, inputs, device, repeats: int, worlds: list[int]) -> list[dict[str, Any]]:
    """Per-rank compute of an N-GPU forward, timed on this one GPU for each N (see `emulated_rank_collectives`)."""
    import scail2_bench as bench
    import torch.distributed as dist

    from backend.scail2.parallel.sequence import ALL_GATHER_KV, ULYSSES, SequenceParallel

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
    results = []
    for world in worlds:
        hooks = SequenceParallel(transformer, dist.group.WORLD, blocks=transformer.blocks,
                                 gather_after=transformer.proj_out)
        hooks.state.world, hooks.state.rank = world, 0
        hooks.state.mode = ULYSSES if hooks.state.num_heads % world == 0 else ALL_GATHER_KV
        try:
            with emulated_rank_collectives(world):
                timed = bench.time_forward(transformer, inputs, device, repeats)
        finally:
            hooks.remove()
        timed.pop("_output")
        results.append({"emulated_world": world, "sp_mode": hooks.state.mode, **timed})
    return results


# ----------------------------------------------------------------------------------------------- driver


def write_records(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        json.dump(records, handle, indent=1)
    os.replace(handle.name, path)


def rel_err(value: torch.Tensor, reference: torch.Tensor) -> float:
    value, reference = value.double(), reference.double()
    return float((value - reference).norm() / reference.norm().clamp(min=1e-30))


def run_driver(args: argparse.Namespace, passthrough: list[str]) -> int:
    available = torch.cuda.device_count() if args.device == "cuda" else os.cpu_count() or 1
    records = json.loads(args.out.read_text()) if args.out.exists() else []
    one_gpu: dict[str, tuple[float, torch.Tensor]] = {}
    env = {**os.environ, **NVLINK_MULTICAST_OFF, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    for gpus in args.gpus:
        if args.device == "cuda" and gpus > available:
            records.append({"gpus": gpus, "label": args.label, "skipped": f"only {available} GPUs visible"})
            write_records(args.out, records)
            print(f"SKIP {gpus} GPUs: only {available} visible", flush=True)
            continue
        if args.cfg_parallel and gpus % 2 and gpus > 1:
            print(f"SKIP {gpus} GPUs: CFG-parallel needs an even count", flush=True)
            continue
        with tempfile.TemporaryDirectory() as scratch:
            rank_out = Path(scratch) / "rank0.pt"
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
                       str(Path(__file__).resolve()), "--rank-out", str(rank_out), *passthrough]
            print("RUN", " ".join(command), flush=True)
            begin = time.perf_counter()
            completed = subprocess.run(command, cwd=REPO, env=env, timeout=args.timeout_s)
            wall_s = round(time.perf_counter() - begin, 1)
            if completed.returncode != 0 or not rank_out.exists():
                records.append({"gpus": gpus, "label": args.label, "wall_s": wall_s,
                                "error": f"torchrun exited with {completed.returncode}"})
                write_records(args.out, records)
                continue
            result = torch.load(rank_out, weights_only=False)
        for case in result["records"]:
            key = f"{case['kind']}_{case['height']}x{case['width']}"
            case["wall_s"] = wall_s
            output = result["outputs"].get(key)
            if case["kind"] == "forward_rank_emulated":
                records.append(case)  # carries its own compute_efficiency
                print("RECORD", json.dumps({k: case.get(k) for k in (
                    "kind", "emulated_world", "sp_mode", "seconds", "compute_efficiency", "peak_gb")}), flush=True)
                continue
            if "seconds" in case and gpus == 1:
                one_gpu[key] = (case["seconds"], output)
            if key in one_gpu and "seconds" in case:
                base_seconds, base_output = one_gpu[key]
                case["speedup"] = round(base_seconds / case["seconds"], 3)
                case["efficiency"] = round(base_seconds / case["seconds"] / gpus, 3)
                case["rel_err_vs_1gpu"] = None if output is None else round(rel_err(output, base_output), 5)
            records.append(case)
            shown = {k: case.get(k) for k in ("gpus", "kind", "height", "width", "seconds", "speedup",
                                               "efficiency", "peak_gb", "rel_err_vs_1gpu", "error")}
            print("RECORD", json.dumps(shown), flush=True)
        write_records(args.out, records)
    print("\ngpus | kind | size | seconds | speedup | efficiency | peak_gb | rel_err_vs_1gpu")
    for case in records:
        if "kind" in case and case["kind"] != "forward_rank_emulated":
            print(f"{case['gpus']} | {case['kind']} | {case['height']}x{case['width']} | {case.get('seconds')} | "
                  f"{case.get('speedup')} | {case.get('efficiency')} | {case.get('peak_gb')} | "
                  f"{case.get('rel_err_vs_1gpu')}")
    return 0


def parse_size(text: str) -> tuple[int, int]:
    height, _, width = text.lower().partition("x")
    if not (height.isdigit() and width.isdigit()) or int(height) % 32 or int(width) % 32:
        raise argparse.ArgumentTypeError(f"size {text!r} must be HEIGHTxWIDTH with both multiples of 32")
    return int(height), int(width)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sizes = lambda text: [parse_size(x) for x in text.split(",") if x]  # noqa: E731
    parser.add_argument("--gpus", type=lambda t: [int(x) for x in t.split(",") if x], default=list(DEFAULT_GPUS),
                        help="GPU counts to run, e.g. 1,2,4,8 (1 first: it is the baseline)")
    parser.add_argument("--forward", type=sizes, default=[], help="sizes HxW,... to time DiT forwards at")
    parser.add_argument("--window", type=sizes, default=[], help="sizes HxW,... to time fast-preset windows at")
    parser.add_argument("--guidance", type=float, default=None,
                        help="override the fast preset's guidance (>1 runs both CFG passes)")
    parser.add_argument("--cfg-parallel", action="store_true", help="CFG halves on different GPUs (even counts)")
    parser.add_argument("--emulate-ranks", type=lambda t: [int(x) for x in t.split(",") if x], default=[],
                        help="with 1 GPU: time one rank's share of an N-GPU forward for each N given "
                             "(compute only, no communication; kind forward_rank_emulated)")
    parser.add_argument("--sp-on-one-gpu", action="store_true",
                        help="with 1 GPU: also time the forward through the split path over a one-process group")
    parser.add_argument("--attention-backend", default="auto")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--repeats", type=int, default=2, help="timed forwards after the warm-up")
    parser.add_argument("--window-repeats", type=int, default=1, help="timed windows after the warm-up")
    parser.add_argument("--tiny", action="store_true", help="tiny configs (CPU development)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--label", default="")
    parser.add_argument("--timeout-s", type=float, default=3600.0, help="per GPU count")
    parser.add_argument("--out", type=Path, default=None, help="JSON list of records (driver)")
    parser.add_argument("--rank-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rank_out is not None:
        return run_rank(args)
    if args.out is None:
        parser.error("--out is required")
    if not (args.forward or args.window):
        parser.error("give --forward and/or --window sizes")
    if args.cfg_parallel and args.window and (args.guidance is None or args.guidance <= 1.0):
        parser.error("--cfg-parallel windows need --guidance > 1 (the fast preset has no unconditional pass, so "
                     "the two halves would compute the same forward)")
    # Everything but the driver-only options goes to the ranks.
    passthrough, skip = [], False
    for index, item in enumerate(argv):
        if skip:
            skip = False
            continue
        name = item.split("=", 1)[0]
        if name in ("--gpus", "--out", "--timeout-s"):
            skip = "=" not in item and index + 1 < len(argv)
            continue
        passthrough.append(item)
    return run_driver(args, passthrough)


if __name__ == "__main__":
    raise SystemExit(main())
