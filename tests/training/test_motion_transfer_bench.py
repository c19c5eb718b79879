"""The motion-transfer benchmark (``benchmarks/bench_motion_transfer.py``) scores the held-out pairs and writes
its JSON; the training data options it relies on (workers that only render) keep their promise."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

from training.nano_data import PairStream

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_motion_transfer", ROOT / "benchmarks/bench_motion_transfer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_scores_heldout_pairs_and_writes_json(tmp_path, capsys):
    out = tmp_path / "result.json"
    assert _bench().main(["--pairs", "1", "--settings", "animation,two_characters", "--size", "64x64",
                          "--frames", "9", "--no-untrained", "--json", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "reference_repeated" in printed and "driving" in printed
    payload = json.loads(out.read_text())
    assert payload["heldout_seed_range"][0] == 10**9
    assert payload["heldout_sets"]["two_characters"] == {"mode": "animation", "characters": 2, "seed": 10**9 + 2}
    for setting in ("animation", "two_characters"):
        methods = payload["results"][setting]
        assert methods["target (perfect)"]["iou"] == 1.0  # the score's own check
        assert 0.0 <= methods["reference_repeated"]["iou"] < 1.0 and methods["driving"]["pairs"] == 1


def test_render_only_workers_never_encode(tmp_path):
    vae_dir = tmp_path / "vae"
    vae_dir.mkdir()
    (vae_dir / "config.json").write_text("{}")  # a VAE "exists": encoding workers would load it and fail
    stream = PairStream(0, chunk_size=1, size=(64, 64), frames=5, render_device="cpu", encoders=tmp_path,
                        vae_dir=vae_dir, encode=False)  # fmt: skip
    previous = torch.get_num_threads()
    try:
        from training.nano_data import unpack

        chunk = unpack(next(iter(stream)))
    finally:
        torch.set_num_threads(previous)
    assert "window" not in chunk and chunk["target"].dtype == torch.uint8
    assert chunk["target"].shape == (1, 5, 3, 64, 64)


class _OneChunkFeeder:
    """A feeder that has one chunk ready, then none."""

    def __init__(self, chunk: dict):
        self.chunk = chunk
        self.waits = 0
        self.takes = 0

    def take(self, limit: int) -> list[dict]:
        self.takes += 1
        return [self.chunk] if self.takes == 1 else []

    def wait(self) -> dict:
        self.waits += 1
        return self.chunk


def test_vae_keeps_its_chunks_and_reuses_one_while_none_is_ready(animation_batch):
    from training.nano_data import pair_tensors
    from training.train_vae import CHUNK_REUSE, build_vae, train_vae

    torch.manual_seed(0)
    model = build_vae({"base_dim": 4, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 1, "attn_scales": [],
                       "temperal_downsample": [False, True, True]})  # fmt: skip
    feeder = _OneChunkFeeder({"setting": "animation-1", **pair_tensors(animation_batch)})
    kept: list[dict] = []
    rows: list[dict] = []
    summary = train_vae(model, feeder, device=torch.device("cpu"), seconds=4.0, batch=1, seed=0, log=rows.append,
                        keep=kept, keep_limit=5)  # fmt: skip
    assert summary["steps"] > CHUNK_REUSE or feeder.takes == 1  # past CHUNK_REUSE, it asked for a fresh chunk
    assert feeder.waits == 0  # and kept training on the one it had instead of waiting
    assert kept == [feeder.chunk]
