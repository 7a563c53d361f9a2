"""benchmarks.explain: Grad-CAM grids of finished runs, for every kind of method, and one clear line (exit 2) for
bad input. The default tests train tiny in-test runs (timm's test_resnet, 32 px, one batch); the slow test makes
a real BreastMNIST run with ImageNet EfficientNet-Lite0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import petl
from benchmarks import engine, explain
from benchmarks import execution
from benchmarks.artifacts import ArtifactError, adapter_path
from benchmarks.config import RunConfig, Runtime
from benchmarks.store import RunStore
from benchmarks.sweep import PlannedRun

from _engine_helpers import DATA_ROOT, breast_bundle, patch_data

REPO = Path(__file__).resolve().parents[1]
METHODS = {"lora_c": {"lora_c": {"rank": 2}}, "conv_adapter": {}, "gpaf": {}, "peft_lora": {"peft_lora": {"rank": 2}},
           "linear_probe": {}}
IMG = 32


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """One finished tiny run per method in OUT (a recorded weights file, so load_adapter can rebuild the base)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("explain")
    torch.manual_seed(0)
    weights = out / "base.pth"
    torch.save(petl.build_backbone("test_resnet", weights=None, num_classes=2).state_dict(), weights)
    bundle = breast_bundle(n_train=32, n_val=24, n_test=24)
    mp = pytest.MonkeyPatch()
    patch_data(mp, engine, bundle, IMG)
    store = RunStore(out)
    store.prepare()
    for method, options in METHODS.items():
        config = RunConfig(method=method, dataset="breastmnist", backbone="test_resnet", weights=str(weights),
                           img_size=IMG, epochs=1, batch_size=16, limit_train_batches=1, lr=1e-2, options=options)
        record = execution.train_and_record(PlannedRun(config, method), Runtime(device="cpu", progress=False), store)
        assert record["status"] == "ok", record.get("reason")
    yield out, bundle
    mp.undo()


def _record(out: Path, method: str) -> dict:
    return explain.find_record(out, None, "breastmnist", method, 0)


def test_every_run_keeps_its_adapter_with_its_digest(sweep):
    out, _ = sweep
    for method in METHODS:
        record = _record(out, method)
        path = adapter_path(record, out / "runs")
        assert path.name == f"{record['run_name']}.adapter.safetensors"
        assert record["adapter"]["bytes"] == path.stat().st_size == record["adapter_bytes"]
        assert petl.read_adapter_config(path)["methods"][0]["method"] == method


@pytest.mark.parametrize("method", list(METHODS))
def test_grid_for_every_method(sweep, tmp_path, method):
    out, bundle = sweep
    png = explain.explain(out, _record(out, method), n=6, to=tmp_path / "grid.png", bundle=bundle)
    import matplotlib.image as mpimg
    img = mpimg.imread(png)
    assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 600


def test_cam_maps_are_real_and_merge_does_not_change_them(sweep):
    out, bundle = sweep
    record = _record(out, "lora_c")
    model = petl.load_adapter(adapter_path(record, out / "runs")).eval()
    x = (bundle.test.images[:4].float() / 255.0 - 0.5) / 0.5
    x = torch.nn.functional.interpolate(x, size=(IMG, IMG), mode="bilinear", align_corners=False)
    maps = explain.grad_cam(model, "layer2", x, [0, 1, 0, 1])
    assert maps.shape == (4, IMG, IMG) and maps.min() >= 0 and maps.max() <= 1 + 1e-6
    # Grad-CAM written out: weights = spatial mean of dS_class/dA, map = ReLU(sum_c w_c A_c), then the package's
    # own min-max scaling and resize (per layer, then after averaging the layers)
    from pytorch_grad_cam.utils.image import scale_cam_image
    feats: list[torch.Tensor] = []
    handle = model.get_submodule("layer2").register_forward_hook(lambda m, i, o: feats.append(o))
    logits = model(x)
    handle.remove()
    score = logits[torch.arange(4), torch.tensor([0, 1, 0, 1])].sum()
    (grads,) = torch.autograd.grad(score, feats[0])
    cam = torch.relu((grads.mean((2, 3), keepdim=True) * feats[0]).sum(1)).detach().numpy()
    np.testing.assert_allclose(maps, scale_cam_image(scale_cam_image(cam, (IMG, IMG))), atol=1e-5)
    assert sum(m.max() > 0.99 for m in maps) >= 2      # real, non-flat maps (a flat one is all-negative evidence)
    other = explain.grad_cam(model, "layer2", x, [1, 0, 1, 0])
    assert not np.allclose(maps, other)                # the map depends on the class it explains
    petl.merge(model)
    merged = explain.grad_cam(model, "layer2", x, [0, 1, 0, 1])
    np.testing.assert_allclose(merged, maps, atol=1e-3)


