"""The performance report's measurement and table logic (real models, tiny sizes; speed itself is not asserted)."""

from __future__ import annotations

import dataclasses
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
    spec = petl.get_method("metalr")
    original, calls = spec.trainer_factory, {"built": 0, "steps": 0}

    def spy(model, options, **kwargs):
        calls["built"] += 1
        trainer = original(model, options, **kwargs)
        step = trainer.train_step

        def counted(*args):
            calls["steps"] += 1
            return step(*args)
        trainer.train_step = counted
        return trainer

    monkeypatch.setitem(petl.registry._METHODS, "metalr", dataclasses.replace(spec, trainer_factory=spy))
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


def test_preset_options_replace_the_defaults_and_apply_to_lite0() -> None:
    from benchmarks.sweep import load_preset
    tables = load_preset("offline-cpu")["methods"]
    options = performance.method_options("offline-cpu")
    assert options["gpaf"] == tables["gpaf"]["options"] != performance.DEFAULT_OPTIONS["gpaf"]
    assert options["peft_oft"] == {"block_size": 8} and options["lora_c"] == tables["lora_c"]["options"]
    assert options["partial_ft"] == performance.DEFAULT_OPTIONS["partial_ft"]     # the preset leaves it alone
    assert performance.method_options(None) == performance.DEFAULT_OPTIONS
    model = petl.build_backbone("efficientnet_lite0", weights=None, num_classes=2)
    with pytest.raises(petl.PetlConfigError, match="block size"):     # why the defaults cannot time Lite0's OFT
        petl.apply(model, "peft_oft", **performance.DEFAULT_OPTIONS["peft_oft"])
    petl.apply(model, "peft_oft", **options["peft_oft"])


