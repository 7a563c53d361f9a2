"""Run keys, atomic records, resume policy and run locks."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from pathlib import Path

from benchmarks.config import RunConfig, file_sha256, with_weights_hash
from benchmarks.store import FAILED, OK, LockOwner, RunLock, RunStore, StoreError, atomic_write_json

REPO = Path(__file__).resolve().parent.parent


def test_key_is_stable_and_covers_every_field() -> None:
    base = RunConfig(method="linear_probe", dataset="breastmnist")
    assert base.key() == RunConfig(method="linear_probe", dataset="breastmnist").key()
    changed = {"method": "bitfit", "dataset": "pneumoniamnist", "seed": 1, "options": {"x": {"a": 1}},
               "step_milestones": (3,), "weights": None, "head_lr": 0.5, "data_size": 64,
               "limit_train_batches": 2, "weights_sha256": "ab" * 32}
    keys = {base.key()}
    for f in dataclasses.fields(RunConfig):
        value = changed.get(f.name)
        if value is None and f.name != "weights":
            current = getattr(base, f.name)
            value = {int: lambda v: v + 1, float: lambda v: v * 2 + 1, str: lambda v: v + "x"}[type(current)](current)
        keys.add(dataclasses.replace(base, **{f.name: value}).key())
    assert len(keys) == len(dataclasses.fields(RunConfig)) + 1


@pytest.mark.parametrize("pattern", ["results/offline-cpu/runs/breastmnist__lora_c__s0__*.json",
                                     "results/medmnist-v2/runs/breastmnist__full_ft__s0__*.json"])
def test_committed_records_keep_their_keys(pattern: str) -> None:
    """Fields added to RunConfig since these records were written must not change their keys or file names."""
    paths = sorted(REPO.glob(pattern))
    if not paths:
        pytest.skip(f"no committed record matches {pattern}")
    for path in paths:
        record = json.loads(path.read_text())
        config = RunConfig.from_dict(record["config"])
        assert config.key() == record["key"] and config.run_name == path.stem
        assert config.to_dict() == record["config"]          # defaults of new fields are not written either


def test_weights_file_is_keyed_by_content_not_path(tmp_path) -> None:
    a, b = tmp_path / "a" / "w.pth", tmp_path / "b" / "copy.pth"
    for p in (a, b):
        p.parent.mkdir()
        p.write_bytes(b"same bytes")
    base = RunConfig(method="linear_probe", dataset="breastmnist")
    at_a, at_b = (with_weights_hash(dataclasses.replace(base, weights=str(p))) for p in (a, b))
    assert at_a.weights_sha256 == file_sha256(a) and at_a.key() == at_b.key()     # same file elsewhere: same key
    assert at_a.to_dict()["weights"] == str(a)                                     # the path stays for display
    a.write_bytes(b"retrained weights")
    changed = with_weights_hash(dataclasses.replace(base, weights=str(a)))
    assert changed.key() != at_a.key()                                             # a changed file: new key
    for weights in ("imagenet", None):                                             # unchanged for the others
        plain = dataclasses.replace(base, weights=weights)
        assert with_weights_hash(plain).key() == plain.key() and "weights_sha256" not in plain.to_dict()


def test_run_name_of_a_folder_dataset_is_one_file_name() -> None:
    config = RunConfig(method="metalr+lora_c", dataset="folder:/data/my trees/skin")
    assert "/" not in config.run_name and config.run_name.startswith("folder_data_my_trees_skin__metalr+lora_c__s0__")
    assert RunConfig(method="lora_c", dataset="brain_mri").run_name.startswith("brain_mri__lora_c__s0__")


def test_check_writable_creates_nothing(tmp_path) -> None:
    RunStore(tmp_path / "new" / "out").check_writable()
    assert not (tmp_path / "new").exists()
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="is not a folder"):
        RunStore(blocker / "out").check_writable()


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


def test_git_state_ignores_changes_under_results(tmp_path) -> None:
    """A sweep rewriting results/ must not mark the code dirty; a changed source file must."""
    import subprocess

    from benchmarks.environment import git_state

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "table.md").write_text("a\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    assert git_state(tmp_path)["dirty"] is False
    (tmp_path / "results" / "table.md").write_text("b\n")
    assert git_state(tmp_path)["dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_state(tmp_path)["dirty"] is True
