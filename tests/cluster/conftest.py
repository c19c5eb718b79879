"""One real multi-node Ray cluster for the module (several raylets on this machine), and a gateway in front of it.

Starting raylets and loading engines dominates these tests on a 2-core machine, so the cluster and the gateway
are shared by the tests of ``test_gateway.py``; each test leaves two stub-GPU nodes behind it. Ray's node health
checks run every half second here, so a killed node is noticed in about two seconds instead of the default half
minute.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster_helpers import GPU, OBJECT_STORE_BYTES, Gateway, Media, write_media  # noqa: E402

FAST_NODE_DEATH = {"health_check_initial_delay_ms": 1000, "health_check_period_ms": 500,
                   "health_check_timeout_ms": 1000, "health_check_failure_threshold": 3}


class RayTestCluster:
    """A ``ray.cluster_utils.Cluster``: a CPU-only head plus stub-GPU nodes, and the gateway the tests use."""

    def __init__(self, checkpoint: Path, folder: Path):
        from ray.cluster_utils import Cluster

        self.checkpoint = checkpoint
        self.folder = folder
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "object_store_memory": OBJECT_STORE_BYTES, "include_dashboard": False,
            "_system_config": FAST_NODE_DEATH})
        self.gpu_nodes = [self.add_gpu_node() for _ in range(2)]
        self.gateway: Gateway | None = None

    @property
    def address(self) -> str:
        return self.cluster.address

    def add_gpu_node(self):
        node = self.cluster.add_node(num_cpus=1, resources={GPU: 1}, object_store_memory=OBJECT_STORE_BYTES)
        self.cluster.wait_for_nodes()
        return node

    def kill_node(self, node_id: str) -> None:
        """Kill a stub-GPU node at once (no graceful shutdown), as a machine that loses power."""
        node = next(node for node in self.gpu_nodes if node.node_id == node_id)
        self.cluster.remove_node(node, allow_graceful=False)
        self.gpu_nodes.remove(node)

    def start_gateway(self, data: Path | None = None, *extra: str, log_path: Path | None = None) -> Gateway:
        """Start a gateway on this cluster (by default on the module's --data); it adopts the engines a gateway
        killed before it left."""
        self.gateway = Gateway(self.checkpoint, data or self.folder / "data", self.address, *extra,
                               log_path=log_path).start()
        return self.gateway

    def crash_gateway(self) -> None:
        """``kill -9`` the gateway: its jobs stay 'running' in its store, its engines stay loaded."""
        os.kill(self.gateway.worker.pid, signal.SIGKILL)
        self.gateway.worker.process.wait(10)
        self.gateway.stop()

    def shutdown(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
        self.cluster.shutdown()


@pytest.fixture(scope="module")
def cluster(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    test_cluster = RayTestCluster(tiny_checkpoint, tmp_path_factory.mktemp("ray_cluster"))
    try:
        test_cluster.start_gateway()
        yield test_cluster
    finally:
        test_cluster.shutdown()


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    return write_media(tmp_path_factory.mktemp("cluster_media"))
