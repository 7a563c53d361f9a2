"""Running one planned run: train it through the engine, write its record, and decide under the run's lock
whether it needs training at all (``run_one``, the one per-run unit every launcher calls).

Its own module so that the CLI (benchmarks/run.py) and the launchers (benchmarks/launch.py) both import it and
neither imports the other: run.py -> launch.py -> execution.py, one direction. Tests inject a fake engine by
patching ``benchmarks.execution.execute`` (the one name ``train_and_record`` calls).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from benchmarks.config import Runtime, RunConfig
from benchmarks.environment import collect_environment
from benchmarks.store import FAILED, RunStore
from benchmarks.sweep import PlannedRun


def execute(config: RunConfig, runtime: Runtime, workdir: Path, stop_after_epoch: int | None = None) -> dict:
    """Train and evaluate one run through the engine (imported here so --help and validation stay light)."""
    from benchmarks.engine import execute as engine_execute
    return engine_execute(config, runtime, workdir, stop_after_epoch=stop_after_epoch)


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class RunOutcome:
    """What ``run_one`` did: ``outcome`` is the record's status when it trained, else ``skipped (STATUS)`` or
    ``locked``; ``record`` is the record it wrote (or found), None when another process holds the run."""

    outcome: str
    record: dict[str, Any] | None


def precision(runtime: Runtime) -> str:
    """The arithmetic a run used ("fp32", "bfloat16-autocast", ...), decided by the engine's own rule.

    Not part of the run key (the key must be known before the device is, e.g. on a SLURM login node); each
    record stores it and the report keeps device / precision groups apart.
    """
    from benchmarks.engine import autocast_dtype, resolve_device as engine_device
    dtype = autocast_dtype(runtime, engine_device(runtime.device))
    return "fp32" if dtype is None else f"{str(dtype).removeprefix('torch.')}-autocast"


def train_and_record(run: PlannedRun, runtime: Runtime, store: RunStore, resume: bool = True) -> dict[str, Any]:
    """Train one run and write its record; engine exceptions become a failed record (KeyboardInterrupt propagates)."""
    config = run.config
    workdir = store.workdir(config)
    if not resume and workdir.exists():
        shutil.rmtree(workdir)  # --no-resume: a stale last.pt must not be picked up by the engine
    workdir.mkdir(parents=True, exist_ok=True)
    started, t0 = now(), time.perf_counter()
    # before training: the commit and versions the process trains with, not those of a checkout changed meanwhile
    environment = collect_environment(runtime.device)
    try:
        result = dict(execute(config, runtime, workdir))
    except Exception as exc:  # recorded, never hidden: the record carries the reason and the traceback tail
        lines = traceback.format_exception(exc)
        result = {"status": FAILED, "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                  "traceback": "".join(lines)[-4000:]}
    predictions = result.pop("predictions", None)
    if predictions is not None:   # before the record: a record never names a file that is not there
        from benchmarks.predictions import path_for, write as write_predictions
        try:
            result["predictions"] = write_predictions(path_for(store.runs_dir, config.run_name), predictions)
        except OSError as exc:
            result.update(status=FAILED, reason=f"its predictions file could not be written under {store.runs_dir} "
                                                f"({exc.strerror or exc}); free space or fix permissions, then rerun")
        if result.get("status") == "ok":   # the best adapter beside the record, for explain / the report
            from benchmarks.artifacts import keep_adapter
            try:
                result["adapter"] = keep_adapter(workdir, store.runs_dir, config.run_name)
            except OSError as exc:
                result.update(status=FAILED, reason=f"its adapter file could not be written under {store.runs_dir} "
                                                    f"({exc}); free space or fix permissions, then rerun")
    record = {
        **result,
        "key": config.key(), "run_name": config.run_name, "label": run.label, "method": config.method,
        "dataset": config.dataset, "seed": config.seed, "config": config.to_dict(),
        "status": result.get("status", FAILED), "reason": result.get("reason"),
        "environment": environment,
        "runtime": {"device": runtime.device, "precision": precision(runtime),
                    "skip_unreadable": runtime.skip_unreadable, "data_root": str(runtime.data_root),
                    "memory_format": runtime.memory_format, "compile": runtime.compile,
                    "pid": os.getpid(), "argv": sys.argv},
        "started_at": started, "finished_at": now(), "runner_wall_time_s": time.perf_counter() - t0,
    }
    try:
        store.write(record)
    except (TypeError, ValueError) as exc:   # a value the engine returned is not storable: keep the run, as failed
        record = {k: record[k] for k in ("key", "run_name", "label", "method", "dataset", "seed", "config",
                                          "environment", "runtime", "started_at", "finished_at")}
        record.update(status=FAILED, reason=f"the run's record could not be written: {exc}")
        store.write(record)
    return record


def run_one(run: PlannedRun, runtime: Runtime, out: Path | RunStore, *, resume: bool = True,
            retry_failed: bool = False, log: Callable[[str], None] = print, tag: str = "") -> RunOutcome:
    """The one per-run unit every launcher calls (in-process loop, worker processes, submitit jobs).

    It owns the whole decision so that any number of processes may call it for the same run concurrently:
    skip what the store says is finished, take the run's O_EXCL lock (a live owner means someone else is
    training it), then check the store *again* under the lock, because another process may have finished the
    run between our first look and our lock; only then train and write the record.
    """
    store = out if isinstance(out, RunStore) else RunStore(out)
    name = run.config.run_name
    if resume and not store.should_run(run.config, retry_failed):
        status = store.status(run.config)
        log(f"{tag}{name}: {status}, skipped" + (" (--retry-failed reruns it)" if status == FAILED else ""))
        return RunOutcome(f"skipped ({status})", store.read(run.config))
    lock = store.lock(run.config)
    if not lock.acquire():
        log(f"{tag}{name}: being trained by {lock.owner()}, skipped")
        return RunOutcome("locked", None)
    with lock:
        if resume and not store.should_run(run.config, retry_failed):   # finished while we waited for the lock
            status = store.status(run.config)
            log(f"{tag}{name}: {status} (finished by another process), skipped")
            return RunOutcome(f"skipped ({status})", store.read(run.config))
        log(f"{tag}{name}: training")
        record = train_and_record(run, runtime, store, resume=resume)
        if record["status"] == "ok":
            discard_workdir(store, run.config, log=lambda line: log(f"{tag}{name}: {line}"))
    test = (record.get("metrics") or {}).get("test") or {}
    detail = f"test auc {test['auc']:.4f} acc {test['acc']:.4f}" if "auc" in test and "acc" in test \
        else (record.get("reason") or "")
    log(f"{tag}{name}: {record['status']} {detail}")
    return RunOutcome(record["status"], record)


def discard_workdir(store: RunStore, config: RunConfig, log: Callable[[str], None] = print) -> None:
    """Remove a finished run's work folder: it is scratch once the record is written (its epoch checkpoint is of
    no further use and its adapter was copied beside the record), and a grid would otherwise keep one checkpoint
    per run on disk (full fine-tuning of Lite0: 66 MB each). A failed run keeps its folder, so ``--retry-failed``
    resumes from the last checkpoint. A folder that cannot be removed is named in a warning, never hidden."""
    workdir = store.workdir(config)
    try:
        shutil.rmtree(workdir)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log(f"warning: its work folder {workdir} could not be removed ({exc.strerror or exc}); delete it by hand")


def run_plan(plan: list[PlannedRun], runtime: Runtime, store: RunStore, *, resume: bool = True,
             retry_failed: bool = False, log=print) -> list[tuple[PlannedRun, str]]:
    """Run every pending run of ``plan`` in order in this process; returns (run, outcome) pairs."""
    return [(run, run_one(run, runtime, store, resume=resume, retry_failed=retry_failed, log=log,
                          tag=f"[{i}/{len(plan)}] ").outcome)
            for i, run in enumerate(plan, 1)]