def test_choose_images_shows_wrong_and_right():
    pred = np.array([0, 1, 1, 0, 1, 0])
    labels = np.array([0, 0, 1, 1, 1, 0])
    conf = np.array([0.9, 0.8, 0.7, 0.95, 0.6, 0.5])
    rows = explain.choose_images(pred, labels, conf, 4)
    assert rows.tolist() == [3, 1, 0, 2]                        # wrong (most confident first), then right
    assert explain.choose_images(pred, pred, conf, 3).tolist() == [3, 0, 1]   # no wrong ones: right only


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PETL_DATA_ROOT": str(DATA_ROOT)}
    return subprocess.run([sys.executable, "-m", "benchmarks.explain", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)


def _one_line_exit_2(capsys: pytest.CaptureFixture, args: list[str], text: str) -> None:
    """In process (the module's tiny bundle stays patched in): exit 2 and one stderr line containing ``text``."""
    code = explain.main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], err


def test_bad_input_is_one_line_and_exit_2(sweep, tmp_path, capsys):
    out, _ = sweep
    _one_line_exit_2(capsys, [str(out), "--dataset", "breastmnist", "--method", "ssf"], "no run matches")
    _one_line_exit_2(capsys, [str(out), "--run", "nope"], "no run matches --run nope")
    _one_line_exit_2(capsys, [str(tmp_path), "--run", "x"], "does not exist")
    record = _record(out, "lora_c")
    _one_line_exit_2(capsys, [str(out), "--run", record["key"], "--layer", "fc"], "not a spatial feature map")
    _one_line_exit_2(capsys, [str(out), "--run", record["key"], "--layer", "nope"], "has no layer 'nope'")
    assert explain.main([str(out), "--run", record["key"], "--n", "4", "--to", str(tmp_path / "ok.png")]) == 0
    assert (tmp_path / "ok.png").is_file()


def test_a_model_that_does_not_reproduce_the_run_is_refused(sweep, tmp_path, capsys, monkeypatch):
    out, bundle = sweep
    record = _record(out, "lora_c")
    shuffled = type(bundle.test)(bundle.test.images.flip(0), bundle.test.labels.flip(0))   # other images per row
    monkeypatch.setattr(engine, "load_bundle", lambda config, runtime: type(bundle)(
        bundle.name, bundle.task, bundle.class_names, bundle.train, bundle.val, shuffled, bundle.num_classes))
    _one_line_exit_2(capsys, [str(out), "--run", record["key"], "--to", str(tmp_path / "x.png")],
                     "does not reproduce run")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("drop", ["predictions", "adapter"])
def test_run_without_predictions_or_adapter(sweep, tmp_path, capsys, drop):
    out, _ = sweep
    (tmp_path / "runs").mkdir()
    record = dict(_record(out, "lora_c"))
    for suffix in (".adapter.safetensors", ".predictions.npz"):
        name = record["run_name"] + suffix
        (tmp_path / "runs" / name).write_bytes((out / "runs" / name).read_bytes())
    record.pop(drop)
    (tmp_path / "runs" / f"{record['run_name']}.json").write_text(json.dumps(record))
    wanted = "has no predictions file" if drop == "predictions" else "has no adapter file"
    _one_line_exit_2(capsys, [str(tmp_path), "--run", record["key"]], wanted)


