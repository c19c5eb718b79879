"""Sequence/CFG parallelism on CPU with the gloo backend: split runs must equal whole runs.

The multi-process parts run real process groups under torchrun (``.venv/bin/torchrun`` next to this Python):
- `distributed_checks.py`: collectives, the tiny DiT split over 2 processes (Ulysses, padding, the all-gather
  fallback when heads do not divide), CFG halves on different processes;
- the parity command ``python -m backend.scail2.parity DIR`` under ``torchrun --nproc-per-node N`` on every fixture
  set of ``tests/data/parity`` (N=2; N=4 on the dit set), with a per-rank report proving the DiT was really split.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from backend.scail2.parallel import (
    NVLINK_MULTICAST_OFF,
    SequenceShard,
    current_runtime,
    disable_nvlink_multicast,
    init_parallel,
    launched_distributed,
    parallelize_transformer,
)
from backend.scail2.parallel.apply import CFG_PARALLEL_ENV, REPORT_DIR_ENV

REPO = Path(__file__).resolve().parents[2]
PARITY_ROOT = Path(os.environ.get("SCAIL_PARITY_DIR", REPO / "tests" / "data" / "parity"))
TORCHRUN = Path(sys.executable).with_name("torchrun")
FIXTURE_SETS = ("dit", "pipeline", "t5", "clip", "vae", "masks", "segments", "scheduler")
SPLIT_SETS = {"dit", "pipeline"}


def torchrun(nproc: int, *command: str, log_dir: Path, env: dict[str, str] | None = None, timeout: float = 300) -> list[str]:
    """Run ``command`` under torchrun on ``nproc`` CPU processes; each rank's stdout, in rank order.

    Each rank's output goes to its own file (``--redirects 1``), so lines of different ranks never interleave.
    """
    if not TORCHRUN.exists():
        pytest.skip(f"torchrun not found next to {sys.executable}")
    run_env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        run_env.pop(key, None)
    result = subprocess.run(
        [str(TORCHRUN), "--standalone", f"--nproc-per-node={nproc}", f"--log-dir={log_dir}", "--redirects=1",
         *command],
        cwd=REPO,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    outputs = [
        "".join(p.read_text() for p in sorted(log_dir.glob(f"**/attempt_*/{rank}/stdout.log")))
        for rank in range(nproc)
    ]
    assert result.returncode == 0, f"torchrun failed ({result.returncode}):\n{outputs}\n{result.stderr[-4000:]}"
    return outputs


def json_lines(outputs: list[str]) -> list[dict]:
    return [json.loads(line) for text in outputs for line in text.splitlines() if line.startswith("{")]


# ------------------------------------------------------------------------------------------- one process


def test_shard_pads_the_tail_and_covers_every_token():
    full = torch.arange(10.0).reshape(1, 10, 1)
    shards = [SequenceShard(10, 4, rank) for rank in range(4)]
    assert [s.local_len for s in shards] == [3] * 4 and shards[0].padded_len == 12
    pieces = [s.take(full, dim=1, pad_value=-1.0) for s in shards]
    joined = torch.cat(pieces, dim=1)
    assert joined[0, :10, 0].tolist() == list(range(10))
    assert joined[0, 10:, 0].tolist() == [-1.0, -1.0]
    # More ranks than tokens: the last ranks hold padding only.
    short = [SequenceShard(2, 4, rank).take(full[:, :2], dim=1, pad_value=-1.0) for rank in range(4)]
    assert torch.cat(short, dim=1)[0, :, 0].tolist() == [0.0, 1.0, -1.0, -1.0]
    with pytest.raises(ValueError, match="expected 10 tokens"):
        shards[0].take(torch.zeros(1, 9, 1), dim=1)


def test_nvlink_multicast_is_forced_off_even_when_inherited_on():
    environ = {"NCCL_NVLS_ENABLE": "1"}
    disable_nvlink_multicast(environ)
    assert environ == NVLINK_MULTICAST_OFF
    assert NVLINK_MULTICAST_OFF == {
        "NCCL_NVLS_ENABLE": "0",
        "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
        "NVSHMEM_DISABLE_NVLS": "1",
    }


def test_one_process_run_needs_no_process_group():
    assert not launched_distributed({"WORLD_SIZE": "1"})
    assert launched_distributed({"WORLD_SIZE": "2"})
    runtime = init_parallel(rank=0, world_size=1, backend="gloo")
    assert runtime.sp_group is None and runtime.cfg_group is None and runtime.is_main
    assert current_runtime() is runtime
    assert parallelize_transformer(torch.nn.Linear(2, 2), runtime) is None
    runtime.shutdown()
    assert current_runtime() is None


def test_invalid_layout_is_rejected():
    with pytest.raises(ValueError, match="rank 3 of world size 2"):
        init_parallel(rank=3, world_size=2, backend="gloo")


# ----------------------------------------------------------------------------------------- two processes


def test_split_forwards_equal_whole_forwards(tmp_path: Path):
    out = torchrun(2, "tests/parallel/distributed_checks.py", log_dir=tmp_path / "logs")
    records = {r["check"]: r for r in json_lines(out)}
    assert set(records) == {
        "collectives",
        "sequence_parallel_h4_t3_x0_animate",
        "sequence_parallel_h4_t3_x1_replace",
        "sequence_parallel_h3_t3_x0_animate",
        "cfg_parallel",
        "compiled_blocks",
    }
    assert records["collectives"]["max_abs_err"] == 0.0
    assert records["compiled_blocks"]["max_abs_err"] <= 1e-5 * max(1.0, records["compiled_blocks"]["scale"])
    for name, record in records.items():
        if name.startswith("sequence_parallel"):
            assert record["padded"] == 1, record  # odd token counts: padding must be excluded exactly
            assert record["max_abs_err"] <= 1e-5 * max(1.0, record["scale"]), record
            assert record["restored_err"] == 0.0, record  # remove() gives back the one-process model
    assert records["sequence_parallel_h4_t3_x0_animate"]["mode"] == "ulysses"
    assert records["sequence_parallel_h3_t3_x0_animate"]["mode"] == "all_gather_kv"
    cfg = records["cfg_parallel"]
    assert cfg["split_forwards"] == 1 and cfg["halves_differ"] > 1e-3 and cfg["max_abs_err"] <= 1e-5


def test_cfg_groups_times_sequence_groups_on_four_processes(tmp_path: Path):
    out = torchrun(4, "tests/parallel/distributed_checks.py", "--cfg-parallel", log_dir=tmp_path / "logs")
    (record,) = json_lines(out[:1])
    assert (record["sp_degree"], record["cfg_degree"]) == (2, 2)
    assert record["split_forwards"] == 1 and record["sequence_forwards"] == 1
    assert record["max_abs_err"] <= 1e-5 * max(1.0, record["scale"]), record


def _check_parity_output(out: list[str], nproc: int, report_dir: Path, split: bool) -> list[dict]:
    records = json_lines(out)
    assert records and all(r["ok"] for r in records), [r for r in records if not r["ok"]]
    # Every rank prints its own records, and they agree.
    per_case: dict[tuple[str, str], set] = {}
    for record in records:
        per_case.setdefault((record["set"], record["case"]), set()).add(record["max_rel_err"])
    assert all(len(errors) == 1 for errors in per_case.values()), per_case
    assert len(records) == nproc * len(per_case)
    if split:
        reports = [json.loads(p.read_text()) for p in sorted(report_dir.glob("rank*.json"))]
        assert len(reports) == nproc, "every rank must have split the DiT"
        for report in reports:
            sequence, cfg = report["sequence"], report["cfg"]
            sp_degree = nproc // (cfg["degree"] if cfg else 1)
            if cfg:
                assert cfg["split_forwards"] > 0, report
            if sp_degree > 1:
                assert sequence["world"] == sp_degree and sequence["split_forwards"] > 0, report
                for tokens, local in zip(sequence["token_counts"], sequence["local_tokens"], strict=True):
                    assert local * sp_degree < tokens + sp_degree, report  # each rank held only its share
    return records


def _set_dir(set_name: str) -> Path:
    set_dir = PARITY_ROOT / set_name
    if not set_dir.is_dir():
        pytest.skip(f"fixture set {set_dir} not present")
    return set_dir


@pytest.mark.parametrize(
    ("set_name", "nproc", "cfg_parallel"),
    [("dit", 2, False), ("pipeline", 2, False), ("dit", 4, False), ("pipeline", 4, True)],
)
def test_parity_command_splits_the_dit(set_name: str, nproc: int, cfg_parallel: bool, tmp_path: Path):
    """``torchrun -m backend.scail2.parity DIR``: the DiT sets really run split. dit on 4 processes puts 2 heads
    over 4 ranks (the all-gather fallback) and pads 114 tokens to 116; the pipeline on 4 with CFG-parallel runs
    batched CFG with the conditional half on ranks 0-1 and the unconditional half on ranks 2-3."""
    set_dir = _set_dir(set_name)
    report_dir = tmp_path / "ranks"
    out = torchrun(
        nproc, "-m", "backend.scail2.parity", str(set_dir), log_dir=tmp_path / "logs",
        env={REPORT_DIR_ENV: str(report_dir), CFG_PARALLEL_ENV: "1" if cfg_parallel else "0"},
    )
    records = _check_parity_output(out, nproc, report_dir, split=True)
    assert {r["set"] for r in records} == {set_name}
    if cfg_parallel:
        assert all(json.loads(p.read_text())["cfg"]["degree"] == 2 for p in report_dir.glob("rank*.json"))


def test_parity_command_other_sets_on_two_processes(tmp_path: Path):
    """The sets without a DiT run whole on every rank; one launch for all of them."""
    set_dirs = [_set_dir(name) for name in FIXTURE_SETS if name not in SPLIT_SETS]
    out = torchrun(2, "tests/parallel/parity_sets.py", *map(str, set_dirs), log_dir=tmp_path / "logs")
    records = _check_parity_output(out, 2, tmp_path, split=False)
    assert {r["set"] for r in records} == set(FIXTURE_SETS) - SPLIT_SETS
