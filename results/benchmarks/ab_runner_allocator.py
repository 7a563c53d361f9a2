"""The runner with glibc's steady malloc settings (its default now) vs glibc's own defaults, same commit, alone.

Run (alone on the cores, ~10 min):
    PETL_DATA_ROOT=../shared/data python results/benchmarks/ab_runner_allocator.py /tmp/ab_runner \
        > results/benchmarks/ab_runner_allocator.txt

``benchmarks.run`` restarts itself with ``benchmarks.allocator.STEADY_MALLOC_ENV`` unless ``PETL_MALLOC_DEFAULTS=1``
(``ab_cold_allocator.txt`` showed a fresh process's bare step faulting its buffers in on every step). Each arm here is
one runner process training the same short sweep: the offline-cpu preset's recipe for ``METHODS`` on PneumoniaMNIST
(4,708 training images), 2 epochs, seed 0, lr 1e-3, 2 threads; arms alternate ABBA. It prints each record's training
img/s (the figure a sweep / bare column reads), its CPU share and peak RSS (the heap is no longer trimmed, so resident
memory may stay higher), and the steady / defaults ratio per method (median of the two rounds each). The records stay
in OUT (outside the repository): ``--records OUT/steady-1`` gives ``benchmarks.performance`` a sweep / bare column at
this commit.
"""
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks.allocator import KEEP_DEFAULTS_VAR, STEADY_MALLOC_ENV

METHODS = ("full_ft", "partial_ft", "norm_tuning", "lora_c")
ORDER = ("steady-1", "defaults-1", "defaults-2", "steady-2")


def arm_env(arm: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in STEADY_MALLOC_ENV and k != KEEP_DEFAULTS_VAR}
    if arm.startswith("defaults"):
        env[KEEP_DEFAULTS_VAR] = "1"
    return env


def main(out: Path) -> None:
    rows = {}
    for arm in ORDER:
        cmd = [sys.executable, "-m", "benchmarks.run", "--preset", "offline-cpu", "--datasets", "pneumoniamnist",
               "--methods", ",".join(METHODS), "--seeds", "0", "--set", "lr=1e-3", "--epochs", "2",
               "--device", "cpu", "--threads", "2", "--no-progress", "--out", str(out / arm)]
        done = subprocess.run(cmd, env=arm_env(arm), capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{arm}: exit {done.returncode}: {done.stderr[-2000:]}")
        for path in sorted((out / arm / "runs").glob("*.json")):
            record = json.loads(path.read_text())
            eff = record["efficiency"]
            rows[arm, record["method"]] = eff["train_images_per_s"]
            print(f"{arm:<11} {record['method']:<12} train {eff['train_images_per_s']:7.1f} img/s  "
                  f"CPU share {eff['machine_load']['cpu_share']:.3f}  wall {record['wall_time_s']:6.1f} s  "
                  f"peak RSS {eff['peak_memory_bytes'] / 2**20:6.0f} MB  "
                  f"allocator {record['environment']['allocator']}", flush=True)
    print("\nsteady / defaults (median of 2 rounds each):")
    for method in METHODS:
        steady = statistics.median(rows[a, method] for a in ORDER if a.startswith("steady"))
        default = statistics.median(rows[a, method] for a in ORDER if a.startswith("defaults"))
        print(f"  {method:<12} steady {steady:7.1f}  defaults {default:7.1f}  ratio {steady / default:.3f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