def test_replaced_adapter_is_refused(sweep, tmp_path):
    out, _ = sweep
    record = _record(out, "lora_c")
    other = _record(out, "linear_probe")
    (tmp_path / "runs").mkdir()
    for suffix in (".adapter.safetensors", ".predictions.npz", ".json"):
        src = out / "runs" / (record["run_name"] + suffix)
        (tmp_path / "runs" / src.name).write_bytes(src.read_bytes())
    target = tmp_path / "runs" / f"{record['run_name']}.adapter.safetensors"
    target.write_bytes((out / "runs" / f"{other['run_name']}.adapter.safetensors").read_bytes())
    with pytest.raises(ArtifactError, match="does not match the sha256"):
        adapter_path(record, tmp_path / "runs")


@pytest.mark.slow
def test_real_breastmnist_run(tmp_path):
    """A real run (ImageNet EfficientNet-Lite0, 64 px, one epoch) and its grid through the CLI."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PETL_DATA_ROOT": str(DATA_ROOT)}
    subprocess.run([sys.executable, "-m", "benchmarks.run", "--methods", "lora_c", "--datasets", "breastmnist",
                    "--backbone", "efficientnet_lite0", "--weights", "imagenet", "--img-size", "64", "--epochs", "1",
                    "--out", str(tmp_path), "--device", "cpu", "--no-progress"], check=True, env=env, cwd=REPO,
                   timeout=900)
    for extra in ([], ["--merge"]):
        result = _cli(str(tmp_path), "--dataset", "breastmnist", "--method", "lora_c", "--seed", "0", *extra,
                      "--to", str(tmp_path / f"grid{len(extra)}.png"))
        assert result.returncode == 0, result.stderr
        assert (tmp_path / f"grid{len(extra)}.png").stat().st_size > 50_000


def _fake_execute(config, runtime, workdir, stop_after_epoch=None):
    (Path(workdir) / "adapter.safetensors").write_bytes(b"adapter bytes")
    from benchmarks.predictions import from_arrays
    z = from_arrays(np.zeros((2, 2)), np.array([0, 1]))
    return {"status": "ok", "reason": None, "metrics": {"val": {}, "test": {}}, "predictions": {"val": z, "test": z}}


def test_runner_keeps_the_adapter_and_a_failed_copy_fails_the_run(tmp_path, monkeypatch):
    import hashlib
    from benchmarks import artifacts
    from benchmarks.files import WriteError
    config = RunConfig(method="linear_probe", dataset="breastmnist", seed=0)
    store = RunStore(tmp_path)
    store.prepare()
    monkeypatch.setattr(execution, "execute", _fake_execute)
    record = execution.train_and_record(PlannedRun(config, "linear_probe"), Runtime(device="cpu"), store)
    kept = artifacts.path_for(store.runs_dir, config.run_name)
    assert kept.read_bytes() == b"adapter bytes" and record["status"] == "ok"
    assert store.read(config)["adapter"] == {"file": kept.name, "sha256": hashlib.sha256(b"adapter bytes").hexdigest(),
                                             "bytes": 13}

    def refuse(path, data):
        raise WriteError(28, f"no space left on device while writing {path}")
    monkeypatch.setattr(artifacts, "atomic_write_bytes", refuse)
    record = execution.train_and_record(PlannedRun(config, "linear_probe"), Runtime(device="cpu"), store, resume=False)
    assert record["status"] == "failed" and "adapter file could not be written" in record["reason"]


def test_report_builds_curves_and_learned_activations(sweep, tmp_path):
    from benchmarks.report import build_reports
    out, _ = sweep
    reports = build_reports(out, reference="linear_probe", to=tmp_path)
    names = {p.name for p in reports.plots}
    assert {"roc_pr__breastmnist.png", "reliability__breastmnist.png", "confusion__breastmnist.png"} <= names
    assert any(n.startswith("activations__breastmnist__gpaf") for n in names)
