"""The workers a batch may use: the preferences' own backend plus more servers listed in the preferences.

Each shot goes to the least busy healthy worker, measured with ``GET /v1/health`` (its queue sizes, which need
the token) plus the shots this batch has handed it that the worker has not counted yet.
"""

from __future__ import annotations

from dataclasses import dataclass

import bpy
from bpy.props import BoolProperty, StringProperty

from . import connection


class SCAIL_PG_server(bpy.types.PropertyGroup):
    """One more worker for batch renders (a GPU box, a second local worker)."""

    enabled: BoolProperty(name="Use", default=True, description="Send batch shots to this worker")
    url: StringProperty(name="URL", description="Worker address, e.g. http://gpu-box:8765")
    token: StringProperty(name="Token", subtype="PASSWORD", description="Bearer token of this worker")


@dataclass
class ServerLoad:
    target: connection.BackendTarget
    load: int | None  # queued + running jobs; None when the worker is not usable
    problem: str = ""


def listed_targets(prefs) -> list[connection.BackendTarget]:
    """The enabled servers of the preferences' list, online access checked."""
    targets = []
    for index, server in enumerate(prefs.servers):
        url = server.url.strip().rstrip("/")
        if not server.enabled:
            continue
        if not url.startswith(("http://", "https://")):
            raise connection.BackendUnavailable(
                f"batch server {index + 1}: {url or '(empty)'} is not an http:// or https:// URL; fix it in the "
                "add-on preferences")
        connection.check_online_access(url)
        targets.append(connection.BackendTarget(url, server.token, url, float(prefs.timeout)))
    return targets


def batch_pool(context=None) -> tuple[list[connection.BackendTarget], list[str]]:
    """Every worker a batch may use, and notes on the preferences' backend when it cannot be one of them.

    The preferences' backend (or ``SCAIL_BACKEND_URL``) comes first, then the listed servers; the same URL
    counts once. Raises :class:`connection.BackendUnavailable` when there is no worker at all.
    """
    prefs = connection.preferences(context)
    pool: list[connection.BackendTarget] = []
    notes: list[str] = []
    listed = listed_targets(prefs)
    try:
        pool.append(connection.resolve_target(context))
    except connection.BackendUnavailable as error:
        if not listed:
            raise
        notes.append(f"not using the preferences' backend: {error}")
    seen = {target.url for target in pool}
    for target in listed:
        if target.url not in seen:
            pool.append(target)
            seen.add(target.url)
    return pool, notes


def measure(target: connection.BackendTarget, timeout: float = 5.0) -> ServerLoad:
    """Queue size of one worker from ``/v1/health``; a worker that fails to answer is reported, not raised."""
    from ..backend.client import WorkerClient, WorkerError

    client = WorkerClient(target.url, token=target.token, timeout=timeout, retries=1, backoff=0.2)
    try:
        health = client.health()
    except WorkerError as error:
        return ServerLoad(target, None, f"{target.url}: {error}")
    finally:
        client.close()
    if not health.get("authenticated", False):
        return ServerLoad(target, None, f"{target.url}: the worker refused the token")
    queue = health.get("queue") or {}
    return ServerLoad(target, int(queue.get("queued", 0)) + int(queue.get("running", 0)))


def least_busy(loads: list[ServerLoad], pending: dict[str, int], assigned: dict[str, int]):
    """The healthy worker with the fewest jobs (its queue plus uploads it has not seen yet).

    Ties go to the worker this batch has used least, then to the earlier one in the pool.
    """
    healthy = [(index, item) for index, item in enumerate(loads) if item.load is not None]
    if not healthy:
        problems = "; ".join(item.problem for item in loads) or "no worker configured"
        raise connection.BackendUnavailable(f"no healthy worker for the batch: {problems}")
    _index, best = min(healthy, key=lambda pair: (pair[1].load + pending.get(pair[1].target.url, 0),
                                                  assigned.get(pair[1].target.url, 0), pair[0]))
    return best.target


def draw_servers(layout, prefs) -> None:
    """The preferences' "Batch Servers" box."""
    box = layout.box()
    box.label(text="Batch Servers (shots go to the least busy one)", icon="NETWORK_DRIVE")
    for index, server in enumerate(prefs.servers):
        row = box.row(align=True)
        row.prop(server, "enabled", text="")
        row.prop(server, "url", text="")
        row.prop(server, "token", text="")
        op = row.operator("scail.server_remove", text="", icon="X")
        op.index = index
    box.operator("scail.server_add", icon="ADD")


classes = (SCAIL_PG_server,)
register, unregister = bpy.utils.register_classes_factory(classes)
