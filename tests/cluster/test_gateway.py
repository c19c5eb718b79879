"""The gateway on a real multi-node Ray cluster: fair dispatch, cancel, node loss, new nodes, gateway crash, a full
disk at the gateway.

Every request is raw HTTP to the gateway process; the engines are real Ray actors running the tiny checkpoint on
stub-GPU nodes. The tests share one cluster and gateway (conftest.py) and run in file order.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter

import pytest
from cluster_helpers import (
    LONG_SPEC,
    SHORT_SPEC,
    THREE_WINDOWS,
    fill_disk,
    fill_files,
    small_tmpfs,
    wait_until,
)

from backend.worker.thumbnails import window_thumbnails

# THREE_WINDOWS' windows as the result holds them: 13 frames, then 8 new ones after 5 of history, twice.
WINDOW_FRAMES = [(0, 13), (13, 8), (21, 8)]


def _engine_of(gateway, job_id: str) -> dict:
    return next(engine for engine in gateway.health()["cluster"]["engines"] if engine["job_id"] == job_id)


def _idle_engines(gateway) -> int:
    return gateway.health()["cluster"]["engines_idle"]


def _window_previews(gateway, job_id: str) -> list[tuple[int, int, int]]:
    """(window, first frame, frames) of every output window preview the web page shows for the job."""
    job_dir = gateway.worker.data_dir / "jobs" / job_id
    return [(window.index, window.first_frame, window.frames) for window in window_thumbnails(job_dir)
            if window.thumbs and all((job_dir / "thumbs" / thumb.name).is_file() for thumb in window.thumbs)]


@pytest.fixture(scope="module")
def uninterrupted(cluster, media) -> list[bytes]:
    """The frames of THREE_WINDOWS run from start to end on one engine: what every resumed run must equal."""
    gateway = cluster.gateway
    wait_until(lambda: _idle_engines(gateway) == 2, timeout=300, interval=0.5)
    job_id = gateway.submit(THREE_WINDOWS, media, "reference")
    final = gateway.wait(job_id, timeout=600)
    assert final["status"] == "succeeded" and final["attempts"] == 1, final
    return gateway.frames(job_id)


def test_health_shows_the_nodes_gpus_and_engines(cluster, uninterrupted):
    health = cluster.gateway.health()
    assert health["device"] == "ray" and health["gpu"] is None
    assert health["model"]["loaded"] and "lightx2v" in health["model"]["loras"]  # as the engines found them
    info = health["cluster"]
    assert info["connected"] and info["gpu_resource"] == "gpu_stub" and info["gpus"] == 2
    assert info["engines_idle"] == 2 and info["engines_busy"] == 0
    gpu_nodes = [node for node in info["nodes"] if node["gpus"] > 0]
    assert sorted(node["id"] for node in gpu_nodes) == sorted(node.node_id for node in cluster.gpu_nodes)
    assert all(node["engines"] == 1 and node["problem"] is None for node in gpu_nodes)
    assert {engine["node_id"] for engine in info["engines"]} == {node["id"] for node in gpu_nodes}
    assert all(engine["performance"]["fp8_linear"] is False for engine in info["engines"])
    assert info["queue"] == {"queued": 0, "running": 0, "clients": 0, "unplaceable": 0}


def test_twenty_jobs_of_three_clients_run_once_each_interleaved(cluster, media):
    gateway = cluster.gateway
    # Two long jobs hold both engines while the twenty are queued, so the order they start in is the scheduler's.
    blockers = [gateway.submit({**LONG_SPEC, "seed": seed}, media, "blocker") for seed in (1, 2)]
    wait_until(lambda: all(gateway.status(job)["status"] == "running" for job in blockers), timeout=120)
    owner: dict[str, str] = {}
    for client, count in (("anna", 10), ("ben", 6), ("chloe", 4)):  # anna's batch first, chloe's shots last
        for seed in range(count):
            owner[gateway.submit({**SHORT_SPEC, "seed": seed}, media, client)] = client
    wait_until(lambda: gateway.health()["cluster"]["queue"]["clients"] == 4, timeout=30)
    # Queue positions follow the turns too: chloe's first shot is third in line, not nineteenth.
    first_of = {client: next(job for job, owner_ in owner.items() if owner_ == client) for client in ("ben", "chloe")}
    wait_until(lambda: [gateway.status(first_of[client])["queue_position"] for client in ("ben", "chloe")] == [1, 2],
               timeout=30)
    for job in blockers:
        gateway.cancel(job)

    finals = {job: gateway.wait(job, timeout=900) for job in owner}
    for final in finals.values():
        assert final["status"] == "succeeded", final
        assert final["attempts"] == 1 and final["result"]["frames"] == 9, final
    dispatched = [event["job"] for event in gateway.log_events("job dispatched") if event["job"] in owner]
    assert sorted(dispatched) == sorted(owner), "every job dispatched exactly once"
    order = [owner[job] for job in dispatched]
    # Fair share: with two engines the clients take turns, so chloe's four shots do not wait for anna's ten,
    # and ben's six are done before anna's batch.
    assert Counter(order[:12]) == {"anna": 4, "ben": 4, "chloe": 4}, order
    last = {client: max(index for index, owner_ in enumerate(order) if owner_ == client) for client in set(order)}
    assert last["chloe"] < last["ben"] < last["anna"] == 19, order
    for job in blockers:
        assert gateway.status(job)["status"] == "canceled"


def test_cancel_stops_the_job_on_its_engine_within_one_step(cluster, media):
    gateway = cluster.gateway
    job = gateway.submit({**LONG_SPEC, "seed": 3}, media, "anna")
    wait_until(lambda: (gateway.status(job)["detail"]["step"] or 0) >= 3, timeout=120)
    gateway.cancel(job)
    final = gateway.wait(job, timeout=120)
    assert final["status"] == "canceled", final
    cancel = final["timings"]["cancel"]
    assert cancel["asked_at_step"] >= 3 and cancel["stopped_at_step"] - cancel["asked_at_step"] <= 1, cancel
    assert final["windows_done"] < 6
    # The engine is free again and runs the next job.
    after = gateway.submit(SHORT_SPEC, media, "anna")
    assert gateway.wait(after, timeout=300)["status"] == "succeeded"


def test_a_node_killed_mid_job_loses_nothing_and_a_new_node_takes_waiting_jobs(cluster, media, uninterrupted):
    gateway = cluster.gateway
    # The blocker holds one engine, so once the victim's node is gone its job and the others wait for a new node.
    blocker = gateway.submit({**LONG_SPEC, "seed": 41}, media, "blocker")
    victim = gateway.submit(THREE_WINDOWS, media, "anna")
    wait_until(lambda: gateway.status(victim)["windows_done"] >= 1, timeout=300, interval=0.05)
    killed = _engine_of(gateway, victim)["node_id"]
    assert _engine_of(gateway, blocker)["node_id"] != killed
    cluster.kill_node(killed)
    waiting = [gateway.submit({**SHORT_SPEC, "seed": seed}, media, "ben") for seed in (21, 22)]
    wait_until(lambda: gateway.status(victim)["status"] == "queued", timeout=60)

    joined = cluster.add_gpu_node()
    cluster.gpu_nodes.append(joined)
    wait_until(lambda: any(engine["node_id"] == joined.node_id and engine["state"] == "busy"
                           for engine in gateway.health()["cluster"]["engines"]), timeout=300, interval=0.2)
    gateway.cancel(blocker)

    final = gateway.wait(victim, timeout=600)
    assert final["status"] == "succeeded", final
    assert final["attempts"] == 2 and final["timings"]["resumed_windows"] >= 1, final
    assert final["timings"]["node_id"] != killed
    assert gateway.frames(victim) == uninterrupted, "resumed frames equal an uninterrupted run, each once"
    # The web page previews every window, those of the lost node's attempt and those of the new one.
    assert _window_previews(gateway, victim) == [(index, *frames) for index, frames in enumerate(WINDOW_FRAMES)]
    for job in waiting:
        assert gateway.wait(job, timeout=300)["status"] == "succeeded"
    assert gateway.status(blocker)["status"] == "canceled"
    dispatched = [event for event in gateway.log_events("job dispatched") if event["job"] in [victim, *waiting]]
    assert [event["node"] for event in dispatched].count(killed) == 1, "the victim's first attempt only"
    assert joined.node_id in {event["node"] for event in dispatched}, "the new node took waiting jobs"
    wait_until(lambda: _idle_engines(gateway) == 2, timeout=300, interval=0.5)


def test_a_gateway_killed_with_kill_9_and_restarted_finishes_every_job(cluster, media, uninterrupted):
    gateway = cluster.gateway
    long_job = gateway.submit(THREE_WINDOWS, media, "anna")
    short = [gateway.submit({**SHORT_SPEC, "seed": seed}, media, "ben") for seed in (31, 32, 33)]
    wait_until(lambda: gateway.status(long_job)["windows_done"] >= 1, timeout=300, interval=0.05)
    cluster.crash_gateway()

    restarted = cluster.start_gateway()
    final = restarted.wait(long_job, timeout=600)
    assert final["status"] == "succeeded" and final["attempts"] == 2, final
    assert final["timings"]["resumed_windows"] >= 1
    assert restarted.frames(long_job) == uninterrupted
    for job in short:
        status = restarted.wait(job, timeout=300)
        assert status["status"] == "succeeded" and status["result"]["frames"] == 9, status
    # The engines outlived the gateway with their models loaded: the new one adopted them, placed none.
    adopted = restarted.log_events("engine adopted")
    assert len({event["engine"] for event in adopted}) >= 2
    placed_after_restart = [event for event in restarted.log_events("engine placed") if event["ts"] > adopted[0]["ts"]]
    assert placed_after_restart == []


@pytest.fixture
def small_disk(tmp_path):
    """A 48 MiB tmpfs of at most 2048 files for a gateway's --data (mounted by the test; needs root)."""
    with small_tmpfs(tmp_path / "disk", files=2048) as mount_point:
        yield mount_point


