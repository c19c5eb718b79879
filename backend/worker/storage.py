"""Telling a full disk apart from every other failure, and how much room the job store's disk has left.

A full disk is not a bug and not the client's fault: a submission that meets one is answered ``507
insufficient_storage`` (with ``Retry-After``), and a job that meets one goes back to the queue to resume when there
is room again (see ``runner``). Both need to recognise it wherever it surfaces: an ``OSError`` with ``ENOSPC`` or
``EDQUOT`` from a file write, ``SQLITE_FULL`` from a commit, or a library that only kept the text of the error.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
from pathlib import Path

from .errors import ApiError

STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
NO_SPACE_TEXTS = ("no space left on device", "database or disk is full", "disk quota exceeded")
RETRY_AFTER_S = 60
# A disk is also full when it can hold no more files (inodes): ENOSPC comes from creating one. A job creates a few
# dozen (its inputs, each window, the previews, the result), so below this many free the store has no room.
MIN_FREE_FILES = 256


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


def free_files(path: Path) -> int | None:
    """Files that may still be created on the file system holding ``path``; None where it has no fixed number
    (btrfs, some network file systems report none)."""
    stats = os.statvfs(path)
    return stats.f_favail if stats.f_files else None


def shortage(path: Path, min_free_bytes: int) -> str | None:
    """What the disk holding ``path`` is short of, e.g. "2 MiB are free (it keeps 4 MiB free, --min-free-mb)", or
    None when it has at least ``min_free_bytes`` and ``MIN_FREE_FILES`` files free."""
    free = free_bytes(path)
    if free < min_free_bytes:
        return f"{free / 2**20:.0f} MiB are free (it keeps {min_free_bytes / 2**20:.0f} MiB free, --min-free-mb)"
    files = free_files(path)
    if files is not None and files < MIN_FREE_FILES:
        return f"{files} more files fit on the disk (inodes; it keeps {MIN_FREE_FILES} free)"
    return None


class InsufficientStorage(ApiError):
    """507: the worker's disk is (nearly) full; the request can be repeated unchanged once there is room."""

    def __init__(self, detail: str):
        super().__init__(507, "insufficient_storage", f"{detail}; the worker's disk is full: nothing was queued. "
                         "Retry later (the worker's operator must free space under its --data folder)", None,
                         {"Retry-After": str(RETRY_AFTER_S)})
