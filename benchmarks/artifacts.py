"""The trained adapter of a finished run, kept beside its record: ``OUT/runs/<run_name>.adapter.safetensors``.

The engine writes the best state's adapter into the run's work folder (``adapter.safetensors``, via
``petl.save_adapter``); work folders are scratch, so the runner copies it next to the record and the predictions,
where ``benchmarks.explain`` (Grad-CAM) and the report (learned activations) find it. The record's ``"adapter"``
entry (file, sha256, bytes) is additive: records written before it existed simply have no adapter.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from benchmarks.files import atomic_write_bytes

SUFFIX = ".adapter.safetensors"
WORK_NAME = "adapter.safetensors"     # what engine.final_evaluation writes into the work folder


class ArtifactError(RuntimeError):
    """A run's adapter file that cannot be used; the message is one line naming the file and the fix."""


def path_for(runs_dir: Path, run_name: str) -> Path:
    return Path(runs_dir) / f"{run_name}{SUFFIX}"


def keep_adapter(workdir: Path, runs_dir: Path, run_name: str) -> dict[str, Any] | None:
    """Copy the work folder's adapter file to ``runs_dir`` atomically; the record's entry, None if there is none."""
    source = Path(workdir) / WORK_NAME
    if not source.is_file():
        return None
    data = source.read_bytes()
    target = atomic_write_bytes(path_for(runs_dir, run_name), data)
    return {"file": target.name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def adapter_path(record: dict[str, Any], runs_dir: Path) -> Path:
    """The record's adapter file, checked against its sha256; ``ArtifactError`` when it has none or it does not
    match."""
    entry = record.get("adapter")
    name = record.get("run_name", record.get("key", "?"))
    if not isinstance(entry, dict) or not entry.get("file"):
        raise ArtifactError(f"run {name} has no adapter file (its record predates kept adapters or it failed); "
                            f"rerun it with python -m benchmarks.run --no-resume to keep one")
    path = Path(runs_dir) / str(entry["file"])
    if not path.is_file():
        raise ArtifactError(f"adapter file {path} of run {name} is missing; restore it or rerun the run")
    if entry.get("sha256") and hashlib.sha256(path.read_bytes()).hexdigest() != entry["sha256"]:
        raise ArtifactError(f"adapter file {path} does not match the sha256 in its record (corrupt or replaced); "
                            f"restore it or rerun the run")
    return path
