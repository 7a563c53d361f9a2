"""Launchers: option mapping, the sbatch script submitit writes, worker processes, submitit's local executor,
SIGKILL of a worker mid-run, and reports merged from several output folders.

Cross-process tests cannot monkeypatch, so a ``sitecustomize`` written into tmp_path (on PYTHONPATH only for
those subprocesses) swaps in a fast fake engine that checkpoints each epoch and resumes like the real one. The
same scenarios on the real engine and real BreastMNIST run when ``benchmarks.data`` is present.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import submitit
import submitit.local.local

from benchmarks import launch
from benchmarks import run as runner
from benchmarks import execution, preflight
from benchmarks.store import RunLock

REPO = Path(__file__).resolve().parent.parent
DATA_ROOT = Path(os.environ.get("PETL_DATA_ROOT", REPO.parent / "shared" / "data"))
HAS_DATA_API = importlib.util.find_spec("benchmarks.data") is not None

FAKE_SITE = '''
import os
if os.environ.get("PETL_TEST_FAKE_ENGINE"):
    import json, time
    from pathlib import Path
    import benchmarks.execution as _execution
    import benchmarks.preflight as _preflight

    def execute(config, runtime, workdir, stop_after_epoch=None):
        ckpt = Path(workdir) / "last.pt"
        history = json.loads(ckpt.read_text())["history"] if ckpt.exists() else []   # resume like the engine
        for epoch in range(len(history), config.epochs):
            time.sleep(float(os.environ.get("PETL_TEST_EPOCH_S", "0.1")))
            history.append({"epoch": epoch, "train_loss": 1.0 / (epoch + 1), "val_auc": 0.6, "pid": os.getpid()})
            tmp = ckpt.with_name("last.tmp")
            tmp.write_text(json.dumps({"history": history}))
            os.replace(tmp, ckpt)
        auc = 0.7 + 0.01 * config.seed + 0.001 * len(config.method)
        test = {"acc": auc - 0.1, "auc": auc, "balanced_acc": auc - 0.2, "macro_f1": auc - 0.15}
        return {"status": "ok", "reason": None, "metrics": {"val": test, "test": test}, "best_epoch": 0,
                "epochs_run": len(history), "history": history,
                "params": {"total": 100, "trainable": 10, "percent_trainable": 10.0}, "adapter_bytes": 40,
                "efficiency": {"device": runtime.device, "threads": __import__("torch").get_num_threads()}}

    _execution.execute = execute
    _preflight.check_data = lambda datasets, root: Path(root or ".")
    _preflight.check_weights = lambda plan: None
    _preflight.check_loads = lambda plan, runtime: None
'''
CLI = "import sys, benchmarks.run as r; sys.exit(r.main(sys.argv[1:]))"   # sitecustomize patches execution / preflight


@pytest.fixture
def fake_env(tmp_path) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(FAKE_SITE)
    return {**os.environ, "PETL_TEST_FAKE_ENGINE": "1", "PYTHONPATH": f"{site}{os.pathsep}{REPO}"}


def cli(env: dict[str, str], *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CLI, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def sweep(out: Path, epochs: int = 2) -> list[str]:
    return ["--methods", "linear_probe,bitfit", "--datasets", "breastmnist", "--seeds", "0,1", "--epochs",
            str(epochs), "--device", "cpu", "--no-progress", "--out", str(out)]


def records(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))}


def results(out: Path) -> dict[str, tuple]:
    """What must not depend on the launcher: status, metrics, and the epochs of the history."""
    return {name: (r["status"], r["metrics"], [h["epoch"] for h in r["history"]]) for name, r in records(out).items()}


# ------------------------------------------------------------------------------------------- options
@pytest.mark.parametrize("text, minutes", [("90", 90), ("04:00:00", 240), ("0:30:01", 31), ("1-02:00:00", 1560)])
def test_slurm_time_forms(text: str, minutes: int) -> None:
    assert launch.parse_time_min(text) == minutes


LOCAL_SUBMITIT = ("--launcher", "submitit", "--slurm-partition", "local")


@pytest.fixture
def no_data_check(monkeypatch, tmp_path):
    monkeypatch.setattr(preflight, "check_data", lambda datasets, root: tmp_path)
    monkeypatch.setattr(preflight, "check_weights", lambda plan: None)
    monkeypatch.setattr(preflight, "check_loads", lambda plan, runtime: None)


@pytest.mark.parametrize("extra, fragment", [
    ([*LOCAL_SUBMITIT, "--slurm-time", "4h"], "--slurm-time"),
    ([*LOCAL_SUBMITIT, "--slurm-time", "0"], "positive"),
    ([*LOCAL_SUBMITIT, "--slurm-extra", "=x"], "--slurm-extra"),
    (["--slurm-partition", "gpu", "--launcher", "local"], "only apply with --launcher submitit"),
    (["--workers", "0"], "--workers 0"),
    (["--workers", "2", "--no-resume"], "--no-resume"),
    (["--launcher", "submitit", "--slurm-partition", "local", "--workers", "2"], "--workers applies"),
    (["--launcher", "submitit", "--slurm-partition", "local", "--slurm-array-parallelism", "0"], "must be >= 1"),
    (["--launcher", "submitit", "--slurm-partition", "gpu"], "sbatch not found"),
    (["--launcher", "slurm"], "invalid choice"),
])
def test_bad_launcher_options_exit_2_before_anything(no_data_check, tmp_path, capsys, extra, fragment) -> None:
    out = tmp_path / "out"
    try:
        code = runner.main([*sweep(out), *extra])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and fragment in err[0], err
    assert not out.exists()


def fake_slurm(tmp_path: Path, monkeypatch) -> Path:
    """Executables named sbatch / srun on PATH: submitit renders and 'submits' exactly as on a cluster."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text('#!/bin/sh\ncp "$1" "$(dirname "$0")/submitted.sh"\necho "Submitted batch job 4242"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    for exe in ("sbatch", "srun"):
        (bin_dir / exe).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def test_options_map_to_sbatch_script(tmp_path, monkeypatch) -> None:
    fake_slurm(tmp_path, monkeypatch)
    args = runner.get_args_parser(False).parse_args(
        ["--launcher", "submitit", "--slurm-partition", "gpu", "--slurm-gpus-per-task", "1", "--slurm-time",
         "04:00:00", "--slurm-array-parallelism", "2", "--slurm-account", "proj", "--slurm-extra", "qos=high",
         "--slurm-extra", "exclusive"])
    options = launch.launcher_from_args(args).options
    executor = launch.slurm_executor(options, tmp_path / "submitit")
    executor._executor.parameters["map_count"] = 5           # what submitit sets for an array of 5
    text = executor._executor._make_submission_file_text("python -m submitit.core._submit x", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-task=1", "#SBATCH --time=240",
                 "#SBATCH --array=0-4%2", "#SBATCH --account=proj", "#SBATCH --qos=high", "#SBATCH --exclusive",
                 "#SBATCH --job-name=petl"):
        assert line in text.splitlines(), (line, text)


