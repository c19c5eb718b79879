"""The gateway's side of a Ray cluster: engines on every GPU, fair dispatch, windows persisted as they arrive.

``RayDispatcher`` is the ``JobExecutor`` of ``scail-worker serve --ray``. One control thread, once a second
or when woken:

1. reads the cluster's alive nodes (their GPUs, ``scail-*`` labels, whether they drain);
2. keeps one engine actor per ``--gpus-per-job`` GPUs on every node: creates the missing ones (pinned to the node,
   detached, named by a fingerprint of their configuration), notices loads that finished or failed, pings the
   idle ones, releases the ones of draining nodes and stale configurations;
3. hands each idle engine the next queued job it can run, in fair-share order across clients (``scheduling``);
4. optionally releases long-idle engines and asks the autoscaler for GPUs while jobs wait.

Each running job has a thread that sends the engine the job's uploads and already-finished windows, then reads
the engine's stream: progress goes to the store, every window is saved and committed the moment it arrives,
and the final ``JobOutcome`` decides the status. The result is assembled from the stored windows, so a job that
moved between engines is delivered from the windows each one finished, exactly once. An engine or node lost
mid-job puts the job back in the queue (its windows stay); the next engine resumes after them. A full disk at the
gateway is handled as the single-machine runner handles it (``runner.StorageGuard``): the job goes back to the
queue to wait for room, and no job is dispatched while the disk under --data is short of --min-free-mb.

A gateway killed mid-job leaves its jobs ``running`` in the store (``recover`` requeues them at the next start)
and its engines alive: the next gateway adopts the engines with its own configuration, interrupts whatever they
were running for the dead gateway, and dispatches again.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..engine import EngineConfig
from ..logs import get_logger
from ..runner import (
    Execution,
    ProgressTracker,
    StorageGuard,
    WindowSink,
    describe_failure,
    finish_job,
    window_type,
    write_result,
)
from ..schemas import ClusterInfo, ClusterNode, ClusterQueue, EngineInfo
from ..storage import is_storage_full
from ..store import MAX_ATTEMPTS, JobRecord, JobStore, QueuedJob
from ..thumbnails import InputPreview, write_input_thumbnails, write_quietly
from ..uploads import UploadLimits
from .messages import JobOutcome, PhaseChange, WindowDone
from .scheduling import FP8_LABEL, MAX_SIZE_LABEL, EngineProfile, FairQueue, JobNeeds, size_pixels

log = get_logger("scail.worker.cluster")

ENGINE_PREFIX = "scail-engine"
POLL_S = 1.0
SLOW_STEP_S = 2.0  # a control step longer than this is logged with where its time went
# How long adoption waits for an engine left by an earlier gateway to answer.
ADOPT_TIMEOUT_S = 30.0
TRUE_LABELS = ("1", "true", "yes", "on")
FALSE_LABELS = ("0", "false", "no", "off")


@dataclass(frozen=True)
class DispatcherSettings:
    address: str  # Ray address (HOST:PORT, auto, ray://...)
    namespace: str
    engine: EngineConfig
    limits: UploadLimits
    gpu_resource: str = "GPU"
    keep_engines: bool = False
    engine_idle_s: float | None = None  # release engines idle this long (autoscaling); None: never
    max_engines: int = 0  # ask the autoscaler for GPUs for up to this many engines while jobs wait; 0: never
    poll_s: float = POLL_S
    orphan_timeout_s: float | None = 1800.0  # an engine no gateway called this long releases its GPUs
    load_retry_s: float = 60.0  # wait before placing an engine again on a node where one failed to load

    @classmethod
    def from_args(cls, args: argparse.Namespace, engine: EngineConfig, limits: UploadLimits) -> DispatcherSettings:
        return cls(address=args.ray, namespace=args.ray_namespace, engine=engine, limits=limits,
                   gpu_resource=args.gpu_resource, keep_engines=args.keep_engines,
                   engine_idle_s=args.engine_idle_minutes * 60 if args.engine_idle_minutes > 0 else None,
                   max_engines=args.max_engines)


@dataclass
class _Node:
    id: str
    address: str
    draining: bool
    gpus: float
    labels: dict[str, str]


@dataclass
class _Engine:
    name: str
    node_id: str
    handle: Any
    fingerprint: str
    state: str = "placing"
    since: float = field(default_factory=time.time)
    pending: Any = None  # the ObjectRef being waited for: describe() while placing or pinging, load() while loading
    profile: EngineProfile | None = None
    job_id: str | None = None
    jobs_done: int = 0
    error: str | None = None
    idle_since: float = field(default_factory=time.monotonic)

    def set_state(self, state: str) -> None:
        self.state, self.since = state, time.time()


class ClusterUnavailable(Exception):
    """The gateway cannot join its Ray cluster (no Ray installed, no cluster at that address)."""


class EngineLost(Exception):
    """The engine running a job (or its node) is gone."""


class RayDispatcher(StorageGuard):
    """Runs the store's jobs on engine actors of a Ray cluster (see the module docstring)."""

    def __init__(self, store: JobStore, settings: DispatcherSettings, ray: Any):
        from .engine_actor import EngineActor

        self.store = store
        self.settings = settings
        self._ray = ray
        self._actor_class = ray.remote(EngineActor)
        self._lock = threading.RLock()
        self._nodes: dict[str, _Node] = {}
        self._engines: dict[str, _Engine] = {}
        self._node_problems: dict[str, tuple[str, float]] = {}  # node id -> (message, retry after, monotonic)
        self._running: dict[str, tuple[str, str]] = {}  # job id -> (engine name, client namespace)
        self._job_threads: dict[str, threading.Thread] = {}
        self._fair = FairQueue()
        self._needs: dict[str, JobNeeds | None] = {}
        self._known_loras: set[str] | None = None
        self._unplaceable = 0
        self._requested_engines = 0
        self._connected = True
        self._snapshot: ClusterInfo | None = None
        self._fair_order: dict[str, int] = {}  # queued job id -> jobs ahead of it
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.job_finished = threading.Event()
        # Why no job is dispatched now (the gateway's disk is full), or None; engines report their own trouble.
        self.paused: str | None = None
        self._control = threading.Thread(target=self._control_loop, name="scail-ray-control", daemon=True)
        store.queue_order = self._queue_position  # status and the web page show the order jobs will start in

    @classmethod
    def connect(cls, store: JobStore, settings: DispatcherSettings) -> RayDispatcher:
        """Join the Ray cluster as a driver; ``ClusterUnavailable`` saying what to check when that fails."""
        try:
            import ray
        except ImportError as exc:
            raise ClusterUnavailable("--ray needs Ray on this machine and every GPU node: pip install "
                                     "'scail-motion[cluster]' (docs/CLUSTER.md)") from exc
        try:
            ray.init(address=settings.address, namespace=settings.namespace, log_to_driver=False,
                     logging_level=logging.WARNING, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ClusterUnavailable(f"cannot join the Ray cluster at --ray {settings.address}: {exc}. Start its "
                                     "head first (ray start --head, docs/CLUSTER.md)") from exc
        log.info("joined the Ray cluster", extra={"address": settings.address, "namespace": settings.namespace,
                                                  "resources": ray.cluster_resources()})
        return cls(store, settings, ray)

    # -- JobExecutor --------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._control.start()

    def notify(self) -> None:
        self._wake.set()

    def cancel(self, job_id: str) -> None:
        with self._lock:
            entry = self._running.get(job_id)
            engine = self._engines.get(entry[0]) if entry else None
        if engine is not None:
            engine.handle.cancel.remote(job_id)

    def available_loras(self) -> dict[str, None] | None:
        with self._lock:
            return None if self._known_loras is None else dict.fromkeys(self._known_loras)

    def pinned_loras(self) -> dict[str, float] | None:
        """The common pinned set when every loaded engine is fp8 with the same one; else None (the scheduler
        then sends each job to an engine that runs its LoRAs)."""
        with self._lock:
            profiles = [engine.profile for engine in self._engines.values() if engine.profile is not None]
        pinned = {json.dumps(profile.pinned_loras, sort_keys=True) for profile in profiles}
        if not profiles or len(pinned) != 1 or profiles[0].pinned_loras is None:
            return None
        return dict(profiles[0].pinned_loras)

    def _queue_position(self, job: JobRecord) -> int:
        """The job's place in the fair-share order of the last control step (a job queued since goes last)."""
        order = self._fair_order
        return order.get(job.id, len(order))

    def cluster_info(self) -> ClusterInfo:
        return self._snapshot or self._build_snapshot()

    def stop(self, timeout: float = 60.0) -> None:
        """Interrupt running jobs (they go back to the queue), stop the control thread, release the engines
        unless --keep-engines, and leave the cluster."""
        self._stop.set()
        self._wake.set()
        with self._lock:
            busy = [engine for engine in self._engines.values() if engine.job_id is not None]
            threads = list(self._job_threads.values())
        for engine in busy:
            engine.handle.interrupt.remote()
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._control.is_alive():
            self._control.join(max(0.0, deadline - time.monotonic()))
        if not self.settings.keep_engines:
            with self._lock:
                engines = list(self._engines.values())
            for engine in engines:
                self._kill(engine)
            if self.settings.max_engines:
                self._request_engines(0)
        self._ray.shutdown()

    # -- the control loop ---------------------------------------------------------------------------------------

    def _control_loop(self) -> None:
        try:
            self._adopt()
        except Exception:
            log.exception("adopting the engines of an earlier gateway failed")
        steps = [self._refresh_nodes, self._poll_engines, self._place_engines, self._dispatch, self._release_idle]
        if self.settings.max_engines:
            steps.append(self._request_capacity)
        steps.append(self._update_snapshot)
        while not self._stop.is_set():
            seconds: dict[str, float] = {}
            try:
                for step in steps:
                    started = time.monotonic()
                    step()
                    seconds[step.__name__.strip("_")] = round(time.monotonic() - started, 3)
                self._connected = True
            except Exception:
                self._connected = False
                log.exception("cluster control step failed")
            if sum(seconds.values()) > SLOW_STEP_S:
                log.warning("slow cluster control step", extra={"seconds": seconds})
            self._wake.wait(self.settings.poll_s)
            self._wake.clear()

    def _adopt(self) -> None:
        """Take over the engines an earlier gateway of this namespace left running (it crashed, or stopped with
        --keep-engines): their models are loaded, so a restart costs no reload."""
        from backend import __version__

        ray = self._ray
        for name in ray.util.list_named_actors():
            if not name.startswith(f"{ENGINE_PREFIX}-"):
                continue
            try:
                handle = ray.get_actor(name)
                info = ray.get(handle.describe.remote(), timeout=ADOPT_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - dead or unreachable: nothing to adopt
                log.warning("an earlier engine did not answer; not adopted", extra={"engine": name,
                                                                                  "error": str(exc)})
                continue
            engine = _Engine(name, info["node_id"], handle, info["fingerprint"], state="loading")
            if info["version"] != __version__:
                log.warning("an earlier engine runs another version; released",
                            extra={"engine": name, "version": info["version"], "gateway_version": __version__})
                self._kill(engine)
                continue
            if info["job"]:
                # Its job belonged to the dead gateway; the store requeued it (recover) and it runs again here.
                handle.interrupt.remote()
            engine.pending = handle.load.remote()  # loaded already: answers at once with its profile
            with self._lock:
                self._engines[name] = engine
            log.info("engine adopted", extra={"engine": name, "node": info["node_id"], "interrupted": info["job"]})

    def _refresh_nodes(self) -> None:
        nodes = {}
        for node in self._ray.nodes():
            if not node.get("Alive"):
                continue
            labels = {key: str(value) for key, value in (node.get("Labels") or {}).items()
                      if key.startswith("scail-")}
            nodes[node["NodeID"]] = _Node(node["NodeID"], node.get("NodeManagerAddress", ""), False,
                                          float((node.get("Resources") or {}).get(self.settings.gpu_resource, 0.0)),
                                          labels)
        for node_id in _draining_nodes():
            if node_id in nodes:
                nodes[node_id].draining = True
        with self._lock:
            self._nodes = nodes
            for engine in list(self._engines.values()):
                if engine.node_id not in nodes and engine.job_id is None:
                    # Its node is gone (the job thread of a busy one notices by itself).
                    log.warning("engine lost with its node", extra={"engine": engine.name, "node": engine.node_id})
                    self._engines.pop(engine.name, None)

    def _poll_engines(self) -> None:
        """Move engines along placing -> loading -> idle as their calls answer; ping the idle ones."""
        ray = self._ray
        with self._lock:
            for engine in self._engines.values():
                if engine.pending is None and engine.state == "idle":
                    engine.pending = engine.handle.describe.remote()
            waiting = {engine.pending: engine for engine in self._engines.values() if engine.pending is not None}
        if not waiting:
            return
        ready, _ = ray.wait(list(waiting), num_returns=len(waiting), timeout=0)
        for ref in ready:
            engine = waiting[ref]
            with self._lock:
                engine.pending = None
            try:
                answer = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                self._engine_failed(engine, _task_error_message(exc))
                continue
            except ray.exceptions.RayError as exc:
                self._engine_failed(engine, f"the engine died ({type(exc).__name__})")
                continue
            with self._lock:
                if engine.state == "placing":
                    engine.set_state("loading")
                    engine.pending = engine.handle.load.remote()
                elif engine.state == "loading":
                    engine.profile = answer
                    engine.idle_since = time.monotonic()
                    engine.set_state("idle")
                    names = set(answer.lora_names)
                    self._known_loras = names if self._known_loras is None else self._known_loras | names
                    self._node_problems.pop(engine.node_id, None)
                    log.info("engine ready", extra={"engine": engine.name, "node": engine.node_id,
                                                    "gpu": answer.gpu_name, "fp8": answer.fp8,
                                                    "load_s": answer.load_s})

    def _engine_failed(self, engine: _Engine, message: str) -> None:
        log.error("engine failed", extra={"engine": engine.name, "node": engine.node_id, "error": message})
        with self._lock:
            self._engines.pop(engine.name, None)
            if engine.state in ("placing", "loading"):
                self._node_problems[engine.node_id] = (message, time.monotonic() + self.settings.load_retry_s)
        self._kill(engine)

    def _place_engines(self) -> None:
        """One engine per --gpus-per-job GPUs of every alive, non-draining node (on demand with
        --engine-idle-minutes); release the idle engines of draining nodes and of stale configurations."""
        per_job = self.settings.engine.gpus
        with self._lock:
            nodes = list(self._nodes.values())
            engines = list(self._engines.values())
        for engine in engines:
            node = self._nodes.get(engine.node_id)
            stale = node is None or node.draining or engine.fingerprint != self._fingerprint(node)
            if stale and engine.job_id is None and engine.state in ("idle", "placing"):
                self._release(engine, "its node drains" if node is not None and node.draining else
                              "its configuration changed")
        demand = None
        if self.settings.engine_idle_s is not None:
            with self._lock:
                ready = sum(engine.state in ("placing", "loading", "idle") for engine in self._engines.values())
            demand = len([job for job in self.store.queued() if job.id not in self._running]) - ready
        for node in nodes:
            capacity = int(node.gpus // per_job) if node.gpus >= per_job else 0
            if node.draining or capacity == 0:
                continue
            problem = self._node_problems.get(node.id)
            if problem is not None and problem[1] > time.monotonic():
                continue
            try:
                config, max_size = self._node_config(node)
            except ValueError as exc:
                with self._lock:
                    self._node_problems[node.id] = (str(exc), time.monotonic() + self.settings.load_retry_s)
                continue
            fingerprint = self._fingerprint(node)
            with self._lock:
                mine = [engine for engine in self._engines.values()
                        if engine.node_id == node.id and engine.fingerprint == fingerprint]
                used = {engine.name for engine in self._engines.values() if engine.node_id == node.id}
            for _ in range(capacity - len(mine)):
                if demand is not None and demand <= 0:
                    break
                slot = next(index for index in range(capacity * 2 + len(used))
                            if f"{ENGINE_PREFIX}-{fingerprint}-{node.id[:12]}-{index}" not in used)
                name = f"{ENGINE_PREFIX}-{fingerprint}-{node.id[:12]}-{slot}"
                used.add(name)
                self._create_engine(name, node, config, max_size, fingerprint)
                if demand is not None:
                    demand -= 1

    def _create_engine(self, name: str, node: _Node, config: EngineConfig, max_size: str | None,
                       fingerprint: str) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        per_job = self.settings.engine.gpus
        options: dict[str, Any] = {
            "name": name, "lifetime": "detached", "get_if_exists": True, "max_concurrency": 4, "max_restarts": 0,
            "num_cpus": 0, "scheduling_strategy": NodeAffinitySchedulingStrategy(node.id, soft=False),
        }
        if self.settings.gpu_resource == "GPU":
            options["num_gpus"] = per_job
        else:
            options["resources"] = {self.settings.gpu_resource: per_job}
        handle = self._actor_class.options(**options).remote(config, self.settings.limits, max_size, fingerprint,
                                                             self.settings.orphan_timeout_s)
        engine = _Engine(name, node.id, handle, fingerprint)
        engine.pending = handle.describe.remote()
        with self._lock:
            self._engines[name] = engine
        log.info("engine placed", extra={"engine": name, "node": node.id, "address": node.address,
                                         "fp8": bool(config.performance.get("fp8_linear")), "max_size": max_size})

    def _node_config(self, node: _Node) -> tuple[EngineConfig, str | None]:
        """The engine configuration for ``node``: the gateway's, with the node's labels applied."""
        config = self.settings.engine
        fp8 = node.labels.get(FP8_LABEL)
        if fp8 is not None:
            if fp8.lower() not in TRUE_LABELS + FALSE_LABELS:
                raise ValueError(f"label {FP8_LABEL}={fp8!r}: use true or false")
            config = dataclasses.replace(config, performance={**config.performance,
                                                              "fp8_linear": fp8.lower() in TRUE_LABELS})
            config.check("--gpus-per-job")
        max_size = node.labels.get(MAX_SIZE_LABEL)
        if max_size is not None:
            try:
                size_pixels(max_size)
            except ValueError as exc:
                raise ValueError(f"label {MAX_SIZE_LABEL}: {exc}") from exc
        return config, max_size

    def _fingerprint(self, node: _Node) -> str:
        from backend import __version__

        try:
            config, max_size = self._node_config(node)
        except Exception:  # noqa: BLE001 - a node with bad labels gets no engine; any fingerprint will do
            return "invalid"
        text = json.dumps({"engine": dataclasses.asdict(config), "max_size": max_size, "version": __version__,
                           "limits": dataclasses.asdict(self.settings.limits)}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    # -- dispatch -----------------------------------------------------------------------------------------------

    def _needs_of(self, job: QueuedJob) -> JobNeeds | None:
        if job.id not in self._needs:
            try:
                self._needs[job.id] = JobNeeds.from_spec(job.spec)
            except Exception:  # noqa: BLE001 - validated at submission; never block the queue on it
                self._needs[job.id] = None
        return self._needs[job.id]

    def _can_run(self, profile: EngineProfile, job: QueuedJob) -> bool:
        needs = self._needs_of(job)
        return needs is None or profile.can_run(needs)

    def _dispatch(self) -> None:
        with self._lock:
            idle = [engine for engine in self._engines.values()
                    if engine.state == "idle" and engine.job_id is None and engine.profile is not None
                    and engine.node_id in self._nodes and not self._nodes[engine.node_id].draining]
            running = Counter(namespace for _, namespace in self._running.values())
            profiles = [engine.profile for engine in self._engines.values() if engine.profile is not None]
        queued = [job for job in self.store.queued() if job.id not in self._running]
        self._unplaceable = sum(not any(self._can_run(profile, job) for profile in profiles) for job in queued)
        live = {job.id for job in queued}
        self._needs = {job_id: needs for job_id, needs in self._needs.items() if job_id in live}
        waiting = self._room_to_start()
        if waiting is not None:  # the gateway could not store the jobs' windows: none starts until there is room
            self._pause(waiting, 0)
            idle = []
        for engine in sorted(idle, key=lambda engine: engine.name):
            while queued:
                choice = self._fair.pick(queued, running, lambda job, engine=engine: self._can_run(engine.profile,
                                                                                                   job))
                if choice is None:
                    break
                queued.remove(choice)
                job = self.store.claim(choice.id)
                if job is None:  # canceled or deleted since the query
                    continue
                self._fair.served(choice.namespace)
                running[choice.namespace] += 1
                self._start(engine, job)
                break
        self._fair_order = {job.id: index for index, job in enumerate(self._fair.order(queued, running))}

    def _start(self, engine: _Engine, job: JobRecord) -> None:
        thread = threading.Thread(target=self._drive, args=(engine, job), name=f"scail-job-{job.id[:8]}",
                                  daemon=True)
        with self._lock:
            engine.job_id = job.id
            engine.pending = None  # a ping in flight is superseded by the job's stream
            engine.set_state("busy")
            self._running[job.id] = (engine.name, job.namespace)
            self._job_threads[job.id] = thread
        log.info("job dispatched", extra={"job": job.id, "engine": engine.name, "node": engine.node_id,
                                          "attempt": job.attempts, "client": job.namespace[:12]})
        thread.start()

    def _release_idle(self) -> None:
        if self.settings.engine_idle_s is None:
            return
        now = time.monotonic()
        with self._lock:
            idle = [engine for engine in self._engines.values()
                    if engine.state == "idle" and now - engine.idle_since > self.settings.engine_idle_s]
        for engine in idle:
            self._release(engine, f"idle for {self.settings.engine_idle_s / 60:g} min")

    def _request_capacity(self) -> None:
        with self._lock:
            busy = sum(engine.job_id is not None for engine in self._engines.values())
        queued = len([job for job in self.store.queued() if job.id not in self._running])
        self._request_engines(min(self.settings.max_engines, busy + queued))

    def _request_engines(self, count: int) -> None:
        """Tell the Ray autoscaler to keep room for ``count`` engines (a floor it scales up to, never a cap)."""
        if count == self._requested_engines:
            return
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[{self.settings.gpu_resource: self.settings.engine.gpus}] * count)
        self._requested_engines = count
        log.info("asked the autoscaler for engines", extra={"engines": count})

    def _release(self, engine: _Engine, reason: str) -> None:
        log.info("engine released", extra={"engine": engine.name, "node": engine.node_id, "reason": reason})
        with self._lock:
            engine.set_state("releasing")
            self._engines.pop(engine.name, None)
        self._kill(engine)

    def _kill(self, engine: _Engine) -> None:
        try:
            self._ray.kill(engine.handle, no_restart=True)
        except Exception:  # noqa: BLE001 - already dead
            pass

    # -- one running job ----------------------------------------------------------------------------------------

    def _drive(self, engine: _Engine, job: JobRecord) -> None:
        """Run ``job`` on ``engine``: stream, persist, finish (or requeue when the engine is lost)."""
        ray = self._ray
        started = time.monotonic()
        tracker = ProgressTracker(self.store, job.id)
        job_dir = self.store.job_dir(job.id)
        outcome: JobOutcome | None = None
        lost: str | None = None
        disk_full: BaseException | None = None
        received = False
        transfers: list[tuple[int, float]] = []
        resumed = 0
        try:
            files = {name: (job_dir / "inputs" / name).read_bytes() for name in job.inputs.values()}
            resume = [window_type().load(path) for _, path in self.store.finished_windows(job.id)]
            resumed = len(resume)
            store_window = WindowSink(self.store, job.id, resume)
            stream = engine.handle.run.options(num_returns="streaming").remote(job.id, job.spec, job.inputs, files,
                                                                                resume)
            del files
            for ref in stream:
                item = ray.get(ref)
                if not received:
                    received = True
                    if self.store.is_cancel_requested(job.id):  # asked before the engine knew the job
                        engine.handle.cancel.remote(job.id)
                if isinstance(item, JobOutcome):
                    outcome = item
                elif isinstance(item, WindowDone):
                    store_window(item.window)
                    transfers.append((item.nbytes, time.time() - item.sent_at))
                elif isinstance(item, PhaseChange):
                    tracker.set_phase(item.phase)
                    self.store.update_progress(job.id, phase=item.phase)
                elif isinstance(item, InputPreview):
                    # Made at submission; written here only when a crash came between the commit and the previews.
                    write_quietly(write_input_thumbnails, job_dir, item)
                else:
                    tracker(item)  # the engine's ProgressEvent
            if outcome is None:
                raise EngineLost("the engine's stream ended without an outcome")
        except ray.exceptions.RayTaskError as exc:
            outcome = JobOutcome("failed", {"type": "internal", "field": None,
                                            "message": f"the engine failed: {_task_error_message(exc)}"})
        except (ray.exceptions.RayError, EngineLost) as exc:
            lost = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        except Exception as exc:  # noqa: BLE001 - the gateway's side failed
            if is_storage_full(exc):  # its disk: the job waits in the queue for room, as on a single machine
                engine.handle.interrupt.remote()
                disk_full = exc
            else:
                engine.handle.cancel.remote(job.id)
                outcome = JobOutcome("failed", describe_failure(exc))
        try:
            if disk_full is not None:
                tracker.finish()
                self._return_for_disk(job, disk_full)
            elif lost is not None or (outcome is not None and outcome.status == "interrupted"):
                tracker.finish()
                self._return_to_queue(job, engine, lost, attempt_used=received)
            else:
                self._finish(job, engine, outcome, tracker, started, resumed, transfers)
        except Exception:
            log.exception("finishing a job failed", extra={"job": job.id})
        finally:
            self._engine_free(engine, lost is not None)

    def _finish(self, job: JobRecord, engine: _Engine, outcome: JobOutcome, tracker: ProgressTracker,
                started: float, resumed: int, transfers: list[tuple[int, float]]) -> None:
        status, error, manifest = outcome.status, outcome.error, None
        if status == "canceled" and not self.store.is_cancel_requested(job.id):
            status = "failed"
            error = {"type": "internal", "field": None, "message": "the engine stopped the job unasked"}
        if status == "succeeded":
            try:
                tracker.set_phase("writing")
                self.store.update_progress(job.id, phase="writing")
                windows = [window_type().load(path).frames for _, path in self.store.finished_windows(job.id)]
                frames = np.concatenate(windows, axis=0) if windows else np.zeros((0, 1, 1, 3), np.uint8)
                if frames.shape[0] != outcome.frames:
                    raise RuntimeError(f"the engine made {outcome.frames} frames but the gateway holds "
                                       f"{frames.shape[0]} in {len(windows)} windows")
                manifest = write_result(frames, float(outcome.fps), self.store.job_dir(job.id))
            except Exception as exc:  # noqa: BLE001 - the job fails, unless the gateway's disk is full
                if is_storage_full(exc):
                    tracker.finish()
                    self._return_for_disk(job, exc)
                    return
                status, error = "failed", describe_failure(exc)
        tracker.finish()
        with self._lock:
            node = self._nodes.get(engine.node_id)
        extra = {"engine": engine.name, "node": node.address if node else "", "node_id": engine.node_id}
        if transfers:
            extra["window_transfer"] = {
                "windows": len(transfers), "bytes": sum(size for size, _ in transfers),
                "ms_mean": round(1000 * sum(seconds for _, seconds in transfers) / len(transfers), 2),
                "ms_max": round(1000 * max(seconds for _, seconds in transfers), 2)}
        execution = Execution(status, error=error, summary=outcome.summary, resumed_windows=resumed,
                              timings=outcome.timings)
        self._persist(job.id, status, lambda: finish_job(self.store, job, execution, manifest, tracker, started,
                                                         extra))
        self.job_finished.set()

    def _return_to_queue(self, job: JobRecord, engine: _Engine, lost: str | None, attempt_used: bool) -> None:
        """The run ended without an outcome of its own: back to the queue, resuming after its stored windows."""
        if self.store.is_cancel_requested(job.id):
            self._persist(job.id, "canceled", lambda: self.store.finish(job.id, "canceled"))
            self.job_finished.set()
        elif lost is not None and attempt_used and job.attempts >= MAX_ATTEMPTS:
            error = {"type": "crashed", "field": None,
                     "message": f"the engine running this job was lost {MAX_ATTEMPTS} times (node gone or out of "
                     f"memory); last: {lost}"}
            self._persist(job.id, "failed", lambda: self.store.finish(job.id, "failed", error=error))
            self.job_finished.set()
        else:
            self._persist(job.id, "queued", lambda: self.store.requeue(job.id, count_attempt=attempt_used))
        log.warning("job returned to the queue" if lost else "job interrupted; requeued",
                    extra={"job": job.id, "engine": engine.name, "node": engine.node_id, "reason": lost,
                           "windows_done": len(self.store.finished_windows(job.id))})

    def _engine_free(self, engine: _Engine, lost: bool) -> None:
        with self._lock:
            self._running.pop(engine.job_id or "", None)
            self._job_threads.pop(engine.job_id or "", None)
            engine.job_id = None
            engine.jobs_done += 1
            engine.idle_since = time.monotonic()
            if lost:
                self._engines.pop(engine.name, None)
            elif engine.name in self._engines and engine.state == "busy":
                engine.set_state("idle")
        if lost:
            self._kill(engine)  # a node that comes back must not keep a half-dead engine
        self._wake.set()

    # -- health -------------------------------------------------------------------------------------------------

    def _update_snapshot(self) -> None:
        self._snapshot = self._build_snapshot()

    def _build_snapshot(self) -> ClusterInfo:
        with self._lock:
            nodes, engines = list(self._nodes.values()), list(self._engines.values())
            problems = dict(self._node_problems)
            running = list(self._running.values())
        per_node = Counter(engine.node_id for engine in engines)
        addresses = {node.id: node.address for node in nodes}
        counts = self.store.counts()
        return ClusterInfo(
            address=self.settings.address, namespace=self.settings.namespace, connected=self._connected,
            gpu_resource=self.settings.gpu_resource, gpus_per_job=self.settings.engine.gpus,
            gpus=sum(node.gpus for node in nodes),
            engines_idle=sum(engine.state == "idle" for engine in engines),
            engines_busy=sum(engine.state == "busy" for engine in engines),
            engines_loading=sum(engine.state in ("placing", "loading") for engine in engines),
            nodes=[ClusterNode(id=node.id, address=node.address, alive=True, draining=node.draining, gpus=node.gpus,
                               labels=node.labels, engines=per_node[node.id],
                               problem=problems[node.id][0] if node.id in problems else None)
                   for node in sorted(nodes, key=lambda node: node.address)],
            engines=[_engine_info(engine, addresses.get(engine.node_id, "")) for engine in
                     sorted(engines, key=lambda engine: engine.name)],
            queue=ClusterQueue(queued=counts["queued"], running=counts["running"],
                               clients=len({namespace for _, namespace in running}
                                           | {job.namespace for job in self.store.queued()}),
                               unplaceable=self._unplaceable),
        )


def _engine_info(engine: _Engine, address: str) -> EngineInfo:
    profile = engine.profile
    return EngineInfo(
        name=engine.name, node_id=engine.node_id, node_address=address, state=engine.state,  # type: ignore[arg-type]
        gpus=profile.gpus if profile else 0, gpu_name=profile.gpu_name if profile else None,
        gpu_memory_gib=profile.gpu_memory_gib if profile else None, fp8=bool(profile and profile.fp8),
        pinned_loras=profile.pinned_loras if profile else None, max_size=profile.max_size if profile else None,
        job_id=engine.job_id, jobs_done=engine.jobs_done, since=engine.since,
        load_s=profile.load_s if profile else None, performance=profile.performance if profile else None,
        error=engine.error)


def _task_error_message(exc: Any) -> str:
    """The message of the exception an actor method raised (e.g. ``EngineStartError`` naming the checkpoint)."""
    cause = getattr(exc, "cause", None)
    if cause is not None:
        return str(cause)
    return str(exc).strip().splitlines()[-1]


def _draining_nodes() -> set[str]:
    """Ids of the nodes being drained (``ray drain-node``). Ray exposes this only through its internal state
    API; without it nothing is treated as draining."""
    try:
        from ray._private import state

        return set(state.state.get_draining_nodes())
    except Exception:  # noqa: BLE001 - an internal API: a Ray version without it just never drains
        return set()
