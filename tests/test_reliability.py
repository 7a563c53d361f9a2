"""Faults a user can cause (bad values, corrupt or unreadable files, permissions, disk full, signals): each ends in
one clear line (exit 2 for bad input before anything is written; a failed record with a one-line reason for a fault
during a run), and nothing left behind blocks the next run.

Runs as root here, where permission bits do not stop writes or reads, so unwritable / unreadable files are
simulated at the call that would fail (``os.access``, ``Path.read_text``), and a full disk at the write itself.
"""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import run as runner
from benchmarks import execution, preflight
from benchmarks.store import RunStore, atomic_write_json, load_record

REPO = Path(__file__).resolve().parent.parent
LORA = "lora_c"
REAL_CHECK_DATA = preflight.check_data


def fake_result(config) -> dict:
    auc = 0.7 + 0.01 * config.seed
    test = {"acc": auc - 0.1, "auc": auc, "balanced_acc": auc - 0.2, "macro_f1": auc - 0.15}
    return {"status": "ok", "reason": None, "metrics": {"val": test, "test": test}, "best_epoch": 0, "epochs_run": 1,
            "history": [{"epoch": 0, "train_loss": 0.5, "val_auc": auc, "epoch_time_s": 1.0, "trainer": {}}],
            "params": {"total": 1000, "trainable": 10, "percent_trainable": 1.0}, "adapter_bytes": 400,
            "efficiency": {"train_images_per_s": 100.0, "infer_images_per_s": 300.0, "peak_memory_bytes": 1e6,
                           "peak_memory_kind": "rss", "epoch_time_s": 1.0, "device": "cpu"}, "wall_time_s": 2.0}


@pytest.fixture
def fake_engine(monkeypatch, tmp_path) -> list[str]:
    """The runner with a fake engine and no data / weights pre-flight (those need files this test does not have)."""
    calls: list[str] = []

    def execute(config, runtime, workdir, stop_after_epoch=None):
        calls.append(config.run_name)
        return fake_result(config)

    monkeypatch.setattr(execution, "execute", execute)
    monkeypatch.setattr(preflight, "check_data", lambda datasets, root: tmp_path)
    monkeypatch.setattr(preflight, "check_weights", lambda plan: None)
    monkeypatch.setattr(preflight, "check_loads", lambda plan, runtime: None)
    monkeypatch.setenv("PETL_CACHE_DIR", str(tmp_path / "cache"))
    return calls


def argv(out: Path, *extra: str, methods: str = f"linear_probe,{LORA}") -> list[str]:
    return ["--methods", methods, "--datasets", "breastmnist", "--seeds", "0", "--epochs", "1",
            "--backbone", "test_resnet", "--weights", "none", "--device", "cpu", "--out", str(out), "--no-progress",
            *extra]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


# ------------------------------------------------------------------------------ 5: bad values, strict JSON
@pytest.mark.parametrize("extra, methods, fragment", [
    (["--lr", "nan"], None, "--lr nan"),
    (["--weight-decay", "nan"], None, "--weight-decay nan"),
    (["--lr", "inf", "--dry-run"], None, "--lr inf"),
    (["--momentum", "inf", "--dry-run"], None, "--momentum inf"),
    (["--set", f"{LORA}.alpha=inf"], None, f"{LORA}.alpha=inf"),
    (["--set", f"{LORA}.targets=nomatch*"], None, "matches no Conv2d"),
    ([], f"{LORA}+{LORA}", "composed with itself"),
    (["--seeds", str(2**70)], None, "out of range"),
    (["--img-size", "100000"], None, "--img-size 100000"),
])
def test_bad_values_are_rejected_before_out_is_touched(fake_engine, tmp_path, capsys, extra, methods,
                                                       fragment) -> None:
    out = tmp_path / "out"
    kwargs = {"methods": methods} if methods else {}
    assert runner.main(argv(out, *extra, **kwargs)) == 2
    assert fragment in one_error_line(capsys)
    assert fake_engine == [] and not out.exists()