def test_submit_writes_one_array_and_exits_0_without_training(no_data_check, tmp_path, monkeypatch, capsys) -> None:
    bin_dir = fake_slurm(tmp_path, monkeypatch)
    out = tmp_path / "out"
    code = runner.main([*sweep(out), "--device", "auto", "--launcher", "submitit", "--slurm-partition", "gpu",
                        "--slurm-time", "30", "--slurm-array-parallelism", "3"])
    printed = capsys.readouterr().out
    assert code == 0
    script = (bin_dir / "submitted.sh").read_text()
    assert "#SBATCH --array=0-3%3" in script and "#SBATCH --partition=gpu" in script and "--time=30" in script
    assert "submitted job array 4242: 4 run(s)" in printed and "4242_3" in printed
    assert "benchmarks.status" in printed and "benchmarks.report" in printed
    assert not list((out / "runs").glob("*.json"))              # nothing trained here
    pickles = list((out / "submitit").glob("*_submitted.pkl"))
    assert len(pickles) == 4
    delayed = submitit.core.utils.DelayedSubmission.load(pickles[0])
    assert isinstance(delayed.function, submitit.helpers.Checkpointable)
    assert delayed.function.runtime.device == "auto"            # resolved on the compute node, not here
    requeued = delayed.function.checkpoint()
    assert requeued.function is delayed.function                # requeue = the same run, resumed from last.pt


