"""The runner: sweep expansion, resume / retry / failure recording, CLI errors, and end-to-end acceptance.

Unit tests inject a fake engine (``benchmarks.execution.execute``) and skip the data check; CLI and acceptance tests
run ``python -m benchmarks.run`` for real on BreastMNIST from the shared data folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from benchmarks import run as runner
from benchmarks import execution, preflight
from benchmarks.store import RunStore
from benchmarks.sweep import SweepError, SweepSpec, expand, parse_set

REAL_CHECK_LOADS, REAL_CHECK_WEIGHTS = preflight.check_loads, preflight.check_weights

REPO = Path(__file__).resolve().parent.parent
DATA_ROOT = Path(os.environ.get("PETL_DATA_ROOT", REPO.parent / "shared" / "data"))
HAS_DATA_API = importlib.util.find_spec("benchmarks.data") is not None
needs_data_api = pytest.mark.skipif(not HAS_DATA_API, reason="benchmarks.data (the data API) is not present yet")
LORA = "lora_c"


# ----------------------------------------------------------------------------------------- sweep expansion
def test_set_sweep_gives_one_config_per_value() -> None:
    plan = expand(SweepSpec(methods=["linear_probe", LORA], datasets=["breastmnist", "pneumoniamnist"],
                            seeds=[0, 1], sets=[parse_set(f"{LORA}.rank=4,8")]))
    lora = [r for r in plan if r.config.method == LORA]
    assert len(lora) == 2 * 2 * 2 and len(plan) - len(lora) == 2 * 2      # the sweep does not multiply linear_probe
    assert sorted({r.config.options[LORA]["rank"] for r in lora}) == [4, 8]
    assert {r.label for r in lora} == {f"{LORA}[rank=4]", f"{LORA}[rank=8]"}
    assert len({r.config.key() for r in plan}) == len(plan)


def test_preset_then_method_section_then_cli_precedence(tmp_path) -> None:
    preset = tmp_path / "p.toml"
    preset.write_text('description = "test"\n[sweep]\nmethods = ["linear_probe", "two_stage"]\n'
                      'datasets = ["breastmnist"]\nseeds = [0, 1]\n[config]\nepochs = 7\nbatch_size = 16\nlr = 0.01\n'
                      '[methods.linear_probe]\nepochs = 3\nlr = 0.5\n[methods.two_stage]\noptions = { head_epochs = 2 }\n')
    args = runner.get_args_parser(with_catalogue=False).parse_args(
        ["--preset", str(preset), "--batch-size", "8", "--set", "lr=0.2"])
    plan = expand(runner.build_spec(args))
    by_method = {(r.config.method, r.config.seed): r.config for r in plan}
    assert len(plan) == 4
    lp, ts = by_method["linear_probe", 0], by_method["two_stage", 1]
    assert (lp.epochs, lp.batch_size, lp.lr) == (3, 8, 0.2)                # method section < CLI flag < --set
    assert (ts.epochs, ts.batch_size, ts.warmup_head_epochs) == (7, 8, 2)  # two_stage recipe hook folded in
    assert ts.lr == ts.options["two_stage"]["lr"]


@pytest.mark.parametrize("item, fragment", [
    (f"{LORA}.rank=abc", "rank"), (f"{LORA}.nope=1", "valid options"), ("nomethod.rank=1", "unknown method"),
    ("epochs=0", "epochs must be >= 1"), ("optimizer=lbfgs", "adamw"), ("colour=red", "valid settings"),
])
def test_bad_set_values_name_the_problem(item: str, fragment: str) -> None:
    with pytest.raises(SweepError, match=fragment):
        expand(SweepSpec(methods=[LORA], datasets=["breastmnist"], seeds=[0], sets=[parse_set(item)]))


# ------------------------------------------------------------------------------------ run loop (fake engine)
def fake_result(config, status="ok") -> dict:
    auc = 0.7 + 0.01 * config.seed + (0.05 if config.method != "linear_probe" else 0)
    test = {"acc": auc - 0.1, "auc": auc, "balanced_acc": auc - 0.2, "macro_f1": auc - 0.15}
    return {"status": status, "reason": None, "metrics": {"val": test, "test": test}, "best_epoch": 1, "epochs_run": 2,
            "history": [{"epoch": e, "train_loss": 1.0 / (e + 1), "val_auc": auc - 0.1 / (e + 1), "trainer": {}}
                        for e in range(2)],
            "params": {"total": 1000, "trainable": 10 if config.method == "linear_probe" else 50,
                       "percent_trainable": 1.0}, "adapter_bytes": 400,
            "efficiency": {"train_images_per_s": 100.0, "infer_images_per_s": 300.0, "peak_memory_bytes": 1e6,
                           "peak_memory_kind": "rss", "epoch_time_s": 1.0, "device": "cpu"}, "wall_time_s": 2.0}


@pytest.fixture
def fake_engine(monkeypatch, tmp_path):
    calls: list[str] = []

    def execute(config, runtime, workdir, stop_after_epoch=None):
        calls.append(config.run_name)
        if config.seed == 1 and os.environ.get("FAKE_FAIL_SEED1"):
            raise RuntimeError("simulated engine failure\nsecond line")
        return fake_result(config)

    monkeypatch.setattr(execution, "execute", execute)
    monkeypatch.setattr(preflight, "check_data", lambda datasets, root: tmp_path)
    monkeypatch.setattr(preflight, "check_weights", lambda plan: None)       # the real engine's pre-flight checks
    monkeypatch.setattr(preflight, "check_loads", lambda plan, runtime: None)
    return calls


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (empty when the folder does not exist)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()} \
        if folder.exists() else {}


def _argv(out: Path, *extra: str) -> list[str]:
    return ["--methods", f"linear_probe,{LORA}", "--datasets", "breastmnist", "--seeds", "0,1", "--epochs", "2",
            "--device", "cpu", "--out", str(out), "--no-progress", *extra]


def test_resume_skips_ok_and_retry_failed_reruns(fake_engine, tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "out"
    monkeypatch.setenv("FAKE_FAIL_SEED1", "1")
    assert runner.main(_argv(out)) == 1                 # failures are recorded, the sweep went on
    assert len(fake_engine) == 4
    records = {p.name: json.loads(p.read_text()) for p in (out / "runs").glob("*.json")}
    failed = [r for r in records.values() if r["status"] == "failed"]
    assert len(records) == 4 and len(failed) == 2
    assert failed[0]["reason"] == "RuntimeError: simulated engine failure" and "Traceback" in failed[0]["traceback"]
    assert "environment" in failed[0] and failed[0]["config"]["seed"] == 1
    assert "failed" in (out / "tables" / "report.md").read_text()

    fake_engine.clear()
    monkeypatch.delenv("FAKE_FAIL_SEED1")
    assert runner.main(_argv(out)) == 1                 # failed runs are not retried by default
    assert fake_engine == []
    assert runner.main(_argv(out, "--retry-failed")) == 0
    assert len(fake_engine) == 2 and all("__s1__" in name for name in fake_engine)
    fake_engine.clear()
    assert runner.main(_argv(out)) == 0 and fake_engine == []
    assert "skipped" in capsys.readouterr().out
    assert (out / ".gitignore").read_text().splitlines()[1] == "work/"


def test_record_names_the_commit_its_run_started_at(fake_engine, tmp_path, monkeypatch) -> None:
    """A commit made while a run trains (the checkout moves under a running sweep) does not relabel the run: the
    record's commit is the one the process started training with."""
    from benchmarks import environment
    head = {"commit": "a" * 40, "dirty": False}
    monkeypatch.setattr(environment, "git_state", lambda repo=None: dict(head))
    environment._static_environment.cache_clear()
    fake = execution.execute

    def execute_then_commit(config, runtime, workdir, stop_after_epoch=None):
        result = fake(config, runtime, workdir, stop_after_epoch)
        head["commit"] = "b" * 40                          # someone commits while the run trains
        return result

    monkeypatch.setattr(execution, "execute", execute_then_commit)
    try:
        out = tmp_path / "out"
        assert runner.main(["--methods", "linear_probe", "--datasets", "breastmnist", "--seeds", "0", "--epochs", "2",
                            "--device", "cpu", "--out", str(out), "--no-progress"]) == 0
        (record,) = [json.loads(p.read_text()) for p in (out / "runs").glob("*.json")]
        assert record["environment"]["git"]["commit"] == "a" * 40 and head["commit"] == "b" * 40
    finally:
        environment._static_environment.cache_clear()       # the next test reads the real checkout again


