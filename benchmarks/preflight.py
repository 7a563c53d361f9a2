"""Pre-flight checks of a planned sweep: everything a user can get wrong is found here, before OUT is touched.

Each check raises ``PreflightError`` with one line naming the problem and the fix; the runner prints it and exits
with code 2 (bad input). They run on the expanded plan (fully resolved ``RunConfig``s), so a value is checked the
same way whether it came from a flag, ``--set`` or a preset:

* values: every float setting and method option is finite, and sizes / seeds are in a range a run can use;
* methods: a composition names each method once, and every method's options apply to the run's backbone
  (built on the meta device: no weights, no memory, no time);
* records: every record already in ``OUT/runs`` is readable (the report at the end reads all of them);
* folders: every folder the sweep writes (OUT and its runs / work / locks / tables / plots / submitit, the runs'
  work dirs, the data cache) is writable.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Iterable

from benchmarks.config import RunConfig
from benchmarks.records import record_files, read_record
from benchmarks.store import RunStore, StoreError
from benchmarks.sweep import PlannedRun
from petl.errors import PetlError

MAX_IMG_SIZE = 2048        # 64 x 3 x 2048^2 fp32 inputs are 3 GiB per batch: larger is a typo, not a run
MAX_SEED = 2**32 - 1       # numpy's seed range; torch's epoch generators derive larger seeds from it


class PreflightError(PetlError, ValueError):
    """A planned sweep that cannot run as given; the message is one line naming the problem and the fix."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _non_finite(value: Any, path: str = "") -> Iterable[tuple[str, Any]]:
    """(dotted path, value) of every NaN / inf float inside ``value`` (nested dicts, lists, tuples)."""
    if isinstance(value, float) and not math.isfinite(value):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _non_finite(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _non_finite(v, f"{path}[{i}]")


def check_values(plan: list[PlannedRun]) -> None:
    """NaN / inf settings or options, and sizes or seeds no run can use (they would train a failed record)."""
    for run in plan:
        c = run.config
        for f in dataclasses.fields(RunConfig):
            if f.name == "options":
                continue
            for _, value in _non_finite(getattr(c, f.name)):
                example = f" such as {_flag(f.name)} {f.default:g}" if isinstance(f.default, float) else ""
                raise PreflightError(f"{_flag(f.name)} {value}: {f.name} must be a finite number "
                                     f"(run {run.label}); pass a finite value{example}")
        for where, value in _non_finite(c.options):
            raise PreflightError(f"--set {where}={value}: method options must be finite numbers "
                                 f"(run {run.label}); pass a finite value")
        if c.img_size > MAX_IMG_SIZE:
            raise PreflightError(f"--img-size {c.img_size}: at most {MAX_IMG_SIZE} pixels (a batch of such images "
                                 f"does not fit in memory); pass e.g. --img-size 224")
        if not 0 <= c.seed <= MAX_SEED:
            raise PreflightError(f"--seeds: seed {c.seed} is out of range; seeds go from 0 to {MAX_SEED}")


def check_compositions(plan: list[PlannedRun]) -> None:
    """``lora_c+lora_c`` would apply one method twice (the second finds no conv left to adapt)."""
    for method in dict.fromkeys(r.config.method for r in plan):
        parts = method.split("+")
        twice = sorted({p for p in parts if parts.count(p) > 1})
        if twice:
            raise PreflightError(f"--methods {method}: {', '.join(twice)} is composed with itself; each method "
                                 f"may appear once in a '+' composition (e.g. metalr+lora_c); to sweep its "
                                 f"options use --set {twice[0]}.OPTION=A,B")


def check_options_apply(plan: list[PlannedRun]) -> None:
    """Build each (backbone, head, method, options) on the meta device and apply its methods as the engine
    does, so options that cannot apply to the backbone (a target pattern matching no conv, positions the
    architecture lacks) are bad input now, not a failed record per run after the data has loaded."""
    import warnings

    import torch

    import petl
    from benchmarks.engine import build_model
    seen: set[str] = set()
    for run in plan:
        c = run.config
        ident = repr((c.backbone, c.head, c.method, sorted(c.options.items())))
        if ident in seen:
            continue
        seen.add(ident)
        bare = dataclasses.replace(c, weights=None, weights_sha256=None)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    with torch.device("meta"):
                        build_model(bare, num_classes=2)
                except petl.PetlConfigError:
                    raise
                except Exception:          # a model that cannot be built on meta: build it for real
                    build_model(bare, num_classes=2)
        except petl.PetlConfigError as exc:
            raise PreflightError(f"--methods {c.method} on --backbone {c.backbone}: "
                                 f"{' '.join(str(exc).split())}") from None
        except Exception as exc:           # the run would fail the same way: say so now, in one line
            first = (str(exc).strip().splitlines() or [""])[0]
            raise PreflightError(f"--methods {c.method} on --backbone {c.backbone}: the model cannot be built "
                                 f"({type(exc).__name__}: {first}); check the backbone name and method options") \
                from None


def check_records(store: RunStore) -> None:
    """Every record in OUT/runs reads as a record (the report at the end of the sweep reads them all)."""
    if not store.runs_dir.is_dir():
        return
    for path in record_files(store.runs_dir):
        read_record(path)       # StoreError names the file and the fix


def cache_root() -> Path:
    """Where the data cache lives (``benchmarks.data.base.cache_dir``'s root)."""
    env = os.environ.get("PETL_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "petl"


def _unwritable(folder: Path) -> str | None:
    """Why ``folder`` cannot be written (None: it can, or it does not exist yet and will be created)."""
    if not folder.exists():
        return None
    if not folder.is_dir():
        return "it is not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return "no write permission"
    return None


def check_writable(store: RunStore, plan: list[PlannedRun]) -> None:
    """Every folder the sweep will write, and every file it will overwrite in place (tables, plots), is
    writable; creates nothing. Folders that do not exist yet are created under a checked parent."""
    store.check_writable()                    # OUT (or its nearest existing parent) and OUT/runs
    out = store.out
    folders = [store.work_root, store.locks_dir, out / "tables", out / "plots", out / "submitit",
               *(store.workdir(r.config) for r in plan)]
    for folder in folders:
        why = _unwritable(folder)
        if why:
            raise PreflightError(f"cannot write to {folder} ({why}) inside output folder {out}; fix its "
                                 f"permissions (chmod u+w {folder}) or choose another --out DIR")
    for folder in (out / "tables", out / "plots"):
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            if path.is_file() and not os.access(path, os.W_OK):
                raise PreflightError(f"cannot overwrite {path} (no write permission); fix its permissions "
                                     f"(chmod u+w {path}) or choose another --out DIR")
    root = cache_root()
    existing = root
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    for folder in [existing, *(Path(d) / s for d, subs, _ in os.walk(root) for s in subs)]:
        why = _unwritable(folder)
        if why:
            raise PreflightError(f"cannot write to the data cache folder {folder} ({why}); fix its permissions "
                                 f"or set PETL_CACHE_DIR to a writable folder")


def check_plan(plan: list[PlannedRun]) -> None:
    """The checks that need only the plan (no files): values, compositions, options against backbones."""
    check_values(plan)
    check_compositions(plan)
    check_options_apply(plan)

