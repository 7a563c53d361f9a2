"""Bare step with random vs ImageNet weights, interleaved in one warm process: does the weights' content change speed?

Run (alone on the cores): python results/benchmarks/ab_bare_weights.py \
    > results/benchmarks/ab_bare_weights.txt

Why: ``benchmarks.performance`` builds its models with ``weights=None`` (random init), the sweep with the ImageNet
weights. partial_ft's sweep trained at 1.44x its bare step (sweep_vs_bare_5867f51.md) while every other method
stayed within ~0.9-1.2. The FLOPs of a step do not depend on the weights' values, but CPU speed can: very small
float32 values (subnormals, below ~1.2e-38) take a slow path in many CPU kernels, and a randomly initialised
network's gradients can shrink into that range.

For each method, two models are built exactly as ``benchmarks.performance.measure`` builds one (Lite0, 64 px,
batch 64, the preset's options, channels_last, AdamW on the trainable parameters), one with ``weights=None`` and
one with ``weights="imagenet"``; their train steps on one fixed random batch alternate in blocks, timed with the
engine's ``Throughput`` meter. A third arm repeats the random-weights model with ``torch.set_flush_denormal(True)``
(subnormals read as zero): if it closes the gap, subnormals are the cause.
"""
import statistics
import time

import torch
import torch.nn.functional as F

import petl
from benchmarks.layout import prepare_input, prepare_model
from benchmarks.load import host_probe_ms
from benchmarks.measure import Throughput
from benchmarks.performance import method_options

METHODS = ("full_ft", "partial_ft")
BATCH, SIZE, CLASSES = 64, 64, 7
BLOCK, ROUNDS = 3, 6

torch.set_num_threads(2)
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; host probe {host_probe_ms():.1f} ms")
options = method_options("offline-cpu")
g = torch.Generator().manual_seed(0)
x = prepare_input(torch.randn(BATCH, 3, SIZE, SIZE, generator=g), "channels_last")
y = torch.randint(0, CLASSES, (BATCH,), generator=g)


def subnormal_share(model: torch.nn.Module) -> float:
    """Share of the trainable parameters' gradient values that are subnormal after one step (0 when none)."""
    tiny = torch.finfo(torch.float32).tiny
    grads = [p.grad.flatten() for p in model.parameters() if p.requires_grad and p.grad is not None]
    flat = torch.cat(grads)
    return float(((flat != 0) & (flat.abs() < tiny)).float().mean())


for method in METHODS:
    steps = {}
    models = {}
    for weights in (None, "imagenet"):
        torch.manual_seed(0)
        model = petl.build_backbone("efficientnet_lite0", weights=weights, num_classes=CLASSES)
        petl.apply(model, method, **options.get(method, {}))
        model = prepare_model(model, "channels_last").train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def step(model=model, optimizer=optimizer) -> None:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        name = "random" if weights is None else "imagenet"
        steps[name], models[name] = step, model

    def flushed(step=steps["random"]) -> None:
        torch.set_flush_denormal(True)
        try:
            step()
        finally:
            torch.set_flush_denormal(False)

    steps["random+flush"] = flushed
    steps["random"]()
    steps["imagenet"]()
    shares = {name: subnormal_share(m) for name, m in models.items()}   # before any flushed step
    for step in list(steps.values()) * 2:      # warm-up
        step()
    meters = {name: Throughput(torch.device("cpu"), warmup=0) for name in steps}
    per_round: dict[str, list[float]] = {name: [] for name in steps}
    probe_before = host_probe_ms()
    for _ in range(ROUNDS):
        for name, step in steps.items():
            t0 = time.perf_counter()
            for _ in range(BLOCK):
                meters[name].start_batch()
                step()
                meters[name].end_batch(BATCH)
            per_round[name].append(BLOCK * BATCH / (time.perf_counter() - t0))
    probe_after = host_probe_ms()
    ips = {name: meters[name].images_per_s() for name in steps}
    ratio = [i / r for i, r in zip(per_round["imagenet"], per_round["random"])]
    print(f"{method}: random {ips['random']:.1f} img/s, imagenet {ips['imagenet']:.1f}, random+flush "
          f"{ips['random+flush']:.1f}; imagenet / random {ips['imagenet'] / ips['random']:.3f} (per round: median "
          f"{statistics.median(ratio):.3f}, range {min(ratio):.3f}-{max(ratio):.3f}); subnormal gradient share: "
          f"random {shares['random']:.2e}, imagenet {shares['imagenet']:.2e}; host probe {probe_before:.1f} -> "
          f"{probe_after:.1f} ms", flush=True)
