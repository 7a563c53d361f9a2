"""benchmarks.allocator: a command restarts itself once with glibc's steady malloc settings, keeping its own
command line and the user's values; the runner's records say which settings their process had."""

from __future__ import annotations

import os
import sys

import pytest

from benchmarks import allocator
from benchmarks.allocator import KEEP_DEFAULTS_VAR, STEADY_MALLOC_ENV


@pytest.fixture
def execs(monkeypatch) -> list[tuple]:
    """Calls of os.execve, recorded instead of made."""
    calls: list[tuple] = []
    monkeypatch.setattr(allocator.os, "execve", lambda path, argv, env: calls.append((path, argv, env)))
    monkeypatch.setattr(allocator.sys, "platform", "linux")
    monkeypatch.delenv(KEEP_DEFAULTS_VAR, raising=False)
    for key in STEADY_MALLOC_ENV:
        monkeypatch.delenv(key, raising=False)
    return calls


def test_restart_runs_the_same_command_with_the_settings_added(execs, monkeypatch) -> None:
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "12345")        # the user's own value is kept
    monkeypatch.setenv("PETL_DATA_ROOT", "/somewhere")
    allocator.restart_with_steady_allocator()
    [(path, argv, env)] = execs
    assert path == sys.executable and argv == list(sys.orig_argv)
    assert env["MALLOC_MMAP_THRESHOLD_"] == STEADY_MALLOC_ENV["MALLOC_MMAP_THRESHOLD_"]
    assert env["MALLOC_TRIM_THRESHOLD_"] == "12345" and env["PETL_DATA_ROOT"] == "/somewhere"
    assert {k: v for k, v in env.items() if k not in STEADY_MALLOC_ENV} == \
        {k: v for k, v in os.environ.items() if k not in STEADY_MALLOC_ENV}


@pytest.mark.parametrize("case", ["already set", "defaults asked for", "not linux"])
def test_no_restart_when_set_asked_not_to_or_not_glibc(execs, monkeypatch, case) -> None:
    if case == "already set":
        for key, value in STEADY_MALLOC_ENV.items():
            monkeypatch.setenv(key, value)
    elif case == "defaults asked for":
        monkeypatch.setenv(KEEP_DEFAULTS_VAR, "1")
    else:
        monkeypatch.setattr(allocator.sys, "platform", "darwin")
    allocator.restart_with_steady_allocator()
    assert execs == []


def test_records_name_the_settings_their_process_had(monkeypatch) -> None:
    for key in STEADY_MALLOC_ENV:
        monkeypatch.delenv(key, raising=False)
    assert allocator.allocator_in_effect() == dict.fromkeys(STEADY_MALLOC_ENV)     # glibc defaults: None
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "777")
    assert allocator.allocator_in_effect()["MALLOC_MMAP_THRESHOLD_"] == "777"
