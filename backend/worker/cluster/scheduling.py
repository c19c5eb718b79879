"""Which queued job a free engine takes next: fair share across clients, and only jobs the engine can run.

Fairness: clients are the ``X-Client-Id`` namespaces. The next job goes to the client with the fewest jobs
running, ties to the one served longest ago, and within a client to its oldest job. So one artist's 40-shot batch
and another's single shot alternate instead of queueing behind each other, and a client with a job on every GPU
waits for the others to get theirs.

What an engine can run (``EngineProfile.can_run``): a job's size must fit the engine's largest size (the node
label ``scail-max-size``, set on nodes whose GPUs are too small for 704p), and an fp8 engine runs only jobs whose
LoRAs are the ones it was converted with. No Ray here: the dispatcher feeds it plain records.
"""

from __future__ import annotations

import re
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from backend.scail2.accel.options import active_loras

from ..store import QueuedJob

# The engine's named size classes as pixel counts (either orientation).
NAMED_PIXELS = {"512p": 512 * 896, "704p": 704 * 1280}
_SIZE = re.compile(r"^(\d+)x(\d+)$")
# Node labels an operator sets with `ray start --labels` (docs/CLUSTER.md).
MAX_SIZE_LABEL = "scail-max-size"
FP8_LABEL = "scail-fp8"


def size_pixels(size: str) -> int:
    """Pixels per frame of a job size: '512p', '704p' or '<W>x<H>'; ValueError otherwise."""
    size = size.strip().lower()
    if size in NAMED_PIXELS:
        return NAMED_PIXELS[size]
    match = _SIZE.match(size)
    if not match:
        raise ValueError(f"{size!r} is not 512p, 704p or <W>x<H>")
    return int(match.group(1)) * int(match.group(2))


@dataclass(frozen=True)
class JobNeeds:
    """What a job asks of an engine: its frame size in pixels and the LoRA strengths it runs with."""

    pixels: int
    loras: dict[str, float]

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> JobNeeds:
        loras = spec.get("loras")
        if loras is None:
            from backend.scail2 import SamplingSettings

            loras = SamplingSettings.from_preset(spec.get("preset") or "fast").loras
        return cls(pixels=size_pixels(spec.get("size") or "512p"), loras=active_loras(loras))


@dataclass(frozen=True)
class EngineProfile:
    """What an engine reported once loaded, plus the limits its node's labels set."""

    gpus: int
    gpu_name: str | None
    gpu_memory_gib: float | None
    lora_names: tuple[str, ...]
    pinned_loras: dict[str, float] | None  # fp8 engines: the only strengths they run
    performance: dict[str, Any] = field(default_factory=dict)
    max_size: str | None = None  # node label scail-max-size
    load_s: float | None = None

    @property
    def fp8(self) -> bool:
        return self.pinned_loras is not None

    def can_run(self, needs: JobNeeds) -> bool:
        if self.max_size is not None and needs.pixels > size_pixels(self.max_size):
            return False
        if not set(needs.loras) <= set(self.lora_names):
            return False
        return self.pinned_loras is None or active_loras(self.pinned_loras) == needs.loras


class FairQueue:
    """Orders queued jobs fairly across client namespaces; remembers whom it served last."""

    def __init__(self) -> None:
        self._last_served: dict[str, int] = {}
        self._tick = 0

    def order(self, queued: Iterable[QueuedJob], running: Mapping[str, int]) -> list[QueuedJob]:
        """Every queued job in the order engines would take them if each could run any job.

        ``running``: jobs running per namespace now. Each job placed in the order counts as running for the
        ones after it, so the order interleaves the clients by fair share.
        """
        heads: dict[str, deque[QueuedJob]] = {}
        for job in sorted(queued, key=lambda job: job.seq):
            heads.setdefault(job.namespace, deque()).append(job)
        load = Counter(running)
        last = dict(self._last_served)
        tick = self._tick
        ordered: list[QueuedJob] = []
        while heads:
            namespace = min(heads, key=lambda ns: (load[ns], last.get(ns, -1), heads[ns][0].seq))
            jobs = heads[namespace]
            ordered.append(jobs.popleft())
            if not jobs:
                del heads[namespace]
            load[namespace] += 1
            tick += 1
            last[namespace] = tick
        return ordered

    def pick(self, queued: Iterable[QueuedJob], running: Mapping[str, int],
             can_run: Callable[[QueuedJob], bool]) -> QueuedJob | None:
        """The first job in the fair order that ``can_run`` accepts, or None."""
        for job in self.order(queued, running):
            if can_run(job):
                return job
        return None

    def served(self, namespace: str) -> None:
        """A job of ``namespace`` was handed to an engine."""
        self._tick += 1
        self._last_served[namespace] = self._tick