def _waiting_for_disk(gateway, job: str) -> dict:
    """The job back in the queue after a full disk, once the gateway has paused dispatch for it."""
    status = wait_until(lambda: (status := gateway.status(job))["status"] == "queued" and status, timeout=120)
    assert status["detail"]["phase"] == "waiting_for_disk", status
    storage = wait_until(lambda: ((storage := gateway.health()["storage"])["runner_paused"] or "").startswith(
        "waiting for disk space") and storage, timeout=30)
    assert storage["accepting_jobs"] is False, storage
    return status


def test_a_full_disk_at_the_gateway_requeues_the_job_and_resumes_when_there_is_room(cluster, media, uninterrupted,
                                                                                   small_disk, tmp_path):
    # A gateway whose --data is on a small disk takes over the engines (the crashed one's are adopted, still loaded).
    wait_until(lambda: _idle_engines(cluster.gateway) == 2, timeout=300, interval=0.5)
    cluster.crash_gateway()
    gateway = cluster.start_gateway(small_disk / "data", "--min-free-mb", "4", log_path=tmp_path / "gateway.log")
    requeued = "job interrupted by a full disk; requeued to resume when there is room"
    try:
        job = gateway.submit(THREE_WINDOWS, media, "anna")
        wait_until(lambda: gateway.status(job)["windows_done"] >= 1, timeout=300, interval=0.05)

        # The disk takes no more files: the next window streamed back from the engine cannot be stored (ENOSPC).
        files = fill_files(small_disk / "files")
        status = _waiting_for_disk(gateway, job)
        assert 1 <= status["windows_done"] < 3, status
        [event] = gateway.log_events(requeued)
        assert event["job"] == job and ".safetensors" in event["error"] and "No space left" in event["error"], event
        time.sleep(3)  # three control steps: dispatch stays paused while the disk is short of room
        assert gateway.status(job)["status"] == "queued"
        assert len([event for event in gateway.log_events("job dispatched") if event["job"] == job]) == 1

        # Room again: the job resumes after its stored windows. Then the disk fills up byte by byte: now the store's
        # own commits fail too (SQLITE_FULL), and the gateway retries until it can record the requeue.
        shutil.rmtree(files)
        done = status["windows_done"]
        wait_until(lambda: gateway.status(job)["windows_done"] > done, timeout=300, interval=0.05)
        filler = fill_disk(small_disk)
        wait_until(lambda: gateway.health()["storage"]["runner_paused"], timeout=300, interval=0.2)
        with open(filler, "r+b") as handle:  # room for the store's own writes, still under --min-free-mb
            handle.truncate(os.path.getsize(filler) - 2 * 2**20)
        _waiting_for_disk(gateway, job)

        filler.unlink()
        final = gateway.wait(job, timeout=600)
        assert final["status"] == "succeeded" and final["attempts"] == 3, final
        assert final["timings"]["resumed_windows"] >= 2 and final["result"]["frames"] == 29, final
        assert gateway.frames(job) == uninterrupted, "frames of an uninterrupted run, each delivered once"
        assert _window_previews(gateway, job) == [(index, *frames) for index, frames in enumerate(WINDOW_FRAMES)]
        assert gateway.health()["storage"]["runner_paused"] is None
        assert [event["job"] for event in gateway.log_events(requeued)] == [job, job]
    finally:
        gateway.stop()  # before the tmpfs under its --data is unmounted