def test_records_are_strict_json_with_null_for_non_finite_values(tmp_path) -> None:
    import numpy as np
    path = tmp_path / "runs" / "r.json"
    atomic_write_json(path, {"status": "ok", "metrics": {"test": {"auc": float("nan"), "acc": np.float32(1.0),
                                                                  "loss": [float("inf"), -float("inf"), 0.5]}}})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    strict = json.loads(text, parse_constant=lambda name: pytest.fail(f"non-strict JSON constant {name}"))
    assert strict["metrics"]["test"] == {"auc": None, "acc": 1.0, "loss": [None, None, 0.5]}
    old = tmp_path / "runs" / "old.json"                        # records written before: NaN literals still read
    old.write_text('{"status": "ok", "metrics": {"test": {"auc": NaN}}}')
    assert math.isnan(load_record(old)["metrics"]["test"]["auc"])


def test_report_reads_null_metrics_as_missing(tmp_path) -> None:
    from benchmarks.report import build_reports
    from benchmarks.config import RunConfig
    store = RunStore(tmp_path)
    for seed, auc in ((0, float("nan")), (1, 0.75)):
        config = RunConfig(method="linear_probe", dataset="breastmnist", seed=seed)
        record = {**fake_result(config), "run_name": config.run_name, "key": config.key(),
                  "config": config.to_dict(), "label": "linear_probe"}
        record["metrics"]["test"]["auc"] = auc
        record["history"][0]["val_auc"] = auc
        store.write(record)
    reports = build_reports(tmp_path, reference="linear_probe")
    row = reports.summary.iloc[0]
    assert row["n_seeds"] == 2 and row["auc_mean"] == pytest.approx(0.75) and row["acc_mean"] == pytest.approx(0.605)


# ------------------------------------------------------------------ 4: every folder the sweep writes is checked
def deny_access(monkeypatch, denied: set[Path]) -> None:
    """``os.access`` says no for ``denied`` (as it would for a non-root user without write permission)."""
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) not in denied and real(path, mode, **kw))


@pytest.mark.parametrize("where", ["work", "locks", "workdir", "tables", "cache"])
def test_every_folder_the_sweep_writes_is_checked_first(fake_engine, tmp_path, monkeypatch, capsys, where) -> None:
    out = tmp_path / "out"
    assert runner.main(argv(out, methods="linear_probe")) == 0      # OUT, its folders and the cache now exist
    (tmp_path / "cache" / "images" / "folders").mkdir(parents=True)
    plan = runner.expand(runner.build_spec(runner.get_args_parser(False).parse_args(argv(out, methods="bitfit"))))
    folder = {"work": out / "work", "locks": out / "locks", "tables": out / "tables",
              "workdir": out / "work" / plan[0].config.run_name, "cache": tmp_path / "cache" / "images" / "folders"}
    folder["workdir"].mkdir(parents=True)                             # e.g. left by a killed run
    deny_access(monkeypatch, {folder[where]})
    capsys.readouterr()
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert runner.main(argv(out, methods="bitfit")) == 2
    line = one_error_line(capsys)
    assert str(folder[where]) in line and ("--out" in line or "PETL_CACHE_DIR" in line)
    assert len(fake_engine) == 1                                      # only the first sweep trained
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


# ------------------------------------------------------------- 3: an unreadable last.pt does not block its run
@pytest.fixture
def tiny_engine(monkeypatch):
    """The real engine on a small real-BreastMNIST subset with timm's tiny test_resnet, one torch thread."""
    import torch

    from benchmarks import engine
    from benchmarks.config import RunConfig, Runtime

    from _engine_helpers import breast_bundle, patch_data
    patch_data(monkeypatch, engine, breast_bundle(n_train=32, n_val=32, n_test=32), 32)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    config = RunConfig(method="bitfit", dataset="breastmnist", backbone="test_resnet", weights=None, img_size=32,
                       epochs=2, batch_size=16, limit_train_batches=1)
    yield engine, config, Runtime(device="cpu", progress=False)
    torch.set_num_threads(before)


