"""``scail-worker serve``: load the model once, recover the job store, then serve HTTP API v1.

Prints exactly one line ``SCAIL-WORKER READY http(s)://HOST:PORT`` on stdout (flushed) once the model is loaded
and the socket is accepting connections; ``--port 0`` picks a free port and the line carries the real one. When no
token is given (``--token`` or ``SCAIL_WORKER_TOKEN``), one is generated and printed once on stdout as
``SCAIL-WORKER TOKEN <token>``, before the ready line; logs (JSON lines on stderr) never contain it.

Exit codes: 0 after a clean stop (SIGINT/SIGTERM: the running job is put back in the queue), 2 for bad arguments,
3 when the checkpoint cannot be loaded, 4 when the job store under ``--data`` is damaged (the message says what
was found and what to do; nothing under ``--data`` is changed).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import threading
import time
from pathlib import Path

from .logs import get_logger
from .security import TokenGuard, generate_token, is_loopback, token_fingerprint

log = get_logger("scail.worker")

TOKEN_ENV = "SCAIL_WORKER_TOKEN"
READY_PREFIX = "SCAIL-WORKER READY"
TOKEN_PREFIX = "SCAIL-WORKER TOKEN"
RETENTION_SWEEP_S = 600.0
EXIT_STORE_DAMAGED = 4


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scail-worker", description="SCAIL-2 GPU worker service (HTTP API v1)")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="load the model and serve jobs")
    serve.add_argument("--checkpoint", required=True, type=Path, help="SCAIL-2 checkpoint folder (any layout)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    serve.add_argument("--port", type=int, default=8765, help="TCP port; 0 picks a free one (see the ready line)")
    serve.add_argument("--token", default=None,
                       help=f"bearer token clients must send (or set {TOKEN_ENV}, which keeps it out of `ps`); "
                       "generated and printed once when omitted; mandatory off loopback")
    serve.add_argument("--data", required=True, type=Path, help="job store folder (database, uploads, results)")
    serve.add_argument("--device", default="cuda", help="cpu, cuda or cuda:N")
    serve.add_argument("--gpus", type=int, default=1,
                       help="run each job across this many GPUs of the host, one process per GPU (sequence parallel)")
    from backend.scail2.accel.options import add_dtype_argument, add_performance_arguments

    add_dtype_argument(serve)
    serve.add_argument("--max-upload-mb", type=float, default=2048.0, help="largest accepted submission")
    serve.add_argument("--max-frames", type=int, default=2400, help="most frames per driving clip")
    serve.add_argument("--max-seconds", type=float, default=600.0, help="longest driving clip")
    serve.add_argument("--max-side", type=int, default=4096, help="largest input side in pixels")
    serve.add_argument("--max-decoded-gb", type=float, default=8.0,
                       help="memory budget for one decoded driving clip (frames x height x width x channels)")
    serve.add_argument("--ssl-certfile", type=Path, default=None, help="TLS certificate (PEM) to serve https")
    serve.add_argument("--ssl-keyfile", type=Path, default=None, help="TLS private key (PEM)")
    serve.add_argument("--min-free-mb", type=float, default=1024.0,
                       help="free disk space under --data below which submissions get 507 and no job starts")
    serve.add_argument("--retention-hours", type=float, default=72.0,
                       help="remove finished jobs' files after this many hours (0 keeps them)")
    serve.add_argument("--retention-gb", type=float, default=50.0,
                       help="disk budget for job files; oldest finished jobs go first (0: no budget)")
    serve.add_argument("--exit-with-parent", type=int, default=None, metavar="PID",
                       help="stop when process PID (the launcher, e.g. Blender) is gone")
    serve.add_argument("--sam3", type=Path, default=None,
                       help="SAM3 weights folder (facebook/sam3 layout): enables 'auto' masks and POST /v1/masks")
    serve.add_argument("--log-file", type=Path, default=None, help="also write the JSON log lines here")
    serve.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    performance = add_performance_arguments(serve)
    performance.add_argument("--loras", default=None, metavar="NAME=S,...",
                             help="LoRAs fused at start, e.g. lightx2v=0.8,dpo=1.0 (or none). With --fp8 they are "
                             "pinned: jobs must ask for exactly these (default with --fp8: the 'fast' preset's)")
    performance.add_argument("--warmup", default=None, metavar="SIZES",
                             help="sizes to compile before the ready line: 512p, 704p, <W>x<H>, each optionally "
                             ":FRAMES (default 512p on CUDA when compiling, none on CPU; 'none' disables)")
    cluster = serve.add_argument_group(
        "cluster", "gateway mode: this worker runs no model itself but hands its jobs to engine actors on a Ray "
        "cluster, one per GPU (docs/CLUSTER.md). --checkpoint is then the folder's path on every GPU node")
    cluster.add_argument("--ray", default=None, metavar="ADDRESS",
                         help="the Ray cluster's head (HOST:PORT), or auto for the cluster this machine joined "
                         "with ray start; the performance flags apply on every GPU")
    cluster.add_argument("--gpus-per-job", type=int, default=1, metavar="N",
                         help="GPUs per engine: each job runs sequence-parallel over N GPUs of one node")
    cluster.add_argument("--gpu-resource", default="GPU", metavar="NAME",
                         help="the Ray resource an engine takes N of (default GPU; a custom resource, e.g. "
                         "for a GPU type, also works)")
    cluster.add_argument("--ray-namespace", default="scail", metavar="NAME",
                         help="Ray namespace of the engine actors: one gateway per namespace")
    cluster.add_argument("--keep-engines", action="store_true",
                         help="on a clean stop leave the engines loaded for the next gateway (a crashed gateway "
                         "always leaves them; the next one adopts them)")
    cluster.add_argument("--engine-idle-minutes", type=float, default=0.0, metavar="M",
                         help="release an engine idle this long so an autoscaler can remove its node (0: never)")
    cluster.add_argument("--max-engines", type=int, default=0, metavar="N",
                         help="ask the Ray autoscaler for GPUs while jobs wait, up to N engines (0: never ask)")
    return parser


def _gateway_flag_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the flags of a gateway (--ray), or None."""
    if not args.checkpoint.is_absolute():
        return f"--checkpoint {args.checkpoint}: with --ray give the absolute path every GPU node has it at"
    if args.gpus != 1:
        return "--gpus applies to a single machine; with --ray use --gpus-per-job"
    if args.gpus_per_job < 1:
        return "--gpus-per-job must be at least 1"
    if args.device not in ("cuda", "cpu"):
        return f"--device {args.device}: with --ray give cuda (Ray assigns each engine its GPUs) or cpu"
    if args.sam3 is not None:
        return "--sam3 is not available with --ray yet: send mask files, or run SAM3 on a single-machine worker"
    if args.engine_idle_minutes < 0 or args.max_engines < 0:
        return "--engine-idle-minutes and --max-engines must not be negative"
    return None


