"""glibc malloc settings for processes that train or time training steps: set before the process starts.

glibc serves large blocks with ``mmap`` and hands freed heap memory back to the OS until frees of large blocks
raise its (dynamic) thresholds, so a fresh process may fault a training step's activation buffers in again on
every step. A process that has already run larger steps gets close to steady on its own; one that times or trains
a single method often does not (results/benchmarks/ab_cold_allocator.txt: partial_ft 505 img/s cold, 605 with
these settings). glibc reads them only when a process starts (a runtime ``mallopt`` of the same thresholds did not
reproduce the effect), so they travel as environment variables: :func:`steady_allocator_env` for the child
processes one starts, :func:`restart_with_steady_allocator` for a command's own process. This module imports
nothing heavy, so a command can restart before torch loads. Other C libraries ignore these variables.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator

#: No mmap for large blocks and no trimming of the heap: a step's buffers are reused instead of faulted in again.
STEADY_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 32)}

#: ``PETL_MALLOC_DEFAULTS=1`` keeps glibc's own defaults for a command's process (to measure the difference).
KEEP_DEFAULTS_VAR = "PETL_MALLOC_DEFAULTS"


def _unset_settings() -> dict[str, str]:
    """The steady settings this process's environment does not set yet (a value the user set is never replaced)."""
    return {k: v for k, v in STEADY_MALLOC_ENV.items() if k not in os.environ}


def steady_allocator_settings() -> dict[str, str]:
    """The malloc settings a process started in :func:`steady_allocator_env` gets (the user's own values win)."""
    return {k: os.environ.get(k, v) for k, v in STEADY_MALLOC_ENV.items()}


def allocator_in_effect() -> dict[str, str | None]:
    """This process's own malloc settings as glibc read them at its start (``None``: glibc's default), for a
    record's environment block: it tells a steady run from one with the defaults."""
    return {k: os.environ.get(k) for k in STEADY_MALLOC_ENV}


@contextmanager
def steady_allocator_env() -> Iterator[dict[str, str]]:
    """:data:`STEADY_MALLOC_ENV` in ``os.environ`` for the processes started inside (a value the user already set
    is kept); ``os.environ`` is restored on exit. Yields :func:`steady_allocator_settings`."""
    added = _unset_settings()
    os.environ.update(added)
    try:
        yield steady_allocator_settings()
    finally:
        for key in added:
            os.environ.pop(key, None)


def restart_with_steady_allocator() -> None:
    """Replace this process with the same command started with :data:`STEADY_MALLOC_ENV`, when it lacks any of
    them, so that the sweep's own training steps (and the worker processes it spawns, which inherit the
    environment) run steady. Returns without restarting off Linux, when every variable is already set (a user's
    own value is kept), or when ``PETL_MALLOC_DEFAULTS=1``. Call it first thing in a ``__main__`` block."""
    if not sys.platform.startswith("linux") or os.environ.get(KEEP_DEFAULTS_VAR) == "1":
        return
    missing = _unset_settings()
    if not missing:
        return
    os.execve(sys.executable, list(sys.orig_argv), {**os.environ, **missing})
