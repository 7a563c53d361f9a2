"""Run records on disk: one atomic JSON file per run, resume decisions, and per-run locks.

Layout of an output folder ``OUT``::

    OUT/runs/<run_name>.json    the record (source of truth for every table and plot), beside it
                                <run_name>.predictions.npz and <run_name>.adapter.safetensors
    OUT/work/<run_name>/        engine work dir: last.pt checkpoint, adapter (git-ignored via OUT/.gitignore)
    OUT/locks/<run_name>.lock   held while a process trains the run ("host pid slurm-job" inside)

Records are written via a temporary file in the same folder + fsync + ``os.replace`` so a crash (even SIGKILL)
leaves either the old record or the new one, never a truncated file that would poison resume and reports.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from benchmarks.config import RunConfig
from benchmarks.files import atomic_write_bytes, write_error
# StoreError and load_record live with the record format (benchmarks.records); imported from here as before.
from benchmarks.records import RunRecord, RunStatus, StoreError, load_folder, load_record, migrate, read_record

OK, FAILED, INTERRUPTED, PENDING = RunStatus.OK, RunStatus.FAILED, RunStatus.INTERRUPTED, RunStatus.PENDING


def atomic_write_json(path: Path, data: Any) -> None:
    """Write ``data`` as strict JSON to ``path`` so readers see the old or the new file, never a partial one.

    NaN and infinities are written as ``null``: JSON has no such numbers, and other languages' parsers reject the
    ``NaN`` tokens Python would write (records written before keep them; ``benchmarks.records`` reads both).
    """
    text = json.dumps(_plain(data), indent=1, sort_keys=True, allow_nan=False) + "\n"
    atomic_write_bytes(Path(path), text.encode())


def _plain(value: Any) -> Any:
    """``value`` as plain JSON types: numpy scalars / arrays and Paths converted, non-finite floats as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):          # numpy scalars and arrays (tolist gives Python floats / lists)
        return _plain(value.tolist())
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in a run record")


def pid_alive(pid: int) -> bool:
    """True when a process with ``pid`` is running (signal 0 probes without sending anything).

    A killed child that its parent has not reaped yet is a zombie: it still answers signal 0 but will never
    release its lock, so on Linux a zombie counts as dead.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:   # no procfs (macOS) or the process just went away
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def this_host() -> str:
    return socket.gethostname()


def current_job() -> str | None:
    """The SLURM job (array element) this process runs in, stable across requeues; None outside SLURM."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID") or None