def test_preset_report_selection_shapes_the_end_of_sweep_tables(fake_engine, tmp_path) -> None:
    """A grid preset's ``[report] select_on = "val"`` makes the sweep end with one row per method (as
    ``benchmarks.report --select-on val`` would), and ``--select-on none`` overrides it: finishing a grid sweep
    must not replace its selected tables with every grid point side by side."""
    preset = tmp_path / "grid.toml"
    preset.write_text('description = "test"\n[sweep]\nmethods = ["linear_probe"]\ndatasets = ["breastmnist"]\n'
                      'seeds = [0]\nset = ["lr=0.1,0.2"]\n[config]\nepochs = 2\n[report]\nselect_on = "val"\n')
    argv = ["--preset", str(preset), "--device", "cpu", "--no-progress"]

    def summary_rows(out: Path) -> int:
        return len(pd.read_csv(out / "tables" / "summary.csv").query("method != 'majority class (chance)'"))
    assert runner.main([*argv, "--out", str(tmp_path / "selected")]) == 0
    assert len(fake_engine) == 2 and summary_rows(tmp_path / "selected") == 1
    assert "lr=0.1" in (tmp_path / "selected" / "tables" / "selection.md").read_text()
    assert runner.main([*argv, "--out", str(tmp_path / "all"), "--select-on", "none"]) == 0
    assert summary_rows(tmp_path / "all") == 2


