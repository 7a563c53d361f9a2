"""Run keys, atomic records, resume policy and run locks."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from benchmarks.config import RunConfig
from benchmarks.store import FAILED, OK, LockOwner, RunLock, RunStore, atomic_write_json


def test_key_is_stable_and_covers_every_field() -> None:
    base = RunConfig(method="linear_probe", dataset="breastmnist")
    assert base.key() == RunConfig(method="linear_probe", dataset="breastmnist").key()
    changed = {"method": "bitfit", "dataset": "pneumoniamnist", "seed": 1, "options": {"x": {"a": 1}},
               "step_milestones": (3,), "weights": None, "head_lr": 0.5, "data_size": 64,
               "limit_train_batches": 2}
    keys = {base.key()}
    for f in dataclasses.fields(RunConfig):
        value = changed.get(f.name)
        if value is None and f.name != "weights":
            current = getattr(base, f.name)
            value = {int: lambda v: v + 1, float: lambda v: v * 2 + 1, str: lambda v: v + "x"}[type(current)](current)
        keys.add(dataclasses.replace(base, **{f.name: value}).key())
    assert len(keys) == len(dataclasses.fields(RunConfig)) + 1


def test_atomic_write_leaves_old_file_when_replace_fails(tmp_path, monkeypatch) -> None:
    path = tmp_path / "runs" / "r.json"
    atomic_write_json(path, {"status": "ok"})
    before = path.read_bytes()

    def boom(*args):
        raise KeyboardInterrupt  # a crash between write and replace

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_json(path, {"status": "failed", "big": "x" * 100000})
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temporary file left behind


def test_resume_policy(tmp_path) -> None:
    store = RunStore(tmp_path)
    store.prepare()
    assert (tmp_path / ".gitignore").read_text().count("work/") == 1
    config = RunConfig(method="linear_probe", dataset="breastmnist")
    assert store.should_run(config, retry_failed=False)
    for status, plain, retry in ((OK, False, False), (FAILED, False, True), ("interrupted", True, True)):
        store.write({"run_name": config.run_name, "status": status})
        assert store.status(config) == status
        assert store.should_run(config, retry_failed=False) is plain
        assert store.should_run(config, retry_failed=True) is retry
    assert json.loads(store.record_path(config).read_text())["status"] == "interrupted"


def test_lock_ownership_and_stale_takeover(tmp_path) -> None:
    path = tmp_path / "locks" / "run.lock"
    first, second = RunLock(path), RunLock(path)
    assert first.acquire()
    assert first.owner() == LockOwner.current() and str(os.getpid()) in path.read_text()
    assert not second.acquire()          # held by a live process (us)
    first.release()
    assert not path.exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path.write_text(dead.stdout.strip())  # a bare pid left by a SIGKILLed process
    with second:
        assert second.acquire()
        assert second.owner() == LockOwner.current()
    assert not path.exists()


def test_locks_of_other_hosts_are_trusted_except_our_own_requeued_job(tmp_path, monkeypatch) -> None:
    path = tmp_path / "locks" / "run.lock"
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    path.parent.mkdir()
    path.write_text(LockOwner("node-a", 1, "555").dumps())     # another node, another job: cannot be probed
    assert not RunLock(path).acquire() and RunLock(path).live_owner() == LockOwner("node-a", 1, "555")
    path.write_text(LockOwner("node-a", 1, "777").dumps())     # our own job before it was requeued elsewhere
    lock = RunLock(path)
    assert lock.acquire() and lock.owner() == LockOwner.current() and LockOwner.current().job == "777"
    lock.release()
    assert not path.exists()


def test_unreadable_lock_content_is_stale(tmp_path) -> None:
    path = tmp_path / "run.lock"
    path.write_text("")                  # cannot be produced by acquire (atomic write); treated as stale
    assert RunLock(path).acquire()


def test_unwritable_out_is_reported(tmp_path) -> None:
    from benchmarks.store import StoreError
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="--out"):
        RunStore(blocker / "out").prepare()
