"""The gateway's choice of the next job: fair share across clients, and only jobs an engine can run."""

from __future__ import annotations

from backend.worker.cluster.scheduling import EngineProfile, FairQueue, JobNeeds, size_pixels
from backend.worker.store import QueuedJob


def _queue(*owners: str) -> list[QueuedJob]:
    return [QueuedJob(seq, f"job{seq}", owner, {"size": "512p", "loras": {}}) for seq, owner in enumerate(owners)]


def test_one_clients_batch_does_not_starve_another_clients_single_shot():
    fair = FairQueue()
    queued = _queue(*["batch"] * 40, "single")
    order = [job.namespace for job in fair.order(queued, running={})]
    assert order[:2] == ["batch", "single"]


def test_the_client_with_fewest_running_jobs_goes_next_then_the_one_served_longest_ago():
    fair = FairQueue()
    queued = _queue("a", "a", "a", "b", "b", "c")
    # a has two jobs running: b and c come first, then turns alternate by who waited longest.
    assert [job.namespace for job in fair.order(queued, running={"a": 2})] == ["b", "c", "b", "a", "a", "a"]
    fair.served("b")
    fair.served("c")
    assert [job.id for job in fair.order(queued, running={})] == ["job0", "job3", "job5", "job1", "job4", "job2"]


def test_pick_skips_jobs_the_engine_cannot_run():
    fair = FairQueue()
    queued = _queue("a", "b")
    choice = fair.pick(queued, {}, can_run=lambda job: job.namespace == "b")
    assert choice is not None and choice.id == "job1"
    assert fair.pick(queued, {}, can_run=lambda job: False) is None


def _profile(**overrides) -> EngineProfile:
    values = {"gpus": 1, "gpu_name": "NVIDIA H200", "gpu_memory_gib": 139.8, "lora_names": ("dpo", "lightx2v"),
              "pinned_loras": None}
    return EngineProfile(**{**values, **overrides})


def test_engines_take_only_sizes_their_node_allows():
    small = _profile(max_size="512p")
    assert small.can_run(JobNeeds(size_pixels("512p"), {}))
    assert small.can_run(JobNeeds(size_pixels("832x480"), {}))
    assert not small.can_run(JobNeeds(size_pixels("704p"), {}))
    assert _profile().can_run(JobNeeds(size_pixels("1280x704"), {}))


def test_fp8_engines_take_only_their_pinned_loras():
    fp8 = _profile(pinned_loras={"lightx2v": 0.8, "dpo": 1.0})
    fast = JobNeeds.from_spec({"preset": "fast", "size": "512p", "loras": None})
    assert fast.loras == {"lightx2v": 0.8, "dpo": 1.0}
    assert fp8.fp8 and fp8.can_run(fast)
    assert not fp8.can_run(JobNeeds.from_spec({"preset": "quality", "size": "512p", "loras": None}))
    assert not fp8.can_run(JobNeeds(size_pixels("512p"), {"lightx2v": 0.5, "dpo": 1.0}))
    assert _profile().can_run(JobNeeds(size_pixels("512p"), {"lightx2v": 0.5}))
    assert not _profile(lora_names=()).can_run(JobNeeds(size_pixels("512p"), {"lightx2v": 0.5}))