@pytest.mark.parametrize("report", ['select_on = "test"', 'metric = "auc"'])
def test_preset_report_section_takes_only_a_valid_select_on(tmp_path, report: str) -> None:
    from benchmarks.sweep import load_preset
    preset = tmp_path / "p.toml"
    preset.write_text(f'description = "test"\n[sweep]\nmethods = ["linear_probe"]\n[report]\n{report}\n')
    with pytest.raises(SweepError, match=r"\[report\] takes only select_on"):
        load_preset(str(preset))


@pytest.mark.parametrize("sweep, message", [
    ('seed = [0]', r"unknown \[sweep\] key\(s\) seed; use methods, datasets, seeds, dataset_seeds, set"),
    ('dataset_seeds = [0, 1]', r"dataset_seeds must map dataset names to non-empty lists of non-negative seeds"),
    ('dataset_seeds = { breastmnist = [] }', r"dataset_seeds must map"),
    ('dataset_seeds = { breastmnist = [-1] }', r"dataset_seeds must map"),
    ('dataset_seeds = { breastmnist = ["3"] }', r"dataset_seeds must map"),
])
def test_preset_sweep_section_is_checked(tmp_path, sweep: str, message: str) -> None:
    """A misspelt key (``seed``) would otherwise sweep seed 0 only, without a word."""
    from benchmarks.sweep import load_preset
    preset = tmp_path / "p.toml"
    preset.write_text(f'description = "test"\n[sweep]\nmethods = ["linear_probe"]\n{sweep}\n')
    with pytest.raises(SweepError, match=message):
        load_preset(str(preset))


