"""Sweep loop vs bare step, interleaved in one warm process: is a sweep's lower img/s the runner's doing?

Run (alone on the cores): PETL_DATA_ROOT=../shared/data python results/benchmarks/ab_sweep_loop_vs_bare.py \
    > results/benchmarks/ab_sweep_loop_vs_bare.txt
(method names as arguments replace the default three, e.g. ``... ab_sweep_loop_vs_bare.py linear_probe peft_oft``)

For each method, the run is built exactly as the sweep builds it (``benchmarks.engine.setup`` from the config of
its committed PneumoniaMNIST seed-2 record: Lite0, 64 px, batch 64, ImageNet weights, the preset's options, the
method's trainer and loss) and two kinds of step alternate in blocks:

* ``bare``: the trainer's step on one fixed random batch (what ``benchmarks.performance`` times);
* ``loop``: what ``benchmarks.engine.train_epoch`` does per batch: index a shuffled batch of the real training
  split, apply the train transform, convert the layout, then the same trainer step.

Both are timed with the engine's own ``Throughput`` meter. ``loop / bare`` near 1 means the runner adds nothing
and a sweep / bare ratio below 1 in performance.md comes from comparing two measurements taken at different
times (the host's speed drifts; see ``host probe`` lines: a fixed reference workload timed before and after).
"""
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import engine
from benchmarks.config import RunConfig, Runtime
from benchmarks.layout import prepare_input
from benchmarks.load import host_probe_ms
from benchmarks.measure import Throughput
from benchmarks.training.batches import epoch_generator, shuffled_batches

RUNS = Path(__file__).resolve().parents[1] / "offline-cpu-grid" / "runs"
METHODS = tuple(sys.argv[1:]) or ("full_ft", "conv_adapter", "peft_lora")
BLOCK, ROUNDS = 3, 6

torch.set_num_threads(2)
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; host probe {host_probe_ms():.1f} ms")
for method in METHODS:
    record = json.loads(next(RUNS.glob(f"pneumoniamnist__{method}__s2__*.json")).read_text())
    config = RunConfig.from_dict(record["config"])
    runtime = Runtime(device="cpu", progress=False)
    engine.seed_everything(config.seed)
    bundle = engine.load_bundle(config, runtime)
    run = engine.setup(config, runtime, Path(tempfile.mkdtemp()), torch.device("cpu"), None, bundle)
    run.model.train()
    gen = epoch_generator(config.seed, 0)
    batches = iter(list(shuffled_batches(len(run.train_y), config.batch_size, gen, None)) * 20)
    g = torch.Generator().manual_seed(0)
    x_fixed = prepare_input(torch.randn(config.batch_size, 3, config.img_size, config.img_size, generator=g),
                            run.layout)
    y_fixed = torch.randint(0, bundle.num_classes, (config.batch_size,), generator=g)

    def bare() -> int:
        run.trainer.train_step(x_fixed, y_fixed, run.loss_fn)
        return config.batch_size

    def loop() -> int:
        idx = next(batches)
        while len(idx) < config.batch_size:      # the epoch's last, short batch: time full batches only
            idx = next(batches)
        x = prepare_input(run.train_tf(run.train_x[idx], gen), run.layout)
        run.trainer.train_step(x, run.train_y[idx], run.loss_fn)
        return len(idx)

    for step in (bare, loop, bare, loop):        # warm-up
        step()
    meters = {"bare": Throughput(torch.device("cpu"), warmup=0), "loop": Throughput(torch.device("cpu"), warmup=0)}
    per_round = {"bare": [], "loop": []}
    probe_before = host_probe_ms()
    for _ in range(ROUNDS):
        for name, step in (("bare", bare), ("loop", loop)):
            t0 = time.perf_counter()
            for _ in range(BLOCK):
                meters[name].start_batch()
                n = step()
                meters[name].end_batch(n)
            per_round[name].append(BLOCK * config.batch_size / (time.perf_counter() - t0))
    probe_after = host_probe_ms()
    bare_ips, loop_ips = meters["bare"].images_per_s(), meters["loop"].images_per_s()
    ratios = [l / b for l, b in zip(per_round["loop"], per_round["bare"])]
    print(f"{method}: layout {run.layout}; bare {bare_ips:.1f} img/s, loop {loop_ips:.1f} img/s, "
          f"loop / bare {loop_ips / bare_ips:.3f} (per round: median {statistics.median(ratios):.3f}, "
          f"range {min(ratios):.3f}-{max(ratios):.3f}); host probe {probe_before:.1f} -> {probe_after:.1f} ms",
          flush=True)
