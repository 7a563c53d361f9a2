"""Evaluate the project's speed targets on a pytest-benchmark JSON written by ``test_bench_methods.py``.

    python -m tests.benchmarks.targets results/benchmarks/cpu_resnet50_64px.json

Each target is a throughput ratio = time of the reference case / time of the LoRA-C case (> 1: LoRA-C faster),
computed on the median and on the min of the rounds. A target PASSes only when both statistics meet it (MIXED
when one does: within this machine's noise). Exit status 0 when every target passes, 1 otherwise.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATS = ("median", "min")


@dataclass(frozen=True)
class Target:
    label: str
    reference: str      # benchmark name whose time is the numerator
    candidate: str      # benchmark name whose time is the denominator
    threshold: float


TARGETS = (
    Target("merged LoRA-C inference >= 0.98x plain", "test_bench_inference[plain]",
           "test_bench_inference[lora_c_merged]", 0.98),
    Target("LoRA-C training >= 1.2x full FT", "test_bench_train_step[full_ft]",
           "test_bench_train_step[lora_c_auto]", 1.2),
    Target("LoRA-C training >= 0.9x peft LoRA (matched budget)", "test_bench_train_step[peft_lora_matched]",
           "test_bench_train_step[lora_c_auto]", 0.9),
)


@dataclass(frozen=True)
class Verdict:
    target: Target
    ratios: dict[str, float]    # statistic -> reference time / candidate time

    @property
    def status(self) -> str:
        met = [r >= self.target.threshold for r in self.ratios.values()]
        return "PASS" if all(met) else "MIXED" if any(met) else "FAIL"


def load_stats(path: str | Path) -> dict[str, dict[str, float]]:
    """Benchmark name -> its stats (seconds) from a pytest-benchmark JSON file."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"benchmark file {str(path)!r} does not exist; write one with pytest tests/benchmarks "
                         f"-m benchmark --benchmark-only --benchmark-enable -o addopts='' --benchmark-json FILE")
    try:
        data = json.loads(path.read_text())
        return {b["name"]: b["stats"] for b in data["benchmarks"]}
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise SystemExit(f"{str(path)!r} is not a pytest-benchmark JSON file ({type(exc).__name__}: {exc})") from exc


def evaluate(stats: dict[str, dict[str, Any]], targets: tuple[Target, ...] = TARGETS) -> list[Verdict]:
    """One verdict per target; a missing benchmark case is an error naming it."""
    needed = sorted({t.reference for t in targets} | {t.candidate for t in targets})
    missing = [n for n in needed if n not in stats]
    if missing:
        raise SystemExit(f"benchmark file lacks {missing}: run all of tests/benchmarks/test_bench_methods.py")
    return [Verdict(t, {s: stats[t.reference][s] / stats[t.candidate][s] for s in STATS}) for t in targets]


def format_table(verdicts: list[Verdict]) -> str:
    lines = [f"{'target':<52} {'median':>7} {'min':>7}  verdict"]
    for v in verdicts:
        lines.append(f"{v.target.label:<52} {v.ratios['median']:>6.3f}x {v.ratios['min']:>6.3f}x  {v.status}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m tests.benchmarks.targets BENCHMARK.json", file=sys.stderr)
        return 2
    verdicts = evaluate(load_stats(args[0]))
    print(format_table(verdicts))
    return 0 if all(v.status == "PASS" for v in verdicts) else 1


if __name__ == "__main__":
    raise SystemExit(main())
