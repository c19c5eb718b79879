"""The gateway on a real multi-node Ray cluster: fair dispatch, cancel, node loss, new nodes, gateway crash.

Every request is raw HTTP to the gateway process; the engines are real Ray actors running the tiny checkpoint on
stub-GPU nodes. The tests share one cluster and gateway (conftest.py) and run in file order.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

import pytest
from cluster_helpers import LONG_SPEC, SHORT_SPEC, THREE_WINDOWS, wait_until


def _engine_of(gateway, job_id: str) -> dict:
    return next(engine for engine in gateway.health()["cluster"]["engines"] if engine["job_id"] == job_id)


def _idle_engines(gateway) -> int:
    return gateway.health()["cluster"]["engines_idle"]


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
    os.kill(gateway.worker.pid, signal.SIGKILL)
    gateway.worker.process.wait(10)
    gateway.stop()

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