# ------------------------------------------------------------------------------- processes (fake engine)
def test_workers_and_submitit_local_match_in_process(fake_env, tmp_path) -> None:
    outs = {name: tmp_path / name for name in ("inproc", "workers", "submitit")}
    done = {
        "inproc": cli(fake_env, *sweep(outs["inproc"])),
        "workers": cli(fake_env, *sweep(outs["workers"]), "--workers", "2"),
        "submitit": cli(fake_env, *sweep(outs["submitit"]), "--launcher", "submitit", "--slurm-partition", "local",
                        "--slurm-array-parallelism", "2"),
    }
    for name, proc in done.items():
        assert proc.returncode == 0, (name, proc.stdout[-2000:], proc.stderr[-3000:])
        assert len(records(outs[name])) == 4
    assert results(outs["workers"]) == results(outs["inproc"]) == results(outs["submitit"])
    # two workers on 2 cores: one thread each, and each run trained by exactly one worker
    assert {r["efficiency"]["threads"] for r in records(outs["workers"]).values()} == {max(1, launch._cpu_count() // 2)}
    worker_pids = {r["runtime"]["pid"] for r in records(outs["workers"]).values()}
    assert len(worker_pids) == 2
    again = cli(fake_env, *sweep(outs["submitit"]), "--launcher", "submitit", "--slurm-partition", "local")
    assert again.returncode == 0 and again.stdout.count("skipped") == 4 and "job " not in again.stdout


def wait_for(predicate, timeout: float = 120.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def first_checkpointed_lock(out: Path) -> tuple[str, int] | None:
    """(run_name, owner pid) of a run that is locked and has written its first epoch checkpoint."""
    for lock in (out / "locks").glob("*.lock") if (out / "locks").is_dir() else []:
        owner = RunLock(lock).owner()
        if owner is not None and (out / "work" / lock.stem / "last.pt").exists():
            return lock.stem, owner.pid
    return None


def kill_worker_and_requeue(env: dict[str, str], args: list[str], out: Path, epochs: int) -> None:
    """SIGKILL a worker after its first epoch checkpoint; rerun; every run must finish exactly once."""
    proc = subprocess.Popen([sys.executable, "-c", CLI, *args, "--workers", "2"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    name, pid = wait_for(lambda: first_checkpointed_lock(out), timeout=300)
    assert pid != proc.pid                                       # a worker, not the launcher
    os.kill(pid, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=600)
    assert f"pid {pid}) exited with code -9" in stderr           # reported, never hidden
    rerun = cli(env, *args, "--workers", "2", timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    recs = records(out)
    assert len(recs) == 4 and all(r["status"] == "ok" for r in recs.values())
    for run_name, r in recs.items():
        assert [h["epoch"] for h in r["history"]] == list(range(epochs)), run_name   # continuous, no repeats
        assert (stdout + rerun.stdout).count(f"{run_name}: ok") == 1, run_name          # finished exactly once
    assert not list((out / "locks").glob("*.lock"))              # the dead worker's lock was taken over
    return recs[name]


def test_sigkill_worker_then_rerun_finishes_each_run_once(fake_env, tmp_path) -> None:
    env = {**fake_env, "PETL_TEST_EPOCH_S": "0.7"}
    out = tmp_path / "out"
    killed = kill_worker_and_requeue(env, sweep(out, epochs=3), out, epochs=3)
    pids = [h["pid"] for h in killed["history"]]
    assert pids[0] != pids[-1]                                   # resumed from the dead worker's checkpoint


def test_submitit_preemption_requeues_and_resumes_the_run(fake_env, tmp_path) -> None:
    """SLURM preemption / time limit as submitit's local executor delivers it (SIGUSR2 to the job): the job
    checkpoints, is requeued by submitit itself (no rerun of the command) and continues from its last epoch."""
    env = {**fake_env, "PETL_TEST_EPOCH_S": "0.7"}
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", CLI, *sweep(out, epochs=3), "--launcher", "submitit",
                             "--slurm-partition", "local", "--slurm-array-parallelism", "2"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    name, pid = wait_for(lambda: first_checkpointed_lock(out), timeout=300)
    os.kill(pid, submitit.local.local.LocalJobEnvironment._usr_sig())
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, (stdout[-2000:], stderr[-3000:])
    recs = records(out)
    assert len(recs) == 4 and all(r["status"] == "ok" for r in recs.values())
    for run_name, r in recs.items():
        assert [h["epoch"] for h in r["history"]] == [0, 1, 2], run_name          # continuous, nothing retrained
    pids = [h["pid"] for h in recs[name]["history"]]
    assert pids[0] == pid and pids[-1] != pid                                      # resumed in the requeued job
    assert not list((out / "locks").glob("*.lock"))


# --------------------------------------------------------------------------------------------- reports
def test_report_merges_records_of_two_output_folders(no_data_check, tmp_path, monkeypatch) -> None:
    from benchmarks import report
    namespace: dict = {}
    for module, name in ((execution, "execute"), (preflight, "check_data"), (preflight, "check_weights"),
                         (preflight, "check_loads")):   # the exec below assigns fakes: undone after this test
        monkeypatch.setattr(module, name, getattr(module, name))
    exec(FAKE_SITE.replace('if os.environ.get("PETL_TEST_FAKE_ENGINE"):', "if True:"), namespace)  # same fake
    monkeypatch.setattr(execution, "execute", namespace["execute"])
    a, b, merged = tmp_path / "a", tmp_path / "b", tmp_path / "merged"
    common = ["--methods", "linear_probe,bitfit", "--datasets", "breastmnist", "--epochs", "1", "--device", "cpu",
              "--no-progress"]
    assert runner.main([*common, "--seeds", "0", "--out", str(a)]) == 0        # e.g. one cluster ...
    assert runner.main([*common, "--seeds", "1", "--out", str(b)]) == 0        # ... and one workstation
    (merged / "runs").mkdir(parents=True)
    for src in (a, b):
        for p in (src / "runs").glob("*.json"):
            shutil.copy(p, merged / "runs" / p.name)
    assert report.main([str(merged), "--reference", "linear_probe"]) == 0
    summary = pd.read_csv(merged / "tables" / "summary.csv")
    assert sorted(summary["method"]) == ["bitfit", "linear_probe"] and set(summary["n_seeds"]) == {2}
    direct = tmp_path / "direct"                                               # or without copying: both folders
    assert report.main([str(a), str(b), str(merged), "--to", str(direct), "--reference", "linear_probe"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(direct / "tables" / "summary.csv"), summary)


# ------------------------------------------------------------------------------ real engine, real data
def real_sweep(out: Path, epochs: int = 1, limit: int = 2) -> list[str]:
    return ["--methods", "linear_probe,bitfit", "--datasets", "breastmnist", "--seeds", "0,1", "--backbone",
            "efficientnet_lite0", "--weights", "imagenet", "--img-size", "32", "--epochs", str(epochs),
            "--batch-size", "32", "--limit-train-batches", str(limit), "--device", "cpu", "--no-progress",
            "--data-root", str(DATA_ROOT), "--out", str(out)]


needs_data = pytest.mark.skipif(not HAS_DATA_API, reason="benchmarks.data (the data API) is not present yet")
REAL_ENV = {**os.environ, "PETL_DATA_ROOT": str(DATA_ROOT), "PYTHONPATH": str(REPO)}


@needs_data
@pytest.mark.slow
def test_real_submitit_local_matches_local_launcher(tmp_path) -> None:
    local, sub = tmp_path / "local", tmp_path / "submitit"
    done = cli(REAL_ENV, *real_sweep(local), timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    done = cli(REAL_ENV, *real_sweep(sub), "--launcher", "submitit", "--slurm-partition", "local", timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert results(local) == results(sub)


@needs_data
@pytest.mark.slow
def test_real_sigkill_worker_then_rerun(tmp_path) -> None:
    out = tmp_path / "out"
    kill_worker_and_requeue(REAL_ENV, real_sweep(out, epochs=3, limit=4), out, epochs=3)
