"""The performance report's measurement and table logic (real models, tiny sizes; speed itself is not asserted)."""

from __future__ import annotations

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


def test_measure_uses_the_methods_own_trainer() -> None:
    row = performance.measure(case("metalr"))            # MetaLR's trainer hook: look-ahead + meta + real step
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