def test_dry_run_lists_status_and_trains_nothing(fake_engine, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert runner.main(_argv(out, "--dry-run")) == 0
    printed = capsys.readouterr().out
    assert fake_engine == [] and printed.count("pending") == 4 and "4 run(s)" in printed
    assert not out.exists()


def test_locked_run_is_skipped(fake_engine, tmp_path) -> None:
    out = tmp_path / "out"
    plan = expand(runner.build_spec(runner.get_args_parser(False).parse_args(_argv(out))))
    store = RunStore(out)
    store.prepare()
    store.lock(plan[0].config).path.write_text(str(os.getppid()))  # a live process "owns" the first run
    outcomes = execution.run_plan(plan, runner.Runtime(device="cpu"), store, log=lambda *_: None)
    assert outcomes[0][1] == "locked" and [o for _, o in outcomes[1:]] == ["ok"] * 3


def test_run_held_by_another_process_exits_3_unless_it_finished_meanwhile(fake_engine, tmp_path, monkeypatch,
                                                                          capsys) -> None:
    out = tmp_path / "out"
    plan = expand(runner.build_spec(runner.get_args_parser(False).parse_args(_argv(out))))
    held = plan[0].config
    store = RunStore(out)
    store.prepare()
    store.lock(held).path.write_text(str(os.getppid()))        # a live process "owns" the first run
    assert runner.main(_argv(out)) == runner.EXIT_LOCKED == 3
    err = capsys.readouterr().err
    assert "warning: 1 run(s) are being trained by another process" in err and held.run_name in err
    assert len(fake_engine) == 3 and len(list((out / "runs").glob("*.json"))) == 3     # the others trained

    # the other process finishes while we train the rest: its record exists when we look again -> exit 0
    for p in (out / "runs").glob("*.json"):
        p.unlink()
    real = execution.execute

    def execute_and_other_finishes(config, runtime, workdir, stop_after_epoch=None):
        store.write({"run_name": held.run_name, "key": held.key(), "status": "ok", "config": held.to_dict()})
        return real(config, runtime, workdir)
    monkeypatch.setattr(execution, "execute", execute_and_other_finishes)
    assert runner.main(_argv(out)) == 0
    assert "warning" not in capsys.readouterr().err
    assert "exit codes:" in runner.get_args_parser(with_catalogue=False).epilog


def test_a_finished_run_leaves_no_work_folder_and_a_failed_one_keeps_its_checkpoint(fake_engine, tmp_path,
                                                                                     monkeypatch, capsys) -> None:
    out = tmp_path / "out"
    real = execution.execute

    def execute(config, runtime, workdir, stop_after_epoch=None):     # an epoch checkpoint, as the engine writes
        (Path(workdir) / "last.pt").write_bytes(b"epoch state")
        return real(config, runtime, workdir)
    monkeypatch.setattr(execution, "execute", execute)
    monkeypatch.setenv("FAKE_FAIL_SEED1", "1")
    assert runner.main(_argv(out)) == 1
    left = sorted(p.parent.name for p in (out / "work").glob("*/last.pt"))
    failed = sorted(json.loads(p.read_text())["run_name"] for p in (out / "runs").glob("*.json")
                    if json.loads(p.read_text())["status"] == "failed")
    assert len(failed) == 2 and left == failed                      # only the failed runs' folders remain
    monkeypatch.delenv("FAKE_FAIL_SEED1")
    assert runner.main(_argv(out, "--retry-failed")) == 0
    assert list((out / "work").iterdir()) == []

    def rmtree_denied(path):
        raise PermissionError(13, "denied")
    monkeypatch.setattr(execution.shutil, "rmtree", rmtree_denied)
    capsys.readouterr()
    assert runner.main(_argv(out, "--no-resume", "--seeds", "0", "--methods", "linear_probe")) == 0
    warning = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert len(warning) == 1 and "could not be removed (denied); delete it by hand" in warning[0]


def test_no_resume_retrains_in_process_from_scratch(fake_engine, tmp_path, monkeypatch) -> None:
    out = tmp_path / "out"
    assert runner.main(_argv(out)) == 0 and len(fake_engine) == 4
    seen_checkpoints = []
    real = execution.execute

    def execute(config, runtime, workdir, stop_after_epoch=None):
        seen_checkpoints.append((Path(workdir) / "last.pt").exists())
        return real(config, runtime, workdir)
    monkeypatch.setattr(execution, "execute", execute)
    plan = expand(runner.build_spec(runner.get_args_parser(False).parse_args(_argv(out))))
    for run in plan:                                       # stale checkpoints that --no-resume must not pick up
        (out / "work" / run.config.run_name).mkdir(parents=True, exist_ok=True)
        (out / "work" / run.config.run_name / "last.pt").write_text("stale")
    before = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    fake_engine.clear()
    assert runner.main(_argv(out)) == 0 and fake_engine == []          # resume: all done, nothing trains
    assert runner.main(_argv(out, "--no-resume")) == 0
    assert len(fake_engine) == 4 and seen_checkpoints == [False] * 4
    after = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    assert after.keys() == before.keys() and all(after[k] > before[k] for k in before)   # rewritten


def test_ctrl_c_in_a_run_exits_130_and_corrupts_nothing(fake_engine, tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "out"
    real = execution.execute

    def execute(config, runtime, workdir, stop_after_epoch=None):
        if len(fake_engine) == 1:                           # the second run is interrupted mid-training
            fake_engine.append(config.run_name)
            raise KeyboardInterrupt
        return real(config, runtime, workdir)
    monkeypatch.setattr(execution, "execute", execute)
    assert runner.main(_argv(out)) == runner.EXIT_INTERRUPTED == 130
    assert "interrupted" in capsys.readouterr().err
    files = list((out / "runs").iterdir())
    assert len(files) == 1 and json.loads(files[0].read_text())["status"] == "ok"   # only the finished run, intact
    assert not list((out / "locks").glob("*.lock"))         # the interrupted run's lock was released
    monkeypatch.setattr(execution, "execute", real)
    fake_engine.clear()
    assert runner.main(_argv(out)) == 0 and len(fake_engine) == 3                    # the rest resumes


def test_duplicate_set_is_rejected_before_anything(fake_engine, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert runner.main(_argv(out, "--set", f"{LORA}.rank=4,8", "--set", f"{LORA}.rank=16")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--set {LORA}.rank=4,8,16" in err[0] and "twice" in err[0]
    assert runner.main(_argv(out, "--set", "lr=0.1", "--set", "lr=0.2")) == 2
    assert fake_engine == [] and not out.exists()
    with pytest.raises(SweepError, match="given twice"):
        expand(SweepSpec(methods=[LORA], datasets=["breastmnist"], seeds=[0],
                         sets=[parse_set(f"{LORA}.rank=4"), parse_set(f"{LORA}.rank=8")]))


def test_device_cuda_without_gpu_touches_no_files(fake_engine, tmp_path, capsys) -> None:
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is present here")
    out = tmp_path / "out"
    assert runner.main([*_argv(out), "--device", "cuda"]) == 2
    assert "--device cuda" in capsys.readouterr().err and not out.exists() and fake_engine == []


def test_missing_imagenet_weights_fail_fast_offline(fake_engine, tmp_path, monkeypatch, capsys) -> None:
    """No network and no hub cache: one line naming --weights FILE before anything is written, not a failed
    record per run. (urlopen is made to fail, so the test is offline even on a machine with network.)"""
    import urllib.error

    import torch.hub
    monkeypatch.setattr(preflight, "check_weights", REAL_CHECK_WEIGHTS)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))           # an empty hub cache

    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline (test)")
    monkeypatch.setattr(torch.hub, "urlopen", offline)
    out = tmp_path / "out"
    t0 = time.perf_counter()
    assert runner.main(_argv(out, "--backbone", "resnet50", "--weights", "imagenet")) == 2
    elapsed = time.perf_counter() - t0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--weights FILE" in err[0] and "resnet50" in err[0], err
    assert fake_engine == [] and not out.exists() and elapsed < 60


def test_cached_hub_weights_pass_the_preflight_offline(fake_engine, tmp_path, monkeypatch) -> None:
    """The pre-flight builds on the meta device from the hub cache: cached weights need no network."""
    import urllib.error

    import torch
    import torch.hub
    import torchvision
    monkeypatch.setattr(preflight, "check_weights", REAL_CHECK_WEIGHTS)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    cache = tmp_path / "torch-home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    torch.save(torchvision.models.resnet18().state_dict(), cache / url.rsplit("/", 1)[1])

    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline (test)")
    monkeypatch.setattr(torch.hub, "urlopen", offline)
    assert runner.main(_argv(tmp_path / "out", "--backbone", "resnet18", "--weights", "imagenet")) == 0
    assert len(fake_engine) == 4


def test_weights_file_that_does_not_fit_is_bad_input_and_key_follows_content(fake_engine, tmp_path,
                                                                            monkeypatch, capsys) -> None:
    import torch
    monkeypatch.setattr(preflight, "check_weights", REAL_CHECK_WEIGHTS)
    bogus = tmp_path / "bogus.pth"
    torch.save({"not.a.layer": torch.zeros(3)}, bogus)
    out = tmp_path / "out"
    assert runner.main(_argv(out, "--backbone", "cifar_resnet18", "--weights", str(bogus))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not fit this architecture" in err[0] and not out.exists()
    copy = tmp_path / "elsewhere" / "same.pth"
    copy.parent.mkdir()
    copy.write_bytes(bogus.read_bytes())
    keys = [{r.config.key() for r in expand(runner.build_spec(runner.get_args_parser(False).parse_args(
        _argv(out, "--weights", str(w)))))} for w in (bogus, copy)]
    assert keys[0] == keys[1]                               # the same bytes at another path: the same runs


def _folder_tree(root: Path, bad: bool = True) -> Path:
    """A 2-class image tree with 6 PNGs per class and (optionally) one file that is not an image."""
    from PIL import Image
    for c, cls in enumerate(("a", "b")):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            Image.new("L", (8, 8), color=40 * c + 10 * i).save(root / cls / f"{i}.png")
    if bad:
        (root / "a" / "broken.png").write_bytes(b"not a png")
    return root


def test_skip_unreadable_preflight_and_passthrough(fake_engine, tmp_path, monkeypatch, capsys) -> None:
    from benchmarks import engine
    monkeypatch.setattr(preflight, "check_loads", REAL_CHECK_LOADS)
    monkeypatch.setenv("PETL_CACHE_DIR", str(tmp_path / "cache"))
    root = _folder_tree(tmp_path / "tree")
    sizes = []

    def execute(config, runtime, workdir, stop_after_epoch=None):     # the engine's own data step, fake training
        bundle = engine.load_bundle(config, runtime)
        sizes.append(len(bundle.train.labels) + len(bundle.val.labels) + len(bundle.test.labels))
        return fake_result(config)
    monkeypatch.setattr(execution, "execute", execute)
    out = tmp_path / "out"
    argv = ["--methods", "linear_probe", "--datasets", f"folder:{root}", "--img-size", "8", "--epochs", "1",
            "--device", "cpu", "--no-progress", "--out", str(out)]
    assert runner.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.png" in err[0] and "--skip-unreadable" in err[0], err
    assert not out.exists() and sizes == []
    assert runner.main([*argv, "--skip-unreadable"]) == 0
    assert "skipped 1 unreadable image file(s)" in capsys.readouterr().err
    assert sizes == [12]                                    # 13 files, the broken one dropped in the run itself
    record = json.loads(next((out / "runs").glob("*.json")).read_text())
    assert record["runtime"]["skip_unreadable"] is True and record["runtime"]["precision"] == "fp32"


# ---------------------------------------------------------------------------------------- CLI errors
def cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PETL_DATA_ROOT": str(DATA_ROOT)}
    return subprocess.run([sys.executable, "-m", "benchmarks.run", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@needs_data_api
@pytest.mark.parametrize("args, fragment", [
    (["--methods", "nope"], "unknown method 'nope'"),
    (["--datasets", "nodataset"], "nodataset"),
    (["--set", f"{LORA}.rank=abc"], f"{LORA}.rank"),
    (["--set", f"{LORA}.bogus=1"], "valid options"),
    (["--epochs", "0"], "epochs must be >= 1"),
    (["--data-root", "/nonexistent/data"], "--data-root"),
    (["--set", "data_size=64"], "breastmnist_64.npz"),            # the file of the size the runs would read
    (["--out", "BLOCKED/out"], "--out"),
    (["--device", "cuda"], "--device cuda"),                       # (skipped where a GPU exists)
])
def test_cli_errors_exit_2_with_one_line_and_keep_records(tmp_path, args, fragment) -> None:
    if "cuda" in args:
        import torch
        if torch.cuda.is_available():
            pytest.skip("a GPU is present here")
    out = tmp_path / "out"
    (out / "runs").mkdir(parents=True)
    existing = out / "runs" / "existing.json"
    existing.write_text('{"status": "ok"}\n')
    before = tree(out)
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    args = [a.replace("BLOCKED", str(blocker)) for a in args]
    full = ["--methods", LORA, "--datasets", "breastmnist", "--epochs", "1", "--out", str(out), *args]
    done = cli(*full)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in done.stderr, done.stderr
    assert existing.read_text() == '{"status": "ok"}\n'
    assert tree(out) == before and sorted(p.name for p in out.rglob("*")) == ["existing.json", "runs"]


@needs_data_api
def test_a_corrupt_record_is_one_line_error_and_stays_untouched(tmp_path) -> None:
    out = tmp_path / "out"
    first = ["--methods", LORA, "--datasets", "breastmnist", "--epochs", "1", "--out", str(out)]
    plan = cli(*first, "--dry-run")
    assert plan.returncode == 0, plan.stderr
    name = next(line.split()[0] for line in plan.stdout.splitlines() if line.startswith("breastmnist__"))
    bad = out / "runs" / f"{name}.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"status": "ok", ')              # truncated by hand
    for command in (("benchmarks.run", *first), ("benchmarks.status", str(out)), ("benchmarks.report", str(out))):
        done = subprocess.run([sys.executable, "-m", *command], cwd=REPO, capture_output=True, text=True,
                              env={**os.environ, "PETL_DATA_ROOT": str(DATA_ROOT)}, timeout=120)
        assert done.returncode == 2 and "Traceback" not in done.stderr, (command, done.stderr)
        assert f"{name}.json is not valid JSON" in done.stderr
    assert bad.read_text() == '{"status": "ok", '



@needs_data_api
def test_help_lists_methods_datasets_presets() -> None:
    done = cli("--help")
    assert done.returncode == 0
    for name in ("linear_probe", LORA, "breastmnist", "offline-cpu", "paper", "--limit-train-batches"):
        assert name in done.stdout


# ---------------------------------------------------------------------------------------- acceptance
def sweep_args(out: Path, limit: str = "2") -> list[str]:
    return ["--methods", f"linear_probe,{LORA}", "--datasets", "breastmnist", "--seeds", "0,1",
            "--backbone", "efficientnet_lite0", "--weights", "imagenet", "--img-size", "32", "--epochs", "2",
            "--batch-size", "32", "--limit-train-batches", limit, "--device", "cpu", "--no-progress",
            "--data-root", str(DATA_ROOT), "--out", str(out)]


def metric_columns(out: Path) -> pd.DataFrame:
    df = pd.read_csv(out / "tables" / "summary.csv")
    return df[[c for c in df.columns if c in ("dataset", "method", "n_seeds") or c.endswith(("_mean", "_std"))]]


@needs_data_api
def test_acceptance_fast(tmp_path) -> None:
    out = tmp_path / "out"
    done = cli(*sweep_args(out), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    records = sorted((out / "runs").glob("*.json"))
    assert len(records) == 4 and all(json.loads(p.read_text())["status"] == "ok" for p in records)
    for name in ("summary.csv", "summary.md", "summary.tex", "efficiency.csv", "statistics.csv", "report.md"):
        assert (out / "tables" / name).stat().st_size > 0
    pngs = list((out / "plots").glob("*.png"))
    assert pngs and all(p.stat().st_size > 1000 for p in pngs)
    assert len(metric_columns(out)) == 2

    mtimes = {p: p.stat().st_mtime_ns for p in records}
    again = cli(*sweep_args(out), timeout=600)
    assert again.returncode == 0 and "training" not in again.stdout and again.stdout.count("skipped") == 4
    assert {p: p.stat().st_mtime_ns for p in records} == mtimes


def checkpointed_unrecorded_run(out: Path, epochs: int) -> str | None:
    """A run with an epoch checkpoint before its last epoch and no record yet: killing now interrupts it."""
    import torch
    for ckpt in (out / "work").glob("*/last.pt") if (out / "work").is_dir() else []:
        if (out / "runs" / f"{ckpt.parent.name}.json").exists():
            continue
        try:
            epoch = torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"]
        except Exception:          # noqa: BLE001 - replaced while we read it: look again
            continue
        if epoch < epochs - 1:
            return ckpt.parent.name
    return None


@needs_data_api
@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(tmp_path) -> None:
    import torch
    env = {**os.environ, "PETL_DATA_ROOT": str(DATA_ROOT)}
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    args = [*sweep_args(killed, "4"), "--epochs", "3"]        # a later --epochs wins: 3 epochs leave room to kill
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.run", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, name = time.time() + 300, None
    while time.time() < deadline and proc.poll() is None and name is None:
        name = checkpointed_unrecorded_run(killed, epochs=3)
        time.sleep(0.05)
    assert name is not None, "no run reached an epoch checkpoint"
    os.kill(proc.pid, signal.SIGKILL)                         # mid-run: after an epoch checkpoint, before its record
    proc.wait()
    assert not (killed / "runs" / f"{name}.json").exists()
    saved = torch.load(killed / "work" / name / "last.pt", map_location="cpu", weights_only=True)
    resumed = cli(*args, timeout=600)                         # the stale lock of the dead pid is taken over
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    records = {p.stem: json.loads(p.read_text()) for p in (killed / "runs").glob("*.json")}
    assert len(records) == 4 and all(r["status"] == "ok" for r in records.values())
    record = records[name]
    done = int(saved["epoch"]) + 1
    assert [h["epoch"] for h in record["history"]] == [0, 1, 2]              # continuous, no repeats
    # Resumed, not retrained: the killed process's epochs (their wall times included) are kept as checkpointed.
    assert record["history"][:done] == saved["history"]
    assert cli(*[*sweep_args(clean, "4"), "--epochs", "3"], timeout=600).returncode == 0
    pd.testing.assert_frame_equal(metric_columns(killed), metric_columns(clean))


@pytest.mark.parametrize("name", ["paper", "offline-cpu", "medmnist-v2", "medmnist-v2-224"])
def test_presets_expand_and_options_fit_their_backbone(name: str) -> None:
    """Every preset expands (fields coerced, options validated, unique keys) and every method's options apply to
    the preset's own backbone (e.g. gpaf positions and conv_adapter widths on EfficientNet-Lite0)."""
    import petl
    from benchmarks.sweep import list_presets
    assert list_presets()[name]
    args = runner.get_args_parser(with_catalogue=False).parse_args(["--preset", name])
    plan = expand(runner.build_spec(args))
    assert plan and len({r.config.key() for r in plan}) == len(plan)
    seen: set[tuple[str, str]] = set()
    for run in plan:
        c = run.config
        if (c.backbone, c.method) in seen:
            continue
        seen.add((c.backbone, c.method))
        model = petl.build_backbone(c.backbone, weights=None, num_classes=2)
        for method in c.methods:
            petl.apply(model, method, **c.options.get(method, {}))
        assert 0 < petl.trainable_parameters(model) <= petl.total_parameters(model)


def test_medmnist_v2_preset_is_the_papers_recipe() -> None:
    args = runner.get_args_parser(with_catalogue=False).parse_args(["--preset", "medmnist-v2", "--datasets",
                                                                    "breastmnist", "--seeds", "0"])
    plan = expand(runner.build_spec(args))
    assert sorted(r.config.backbone for r in plan) == ["cifar_resnet18", "cifar_resnet50"]
    assert sorted(r.label for r in plan) == ["full_ft backbone=cifar_resnet18", "full_ft backbone=cifar_resnet50"]
    c = plan[0].config
    assert (c.weights, c.img_size, c.optimizer, c.lr, c.batch_size, c.epochs) == (None, 28, "adam", 1e-3, 128, 100)
    assert (c.schedule, c.step_milestones, c.step_gamma, c.norm, c.augment, c.select_metric) == \
        ("step", (50, 75), 0.1, "half", "none", "auc")
    args = runner.get_args_parser(with_catalogue=False).parse_args(["--preset", "medmnist-v2-224", "--set",
                                                                    "backbone=resnet18"])
    plan = expand(runner.build_spec(args))            # a --set on the preset's swept key replaces it
    assert {(r.config.backbone, r.config.img_size, r.config.resize_mode) for r in plan} == {("resnet18", 224,
                                                                                            "nearest")}


