"""Sweep / bare: a method's training throughput inside real sweep runs against its bare step throughput.

``benchmarks.performance`` measures the bare step (one batch over and over); a sweep's record measures training
inside the runner (data, transforms, the same step). Their ratio says how much of a sweep's time is training:
the target is >= 0.85. The two are only comparable from the same machine and code, so a record counts only when
its environment matches the performance measurement's: same git commit, CPU model / device, torch thread count,
and the same backbone, image size and batch size. A record whose method options differ from the ones the
performance command used (e.g. GPAF ``spline`` in the preset, ``prelu`` in the bare measurement) still counts,
flagged ``options_differ``, because the preset's choice is what a sweep actually runs.

Each record also notes how loaded the machine was (``efficiency.machine_load``, see ``benchmarks.load``); the
median CPU share and host probe of the matched runs are reported next to the ratio, so a shared-core sweep, or
one on a host that was slower than during the bare measurement, is visible.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.load import probe_ms


def _options_key(method: str, options: dict[str, Any]) -> str:
    import petl
    try:
        full = dataclasses.asdict(petl.make_options(method, dict(options)))
    except Exception:          # an option this code no longer knows: compare the raw dicts
        full = dict(options)
    return json.dumps(full, sort_keys=True, default=list)


def _same_machine(env: dict[str, Any], meta: dict[str, Any]) -> bool:
    ref = meta.get("environment", {})
    return (env.get("git", {}).get("commit") is not None
            and env.get("git", {}).get("commit") == ref.get("git", {}).get("commit")
            and env.get("cpu") == ref.get("cpu") and env.get("device_name") == ref.get("device_name")
            and env.get("torch_threads") == meta.get("threads"))


def sweep_throughput(records: list[dict[str, Any]], meta: dict[str, Any]) -> pd.DataFrame:
    """Per (method, img_size, batch_size): median sweep training img/s of the matching ok records, their count,
    the median CPU share they got, and whether their options differ from the performance run's."""
    perf_options = meta.get("options", {})
    groups: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    for record in records:
        config, eff = record.get("config", {}), record.get("efficiency") or {}
        if record.get("status") != "ok" or not eff.get("train_images_per_s"):
            continue
        if config.get("backbone") != meta.get("backbone") or not _same_machine(record.get("environment", {}), meta):
            continue
        method = config.get("method")
        groups.setdefault((method, int(config.get("img_size", 0)), int(config.get("batch_size", 0))), []).append(record)
    rows = []
    for (method, size, batch), recs in groups.items():
        shares = [r["efficiency"].get("machine_load", {}).get("cpu_share") for r in recs]
        shares = [s for s in shares if s is not None]
        probes = [p for p in (probe_ms(r["efficiency"].get("machine_load")) for r in recs) if p is not None]
        wanted = _options_key(method, perf_options.get(method, {}))
        differ = any(_options_key(method, r["config"].get("options", {}).get(method, {})) != wanted for r in recs)
        rows.append({"method": method, "img_size": size, "batch_size": batch,
                     "sweep_images_per_s": statistics.median(r["efficiency"]["train_images_per_s"] for r in recs),
                     "sweep_runs": len(recs), "sweep_cpu_share": statistics.median(shares) if shares else None,
                     "sweep_probe_ms": statistics.median(probes) if probes else None, "options_differ": differ})
    return pd.DataFrame(rows, columns=["method", "img_size", "batch_size", "sweep_images_per_s", "sweep_runs",
                                       "sweep_cpu_share", "sweep_probe_ms", "options_differ"])


def load_records(folder: Path) -> list[dict[str, Any]]:
    """Every record in a sweep output folder (``FOLDER/runs/*.json``)."""
    from benchmarks.store import RunStore
    return list(RunStore(Path(folder)).records())


def add_sweep_ratio(df: pd.DataFrame, sweep: pd.DataFrame) -> pd.DataFrame:
    """``df`` (performance rows) with ``sweep_images_per_s``, ``sweep_vs_bare`` and the match details."""
    if sweep.empty:
        return df
    out = df.merge(sweep, on=["method", "img_size", "batch_size"], how="left")
    out["sweep_vs_bare"] = out["sweep_images_per_s"] / out["train_images_per_s"]
    return out
