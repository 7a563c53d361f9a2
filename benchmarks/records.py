"""Run records: the typed form of ``OUT/runs/<run_name>.json``, its format version, and the one reader.

A record is what the runner writes once per run through ``RunStore.write``: the engine's result
(metrics, history, parameter counts, efficiency), the run's identity (key, name, label, config) and the process
facts (environment, runtime, timestamps). :class:`RunRecord` names those fields; every table, plot and resume
decision is derived from them.

Three rules keep every record ever written readable:

* **One reader.** :func:`read_record` (typed) and :func:`load_record` (the plain dict the reports index) are the
  only way a record file is read; they turn an unreadable or malformed file into one ``StoreError`` line that
  names the file and the fix.
* **One place for old formats.** Records carry ``record_format`` (:data:`RECORD_FORMAT`); a record without it was
  written before the field existed (format 1). :func:`migrate` brings any older record to the current format, so
  no consumer patches old records itself.
* **Nothing is lost.** Keys this code does not know (written by a newer or a patched runner) are kept in
  ``RunRecord.extra`` and written back unchanged, and a field the file does not have stays absent
  (:data:`ABSENT`, not written) rather than becoming ``null``: a record written through :class:`RunRecord` is
  byte for byte what the runner's dict gives, plus ``record_format``.

What is *not* a migration: a run config without ``cosine_end`` / ``split_seed`` / ``weights_sha256``. Those
fields are left out of the config on purpose while they hold their legacy value, new records included, so that
old records keep their run keys (:data:`benchmarks.config.KEY_DEFAULT_SKIPPED`, read back by
``RunConfig.from_dict``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, Iterator

from petl.errors import RecordError

RECORD_FORMAT: Final = 2
"""The format this code writes. 1: records without ``record_format`` (before it existed); 2: adds the key, and a
CPU run's ``runtime.precision`` is always present."""


class StoreError(RecordError):
    """A run record, or the output folder that holds the records, cannot be used (unreadable, malformed, not
    writable); the message names the file or folder and the fix."""


class RunStatus(StrEnum):
    """How a run ended. String-valued, so a record's JSON holds the plain word and ``status == "ok"`` holds."""

    OK = "ok"
    FAILED = "failed"
    INTERRUPTED = "interrupted"   # stopped after an epoch on request (``stop_after_epoch``); resumes next launch
    PENDING = "pending"           # no record yet (the store's answer); a record saying so is rerun


class _Absent:
    """The value of a field a record file does not have: not written back, unlike ``None`` (written as null)."""

    _instance: "_Absent | None" = None

    def __new__(cls) -> "_Absent":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Final[Any] = _Absent()