def _fail(message: str, code: int = 2) -> int:
    print(f"scail-worker: error: {message}", file=sys.stderr, flush=True)
    return code


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket handed to uvicorn, with Nagle's algorithm off for every connection it accepts.

    asyncio turns TCP_NODELAY on only for sockets whose ``proto`` is IPPROTO_TCP, and a socket made with the
    default ``proto=0`` (as are the connections accepted from it) is not one: each keep-alive response then waited
    ~40 ms for the client's delayed ACK. Naming the protocol fixes the accepted sockets; setting the option on
    the listener too covers systems where accepted sockets inherit it instead.
    """
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host.strip("[]"), port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _make_server(config):
    """A uvicorn server that returns from ``run`` after SIGTERM/SIGINT instead of re-raising the signal.

    uvicorn re-raises a captured signal once it has shut down gracefully, which would end the process before
    ``serve`` stops the runner (and requeues the running job) and returns 0.
    """
    import uvicorn

    class WorkerServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            with super().capture_signals():
                try:
                    yield
                finally:
                    self._captured_signals.clear()

    return WorkerServer(config)


def _process_alive(pid: int) -> bool:
    """Whether ``pid`` still runs. POSIX: our parent changes when it dies; Windows: ask the kernel."""
    if sys.platform != "win32":
        return os.getppid() == pid
    import ctypes

    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return False
    code = ctypes.c_ulong()
    kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
    kernel32.CloseHandle(handle)
    return code.value == 259  # STILL_ACTIVE


def serve(args: argparse.Namespace) -> int:
    from .logs import configure_logging

    token = args.token or os.environ.get(TOKEN_ENV) or None
    if token is None and not is_loopback(args.host):
        return _fail(f"--host {args.host} is reachable from other machines: give --token (or {TOKEN_ENV})")
    if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
        return _fail("--ssl-certfile and --ssl-keyfile go together")
    if args.ray is None and not args.checkpoint.is_dir():
        return _fail(f"--checkpoint {args.checkpoint}: not a folder", 3)
    from backend.scail2.accel.options import parse_loras, performance_overrides

    from .engine import EngineConfig, EngineStartError, load_engine
    from .warmup import parse_warmup

    try:
        start_loras = parse_loras(args.loras) if args.loras is not None else None
    except ValueError as exc:
        return _fail(f"--loras: {exc}")
    try:
        warmup_sizes = parse_warmup(args.warmup) if args.warmup is not None else None
    except ValueError as exc:
        return _fail(f"--warmup: {exc}")
    gateway = args.ray is not None
    if gateway:
        problem = _gateway_flag_problem(args)
        if problem:
            return _fail(problem)
    # A gateway names the folder as every GPU node sees it; it need not exist on the gateway's machine.
    checkpoint = str(args.checkpoint) if gateway else str(args.checkpoint.resolve())
    config = EngineConfig(checkpoint=checkpoint, device=args.device, dtype=args.dtype,
                          gpus=args.gpus_per_job if gateway else args.gpus, performance=performance_overrides(args),
                          loras=start_loras, warmup=tuple(warmup_sizes) if warmup_sizes is not None else None)
    try:
        config.check("--gpus-per-job" if gateway else "--gpus")
    except EngineStartError as exc:
        return _fail(str(exc), exc.code)
    generated = token is None
    if generated:
        token = generate_token()
    try:
        guard = TokenGuard(token)
    except ValueError as exc:
        return _fail(str(exc))
    configure_logging(args.log_level, str(args.log_file) if args.log_file else None)
    # The token itself goes to stdout once, here; the log only ever gets its fingerprint.
    if generated:
        print(f"{TOKEN_PREFIX} {token}", flush=True)

    from backend import __version__ as version

    from .app import WorkerInfo, create_app
    from .store import JobStore, StoreDamaged
    from .uploads import UploadLimits

    limits = UploadLimits(max_upload_bytes=int(args.max_upload_mb * 2**20), max_frames=args.max_frames,
                          max_seconds=args.max_seconds, max_side=args.max_side,
                          max_decoded_bytes=int(args.max_decoded_gb * 2**30))
    masks = None
    if args.sam3 is not None:  # checked before the (slow) model load; SAM3 itself loads on first use
        import torch

        from backend.masks.service import MaskService
        from backend.scail2 import CheckpointError

        try:
            masks = MaskService(args.sam3, device=args.device, dtype=getattr(torch, config.dtype_name))
        except CheckpointError as exc:
            return _fail(f"--sam3: {exc}", 3)
    try:
        store = JobStore(args.data, min_free_bytes=int(args.min_free_mb * 2**20))
    except StoreDamaged as exc:
        log.error("the job store is damaged; not starting", extra={"error": str(exc)})
        return _fail(str(exc), EXIT_STORE_DAMAGED)
    except OSError as exc:  # --data is a file, or not writable
        return _fail(f"--data {args.data}: {exc}")
    store.recover()
    if gateway:
        from .cluster.dispatcher import ClusterUnavailable, DispatcherSettings, RayDispatcher

        try:
            runner = RayDispatcher.connect(store, DispatcherSettings.from_args(args, config, limits))
        except ClusterUnavailable as exc:
            log.error("cannot join the Ray cluster", extra={"error": str(exc)})
            return _fail(str(exc), 3)
        info = WorkerInfo(version=version, device="ray", checkpoint=config.checkpoint, dtype=config.dtype_name)
    else:
        log.info("loading checkpoint", extra={"checkpoint": str(args.checkpoint), "device": args.device,
                                             "dtype": config.dtype_name, "token_fingerprint": token_fingerprint(token)})
        try:
            engine = load_engine(config)
        except EngineStartError as exc:
            log.error("the engine failed to start", extra={"error": str(exc)})
            return _fail(str(exc), exc.code)
        from .runner import JobRunner

        runner = JobRunner(store, engine.pipeline, limits, args.device, masks=masks)
        info = WorkerInfo(version=version, device=args.device, checkpoint=config.checkpoint, dtype=config.dtype_name,
                          performance=engine.performance)
    # The schema and its explorer are as open as the socket: free on loopback, behind the token elsewhere.
    app = create_app(store, runner, guard, limits, info, masks=masks, public_docs=is_loopback(args.host))
    try:
        sock = _bind(args.host, args.port)
    except OSError as exc:
        return _fail(f"cannot listen on {args.host}:{args.port}: {exc}")
    port = sock.getsockname()[1]
    scheme = "https" if args.ssl_certfile else "http"
    host = f"[{args.host.strip('[]')}]" if ":" in args.host else args.host

    import uvicorn

    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        ssl_certfile=str(args.ssl_certfile) if args.ssl_certfile else None,
        ssl_keyfile=str(args.ssl_keyfile) if args.ssl_keyfile else None,
        timeout_keep_alive=30,
        # A client holding a keep-alive (TLS) connection must not keep a stopping worker alive.
        timeout_graceful_shutdown=5,
        limit_concurrency=512,
    )
    server = _make_server(config)
    retention_stop = threading.Event()

    def announce_when_listening() -> None:
        while not server.started:
            if server.should_exit:
                return
            time.sleep(0.02)
        log.info("worker ready", extra={"url": f"{scheme}://{host}:{port}"})
        print(f"{READY_PREFIX} {scheme}://{host}:{port}", flush=True)

    def retention_loop() -> None:
        max_age = args.retention_hours * 3600 if args.retention_hours > 0 else None
        max_bytes = int(args.retention_gb * 2**30) if args.retention_gb > 0 else None
        while not retention_stop.is_set():
            try:
                store.apply_retention(max_age, max_bytes)
            except Exception:
                log.exception("retention sweep failed")
            runner.job_finished.wait(RETENTION_SWEEP_S)
            runner.job_finished.clear()
            store.close()

    def watch_parent() -> None:
        while not server.should_exit:
            if not _process_alive(args.exit_with_parent):
                log.warning("the launching process is gone; stopping", extra={"parent_pid": args.exit_with_parent})
                server.should_exit = True
                return
            time.sleep(1.0)

    if args.exit_with_parent is not None:
        if not _process_alive(args.exit_with_parent):
            return _fail(f"--exit-with-parent {args.exit_with_parent}: that process is not our parent")
        threading.Thread(target=watch_parent, name="scail-parent-watch", daemon=True).start()
    runner.start()
    threading.Thread(target=announce_when_listening, name="scail-ready", daemon=True).start()
    threading.Thread(target=retention_loop, name="scail-retention", daemon=True).start()
    try:
        server.run(sockets=[sock])  # handles SIGINT/SIGTERM by finishing in-flight requests and returning
    finally:
        retention_stop.set()
        runner.job_finished.set()
        runner.stop()
        log.info("worker stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
