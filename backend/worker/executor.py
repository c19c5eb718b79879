"""What the HTTP app hands queued jobs to: the seam between the API and whatever runs the jobs.

A single-machine worker runs them itself (``runner.JobRunner``: one thread, one warm pipeline). In gateway mode
(``scail-worker serve --ray``) they go to engine actors on a Ray cluster (``cluster.dispatcher.RayDispatcher``).
Both read the queue from the same durable ``JobStore`` and write progress, windows and results back into it, so
the app, its routes and API v1 do not change between the two.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, Protocol


class JobExecutor(Protocol):
    """Runs the jobs of a ``JobStore``. Every method is called from request threads and must return promptly."""

    # Set after every finished job (the retention sweep waits on it).
    job_finished: threading.Event
    # Why no job starts now (a full disk, a job store that refuses writes), for /v1/health; None when jobs start.
    paused: str | None

    def start(self) -> None:
        """Begin taking queued jobs (the store has been recovered)."""

    def stop(self, timeout: float = 60.0) -> None:
        """Interrupt running jobs between steps, put them back in the queue and stop."""

    def notify(self) -> None:
        """A job was queued."""

    def cancel(self, job_id: str) -> None:
        """The store has the job's cancel flag: stop it at the next step boundary wherever it runs."""

    def available_loras(self) -> Mapping[str, Any] | None:
        """LoRA names jobs may ask for; None while not known yet (then checked when the job runs)."""

    def pinned_loras(self) -> Mapping[str, float] | None:
        """The only LoRA strengths jobs may ask for (fp8 engines), or None when jobs choose their LoRAs."""

    def cluster_info(self) -> Any:
        """``schemas.ClusterInfo`` of a gateway for ``/v1/health``; None on a single machine."""