@dataclass
class RunRecord:
    """One run's record. Only ``status`` is required: hand-made and early records lack the rest, and a failed run
    whose engine raised has no engine fields at all (its ``params`` is absent, while a run failed by the engine has
    ``params: null``), so every other field may be :data:`ABSENT`."""

    status: RunStatus
    # identity (the runner's): content key, file name, table label, and the resolved RunConfig as a dict
    key: str = ABSENT
    run_name: str = ABSENT
    label: str | None = ABSENT
    method: str = ABSENT
    dataset: str = ABSENT
    seed: int = ABSENT
    config: dict[str, Any] = ABSENT
    reason: str | None = ABSENT             # the one-line failure reason; None when ok
    traceback: str = ABSENT                 # tail of the exception's traceback when the engine raised
    # the engine's result (benchmarks.engine.execute)
    metrics: dict[str, Any] = ABSENT        # {"val": {...}, "test": {...}} as benchmarks.metrics computes them
    best_epoch: int = ABSENT
    epochs_run: int = ABSENT
    history: list[dict[str, Any]] = ABSENT  # one entry per epoch: losses, val metrics, lr, trainer log
    params: dict[str, Any] | None = ABSENT  # total / trainable / percent_trainable
    adapter_bytes: int | None = ABSENT
    efficiency: dict[str, Any] = ABSENT     # throughput, peak memory, device, machine load
    wall_time_s: float = ABSENT
    # files kept beside the record (benchmarks.predictions, benchmarks.artifacts): {"file", "sha256", ...}
    predictions: dict[str, Any] = ABSENT
    adapter: dict[str, Any] = ABSENT
    # the process that ran it
    environment: dict[str, Any] = ABSENT
    runtime: dict[str, Any] = ABSENT        # requested device, precision, data root, pid, argv, ...
    started_at: str = ABSENT
    finished_at: str = ABSENT
    runner_wall_time_s: float = ABSENT
    record_format: int = ABSENT
    extra: dict[str, Any] = field(default_factory=dict)   # keys this code does not know, kept as they are

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str | Path = "") -> "RunRecord":
        """The record of a current-format dict (:func:`migrate` an older one first). Values are kept as they are
        (no copies, no conversions), so :meth:`to_dict` gives ``d`` back. ``source`` names the file in errors."""
        where = f"run record {source}" if source else "run record"
        fix = "restore it, or delete it to rerun that run"
        if not isinstance(d, dict):
            raise StoreError(f"{where} is not a JSON object; {fix}")
        if "status" not in d:
            raise StoreError(f"{where} has no status; {fix}")
        try:
            status = RunStatus(d["status"])
        except ValueError:
            choices = ", ".join(s.value for s in RunStatus)
            raise StoreError(f"{where} has status {d['status']!r}, not one of {choices}; {fix}") from None
        known = {f.name for f in dataclasses.fields(cls)} - {"extra", "status"}
        return cls(status=status, **{k: v for k, v in d.items() if k in known},
                   extra={k: v for k, v in d.items() if k not in known and k != "status"})

    def to_dict(self) -> dict[str, Any]:
        """The record as the JSON object it is written as: absent fields left out, unknown keys kept."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name != "extra" and value is not ABSENT:
                out[f.name] = value
        out["status"] = self.status.value
        out.update(self.extra)
        return out

    @property
    def ok(self) -> bool:
        return self.status is RunStatus.OK


def migrate(raw: dict[str, Any], source: str | Path = "") -> dict[str, Any]:
    """``raw`` brought to :data:`RECORD_FORMAT`: every patch for records of an older format is here, nowhere else.

    The input is not changed (nested parts that change are copied). A dict the runner has just built has no
    ``record_format`` yet either; the patches are no-ops on it, so it only gains the key. A record from a newer
    format than this code knows is refused (its fields may mean something else).
    """
    where = f"run record {source}" if source else "run record"
    if not isinstance(raw, dict):
        raise StoreError(f"{where} is not a JSON object; restore it, or delete it to rerun that run")
    version = raw.get("record_format", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise StoreError(f"{where} has record_format {version!r}, not a format number; restore it, or delete it "
                         f"to rerun that run")
    if version > RECORD_FORMAT:
        raise StoreError(f"{where} has record_format {version}, newer than this code reads ({RECORD_FORMAT}); "
                         f"update petl to read it")
    out = dict(raw)
    if version < 2:
        _cpu_precision(out)
    out["record_format"] = RECORD_FORMAT
    return out


def _cpu_precision(record: dict[str, Any]) -> None:
    """Format 1 -> 2: records written before ``runtime.precision`` existed. A CPU run never autocasts, so it was
    fp32; on another device the precision is unknown and stays absent (the report says so)."""
    runtime = record.get("runtime")
    runtime = {} if runtime is None else runtime
    if not isinstance(runtime, dict) or runtime.get("precision"):
        return
    if run_device(record) == "cpu":
        record["runtime"] = {**runtime, "precision": "fp32"}


def run_device(record: dict[str, Any]) -> str:
    """The device kind a run asked for ("cpu", "cuda"; "unknown" if unrecorded), without an index: the runtime's,
    else the one the engine measured on, else the environment's."""
    device = (record.get("runtime") or {}).get("device") or (record.get("efficiency") or {}).get("device") \
        or (record.get("environment") or {}).get("device") or "unknown"
    return str(device).split(":")[0]


# ------------------------------------------------------------------------------------------------ the reader
def read_record(path: Path) -> RunRecord:
    """The record in ``path``, migrated to the current format; ``StoreError`` naming the file and the fix when it
    cannot be read, is not JSON (records are written atomically, so such a file was edited or copied in), or is
    not a record. JSON's non-standard ``NaN`` / ``Infinity`` tokens (records written before non-finite values
    were stored as null) read as floats."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except OSError as exc:        # e.g. mode 000, or a folder named *.json
        raise StoreError(f"cannot read run record {path} ({exc.strerror or type(exc).__name__}); fix its "
                         f"permissions (chmod a+r {path}), or delete it to rerun that run") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreError(f"run record {path} is not valid JSON ({exc}); records are written atomically, so it was "
                         f"edited or copied in: restore it, or delete it to rerun that run") from None
    return RunRecord.from_dict(migrate(raw, path), path)


def load_record(path: Path) -> dict[str, Any]:
    """:func:`read_record` as the plain dict that tables and plots index (``record["metrics"]["test"]``)."""
    return read_record(path).to_dict()


def record_files(runs_dir: Path) -> list[Path]:
    """The record files of a ``runs/`` folder, in name order (the order every table is built in)."""
    return sorted(Path(runs_dir).glob("*.json"))


def load_folder(runs_dir: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(path, record) for every record of a ``runs/`` folder, in name order; the first bad file is an error."""
    for path in record_files(runs_dir):
        yield path, load_record(path)