@pytest.mark.parametrize("content", [b"PK\x03\x04 truncated zip", b"", "json"])
def test_unreadable_checkpoint_is_moved_aside_and_the_run_restarts(tiny_engine, tmp_path, capsys, content) -> None:
    import torch
    engine, config, rt = tiny_engine
    clean = engine.execute(config, rt, tmp_path / "clean")
    work = tmp_path / "work"
    work.mkdir()
    if content == "json":                       # a readable file that is not an epoch checkpoint
        torch.save({"epoch": 0}, work / "last.pt")
    else:
        (work / "last.pt").write_bytes(content)
    (work / ".last.pt.123.abcd.tmp").write_bytes(b"x" * 1000)    # left by a write that was killed
    (work / "last.pt.tmp").write_bytes(b"x" * 1000)               # the name older versions used
    rec = engine.execute(config, rt, work)
    assert rec["status"] == "ok" and [h["epoch"] for h in rec["history"]] == [0, 1]
    assert rec["metrics"] == clean["metrics"]                                  # trained from scratch
    err = [line for line in capsys.readouterr().err.splitlines() if "checkpoint" in line]
    assert len(err) == 1 and "unreadable" in err[0] and "restarting this run from epoch 0" in err[0]
    names = sorted(p.name for p in work.iterdir())
    assert [n for n in names if n.startswith("last.pt.unreadable-")] and not [n for n in names if "tmp" in n]
    assert "last.pt" in names and "adapter.safetensors" in names


