"""benchmarks.status: counts per status on a synthetic output folder, planned runs from the runner's flags."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from benchmarks import status
from benchmarks.store import RunStore


def dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)


@pytest.fixture
def synthetic_out(tmp_path):
    """2 ok, 1 failed, 1 interrupted, 1 live-locked, 1 checkpoint-without-record, 1 stale lock, 1 bare work dir."""
    store = RunStore(tmp_path / "out")
    store.prepare()
    for name, st, reason in (("a_ok", "ok", None), ("b_ok", "ok", None), ("c_failed", "failed", "RuntimeError: boom"),
                             ("d_int", "interrupted", None), ("e_retry", "failed", "old failure")):
        store.write({"run_name": name, "status": st, "reason": reason})
    (store.locks_dir / "e_retry.lock").write_text(str(os.getpid()))     # a live process retries a failed run
    (store.work_root / "f_ckpt").mkdir()
    (store.work_root / "f_ckpt" / "last.pt").write_bytes(b"x")          # training elsewhere, or killed
    (store.locks_dir / "g_stale.lock").write_text(str(dead_pid()))      # dead owner, nothing trained yet
    (store.work_root / "h_fresh").mkdir()                                # work dir made, no checkpoint yet
    return store


def test_counts_on_synthetic_out(synthetic_out) -> None:
    states = {s.run_name: s for s in status.classify(synthetic_out)}
    assert {n: s.status for n, s in states.items()} == {
        "a_ok": "ok", "b_ok": "ok", "c_failed": "failed", "d_int": "interrupted", "e_retry": "running",
        "f_ckpt": "running", "g_stale": "planned", "h_fresh": "planned"}
    text = status.format_status(list(states.values()))
    lines = text.splitlines()
    assert lines[:6] == ["planned (not started)  2", "running                2", "done                   2",
                         "failed                 1", "interrupted            1", "total                  8"]
    assert "c_failed  RuntimeError: boom" in text and "old failure" not in text
    assert f"lock held by pid {os.getpid()} on " in text


def test_cli_with_sweep_flags_lists_unstarted_runs(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    flags = ["--methods", "linear_probe,bitfit", "--datasets", "breastmnist", "--seeds", "0,1"]
    names = [r.config.run_name for r in status.planned_runs(flags)]
    assert len(names) == 4
    store = RunStore(out)
    store.prepare()
    store.write({"run_name": names[0], "status": "ok"})
    store.write({"run_name": names[1], "status": "failed", "reason": "ValueError: bad"})
    store.write({"run_name": "other_sweep_run", "status": "ok"})
    assert status.main([str(out), *flags]) == 0
    printed = capsys.readouterr().out
    assert "planned (not started)  2" in printed and "done                   1" in printed
    assert "failed                 1" in printed and "ValueError: bad" in printed
    assert "1 other record(s)" in printed
    assert status.main([str(out)]) == 0                     # no flags: just what OUT holds
    assert "done                   2" in capsys.readouterr().out


@pytest.mark.parametrize("argv, fragment", [
    (["{out}", "--methods", "nope"], "unknown method"),
    (["{missing}"], "does not exist"),
    (["{out}", "--seeds", "0,1"], "--methods or --preset"),
    ([], "output folder"),
])
def test_cli_errors_exit_2_one_line(tmp_path, capsys, argv, fragment) -> None:
    RunStore(tmp_path / "out").prepare()
    argv = [a.format(out=tmp_path / "out", missing=tmp_path / "missing") for a in argv]
    try:
        code = status.main(argv)
    except SystemExit as exc:      # the runner's parser reports its errors by exiting 2
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and fragment in err[0], err


def test_time_left_is_the_median_of_finished_peers(tmp_path, capsys) -> None:
    """Each run left is priced at the median wall time of finished runs of its dataset, method, backbone and image
    size; a method with no finished run is counted, not guessed; failed records, other datasets' records and
    another backbone's records set no pace."""
    out = tmp_path / "out"
    flags = ["--methods", "linear_probe,bitfit", "--datasets", "breastmnist", "--seeds", "0,1,2,3"]
    runs = status.planned_runs(flags)
    lp = [r.config for r in runs if r.config.method == "linear_probe"]
    backbone, size = lp[0].backbone, lp[0].img_size

    def config(dataset: str, method: str, **kw) -> dict:
        return {"dataset": dataset, "method": method, "backbone": backbone, "img_size": size, "lr": 1e-3, **kw}

    store = RunStore(out)
    store.prepare()
    for cfg, wall in zip(lp[:3], (60.0, 600.0, 90.0)):      # median 90 s, mean 250 s
        store.write({"run_name": cfg.run_name, "status": "ok", "dataset": "breastmnist", "method": "linear_probe",
                     "wall_time_s": wall, "config": config("breastmnist", "linear_probe", seed=cfg.seed)})
    store.write({"run_name": "elsewhere", "status": "ok", "dataset": "pneumoniamnist", "method": "bitfit",
                 "wall_time_s": 5000.0, "config": config("pneumoniamnist", "bitfit")})
    store.write({"run_name": "broken", "status": "failed", "dataset": "breastmnist", "method": "bitfit",
                 "wall_time_s": 7.0, "config": config("breastmnist", "bitfit")})
    store.write({"run_name": "bigger", "status": "ok", "dataset": "breastmnist", "method": "bitfit",
                 "wall_time_s": 7000.0, "config": config("breastmnist", "bitfit", backbone="other_net")})
    store.write({"run_name": "larger", "status": "ok", "dataset": "breastmnist", "method": "bitfit",
                 "wall_time_s": 8000.0, "config": config("breastmnist", "bitfit", img_size=size * 2)})
    left = [status.pace_key(r.config.to_dict()) for r in runs if r.config.run_name not in {c.run_name for c in lp[:3]}]
    estimate = status.estimate_time_left(left, status.read_records(store))
    assert estimate == status.TimeLeft(seconds=90.0, priced=1, unpriced=4)
    assert status.main([str(out), *flags]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("time left              ~2 min for 1 run(s) not done") and "4 more have no" in line
    assert "same dataset, method, backbone and image size" in line
    assert status.format_time_left(status.TimeLeft(3.4 * 3600, 78, 0)).split()[2:4] == ["~3.4", "h"]
