"""Where a sweep stands, read from its output folder: planned / running / done / failed / interrupted.

    python -m benchmarks.status OUT                          # everything OUT holds
    python -m benchmarks.status OUT --preset paper           # + runs of that sweep not started yet
    python -m benchmarks.status OUT --methods lora_c --datasets breastmnist --seeds 0,1,2

With sweep flags it also estimates the time left: each run not yet done is priced at the median wall time of the
runs OUT has finished for the same dataset, method, backbone and image size (:data:`PACE_FIELDS`: another seed or
learning rate costs about the same, another backbone does not), so the figure is this machine's pace (records
made on a faster or a shared machine move it), and runs with no such finished peer are counted, not guessed.

The sweep flags are the runner's own (its parser is reused), so pasting a run command's flags here shows that
sweep's progress. Nothing is written and nothing needs data or a GPU, so it is safe to call from a login node
while jobs run. "running" means a lock held by a live process on this host, or a work dir with an epoch
checkpoint and no record yet: a run training on another node (whose pid cannot be probed from here), or one
killed without a record, which the next launch resumes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from benchmarks.records import RunRecord, read_record, record_files
from benchmarks.store import FAILED, INTERRUPTED, OK, RunLock, RunStore, StoreError

if TYPE_CHECKING:
    from benchmarks.sweep import PlannedRun

PLANNED, RUNNING = "planned", "running"
ORDER = (PLANNED, RUNNING, OK, FAILED, INTERRUPTED)
LABELS = {PLANNED: "planned (not started)", RUNNING: "running", OK: "done", FAILED: "failed",
          INTERRUPTED: "interrupted"}
LEFT = (PLANNED, RUNNING, INTERRUPTED)   # what the next launch trains (failed runs rerun only with --retry-failed)
CHECKPOINT = "last.pt"
EXIT_BAD_INPUT = 2


@dataclass(frozen=True)
class RunState:
    run_name: str
    status: str          # one of ORDER
    detail: str = ""     # failure reason, lock owner, "checkpoint, no record"


def read_records(store: RunStore) -> dict[str, RunRecord]:
    """run_name -> record; an unreadable record is an error (records are written atomically, so it is real)."""
    out = {}
    for path in record_files(store.runs_dir):
        record = read_record(path)
        out[str(record.run_name or path.stem)] = record
    return out


def classify(store: RunStore, planned: Sequence[str] | None = None,
             records: dict[str, RunRecord] | None = None) -> list[RunState]:
    """The state of every planned run (or, with no plan, of every run OUT knows about); ``records`` is
    :func:`read_records` of ``store`` when the caller already has it."""
    records = read_records(store) if records is None else records
    locks = {p.stem: p for p in store.locks_dir.glob("*.lock")} if store.locks_dir.is_dir() else {}
    work = {p.name for p in store.work_root.iterdir() if p.is_dir()} if store.work_root.is_dir() else set()
    names = list(planned) if planned is not None else sorted(set(records) | set(locks) | work)
    states = []
    for name in names:
        owner = RunLock(locks[name]).live_owner() if name in locks else None
        record = records.get(name)
        if owner is not None:
            states.append(RunState(name, RUNNING, f"lock held by {owner}"))
        elif record is not None:
            status = record.status    # a record saying "pending" (none is written so) counts as failed
            states.append(RunState(name, status if status in ORDER else FAILED, str(record.reason or "")))
        elif (store.work_root / name / CHECKPOINT).is_file():
            states.append(RunState(name, RUNNING, "epoch checkpoint, no record yet (running elsewhere, or killed)"))
        else:
            states.append(RunState(name, PLANNED))
    return states


def format_status(states: list[RunState], extra_records: int = 0) -> str:
    """One line per status, then the failed runs with their reasons, then runs in progress."""
    lines = [f"{LABELS[s]:<22} {sum(st.status == s for st in states)}" for s in ORDER]
    lines.append(f"{'total':<22} {len(states)}")
    if extra_records:
        lines.append(f"({extra_records} other record(s) in OUT are not part of this sweep)")
    failed = [s for s in states if s.status == FAILED]
    if failed:
        width = max(len(s.run_name) for s in failed)
        lines += ["", "failed runs:", f"{'run':<{width}}  reason", f"{'-' * width}  ------"]
        lines += [f"{s.run_name:<{width}}  {s.detail or '(no reason recorded)'}" for s in failed]
    running = [s for s in states if s.status == RUNNING]
    if running:
        lines += ["", "running:"] + [f"  {s.run_name}  ({s.detail})" for s in running]
    return "\n".join(lines)


#: what a finished run must share with a run left to set its pace: the compute it needs, not its seed or lr
PACE_FIELDS = ("dataset", "method", "backbone", "img_size")


def pace_key(config: Mapping[str, Any]) -> tuple[Any, ...]:
    """The :data:`PACE_FIELDS` of one run's configuration (a record's ``config`` or a planned ``RunConfig``'s)."""
    return tuple(config.get(f) for f in PACE_FIELDS)


