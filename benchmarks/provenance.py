"""Where each table row's records come from: commit, tree state and host, per (dataset, method variant).

A table filled over several sessions mixes records made at different commits and on different hosts. Each record
already carries its commit, dirty flag and CPU / device name (``environment``, and per training process in
``efficiency.processes``); this table puts them beside the rows they feed, so a reader sees that a row's seeds
span two commits (or a dirty tree, or a slower host) without opening the JSON files. What changed between two
commits is ``git diff A B -- . ':!results'``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pandas as pd

COLUMNS = ["dataset", "method", "n_runs", "commits", "dirty_runs", "hosts"]
UNKNOWN = "unknown"          # a record made outside a git checkout (its commit is null)


def record_origin(record: dict[str, Any]) -> tuple[str, bool | None, str]:
    """(short commit or 'unknown', dirty flag or None, host name) of the process that wrote one record."""
    env = record.get("environment") or {}
    git = env.get("git") or {}
    return _origin(git.get("commit"), git.get("dirty"), env.get("device_name") or env.get("cpu"))


def record_origins(record: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    """The distinct origins of every process that trained one record's run (``efficiency.processes``: more than
    one when it was resumed), in order; records made before processes were listed: :func:`record_origin`."""
    processes = (record.get("efficiency") or {}).get("processes")
    if not processes:
        return [record_origin(record)]
    origins = [_origin(p.get("commit"), p.get("dirty"), p.get("host")) for p in processes]
    return list(dict.fromkeys(origins))


def _origin(commit: str | None, dirty: bool | None, host: str | None) -> tuple[str, bool | None, str]:
    return (commit[:7] if commit else UNKNOWN), dirty, str(host or UNKNOWN)


def counted(counter: Counter[str]) -> str:
    """``abc1234 x2, def5678 x1``: most frequent first, ties by name (a stable, diffable cell)."""
    return ", ".join(f"{k} x{n}" for k, n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))


def provenance_table(df: pd.DataFrame, records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per (dataset, label) of ``df`` (the runs the tables show, after any selection): how many runs,
    which commits and hosts made them, and how many came from a tree with uncommitted source changes. A run
    resumed at another commit or on another host counts under each, so a cell's counts can add up to more than
    ``n_runs``."""
    if df.empty:
        return pd.DataFrame(columns=COLUMNS)
    by_name = {r.get("run_name"): r for r in records}
    rows = []
    for (dataset, label), runs in df.groupby(["dataset", "label"], sort=True):
        commits, hosts, dirty = Counter(), Counter(), 0
        for name in runs["run_name"]:
            origins = record_origins(by_name[name])
            commits.update({commit for commit, _, _ in origins})
            hosts.update({host for _, _, host in origins})
            dirty += any(is_dirty for _, is_dirty, _ in origins)
        rows.append({"dataset": dataset, "method": label, "n_runs": len(runs), "commits": counted(commits),
                     "dirty_runs": dirty, "hosts": counted(hosts)})
    return pd.DataFrame(rows, columns=COLUMNS)