@dataclass(frozen=True)
class LockOwner:
    """Who holds a run lock: host, pid and (under SLURM) the job, so the lock can be judged from any machine."""

    host: str
    pid: int
    job: str | None = None

    @classmethod
    def current(cls) -> "LockOwner":
        return cls(this_host(), os.getpid(), current_job())

    @classmethod
    def parse(cls, text: str) -> "LockOwner | None":
        parts = text.split()
        if len(parts) == 1 and parts[0].isdigit():   # a bare pid: this host (locks written by hand or by old versions)
            return cls(this_host(), int(parts[0]))
        if len(parts) == 3 and parts[1].isdigit():
            return cls(parts[0], int(parts[1]), None if parts[2] == "-" else parts[2])
        return None

    def dumps(self) -> str:
        return f"{self.host} {self.pid} {self.job or '-'}"

    def alive(self) -> bool:
        """Whether the owner may still be training.

        On this host the pid decides (SIGKILLed owners leave stale locks that are taken over). On another host the
        pid cannot be probed: the lock is trusted, except when it was written by our own SLURM job on the node it
        ran on before a requeue. A lock left by a machine that died outside SLURM must be deleted by hand
        (``benchmarks.status`` lists it as running).
        """
        if self.host == this_host():
            return pid_alive(self.pid)
        return not (self.job is not None and self.job == current_job())

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.host}" + (f" (SLURM job {self.job})" if self.job else "")


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Serialise lock decisions on ``path`` across processes (flock on a sibling guard file)."""
    fd = os.open(path.with_name(path.name + ".guard"), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


class RunLock:
    """A lock file naming its owner (host, pid, SLURM job), so two processes never train the same run.

    Reading the owner, judging it and replacing a stale lock happen under one flock, and the owner is written
    atomically, so two processes racing for a free or stale lock cannot both win. A lock whose owner is dead
    (SIGKILLed on this host, or our own job before a SLURM requeue) is taken over.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.held = False

    def acquire(self) -> bool:
        """Take the lock; False when a live process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive(self.path):
            if self.live_owner() is not None:
                return False
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            try:
                tmp.write_text(LockOwner.current().dumps())
                os.replace(tmp, self.path)
            except OSError as exc:    # e.g. the disk is full: one line, no temporary file left
                tmp.unlink(missing_ok=True)
                raise write_error(exc, self.path) from exc
        self.held = True
        return True

    def owner(self) -> LockOwner | None:
        """The owner written in the lock file (None when there is no lock or it cannot be read)."""
        try:
            return LockOwner.parse(self.path.read_text())
        except FileNotFoundError:
            return None

    def live_owner(self) -> LockOwner | None:
        """The owner when it may still be training, else None (no lock, or a stale one)."""
        owner = self.owner()
        return owner if owner is not None and owner.alive() else None

    def release(self) -> None:
        if self.held:
            with _exclusive(self.path):
                if self.owner() == LockOwner.current():
                    self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class RunStore:
    """The records of one output folder, addressed by RunConfig."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.runs_dir = self.out / "runs"
        self.work_root = self.out / "work"
        self.locks_dir = self.out / "locks"

    def check_writable(self) -> None:
        """``StoreError`` when OUT cannot be created or written; creates nothing (used while validating input)."""
        existing = self.out
        while not existing.exists() and existing.parent != existing:
            existing = existing.parent
        for folder in (existing, self.runs_dir):
            if not folder.exists():
                continue
            if not folder.is_dir():
                raise StoreError(f"cannot write to output folder {self.out} ({folder} is not a folder); "
                                 f"choose a writable folder with --out DIR")
            if not os.access(folder, os.W_OK | os.X_OK):
                raise StoreError(f"cannot write to output folder {self.out} (no write permission on {folder}); "
                                 f"choose a writable folder with --out DIR")

    def prepare(self) -> None:
        """Create the layout and check the folder is writable (before any training starts)."""
        try:
            for d in (self.runs_dir, self.work_root, self.locks_dir):
                d.mkdir(parents=True, exist_ok=True)
            probe = self.runs_dir / f".write-probe-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
            ignore = self.out / ".gitignore"
            if not ignore.exists():
                ignore.write_text("# not committed: the work folder holds each run's epoch checkpoint (its trained "
                                  "adapter is kept in runs/), the locks folder the live locks\nwork/\nlocks/\n")
        except OSError as exc:
            reason = exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))
            raise StoreError(f"cannot write to output folder {self.out} ({reason}); "
                             f"choose a writable folder with --out DIR") from None

    def record_path(self, config: RunConfig) -> Path:
        return self.runs_dir / f"{config.run_name}.json"

    def workdir(self, config: RunConfig) -> Path:
        return self.work_root / config.run_name

    def lock(self, config: RunConfig) -> RunLock:
        return RunLock(self.locks_dir / f"{config.run_name}.lock")

    def read(self, config: RunConfig) -> dict[str, Any] | None:
        path = self.record_path(config)
        if not path.exists():
            return None
        return load_record(path)

    def write(self, record: dict[str, Any] | RunRecord) -> Path:
        """Write a run's record in the current format (``record_format`` added; everything else as given)."""
        raw = record.to_dict() if isinstance(record, RunRecord) else record
        data = RunRecord.from_dict(migrate(raw)).to_dict()    # a bad status is refused here, before the file
        path = self.runs_dir / f"{data['run_name']}.json"
        atomic_write_json(path, data)
        return path

    def status(self, config: RunConfig) -> RunStatus:
        """ok / failed / interrupted from the record, else pending (a last.pt may still let the engine resume)."""
        path = self.record_path(config)
        return read_record(path).status if path.exists() else PENDING

    def should_run(self, config: RunConfig, retry_failed: bool) -> bool:
        """Resume policy: ok is done; failed is done unless retrying; interrupted / absent runs (again)."""
        status = self.status(config)
        if status == OK:
            return False
        if status == FAILED:
            return retry_failed
        return True

    def records(self) -> Iterator[dict[str, Any]]:
        for _, record in load_folder(self.runs_dir):
            yield record
