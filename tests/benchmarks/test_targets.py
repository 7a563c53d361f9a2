"""The speed-target evaluator (tests/benchmarks/targets.py): ratios, verdicts, errors. Fast; not a benchmark."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

HERE = Path(__file__).resolve().parent
RECORDED = HERE.parents[1] / "results" / "benchmarks" / "cpu_resnet50_64px.json"


def _load_targets() -> ModuleType:
    """Import targets.py by path: it does not depend on how pytest set up sys.path."""
    spec = importlib.util.spec_from_file_location("petl_bench_targets", HERE / "targets.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


targets = _load_targets()


def _stats(plain: float, merged: float, full: float, peft: float, lora: float, spread: float = 0.0) -> dict:
    """Benchmark stats with min = median * (1 - spread) for the LoRA-C cases, min = median for the rest."""
    def case(median: float, lora_case: bool = False) -> dict:
        return {"median": median, "min": median * (1 - spread) if not lora_case else median}
    return {"test_bench_inference[plain]": case(plain), "test_bench_inference[lora_c_merged]": case(merged, True),
            "test_bench_train_step[full_ft]": case(full), "test_bench_train_step[peft_lora_matched]": case(peft),
            "test_bench_train_step[lora_c_auto]": case(lora, True)}


def test_ratios_and_verdicts():
    verdicts = targets.evaluate(_stats(plain=1.0, merged=1.0, full=3.0, peft=0.8, lora=2.0))
    assert [v.status for v in verdicts] == ["PASS", "PASS", "FAIL"]           # 1.0x, 1.5x, 0.4x
    assert verdicts[1].ratios == {"median": pytest.approx(1.5), "min": pytest.approx(1.5)}
    # the reference cases' min is 10 % faster: the full-FT ratio drops to 1.35x (still >= 1.2), inference to 0.9x
    mixed = targets.evaluate(_stats(plain=1.0, merged=1.0, full=3.0, peft=2.0, lora=2.0, spread=0.1))
    assert [v.status for v in mixed] == ["MIXED", "PASS", "PASS"]
    assert mixed[0].ratios["min"] == pytest.approx(0.9)


def test_missing_case_and_bad_file_name_the_problem(tmp_path):
    stats = _stats(1, 1, 1, 1, 1)
    del stats["test_bench_train_step[full_ft]"]
    with pytest.raises(SystemExit, match=r"lacks \['test_bench_train_step\[full_ft\]'\]"):
        targets.evaluate(stats)
    with pytest.raises(SystemExit, match="does not exist; write one with pytest tests/benchmarks"):
        targets.load_stats(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text(json.dumps({"runs": []}))
    with pytest.raises(SystemExit, match="not a pytest-benchmark JSON"):
        targets.load_stats(tmp_path / "bad.json")


def test_main_on_a_written_file_exit_status(tmp_path, capsys):
    stats = _stats(plain=1.0, merged=1.0, full=3.0, peft=0.8, lora=2.0)
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"benchmarks": [{"name": n, "stats": s} for n, s in stats.items()]}))
    assert targets.main([str(path)]) == 1
    out = capsys.readouterr().out
    assert "LoRA-C training >= 1.2x full FT" in out and "1.500x" in out and "FAIL" in out
    assert targets.main([]) == 2


@pytest.mark.skipif(not RECORDED.is_file(), reason=f"{RECORDED} not present")
def test_recorded_run_has_every_case():
    """The committed CPU run holds every case the targets need (values are whatever that run measured)."""
    verdicts = targets.evaluate(targets.load_stats(RECORDED))
    assert len(verdicts) == 3 and all(v.ratios["median"] > 0 for v in verdicts)
