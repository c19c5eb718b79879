"""The motion-transfer benchmark of issue #14: held-out motion pairs, the score, the three baselines, a model.

    python benchmarks/bench_motion_transfer.py --pairs 50                       # baselines only (CPU)
    python benchmarks/bench_motion_transfer.py --pairs 50 --checkpoint models/scail2-nano --device cuda

Pairs come from the held-out seed range (``training.HELDOUT_SEEDS``: seeds 10**9 and up, which training never
draws, ``training.pairs`` refuses them for ``split="train"``): ``--pairs`` of each held-out set, animation
(one character), replacement (one character) and two characters (animation). Every generated clip is scored by
``training.evaluation.score_clip``: per-frame silhouette IoU of the generated character (pixels differing from
the target's background by more than 0.1) against the target's exact mask, the colour distance (CIE76 Delta E)
of the generated character to the reference character and, for two characters, the per-identity IoU.

Methods: ``target (perfect)`` (the ground truth itself: IoU 1, checks the score), the three baselines of the
issue: ``reference_repeated`` (no motion), ``driving`` (motion, wrong identity) and ``untrained`` (the tiny
untrained test checkpoint through ``Scail2Pipeline``, the same sampler as the model), and ``--checkpoint`` (any
checkpoint folder through ``Scail2Pipeline.from_pretrained``, e.g. SCAIL-2 Nano). Prints the table and writes
JSON (settings, environment, every summary) to ``--json`` (default ``benchmarks/results/motion_transfer_<tag>.json``).
Run from the repository root.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.evaluation import BASELINES, evaluate_heldout, format_table, pipeline_generator, target_clip  # noqa: E402
from training.pairs import HELDOUT_SEEDS, HELDOUT_SETTINGS  # noqa: E402


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def sampling_settings(steps: int | None, seed: int):
    """SCAIL-2 Nano's ``fast`` preset (Euler, CFG 1, shift 3, no LoRAs), ``steps`` overriding its step count."""
    from backend.scail2 import SamplingSettings
    from training.nano_config import PRESETS

    preset = {k: v for k, v in PRESETS["fast"].items() if k != "loras"}
    if steps is not None:
        preset["steps"] = steps
    return SamplingSettings(**preset, seed=seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=50, help="held-out pairs per setting (the issue asks >= 50)")
    parser.add_argument("--settings", default=",".join(HELDOUT_SETTINGS), help="comma-separated held-out sets")
    parser.add_argument("--size", default="128x128", help="HEIGHTxWIDTH (SCAIL-2 Nano is trained at 128x128)")
    parser.add_argument("--frames", type=int, default=33, help="frames per pair (33: one window)")
    parser.add_argument("--checkpoint", type=Path, help="also score this checkpoint folder")
    parser.add_argument("--no-untrained", action="store_true", help="leave out the untrained-checkpoint baseline")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the nano fast preset's)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--tag", default=None, help="name of the JSON file (default: cpu_baselines / the checkpoint)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.size.lower().split("x"))
    from backend.scail2 import Scail2Pipeline

    sampling = sampling_settings(args.steps, args.seed)
    dtype = getattr(torch, args.dtype)
    methods = {"target (perfect)": target_clip, **BASELINES}
    scratch = tempfile.TemporaryDirectory(prefix="bench-motion-transfer-")
    if not args.no_untrained:
        from backend.scail2.testing.tiny import write_tiny_checkpoint

        folder = write_tiny_checkpoint(Path(scratch.name) / "untrained", "diffusers-encoders")
        pipe = Scail2Pipeline.from_pretrained(folder, device=args.device, dtype=dtype)
        methods["untrained"] = pipeline_generator(pipe, sampling=sampling)
    if args.checkpoint:
        pipe = Scail2Pipeline.from_pretrained(args.checkpoint, device=args.device, dtype=dtype)
        methods[f"checkpoint:{args.checkpoint.name}"] = pipeline_generator(pipe, sampling=sampling)

    started = time.perf_counter()
    results = evaluate_heldout(
        methods, pairs=args.pairs, settings=tuple(args.settings.split(",")), size=(height, width),
        frames=args.frames, progress=lambda line: print(line, file=sys.stderr, flush=True),
    )  # fmt: skip
    seconds = time.perf_counter() - started
    scratch.cleanup()
    print(format_table(results))
    print(f"({seconds:.0f} s, {args.device})")

    tag = args.tag or (args.checkpoint.name if args.checkpoint else f"{args.device.split(':')[0]}_baselines")
    path = args.json or ROOT / "benchmarks" / "results" / f"motion_transfer_{tag}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "motion_transfer",
        "command": "python benchmarks/bench_motion_transfer.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "commit": _commit(),
        "pairs_per_setting": args.pairs,
        "heldout_sets": {name: asdict(HELDOUT_SETTINGS[name]) for name in args.settings.split(",")},
        "heldout_seed_range": [HELDOUT_SEEDS.start, HELDOUT_SEEDS.stop - 1],
        "size": [height, width],
        "frames": args.frames,
        "sampling": {"sampler": sampling.sampler, "steps": sampling.steps, "guidance": sampling.guidance,
                     "shift": sampling.shift, "seed": sampling.seed},  # fmt: skip
        "device": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu",
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "seconds": round(seconds, 1),
        "results": results,
    }
    path.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
