"""The performance report's measurement and table logic (real models, tiny sizes; speed itself is not asserted)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import petl
from benchmarks import performance


def case(method: str, **options) -> performance.Case:
    return performance.Case(method, options, "resnet18", img_size=32, batch_size=2, num_classes=3, steps=1,
                            warmup=1, device="cpu", warmup_s=0.0)


def test_measure_merges_lora_c_and_counts_its_parameters() -> None:
    row = performance.measure(case("lora_c", rank=2, alpha=4))
    model = petl.apply(petl.build_backbone("resnet18", weights=None, num_classes=3), "lora_c", rank=2, alpha=4)
    assert row["trainable_params"] == petl.trainable_parameters(model)
    assert row["merged_layers"] == 19                    # 8 blocks x conv1/conv2 + 3 downsample convs
    assert row["train_images_per_s"] > 0 and row["infer_images_per_s"] > 0
    assert row["memory_kind"] == "cpu_peak_rss" and row["train_peak_mb"] > 0


def test_measure_uses_the_methods_own_trainer(monkeypatch) -> None:
    """MetaLR's trainer hook (look-ahead + meta + real step) builds the trainer and runs every timed step."""
    hooks = petl.get_method("metalr").hooks
    original, calls = hooks["trainer"], {"built": 0, "steps": 0}

    def spy(model, options, **kwargs):
        calls["built"] += 1
        trainer = original(model, options, **kwargs)
        step = trainer.train_step

        def counted(*args):
            calls["steps"] += 1
            return step(*args)
        trainer.train_step = counted
        return trainer

    monkeypatch.setitem(hooks, "trainer", spy)
    row = performance.measure(case("metalr"))
    assert calls == {"built": 1, "steps": 2}              # 1 warm-up + 1 measured step, all through the hook
    assert row["trainable_params"] == petl.total_parameters(petl.build_backbone("resnet18", None, 3))
    assert row["merged_layers"] == 0


def test_ratios_and_bound_verdicts() -> None:
    df = pd.DataFrame([
        {"method": "full_ft", "img_size": 64, "train_images_per_s": 10.0, "train_peak_mb": 200.0},
        {"method": "linear_probe", "img_size": 64, "train_images_per_s": 40.0, "train_peak_mb": 50.0},
        {"method": "lora_c", "img_size": 64, "train_images_per_s": 12.0, "train_peak_mb": 150.0},
    ])
    out = performance.add_ratios(df).set_index("method")
    assert out.loc["lora_c", "train_vs_full_ft"] == pytest.approx(1.2)
    assert out.loc["lora_c", "train_vs_linear_probe"] == pytest.approx(0.3)
    assert out.loc["lora_c", "train_mem_vs_full_ft"] == pytest.approx(0.75)
    assert performance.verdict(out.reset_index().iloc[2]) == "80% of the ~1.5x bound"


def test_unknown_method_exits_2(capsys) -> None:
    assert performance.main(["--methods", "nope", "--out", "unused"]) == 2
    assert "unknown method(s) nope" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value", [("--img-size", "64,abc"), ("--batch-size", "0")])
def test_bad_sizes_exit_2_with_one_line(capsys, flag, value) -> None:
    with pytest.raises(SystemExit) as stop:
        performance.main([flag, value, "--out", "unused"])
    assert stop.value.code == 2 and value in capsys.readouterr().err


ROWS = [{"method": m, "img_size": 64, "batch_size": 8, "trainable_params": 10, "merged_layers": 0,
         "train_images_per_s": ips, "infer_images_per_s": 50.0, "train_peak_mb": 100.0}
        for m, ips in (("linear_probe", 40.0), ("full_ft", 10.0), ("bitfit", 15.0), ("metalr", 4.0))]
META = {"backbone": "resnet18", "device": "cpu", "device_name": "cpu (test)", "precision": "float32", "threads": 2,
        "steps": 1, "warmup": 1, "warmup_s": 0, "memory_kind": "cpu_peak_rss", "date": "2026-01-01",
        "command": "python -m benchmarks.performance --steps 1"}


def test_markdown_explains_the_bound_and_each_far_method() -> None:
    md = performance.to_markdown(performance.add_ratios(pd.DataFrame(ROWS)), META)
    assert "2/3 of full fine-tuning's FLOPs" in md and "~1.5x" in md and "floor" in md
    why = md.split("## Why each method stands where it does")[1]
    metalr = next(line for line in why.splitlines() if line.startswith("* **metalr**"))
    assert "far from the bound" in metalr and "look-ahead" in metalr              # 0.40x = 27 % of the bound
    bitfit = next(line for line in why.splitlines() if line.startswith("* **bitfit**"))
    assert "near the bound" in bitfit


def test_render_only_rebuilds_markdown_without_measuring(tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "performance-cpu"
    out.mkdir()
    (out / "performance.json").write_text(json.dumps({"meta": META, "rows": ROWS, "failures": ["224px gpaf: OOM"]}))
    monkeypatch.setattr(performance, "measure_isolated", lambda case: pytest.fail("measured in --render-only"))
    assert performance.main(["--render-only", "--out", str(out)]) == 0
    md = (tmp_path / "performance-cpu.md").read_text()
    assert "| metalr | 10 | 4.0 | 0.40x |" in md and "224px gpaf: OOM" in md and "physical bound" in md
    assert len(pd.read_csv(out / "performance.csv")) == 4
    assert performance.main(["--render-only", "--out", str(tmp_path / "missing")]) == 2
    assert "performance.json not found" in capsys.readouterr().err


def test_default_out_is_per_device_and_another_devices_out_is_refused(tmp_path, capsys) -> None:
    assert performance.default_out("cpu") != performance.default_out("cuda")
    out = tmp_path / "perf"
    out.mkdir()
    (out / "performance.json").write_text(json.dumps({"meta": {**META, "device": "cuda"}, "rows": ROWS}))
    assert performance.main(["--device", "cpu", "--methods", "linear_probe", "--out", str(out)]) == 2
    assert "holds cuda measurements" in capsys.readouterr().err


def test_index_holds_every_devices_report_side_by_side(tmp_path) -> None:
    for device, failures in (("cpu", ["224px gpaf: OOM"]), ("cuda", [])):
        out = tmp_path / f"performance-{device}"
        out.mkdir()
        (out / "performance.json").write_text(json.dumps({"meta": {**META, "device": device}, "rows": ROWS,
                                                          "failures": failures}))
    cuda_json = tmp_path / "performance-cuda" / "performance.json"
    cuda_text = cuda_json.read_text()
    cuda_json.unlink()
    md = performance.write_index(tmp_path).read_text()
    assert md.count("## Performance:") == 1 and "No GPU measurement" in md and "224px gpaf: OOM" in md
    cuda_json.write_text(cuda_text)
    assert performance.main(["--render-only", "--out", str(tmp_path / "performance-cuda")]) == 0
    md = (tmp_path / "performance.md").read_text()
    assert md.count("## Performance:") == 2 and "No GPU measurement" not in md
    assert "(cpu, " in md and "(cuda, " in md and "### 64 px" in md
