"""What an engine actor streams back to the gateway while it runs a job (a Ray streaming generator).

In order: ``PhaseChange("decoding")``, the ``thumbnails.InputPreview`` of the decoded inputs, the engine's own
``ProgressEvent``s, a ``WindowDone`` as each window is decoded (the gateway stores it before it counts), and
exactly one ``JobOutcome`` last.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PhaseChange:
    """The job entered a phase the engine does not report itself (e.g. decoding the uploads)."""

    phase: str


@dataclass(frozen=True)
class WindowDone:
    """A finished window (the engine's ``WindowResult``), with when the engine handed it over and its size."""

    window: Any
    sent_at: float  # time.time() on the node when the engine's on_window fired
    nbytes: int  # frames plus history tensors: what crosses the network

    @classmethod
    def of(cls, window: Any) -> WindowDone:
        """A window as it leaves the engine, stamped now and sized."""
        nbytes = int(window.frames.nbytes) + sum(int(t.numel() * t.element_size()) for t in window.history.values())
        return cls(window, time.time(), nbytes)


@dataclass(frozen=True)
class JobOutcome:
    """How the run ended on the engine. ``status``: succeeded, canceled, failed, or interrupted (the engine was
    told to stop for a reason other than the job's own cancel: the job goes back to the queue)."""

    status: str
    error: dict[str, Any] | None = None
    frames: int | None = None
    fps: float | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)  # engine side: peak_gpu_mb, compiled_graphs, cancel
