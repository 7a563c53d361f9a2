"""Run records on disk: one atomic JSON file per run, resume decisions, and per-run locks.

Layout of an output folder ``OUT``::

    OUT/runs/<run_name>.json    the record (source of truth for every table and plot)
    OUT/work/<run_name>/        engine work dir: last.pt checkpoint, adapter (git-ignored via OUT/.gitignore)
    OUT/locks/<run_name>.lock   held while a process trains the run (pid inside)

Records are written via a temporary file in the same folder + fsync + ``os.replace`` so a crash (even SIGKILL)
leaves either the old record or the new one, never a truncated file that would poison resume and reports.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from benchmarks.config import RunConfig

OK, FAILED, INTERRUPTED, PENDING = "ok", "failed", "interrupted", "pending"


class StoreError(RuntimeError):
    """The output folder cannot be used (not writable, not a folder)."""


def atomic_write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` so readers see the old or the new file, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1, sort_keys=True, default=_json_default)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Any failure (KeyboardInterrupt included) removes the temporary file and re-raises.
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX needs the directory entry flushed too)."""
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # e.g. platforms without directory fds; the data itself is already fsynced
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _json_default(value: Any) -> Any:
    """Numpy scalars/arrays and Paths appear in engine outputs; store them as plain JSON."""
    if hasattr(value, "tolist"):
        return value.tolist()
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


class RunLock:
    """An O_EXCL lock file holding the owner's pid, so two processes never train the same run.

    A lock whose pid is dead (the owner was SIGKILLed) is stale and is taken over.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.held = False

    def acquire(self) -> bool:
        """Take the lock; False when a live process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # create; if it exists and is stale, remove it and try again
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self.owner()
                if owner is not None and pid_alive(owner):
                    return False
                self.path.unlink(missing_ok=True)  # stale or half-written lock
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(str(os.getpid()))
            self.held = True
            return True
        return False

    def owner(self) -> int | None:
        try:
            text = self.path.read_text().strip()
        except FileNotFoundError:
            return None
        return int(text) if text.isdigit() else None

    def release(self) -> None:
        if self.held and self.owner() == os.getpid():
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
                ignore.write_text("# engine checkpoints and locks are large / transient: keep records only\nwork/\nlocks/\n")
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
        return json.loads(path.read_text())

    def write(self, record: dict[str, Any]) -> Path:
        path = self.runs_dir / f"{record['run_name']}.json"
        atomic_write_json(path, record)
        return path

    def status(self, config: RunConfig) -> str:
        """ok / failed / interrupted from the record, else pending (a last.pt may still let the engine resume)."""
        record = self.read(config)
        return PENDING if record is None else str(record.get("status", PENDING))

    def should_run(self, config: RunConfig, retry_failed: bool) -> bool:
        """Resume policy: ok is done; failed is done unless retrying; interrupted / absent runs (again)."""
        status = self.status(config)
        if status == OK:
            return False
        if status == FAILED:
            return retry_failed
        return True

    def records(self) -> Iterator[dict[str, Any]]:
        for path in sorted(self.runs_dir.glob("*.json")):
            yield json.loads(path.read_text())