def test_unknown_preset_exits_2_with_one_line(capsys) -> None:
    assert performance.main(["--methods", "bitfit", "--preset", "nope", "--out", "unused"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown preset 'nope'") and "\n" not in err


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


def test_a_ratio_to_an_unmeasured_reference_is_an_empty_cell_not_nan() -> None:
    rows = [r for r in ROWS if r["method"] != "linear_probe"]      # e.g. --methods full_ft,bitfit,metalr
    md = performance.to_markdown(performance.add_ratios(pd.DataFrame(rows)), META)
    bitfit = next(line for line in md.splitlines() if line.startswith("| bitfit |")).split("|")
    assert "nan" not in md
    assert bitfit[4].strip() == "1.50x" and bitfit[5].strip() == ""   # vs full_ft measured; vs linear_probe not


def test_far_from_the_bound_is_judged_against_each_methods_flop_bound() -> None:
    """With FLOPs counted, a method is "far" when its measured ratio is < 0.9 of its own FLOP bound (issue 12):
    bitfit at 1.50x of full FT with a 2.0x FLOP bound reaches 75 % -> far, although it sits at the generic 1.5x;
    linear_probe is the floor, metalr at 0.40x with a 0.40x FLOP bound reaches 100 % -> near."""
    flops = {"linear_probe": 1.0, "full_ft": 3.0, "bitfit": 1.5, "metalr": 7.5}
    rows = [{**r, "gflop_step": flops[r["method"]]} for r in ROWS]
    why = performance.to_markdown(performance.add_ratios(pd.DataFrame(rows)), META).split(
        "## Why each method stands where it does")[1].splitlines()
    line = {m: next(x for x in why if x.startswith(f"* **{m}**")) for m in ("bitfit", "metalr")}
    assert "far from the bound" in line["bitfit"] and "75% of its FLOP bound" in line["bitfit"]
    assert "near the bound" in line["metalr"] and "100% of its FLOP bound" in line["metalr"]


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


def test_measure_counts_the_timed_steps_flops_by_phase_and_layer() -> None:
    """The FLOP split of the measured step: for full FT a conv's weight gradient costs its forward; per-layer
    rows sum to the totals; BitFit computes no conv weight gradient (only the head's)."""
    full = performance.measure(case("full_ft"))
    bitfit = performance.measure(case("bitfit"))
    assert full["gflop_step"] == pytest.approx(full["gflop_forward"] + full["gflop_input_grad"]
                                               + full["gflop_weight_grad"])
    assert full["gflop_weight_grad"] == pytest.approx(full["gflop_forward"])
    assert bitfit["gflop_weight_grad"] == pytest.approx(2 * 2 * 512 * 3 / 1e9)          # fc: batch 2, 512 -> 3
    assert bitfit["gflop_input_grad"] == pytest.approx(full["gflop_input_grad"])
    layers = pd.DataFrame(full["flops_per_layer"]).set_index("layer")
    assert layers["gflop_forward"].sum() == pytest.approx(full["gflop_forward"])
    assert layers.loc["layer1.0.conv1", "gflop_forward"] == pytest.approx(2 * 2 * 8 * 8 * 64 * 64 * 9 / 1e9)
    assert full["memory_format"] == "contiguous" and full["compile"] is False


FLOP_ROWS = [{**r, "gflop_step": g, "gflop_forward": g / 3, "gflop_input_grad": g / 3, "gflop_weight_grad": g / 3}
             for r, g in zip(ROWS, (20.0, 60.0, 40.0, 120.0))]


def test_flop_bound_column_next_to_the_measured_ratio() -> None:
    out = performance.add_ratios(pd.DataFrame(FLOP_ROWS)).set_index("method")
    assert out.loc["bitfit", "flop_bound_vs_full_ft"] == pytest.approx(1.5)          # 60 / 40 GFLOP
    assert out.loc["bitfit", "measured_vs_bound"] == pytest.approx(1.5 / 1.5)        # measured 15 / 10 = 1.5x
    assert out.loc["metalr", "flop_bound_vs_full_ft"] == pytest.approx(0.5)
    md = performance.to_markdown(out.reset_index(), META)
    assert "| bitfit | 10 | 15.0 | 1.50x | 1.50x | 13.3 / 13.3 / 13.3 | 0.38x | 50.0 | 1.00x |" in md
    assert "100% of its FLOP bound" in md and "Each method's own bound" in md
    old = performance.to_markdown(performance.add_ratios(pd.DataFrame(ROWS)), META)   # rows without FLOP counts
    assert "FLOP bound" not in old and "80% of the ~1.5x bound" not in old and "| bitfit | 10 | 15.0 | 1.50x |" in old


def _record(method: str, ips: float, commit: str = "abc", img: int = 64, share: float | None = 0.5,
            options: dict | None = None, probe: tuple[float, float] | None = None) -> dict:
    load = {**({"cpu_share": share} if share is not None else {}),
            **({"host_probe_ms_start": probe[0], "host_probe_ms_end": probe[1]} if probe else {})}
    return {"status": "ok", "config": {"method": method, "backbone": "resnet18", "img_size": img, "batch_size": 8,
                                       "options": options or {}},
            "efficiency": {"train_images_per_s": ips, **({"machine_load": load} if load else {})},
            "environment": {"git": {"commit": commit}, "cpu": "test", "device_name": "cpu (test)",
                            "torch_threads": 2}}


def test_sweep_over_bare_from_records_of_the_same_machine_and_commit(tmp_path) -> None:
    from benchmarks.sweep_efficiency import add_sweep_ratio, sweep_throughput
    meta = {**META, "environment": {"git": {"commit": "abc"}, "cpu": "test", "device_name": "cpu (test)"},
            "options": {"bitfit": {}}}
    records = [_record("full_ft", 8.0), _record("full_ft", 9.0), _record("full_ft", 30.0, commit="other"),
               _record("full_ft", 30.0, img=224), _record("bitfit", 12.0, share=None),
               {**_record("bitfit", 99.0), "status": "failed"}]
    table = sweep_throughput(records, meta)
    assert len(table) == 3                                            # full_ft at 64 and 224 px, bitfit at 64 px
    sweep = table[table["img_size"] == 64].set_index("method")
    assert sweep.loc["full_ft", "sweep_images_per_s"] == pytest.approx(8.5) and sweep.loc["full_ft", "sweep_runs"] == 2
    assert sweep.loc["full_ft", "sweep_cpu_share"] == pytest.approx(0.5)
    assert sweep.loc["bitfit", "sweep_runs"] == 1 and pd.isna(sweep.loc["bitfit", "sweep_cpu_share"])
    assert not sweep.loc["bitfit", "options_differ"]
    df = add_sweep_ratio(performance.add_ratios(pd.DataFrame(ROWS)), table).set_index("method")
    assert df.loc["full_ft", "sweep_vs_bare"] == pytest.approx(0.85) and pd.isna(df.loc["metalr", "sweep_vs_bare"])
    md = performance.to_markdown(df.reset_index(), {**meta, "records": "results/x"})
    assert "| 8.5 | 0.85 (cpu share 0.50) |" in md and "Sweep / bare" in md
    # another method option set in the sweep than in the bare measurement is flagged
    flagged = sweep_throughput([_record("gpaf", 5.0, options={"gpaf": {"kind": "spline"}})],
                               {**meta, "options": {"gpaf": {"kind": "prelu"}}})
    assert bool(flagged["options_differ"].iloc[0])
    rows = [{**ROWS[0], "method": "gpaf"}, {**ROWS[1]}]
    md = performance.to_markdown(add_sweep_ratio(performance.add_ratios(pd.DataFrame(rows)), flagged), META)
    assert "| gpaf | 10 | 40.0 | 4.00x | 5.0* | 0.12 (cpu share 0.50) |" in md


def test_sweep_column_compares_the_host_probe_of_the_sweep_with_the_bare_rows() -> None:
    """A sweep on a slower host (larger probe) than the bare measurement shows it next to its ratio; records
    without a probe (older ones) leave it out rather than counting as 0."""
    from benchmarks.sweep_efficiency import add_sweep_ratio, sweep_throughput
    meta = {**META, "environment": {"git": {"commit": "abc"}, "cpu": "test", "device_name": "cpu (test)"},
            "options": {}}
    records = [_record("full_ft", 4.0, probe=(20.0, 24.0)), _record("full_ft", 5.0, probe=(30.0, 30.0)),
               _record("full_ft", 6.0), _record("bitfit", 15.0, share=None)]
    table = sweep_throughput(records, meta).set_index("method")
    assert table.loc["full_ft", "sweep_probe_ms"] == pytest.approx(25.0)            # median of 20 and 30
    assert pd.isna(table.loc["bitfit", "sweep_probe_ms"])
    rows = [{**r, "host_probe_ms": 10.0} for r in ROWS]
    df = add_sweep_ratio(performance.add_ratios(pd.DataFrame(rows)), table.reset_index())
    md = performance.to_markdown(df, META)
    assert "| 5.0 | 0.50 (cpu share 0.50, probe 25.0 vs 10.0 ms) |" in md
    assert "| 15.0 | 1.00 |" in md                                                  # neither share nor probe


def test_render_only_with_records_adds_the_sweep_column(tmp_path) -> None:
    meta = {**META, "environment": {"git": {"commit": "abc"}, "cpu": "test", "device_name": "cpu (test)"},
            "options": {}}
    out = tmp_path / "performance-cpu"
    out.mkdir()
    (out / "performance.json").write_text(json.dumps({"meta": meta, "rows": ROWS}))
    runs = tmp_path / "sweep" / "runs"
    runs.mkdir(parents=True)
    (runs / "a.json").write_text(json.dumps(_record("bitfit", 13.5, share=0.97)))
    assert performance.main(["--render-only", "--out", str(out), "--records", str(tmp_path / "sweep")]) == 0
    md = (tmp_path / "performance-cpu.md").read_text()
    assert "| bitfit | 10 | 15.0 | 1.50x | 13.5 | 0.90 (cpu share 0.97) |" in md
    assert "| full_ft | 10 | 10.0 | 1.00x | | |" in md


def test_measuring_processes_start_with_the_steady_allocator(monkeypatch) -> None:
    """A process spawned inside ``steady_allocator_env`` gets glibc's fixed thresholds (a user's own value wins);
    the caller's environment is restored afterwards; the report names the settings."""
    import multiprocessing
    import os

    from benchmarks.allocator import STEADY_MALLOC_ENV, steady_allocator_env
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "12345")
    with steady_allocator_env() as settings, multiprocessing.get_context("spawn").Pool(1) as pool:
        seen = pool.map(os.getenv, list(STEADY_MALLOC_ENV))
    assert seen == [STEADY_MALLOC_ENV["MALLOC_MMAP_THRESHOLD_"], "12345"]
    assert settings == dict(zip(STEADY_MALLOC_ENV, seen))
    assert "MALLOC_MMAP_THRESHOLD_" not in os.environ and os.environ["MALLOC_TRIM_THRESHOLD_"] == "12345"
    md = performance.to_markdown(performance.add_ratios(pd.DataFrame(ROWS)), {**META, "allocator": settings})
    assert "MALLOC_TRIM_THRESHOLD_=12345" in md
    assert "glibc" not in performance.to_markdown(performance.add_ratios(pd.DataFrame(ROWS)), META)   # older JSON