def test_failed_checkpoint_write_keeps_the_old_one_and_leaves_no_temporary_file(tmp_path, monkeypatch) -> None:
    import torch

    from benchmarks import files
    from benchmarks.training.checkpoint import save_checkpoint
    save_checkpoint({"epoch": 0, "w": torch.zeros(4)}, tmp_path)
    before = (tmp_path / "last.pt").read_bytes()
    real = files._write_all

    def disk_full(fd, data):                     # half the bytes reach the disk, then it is full
        real(fd, memoryview(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(files, "_write_all", disk_full)
    with pytest.raises(files.WriteError) as info:
        save_checkpoint({"epoch": 1, "w": torch.ones(10000)}, tmp_path)
    assert str(info.value).startswith(f"no space left on device while writing {tmp_path / 'last.pt'}")
    assert len(str(info.value).splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"] and (tmp_path / "last.pt").read_bytes() == before


# ------------------------------------------------------- 2: a corrupt record outside the plan is found first
def test_corrupt_record_of_another_run_is_one_line_before_training(fake_engine, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert runner.main(argv(out, methods="linear_probe")) == 0
    other = out / "runs" / "someone_else__bitfit__s0__0123456789ab.json"
    other.write_text('{"status": "ok", ')                           # not part of the next sweep's plan
    capsys.readouterr()
    fake_engine.clear()
    assert runner.main(argv(out, methods="bitfit")) == 2
    line = one_error_line(capsys)
    assert f"{other} is not valid JSON" in line and "delete it" in line
    assert fake_engine == [] and other.read_text() == '{"status": "ok", '


def test_report_failure_after_the_runs_is_one_line(fake_engine, tmp_path, monkeypatch, capsys) -> None:
    from benchmarks import report
    from benchmarks.store import StoreError

    def broken(*args, **kwargs):
        raise StoreError("run record X is not valid JSON; restore it, or delete it to rerun that run")
    monkeypatch.setattr(report, "build_reports", broken)
    out = tmp_path / "out"
    assert runner.main(argv(out, methods="linear_probe")) == 1
    line = one_error_line(capsys)
    assert "runs are recorded" in line and "X is not valid JSON" in line
    assert len(list((out / "runs").glob("*.json"))) == 1


# ------------------------------------------------------------------------- 8: more raw tracebacks, umask
def test_unreadable_record_is_one_line_in_sweep_status_and_report(fake_engine, tmp_path, monkeypatch,
                                                                 capsys) -> None:
    from benchmarks import report, status
    out = tmp_path / "out"
    assert runner.main(argv(out, methods="linear_probe")) == 0
    record = next((out / "runs").glob("*.json"))
    real = Path.read_text

    def read_text(self, *args, **kwargs):          # what mode 000 does to a non-root reader
        if self == record:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real(self, *args, **kwargs)
    monkeypatch.setattr(Path, "read_text", read_text)
    capsys.readouterr()
    for main, args in ((runner.main, argv(out, methods="bitfit")), (status.main, [str(out)]),
                       (report.main, [str(out)])):
        assert main(args) == 2, main
        line = one_error_line(capsys)
        assert f"cannot read run record {record} (Permission denied)" in line and "chmod" in line


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_records_checkpoints_and_adapters_honour_the_umask(tmp_path, umask, mode) -> None:
    import torch

    import petl
    from benchmarks.training.checkpoint import save_checkpoint
    model = petl.apply(petl.build_backbone("test_resnet", None, num_classes=2), "bitfit")
    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "runs" / "r.json", {"status": "ok"})
        save_checkpoint({"epoch": 0, "w": torch.zeros(2)}, tmp_path)
        petl.save_adapter(model, tmp_path / "adapter.safetensors")
        import numpy as np
        from benchmarks import predictions
        split = predictions.SplitPredictions(np.zeros((2, 2), np.float32), np.array([0, 1]), np.array([0, 1]))
        predictions.write(tmp_path / "runs" / "r.predictions.npz", {"test": split})
    finally:
        os.umask(old)
    for name in ("runs/r.json", "last.pt", "adapter.safetensors", "runs/r.predictions.npz"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


def test_report_to_a_file_is_one_line(tmp_path, capsys) -> None:
    from benchmarks import report
    (tmp_path / "out" / "runs").mkdir(parents=True)
    target = tmp_path / "file.txt"
    target.write_text("keep")
    assert report.main([str(tmp_path / "out"), "--to", str(target)]) == 2
    assert f"--to {target} is a file" in one_error_line(capsys) and target.read_text() == "keep"


@pytest.mark.parametrize("config", [
    [], "text", {"format": "petl-adapter/1"}, {"format": "petl-adapter/1", "backbone": "resnet18", "methods": []},
    {"format": "petl-adapter/1", "backbone": {"name": "test_resnet", "colour": 1}, "methods": []},
    {"format": "petl-adapter/1", "backbone": {"name": "test_resnet", "weights": None}, "methods": {}},
    {"format": "petl-adapter/1", "backbone": {"name": "test_resnet", "weights": None}, "methods": [{"method": "x"}]},
])
def test_load_adapter_on_well_formed_json_of_the_wrong_shape(tmp_path, config) -> None:
    import torch
    from safetensors.torch import save_file

    import petl
    path = tmp_path / "a.safetensors"
    save_file({"w": torch.zeros(1)}, str(path), metadata={"petl": json.dumps(config)})
    with pytest.raises(petl.AdapterFileError, match="a.safetensors"):
        petl.load_adapter(path)


def test_ctrl_c_under_workers_is_one_line_and_the_rerun_finishes(tmp_path) -> None:
    from test_launch import CLI, FAKE_SITE
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(FAKE_SITE)
    env = {**os.environ, "PETL_TEST_FAKE_ENGINE": "1", "PYTHONPATH": f"{site}{os.pathsep}{REPO}",
           "PETL_TEST_EPOCH_S": "2", "PETL_CACHE_DIR": str(tmp_path / "cache")}
    out = tmp_path / "out"
    args = ["--methods", "linear_probe,bitfit", "--datasets", "breastmnist", "--seeds", "0", "--epochs", "3",
            "--device", "cpu", "--no-progress", "--workers", "2", "--out", str(out)]
    # SIGINT back to its default in the child: a suite started in the background (nohup, `cmd &`) inherits
    # SIGINT ignored, and Python then never raises KeyboardInterrupt, so the Ctrl-C under test would not arrive
    proc = subprocess.Popen([sys.executable, "-c", CLI, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 240
    while time.time() < deadline and len(list((out / "locks").glob("*.lock"))) < 2:
        time.sleep(0.1)
    assert len(list((out / "locks").glob("*.lock"))) == 2, "the workers did not start training"
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)               # what Ctrl-C in a terminal does: the whole process group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "interrupted" in lines[0] and "Traceback" not in err, err
    assert not list((out / "locks").glob("*.lock"))                     # both locks released
    env["PETL_TEST_EPOCH_S"] = "0.05"
    again = subprocess.run([sys.executable, "-c", CLI, *args], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=240)
    assert again.returncode == 0, again.stderr
    assert [json.loads(p.read_text())["status"] for p in (out / "runs").glob("*.json")] == ["ok", "ok"]


# ----------------------------------------------------------------------------------------- 7: disk full
def fill_disk(monkeypatch, only: str | None = None) -> None:
    """Atomic writes (records, checkpoints; only those whose file name contains ``only``) write half their bytes,
    then the disk is full."""
    from benchmarks import files
    real = files._write_all

    def disk_full(fd, data):
        if only is not None and only not in os.readlink(f"/proc/self/fd/{fd}"):
            return real(fd, data)
        real(fd, memoryview(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(files, "_write_all", disk_full)


def no_temporary_files(out: Path) -> bool:
    return not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_disk_full_during_a_checkpoint_write_is_a_one_line_failed_record(fake_engine, tmp_path, monkeypatch,
                                                                      capsys) -> None:
    import torch

    from benchmarks.training.checkpoint import save_checkpoint

    def checkpoint_then_result(config, runtime, workdir, stop_after_epoch=None):
        save_checkpoint({"epoch": 0, "w": torch.zeros(1000)}, workdir)     # as the engine does after an epoch
        return fake_result(config)
    monkeypatch.setattr(execution, "execute", checkpoint_then_result)
    fill_disk(monkeypatch, only="last.pt")
    out = tmp_path / "out"
    assert runner.main(argv(out, methods="linear_probe")) == 1
    record = json.loads(next((out / "runs").glob("*.json")).read_text())
    assert record["status"] == "failed"
    assert record["reason"].startswith("WriteError: no space left on device while writing ")
    assert record["reason"].split(" while writing ")[1].startswith(str(out / "work"))
    assert "\n" not in record["reason"] and no_temporary_files(out)
    assert not list((out / "work").rglob("last.pt"))


def test_disk_full_during_a_record_write_is_one_line_and_nothing_partial(fake_engine, tmp_path, monkeypatch,
                                                                       capsys) -> None:
    from benchmarks import files
    out = tmp_path / "out"
    assert runner.main(argv(out, methods="linear_probe")) == 0
    first = {p: p.read_bytes() for p in (out / "runs").glob("*.json")}
    real = files._write_all
    fill_disk(monkeypatch)
    capsys.readouterr()
    assert runner.main(argv(out, methods="bitfit")) == 1
    line = one_error_line(capsys)
    assert line.startswith("error: no space left on device while writing ") and str(out / "runs") in line
    assert {p: p.read_bytes() for p in (out / "runs").glob("*.json")} == first and no_temporary_files(out)
    assert not list((out / "locks").glob("*.lock"))
    monkeypatch.setattr(files, "_write_all", real)                  # space freed: the rerun finishes
    assert runner.main(argv(out, methods="bitfit")) == 0 and len(list((out / "runs").glob("*.json"))) == 2


# ------------------------------------------------------------------------------ 1: a one-class folder dataset
def image_tree(root: Path, classes: dict[str, int]) -> Path:
    from PIL import Image
    for c, (name, count) in enumerate(classes.items()):
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("L", (8, 8), color=40 * c + 10 * i).save(root / name / f"{i}.png")
    return root


@pytest.mark.filterwarnings("ignore:.*hold no images")
@pytest.mark.parametrize("classes", [{"only": 6}, {"only": 6, "empty": 0}])
def test_one_class_folder_dataset_is_bad_input(fake_engine, tmp_path, monkeypatch, capsys, classes) -> None:
    monkeypatch.setattr(preflight, "check_data", REAL_CHECK_DATA)
    root = image_tree(tmp_path / "tree", classes)
    out = tmp_path / "out"
    args = ["--methods", "linear_probe", "--datasets", f"folder:{root}", "--img-size", "8", "--epochs", "1",
            "--select-metric", "acc", "--device", "cpu", "--no-progress", "--data-root", str(tmp_path),
            "--out", str(out)]
    assert runner.main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "only 1 class folder (only)" in err[0] and str(root) in err[0]
    assert fake_engine == [] and not out.exists()


def test_empty_class_folder_is_named_in_a_warning(tmp_path, monkeypatch) -> None:
    from benchmarks.data.folders import load_tree
    monkeypatch.setenv("PETL_CACHE_DIR", str(tmp_path / "cache"))
    root = image_tree(tmp_path / "tree", {"a": 6, "b": 6, "c": 0})
    with pytest.warns(UserWarning, match=r"class folder\(s\) c hold no images"):
        bundle = load_tree(root, "t", img_size=8, seed=0)
    assert bundle.class_names == ["a", "b"]


# -------------------------------------------------------------- 9: the cosine schedule's last epoch trains
def test_cosine_last_epoch_trains_and_medmnist_v2_step_schedule_is_unchanged(tiny_engine, tmp_path) -> None:
    import dataclasses

    from benchmarks.training.schedule import Schedule
    engine, config, rt = tiny_engine
    rec = engine.execute(dataclasses.replace(config, epochs=3, schedule="cosine", lr=1e-2), rt, tmp_path)
    lrs = [h["lr"] for h in rec["history"]]
    assert len(lrs) == 3 and all(lr > 0 for lr in lrs) and lrs == sorted(lrs, reverse=True)
    assert rec["history"][-1]["val_loss"] != rec["history"][-2]["val_loss"]     # the last epoch changed the model
    plan = runner.expand(runner.build_spec(runner.get_args_parser(False).parse_args(
        ["--preset", "medmnist-v2", "--datasets", "breastmnist", "--seeds", "0"])))
    c = plan[0].config
    sched = Schedule(c.schedule, c.lr, c.lr, c.epochs, c.min_lr, c.warmup_epochs, c.warmup_head_epochs,
                     tuple(c.step_milestones), c.step_gamma)
    body = [sched.lrs(e)["body"] for e in range(c.epochs)]
    assert c.epochs == 100 and body == pytest.approx([1e-3] * 50 + [1e-4] * 25 + [1e-5] * 25, rel=1e-12)  # paper


# ------------------------------------------------ 6: identical metrics, different timings: one run in reports
def test_report_merges_folders_whose_records_differ_only_in_timings(tmp_path, capsys) -> None:
    import copy

    from benchmarks import report
    from benchmarks.config import RunConfig
    config = RunConfig(method="linear_probe", dataset="breastmnist", seed=0)
    record = {**fake_result(config), "run_name": config.run_name, "key": config.key(), "config": config.to_dict(),
              "label": "linear_probe", "started_at": "2026-01-01T00:00:00+00:00", "runner_wall_time_s": 3.0,
              "runtime": {"device": "cpu", "precision": "fp32", "pid": 11}, "environment": {"torch_threads": 2}}
    again = copy.deepcopy(record)                   # the same run made again on this machine: other timings only
    again.update(started_at="2026-01-02T00:00:00+00:00", runner_wall_time_s=4.5, wall_time_s=3.9,
                 runtime={"device": "cpu", "precision": "fp32", "pid": 12})
    again["efficiency"]["train_images_per_s"] = 93.0
    again["history"][0]["epoch_time_s"] = 1.7
    a, b = RunStore(tmp_path / "a"), RunStore(tmp_path / "b")
    a.write(record)
    b.write(again)
    assert report.main([str(a.out), str(b.out), "--to", str(tmp_path / "merged")]) == 0
    assert len(report.load_records([a.out, b.out])) == 1
    other = copy.deepcopy(again)                   # other metrics: e.g. rerun with another thread count
    other["metrics"]["test"]["auc"] = 0.66228
    other["environment"] = {"torch_threads": 1}
    b.write(other)
    capsys.readouterr()
    assert report.main([str(a.out), str(b.out), "--to", str(tmp_path / "merged")]) == 2
    line = one_error_line(capsys)
    assert "recorded differently" in line and "torch threads 2 vs 1" in line
