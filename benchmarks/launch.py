"""Where runs execute: in this process, in N local worker processes, or as a submitit job array (SLURM/local).

    python -m benchmarks.run ... --workers 4                     # one run per worker, one GPU per worker
    python -m benchmarks.run ... --launcher submitit --slurm-partition gpu --slurm-gpus-per-task 1 \
        --slurm-time 04:00:00 --slurm-array-parallelism 8 --slurm-account proj --slurm-extra qos=normal
    python -m benchmarks.run ... --launcher submitit --slurm-partition local   # submitit's LocalExecutor

Every launcher hands each run to the one per-run function ``benchmarks.execution.run_one`` (the torchvision
``run_with_submitit.py`` pattern: reuse the runner's parser and run function, never a copy), and ownership of
a run is decided by its O_EXCL lock in the store, never by the launcher. So launchers may overlap, die or be
requeued: a finished run is never retrained, and an unfinished one resumes from its epoch checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import multiprocessing
import multiprocessing.connection
import multiprocessing.managers
import os
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import submitit
from submitit.core.utils import DelayedSubmission

from benchmarks.config import Runtime
from benchmarks.files import WriteError
from benchmarks.store import PENDING, RunStore
from benchmarks.sweep import PlannedRun
from petl.errors import PetlError

LAUNCHERS = ("local", "submitit")
LOCAL_PARTITION = "local"          # --slurm-partition local: submitit's LocalExecutor on this machine
DEFAULT_SLURM_TIME_MIN = 240       # submitit's own default (5 min) would kill nearly every real run
POLL_S = 2.0                       # how often idle workers / the local job window look again
EXIT_INTERRUPTED = 130            # the runner's code for Ctrl-C (a worker stopped by it exits with it too)
SLURM_ONLY = ("slurm_partition", "slurm_gpus_per_task", "slurm_time", "slurm_array_parallelism",
              "slurm_account", "slurm_extra")


class LaunchError(PetlError, ValueError):
    """Bad launcher options; printed as one line with exit code 2 before anything trains."""


@dataclass
class Launched:
    """What a launcher did. ``submitted``: jobs went to a cluster and finish later (nothing to report yet)."""

    outcomes: list[tuple[PlannedRun, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    submitted: bool = False


class Launcher(Protocol):
    def launch(self, plan: list[PlannedRun], runtime: Runtime, store: RunStore, *, resume: bool,
               retry_failed: bool) -> Launched: ...


# --------------------------------------------------------------------------------------------- options
def add_launcher_args(parser: argparse.ArgumentParser) -> None:
    """The launcher options of ``python -m benchmarks.run`` (kept here, next to the code that reads them)."""
    g = parser.add_argument_group("launcher (where runs execute; not part of the key)")
    g.add_argument("--launcher", choices=LAUNCHERS, default="local",
                   help="local: this machine (default); submitit: one SLURM job-array element per pending run")
    g.add_argument("--workers", type=int, default=1, metavar="N",
                   help="local launcher: N worker processes, one run each at a time; each pins one visible GPU "
                        "(CUDA_VISIBLE_DEVICES), on CPU they split the cores")
    g.add_argument("--slurm-partition", metavar="NAME",
                   help=f"SLURM partition; '{LOCAL_PARTITION}' runs the jobs here with submitit's LocalExecutor")
    g.add_argument("--slurm-gpus-per-task", type=int, metavar="N", help="GPUs per run")
    g.add_argument("--slurm-time", metavar="T",
                   help=f"time limit per run: minutes or [D-]HH:MM:SS (default {DEFAULT_SLURM_TIME_MIN} min); "
                        "a run that hits it is requeued and resumes from its last epoch")
    g.add_argument("--slurm-array-parallelism", type=int, metavar="N",
                   help="at most N runs at once (SLURM: the array's %%N; local: default one per GPU, else 1)")
    g.add_argument("--slurm-account", metavar="NAME", help="SLURM account to charge")
    g.add_argument("--slurm-extra", action="append", default=[], metavar="KEY[=VALUE]",
                   help="any other sbatch option, repeatable (qos=high, constraint=a100, exclusive)")


@dataclass(frozen=True)
class SlurmOptions:
    """The submitit launcher's options, validated; ``local`` selects submitit's LocalExecutor."""

    partition: str | None = None
    gpus_per_task: int | None = None
    time_min: int = DEFAULT_SLURM_TIME_MIN
    array_parallelism: int | None = None
    account: str | None = None
    extra: dict[str, str | bool] = field(default_factory=dict)

    @property
    def local(self) -> bool:
        return self.partition == LOCAL_PARTITION


def parse_time_min(text: str) -> int:
    """'90' -> 90; '04:00:00' -> 240; '1-00:00:00' -> 1440; seconds round up (a limit must not shrink)."""
    m = re.fullmatch(r"\s*(?:(\d+)-)?(\d+):(\d{1,2}):(\d{1,2})\s*", text)
    if m:
        days, hours, minutes, seconds = (int(g or 0) for g in m.groups())
        total = days * 1440 + hours * 60 + minutes + math.ceil(seconds / 60)
    elif text.strip().isdigit():
        total = int(text)
    else:
        raise LaunchError(f"--slurm-time {text!r}: expected minutes (90) or [D-]HH:MM:SS (04:00:00)")
    if total <= 0:
        raise LaunchError(f"--slurm-time {text!r}: the time limit must be positive")
    return total


def parse_extra(items: list[str]) -> dict[str, str | bool]:
    """``KEY=VALUE`` -> {KEY: VALUE}; a bare ``KEY`` is a flag (``#SBATCH --KEY``)."""
    out: dict[str, str | bool] = {}
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", key) or (eq and not value.strip()):
            raise LaunchError(f"--slurm-extra {item!r}: expected KEY=VALUE (qos=high) or a bare flag (exclusive)")
        out[key] = value.strip() if eq else True
    return out


def launcher_from_args(args: argparse.Namespace) -> Launcher:
    """Validate the launcher options (cheap, touches no files) and build the launcher."""
    given = [f"--{name.replace('_', '-')}" for name in SLURM_ONLY if getattr(args, name) not in (None, [])]
    if args.workers < 1:
        raise LaunchError(f"--workers {args.workers}: must be >= 1")
    if args.launcher == "local":
        if given:
            raise LaunchError(f"{', '.join(given)} only apply with --launcher submitit")
        if args.workers == 1:
            return InProcess()
        if not args.resume:   # workers cannot tell "retrain once from scratch" from "finished by another worker"
            raise LaunchError("--no-resume is not supported with --workers; use a fresh --out folder instead")
        return Workers(args.workers)
    if args.workers != 1:
        raise LaunchError("--workers applies to --launcher local; with submitit use --slurm-array-parallelism")
    if not args.resume:
        raise LaunchError("--no-resume is not supported with --launcher submitit (a requeued job must resume); "
                          "use a fresh --out folder instead")
    for name in ("slurm_gpus_per_task", "slurm_array_parallelism"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise LaunchError(f"--{name.replace('_', '-')} {value}: must be >= 1")
    options = SlurmOptions(
        partition=args.slurm_partition, gpus_per_task=args.slurm_gpus_per_task,
        time_min=parse_time_min(args.slurm_time) if args.slurm_time else DEFAULT_SLURM_TIME_MIN,
        array_parallelism=args.slurm_array_parallelism, account=args.slurm_account,
        extra=parse_extra(args.slurm_extra))
    if not options.local and shutil.which("sbatch") is None:
        raise LaunchError("--launcher submitit: no SLURM here (sbatch not found); submit from a cluster login node, "
                          f"or pass --slurm-partition {LOCAL_PARTITION} to run the jobs on this machine")
    return Submitit(options)


def runs_elsewhere(args: argparse.Namespace) -> bool:
    """True when runs execute on other machines (real SLURM), so this host must not resolve the device."""
    return args.launcher == "submitit" and args.slurm_partition != LOCAL_PARTITION


def slurm_parameters(options: SlurmOptions) -> dict[str, Any]:
    """CLI options -> ``submitit.AutoExecutor.update_parameters`` keywords (SLURM-specific ones prefixed)."""
    params: dict[str, Any] = {"name": "petl", "timeout_min": options.time_min}
    for key, value in (("slurm_partition", options.partition), ("slurm_gpus_per_task", options.gpus_per_task),
                       ("slurm_array_parallelism", options.array_parallelism),
                       ("slurm_account", options.account)):
        if value is not None:
            params[key] = value
    if options.extra:
        params["slurm_additional_parameters"] = dict(options.extra)
    return params


def slurm_executor(options: SlurmOptions, folder: Path) -> submitit.AutoExecutor:
    """The SLURM executor with ``options`` applied (raises RuntimeError where SLURM is absent)."""
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    executor.update_parameters(**slurm_parameters(options))
    return executor


# ------------------------------------------------------------------------------------------ shared bits
def _visible_gpus(device: str) -> list[str]:
    """GPU ids a child may be pinned to: the parent's CUDA_VISIBLE_DEVICES entries, else 0..count-1."""
    if device not in ("cuda", "auto"):
        return []
    import torch
    if not torch.cuda.is_available():
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env:
        return [g.strip() for g in env.split(",") if g.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _limit_threads(threads: int | None) -> None:
    """Concurrent runs on one host must not each use every core (oversubscription makes all of them slower)."""
    if threads is None and os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        threads = int(os.environ["SLURM_CPUS_PER_TASK"])   # torch would otherwise count the node's cores
    if threads:
        import torch
        torch.set_num_threads(threads)


def _log(message: str) -> None:
    print(message, flush=True)


def _pending(plan: list[PlannedRun], store: RunStore, retry_failed: bool) -> list[PlannedRun]:
    return [run for run in plan if store.should_run(run.config, retry_failed)]


def _outcomes(plan: list[PlannedRun], store: RunStore, trained: set[str]) -> list[tuple[PlannedRun, str]]:
    """Outcome per planned run read back from the store: its status if trained in this launch, else skipped."""
    out = []
    for run in plan:
        record = store.read(run.config)
        if record is None:
            out.append((run, PENDING))
        elif run.config.run_name in trained:
            out.append((run, str(record.get("status"))))
        else:
            out.append((run, f"skipped ({record.get('status')})"))
    return out


def _trained(outcome: str) -> bool:
    """run_one's outcome says it trained and recorded the run (not skipped, not owned by someone else)."""
    return outcome != "locked" and not outcome.startswith("skipped")


def _unfinished(outcomes: list[tuple[PlannedRun, str]]) -> list[str]:
    return [run.config.run_name for run, outcome in outcomes if outcome == PENDING]


# ------------------------------------------------------------------------------------------- in-process
class InProcess:
    """The default: runs one after another in this process (the runner's original loop)."""

    def launch(self, plan: list[PlannedRun], runtime: Runtime, store: RunStore, *, resume: bool,
               retry_failed: bool) -> Launched:
        from benchmarks.execution import run_plan
        return Launched(outcomes=run_plan(plan, runtime, store, resume=resume, retry_failed=retry_failed))


# ---------------------------------------------------------------------------------------------- workers
@dataclass(frozen=True)
class _WorkerJob:
    index: int
    plan: list[PlannedRun]
    runtime: Runtime
    out: Path
    retry_failed: bool
    recorded: Any                   # Manager dict shared by the workers: run_name -> status recorded in this launch
    gpu: str | None
    threads: int


def _worker_main(job: _WorkerJob) -> None:
    """A worker process: ``_worker_loop``, with Ctrl-C (it reaches every worker) and a failed write ending it in
    at most one line; the parent reports the interrupt once."""
    try:
        _worker_loop(job)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    except WriteError as exc:
        print(f"error: [w{job.index}] {exc}", file=sys.stderr, flush=True)
        sys.exit(1)


def _ignore_sigint() -> None:
    """The shared-dict manager must outlive a Ctrl-C until the workers have stopped (the parent shuts it down)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _worker_loop(job: _WorkerJob) -> None:
    """One worker: keep taking runs nobody owns until every planned run is finished or attempted.

    It keeps polling while other live processes hold locks, so a worker that dies mid-run (SIGKILL, OOM) has
    its stale lock taken over by a surviving worker, which resumes the run from the dead one's last.pt.
    A run recorded in this launch (by any worker) is never attempted again, so ``--retry-failed`` retries a
    failing run once, not forever.
    """
    if job.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = job.gpu     # before anything touches CUDA in this process
    _limit_threads(job.threads)
    from benchmarks.execution import run_one
    store = RunStore(job.out)
    order = job.plan[job.index:] + job.plan[:job.index]  # start apart, so workers rarely race for one lock
    while True:
        waiting = False
        for run in order:
            name = run.config.run_name
            if name in job.recorded or not store.should_run(run.config, job.retry_failed):
                continue
            if store.lock(run.config).live_owner() is not None:
                waiting = True
                continue
            outcome = run_one(run, job.runtime, store, resume=True, retry_failed=job.retry_failed, log=_log,
                              tag=f"[w{job.index}] ")
            if _trained(outcome.outcome):
                job.recorded[name] = outcome.outcome
            waiting = waiting or outcome.outcome == "locked"
        if not waiting:
            return
        time.sleep(POLL_S)


class Workers:
    """N spawned worker processes on this host (spawn, not fork: CUDA and threads do not survive fork)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def launch(self, plan: list[PlannedRun], runtime: Runtime, store: RunStore, *, resume: bool,
               retry_failed: bool) -> Launched:
        pending = _pending(plan, store, retry_failed)
        n = max(1, min(self.n, len(pending)))
        gpus = _visible_gpus(runtime.device) if runtime.device == "cuda" else []
        if gpus and n > len(gpus):
            _log(f"note: {n} workers share {len(gpus)} GPU(s); some GPUs train two runs at once")
        threads = max(1, _cpu_count() // n)
        _log(f"{len(pending)} pending run(s) of {len(plan)}; {n} worker(s), "
             + (f"GPUs {', '.join(gpus[i % len(gpus)] for i in range(n))}" if gpus else f"{threads} CPU thread(s) each"))
        ctx = multiprocessing.get_context("spawn")
        manager = multiprocessing.managers.SyncManager(ctx=ctx)
        manager.start(_ignore_sigint)
        recorded = manager.dict()
        procs = [ctx.Process(target=_worker_main, name=f"petl-worker-{i}", args=(_WorkerJob(
            i, plan, runtime, store.out, retry_failed, recorded, gpus[i % len(gpus)] if gpus else None, threads),))
            for i in range(n)] if pending else []
        try:
            for p in procs:
                p.start()
            _join_reaping(procs)
        except KeyboardInterrupt:   # the workers got the same SIGINT; let them release their locks first
            for p in procs:
                p.join()
            manager.shutdown()
            raise
        errors = [f"worker {i} (pid {p.pid}) exited with code {p.exitcode}" for i, p in enumerate(procs)
                  if p.exitcode != 0]
        trained = set(recorded.keys())
        manager.shutdown()
        outcomes = _outcomes(plan, store, trained)
        unfinished = _unfinished(outcomes)
        if unfinished:
            errors.append(f"{len(unfinished)} run(s) not finished (rerun the same command to resume them): "
                          f"{', '.join(unfinished)}")
        for line in errors:
            print(f"error: {line}", file=sys.stderr)
        return Launched(outcomes=outcomes, errors=errors)


def _join_reaping(procs: list[multiprocessing.process.BaseProcess]) -> None:
    """Join workers in whatever order they exit, reaping each at once, so a killed worker's lock is seen as
    stale by the survivors immediately (an unreaped zombie would look alive)."""
    alive = list(procs)
    while alive:
        multiprocessing.connection.wait([p.sentinel for p in alive])
        for p in [p for p in alive if not p.is_alive()]:
            p.join()
            alive.remove(p)


# --------------------------------------------------------------------------------------------- submitit
class SubmittedRun(submitit.helpers.Checkpointable):
    """One run as a submitit job: the runner's ``run_one`` plus requeue on preemption / time limit."""

    def __init__(self, run: PlannedRun, runtime: Runtime, out: Path, retry_failed: bool,
                 threads: int | None = None) -> None:
        self.run, self.runtime, self.out = run, runtime, Path(out)
        self.retry_failed, self.threads = retry_failed, threads

    def __call__(self) -> dict[str, Any]:
        """Skip if recorded ok, else take the lock and train (resuming from last.pt); returns a summary."""
        from benchmarks.execution import run_one
        _limit_threads(self.threads)
        runtime = self.runtime
        if runtime.device == "auto":   # resolved on the compute node: the submitting host may have no GPU
            import torch
            runtime = dataclasses.replace(runtime, device="cuda" if torch.cuda.is_available() else "cpu")
        outcome = run_one(self.run, runtime, self.out, resume=True, retry_failed=self.retry_failed, log=_log)
        record = outcome.record or {}
        return {"run_name": self.run.config.run_name, "outcome": outcome.outcome, "status": record.get("status"),
                "reason": record.get("reason")}

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """Requeue this same run. No state to save here: the engine checkpoints every epoch to last.pt and
        resumes from it, and ``run_one`` skips the run if it was recorded meanwhile."""
        return DelayedSubmission(self, *args, **kwargs)


class Submitit:
    """Each pending run becomes one element of a submitit job array (SLURM), or one LocalExecutor job."""

    def __init__(self, options: SlurmOptions) -> None:
        self.options = options

    def launch(self, plan: list[PlannedRun], runtime: Runtime, store: RunStore, *, resume: bool,
               retry_failed: bool) -> Launched:
        pending = _pending(plan, store, retry_failed)
        for run in plan:
            if run not in pending:
                _log(f"{run.config.run_name}: {store.status(run.config)}, skipped")
        if not pending:
            return Launched(outcomes=_outcomes(plan, store, set()))
        folder = store.out / "submitit"
        if not self.options.local:
            return self._submit_slurm(pending, runtime, store, folder, retry_failed)
        errors, trained = self._run_local(pending, runtime, store, folder, retry_failed)
        outcomes = _outcomes(plan, store, trained)
        unfinished = _unfinished(outcomes)
        if unfinished:
            errors.append(f"{len(unfinished)} run(s) not finished: {', '.join(unfinished)}")
        for line in errors:
            print(f"error: {line}", file=sys.stderr)
        return Launched(outcomes=outcomes, errors=errors)

    def _submit_slurm(self, pending: list[PlannedRun], runtime: Runtime, store: RunStore, folder: Path,
                      retry_failed: bool) -> Launched:
        """One job array; print how to follow it, and return without waiting (jobs may queue for hours)."""
        executor = slurm_executor(self.options, folder)
        with executor.batch():
            jobs = [executor.submit(SubmittedRun(run, runtime, store.out, retry_failed)) for run in pending]
        array_id = jobs[0].job_id.split("_")[0]
        _log(f"submitted job array {array_id}: {len(jobs)} run(s), logs in {folder}")
        for job, run in zip(jobs, pending):
            _log(f"  {job.job_id}  {run.config.run_name}")
        flags = " ".join(a for a in sys.argv[1:]) or "<the same sweep flags>"
        _log(f"follow:  squeue -j {array_id}   |   python -m benchmarks.status {store.out} {flags}")
        _log(f"report:  python -m benchmarks.report {store.out}   (once the jobs are done)")
        return Launched(submitted=True)

    def _run_local(self, pending: list[PlannedRun], runtime: Runtime, store: RunStore, folder: Path,
                   retry_failed: bool) -> tuple[list[str], set[str]]:
        """LocalExecutor jobs in a window of ``parallelism`` slots; each slot owns its GPUs and its cores
        (LocalExecutor alone would start every job at once, all on GPU 0)."""
        gpus = _visible_gpus(runtime.device)
        per = self.options.gpus_per_task or (1 if gpus else 0)
        slots: list[list[str]] = [gpus[i:i + per] for i in range(0, len(gpus) - per + 1, per)] if per else []
        if per and not slots:
            return [f"--slurm-gpus-per-task {per}: only {len(gpus)} GPU(s) visible here"], set()
        parallelism = min(self.options.array_parallelism or (len(slots) or 1), len(slots) or sys.maxsize,
                          len(pending))
        free = slots[:parallelism] if slots else [[] for _ in range(parallelism)]
        threads = max(1, _cpu_count() // parallelism)
        executor = submitit.LocalExecutor(folder=folder)
        queue, running, errors, trained = list(pending), [], [], set()
        _log(f"{len(pending)} run(s) as local submitit jobs, {parallelism} at a time; logs in {folder}")
        while queue or running:
            while queue and free:
                run, slot = queue.pop(0), free.pop(0)
                executor.update_parameters(timeout_min=self.options.time_min, gpus_per_node=len(slot),
                                           visible_gpus=[int(g) for g in slot] if slot else ())
                job = executor.submit(SubmittedRun(run, runtime, store.out, retry_failed, threads))
                _log(f"job {job.job_id}: {run.config.run_name}")
                running.append((job, run, slot))
            time.sleep(0.2 if not running else min(POLL_S, 0.5))
            for item in [r for r in running if r[0].done()]:
                job, run, slot = item
                running.remove(item)
                free.append(slot)
                errors += _job_error(job, run, trained)
        return errors, trained


def _job_error(job: Any, run: PlannedRun, trained: set[str]) -> list[str]:
    """A job that raised (not a failed record: that is the run's outcome) becomes an error line with its log."""
    try:
        summary = job.result()
    except Exception as exc:   # reported with the log path; the caller exits 1
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return [f"job {job.job_id} ({run.config.run_name}) raised {type(exc).__name__}: {first} "
                f"(log: {job.paths.stderr})"]
    if _trained(summary["outcome"]):
        trained.add(summary["run_name"])
    _log(f"job {job.job_id}: {summary['run_name']}: {summary['outcome']}"
         + (f" ({summary['reason']})" if summary.get("reason") else ""))
    return []
