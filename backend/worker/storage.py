"""Telling a full disk apart from every other failure, and how much room the job store's disk has left.

A full disk is not a bug and not the client's fault: a submission that meets one is answered ``507
insufficient_storage`` (with ``Retry-After``), and a job that meets one goes back to the queue to resume when there
is room again (see ``runner``). Both need to recognise it wherever it surfaces: an ``OSError`` with ``ENOSPC`` or
``EDQUOT`` from a file write, ``SQLITE_FULL`` from a commit, or a library that only kept the text of the error.
"""

from __future__ import annotations

import errno
import shutil
import sqlite3
from pathlib import Path

from .errors import ApiError

STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
NO_SPACE_TEXTS = ("no space left on device", "database or disk is full", "disk quota exceeded")
RETRY_AFTER_S = 60


def is_storage_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or any exception it was raised from) says the disk or the quota is full."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
            return True
        if isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            return True
        if any(text in str(exc).lower() for text in NO_SPACE_TEXTS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def free_bytes(path: Path) -> int:
    """Free bytes on the file system holding ``path`` (what an unprivileged process may still write)."""
    return shutil.disk_usage(path).free


class InsufficientStorage(ApiError):
    """507: the worker's disk is (nearly) full; the request can be repeated unchanged once there is room."""

    def __init__(self, detail: str):
        super().__init__(507, "insufficient_storage", f"{detail}; the worker's disk is full: nothing was queued. "
                         "Retry later (the worker's operator must free space under its --data folder)", None,
                         {"Retry-After": str(RETRY_AFTER_S)})