@dataclass(frozen=True)
class TimeLeft:
    seconds: float       # summed over the runs that have a finished peer
    priced: int          # runs left with a finished run of the same pace key to go by
    unpriced: int        # runs left with none: no estimate is made for them


def estimate_time_left(left: Sequence[tuple[Any, ...]], records: dict[str, RunRecord]) -> TimeLeft:
    """Price each run left (its :func:`pace_key`) at the median wall time of OUT's finished runs of that key.

    The median, not the mean: a run that shared the cores records a longer time, and one such run should not set
    the pace."""
    times: dict[tuple[Any, ...], list[float]] = {}
    for record in records.values():
        wall = record.wall_time_s
        if record.status == OK and isinstance(wall, (int, float)) and wall > 0 and isinstance(record.config, dict):
            times.setdefault(pace_key(record.config), []).append(float(wall))
    pace = {key: statistics.median(walls) for key, walls in times.items()}
    priced = [pace[key] for key in left if key in pace]
    return TimeLeft(sum(priced), len(priced), len(left) - len(priced))


def format_time_left(estimate: TimeLeft) -> str:
    """One line, e.g. 'time left              ~3.4 h for 78 runs (...)'; hours once it exceeds 90 minutes."""
    minutes = estimate.seconds / 60
    amount = f"~{minutes / 60:.1f} h" if minutes > 90 else f"~{minutes:.0f} min"
    line = (f"{'time left':<22} {amount} for {estimate.priced} run(s) not done, at the median wall time of OUT's "
            f"finished runs of the same dataset, method, backbone and image size")
    if estimate.unpriced:
        line += f"; {estimate.unpriced} more have no finished run to go by"
    return line


def planned_runs(sweep_argv: list[str]) -> list[PlannedRun] | None:
    """The runs of the sweep the runner's flags describe; None when no sweep flags were given."""
    from benchmarks import run as runner
    from benchmarks.sweep import SweepError, expand
    args = runner.get_args_parser(with_catalogue=False).parse_args(sweep_argv)
    if not (args.preset or args.methods):
        if any(a.startswith("--") for a in sweep_argv if a != "--out"):
            raise SweepError("sweep flags need --methods or --preset to say which runs are planned")
        return None
    import petl
    try:
        runner.import_plugins(sweep_argv)   # --import MODULE: its methods must be known to expand the sweep
        return expand(runner.build_spec(args))
    except petl.PetlConfigError as exc:
        raise SweepError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.status", description=__doc__.split("\n\n")[0],
                                     epilog="Any other flags are the runner's sweep flags (python -m benchmarks.run "
                                            "--help); they add the sweep's not-yet-started runs as 'planned'.")
    parser.add_argument("out", nargs="?", type=Path, help="output folder of a sweep (or pass --out)")
    args, rest = parser.parse_known_args(argv)
    out = args.out
    if out is None and "--out" in rest:
        i = rest.index("--out")
        out = Path(rest[i + 1]) if i + 1 < len(rest) else None
    if out is None:
        print("error: pass the sweep's output folder: python -m benchmarks.status OUT", file=sys.stderr)
        return EXIT_BAD_INPUT
    from benchmarks.sweep import SweepError
    try:
        runs = planned_runs(rest)
    except SweepError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    planned = None if runs is None else [r.config.run_name for r in runs]
    store = RunStore(out)
    if planned is None and not store.runs_dir.is_dir():
        print(f"error: {store.runs_dir} does not exist; pass the --out folder of a sweep "
              f"(or the sweep flags, to list its planned runs)", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        records = read_records(store)
        states = classify(store, planned, records)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    extra = len(set(records) - set(planned)) if planned is not None else 0
    print(f"{out}:")
    print(format_status(states, extra))
    if runs is not None:
        left = [pace_key(r.config.to_dict()) for r, s in zip(runs, states) if s.status in LEFT]
        if left:
            print(format_time_left(estimate_time_left(left, records)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
