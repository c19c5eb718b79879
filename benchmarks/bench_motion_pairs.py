"""Time the procedural motion-pair generator (``training.generate_pairs``): scene sampling on the CPU (numpy)
and the whole call (sampling plus rasterising reference, driving clip, target and target background).

    python benchmarks/bench_motion_pairs.py --device cuda --batch 32 --frames 33 --size 128x128 --out r.json
    python benchmarks/bench_motion_pairs.py --device cpu --batch 4 --threads 1     # what CI machines manage

Each case runs once to warm up, then ``--repeats`` times; the median is reported. Run from the repository root.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training import generate_pairs  # noqa: E402
from training.scene import item_seed, sample_pair_scene  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_case(device: str, batch: int, frames: int, size: tuple[int, int], mode: str, characters: int,
              repeats: int) -> dict:  # fmt: skip
    def sample(seed: int) -> None:
        for i in range(batch):
            sample_pair_scene(np.random.default_rng(item_seed(seed, i)), mode=mode, characters=characters,
                              frames=frames, width=size[1], height=size[0])  # fmt: skip

    def whole(seed: int) -> None:
        generate_pairs(batch, seed=seed, mode=mode, characters=characters, size=size, frames=frames, device=device)
        _sync(device)

    whole(0)  # warm-up (allocator, kernels)
    sampling, total = [], []
    for repeat in range(1, repeats + 1):
        started = time.perf_counter()
        sample(repeat)
        sampling.append(time.perf_counter() - started)
        started = time.perf_counter()
        whole(repeat)
        total.append(time.perf_counter() - started)
    seconds = statistics.median(total)
    return {
        "device": device,
        "device_name": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
        "threads": torch.get_num_threads(),
        "batch": batch,
        "frames": frames,
        "size": list(size),
        "mode": mode,
        "characters": characters,
        "sampling_s": statistics.median(sampling),
        "seconds": seconds,
        "clips_per_s": batch / seconds,
        "frames_per_s": batch * (2 * frames + 1) / seconds,  # driving + target + reference images drawn
        "repeats": repeats,
    }


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=Path(__file__).resolve().parents[1]).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--frames", type=int, default=33)
    parser.add_argument("--size", default="128x128", help="HEIGHTxWIDTH")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, help="write the records here (JSON)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = tuple(int(v) for v in args.size.lower().split("x"))
    records = []
    for mode, characters in (("animation", 1), ("replacement", 1), ("animation", 2)):
        record = time_case(args.device, args.batch, args.frames, size, mode, characters, args.repeats)
        record["commit"] = _commit()
        records.append(record)
    print(f"{'mode':<12}{'chars':>6}{'batch':>6}{'frames':>7}{'size':>9}{'sample s':>10}{'total s':>9}{'clips/s':>9}")
    for r in records:
        print(f"{r['mode']:<12}{r['characters']:>6}{r['batch']:>6}{r['frames']:>7}{'x'.join(map(str, r['size'])):>9}"
              f"{r['sampling_s']:>10.3f}{r['seconds']:>9.3f}{r['clips_per_s']:>9.1f}")  # fmt: skip
    print(f"device {records[0]['device_name']}, {records[0]['threads']} threads, cpu count {os.cpu_count()}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(records, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
