"""Interleaved A/B in one warm process: full fine-tuning vs Conv-Adapter (generic mode) on EfficientNet-Lite0,
with Conv-Adapter's fast CPU forms and without them (the plain ops every commit before 2bba9ce ran).

Run (alone on the cores, ~2 min):
    python results/benchmarks/ab_conv_adapter_vs_full_ft.py > results/benchmarks/ab_conv_adapter_vs_full_ft.txt

Each case is a training step (forward, cross-entropy, backward, AdamW) at the offline-cpu preset's settings
(Lite0, channels_last, 2 threads, Conv-Adapter adapt_size 16), the cases alternating step by step so that a host
that drifts slows them alike (separate-process rows on this VM move by ~20 %). "plain ops" registers a no-op
forward hook on every adapter and its grouped conv: ``ConvAdapter.add_to`` and ``grouped_conv`` then call the
modules as such (grouped conv, 1 x 1 conv, scale, add), exactly the arithmetic of the earlier code. The process
restarts itself with the steady malloc settings first, as ``benchmarks.run`` and ``benchmarks.performance`` do
(with glibc's defaults the large per-step buffers are faulted in afresh on every step, which costs the method with
more full-size temporaries most: an earlier run of this script without them had Conv-Adapter at 0.79x of full
fine-tuning at 224 px).
"""
from benchmarks.allocator import allocator_in_effect, restart_with_steady_allocator

if __name__ == "__main__":
    restart_with_steady_allocator()

import time  # noqa: E402  (after the restart: nothing heavy is loaded twice)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import petl  # noqa: E402
from petl.methods.conv_adapter import ConvAdapter  # noqa: E402

torch.set_num_threads(2)
CHANNELS_LAST = torch.channels_last


def no_op(*args):
    return None


def make_step(method: str, img: int, batch: int, plain_ops: bool = False):
    torch.manual_seed(0)
    model = petl.build_backbone("efficientnet_lite0", weights=None, num_classes=2)
    options = {"adapt_size": 16} if method == "conv_adapter" else {}
    petl.apply(model, method, **options)
    if plain_ops:
        for adapter in (m for m in model.modules() if isinstance(m, ConvAdapter)):
            adapter.register_forward_hook(no_op)
            adapter.conv1.register_forward_hook(no_op)
    model = model.to(memory_format=CHANNELS_LAST).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, img, img, generator=generator).contiguous(memory_format=CHANNELS_LAST)
    y = torch.randint(0, 2, (batch,), generator=generator)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return step


def interleaved_medians(cases: dict, warmup: int, rounds: int) -> dict[str, float]:
    """Median seconds per step of each case: ``warmup`` steps each, then ``rounds`` rounds of one step per case in
    turn, so that a host that drifts slows every case alike."""
    for step in cases.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, step in cases.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: sorted(v)[len(v) // 2] for name, v in times.items()}


def compare(img: int, batch: int, warmup: int, rounds: int) -> None:
    cases = {"full_ft": make_step("full_ft", img, batch),
             "conv_adapter": make_step("conv_adapter", img, batch),
             "conv_adapter, plain ops": make_step("conv_adapter", img, batch, plain_ops=True)}
    median = interleaved_medians(cases, warmup, rounds)
    print(f"## Lite0, {img} px, batch {batch}: {warmup} warm-up steps each, then {rounds} interleaved rounds")
    for name, seconds in median.items():
        print(f"{name:26s} median {seconds * 1e3:7.1f} ms  {batch / seconds:7.1f} img/s  "
              f"vs full_ft {median['full_ft'] / seconds:4.2f}x")
    print(f"fast forms / plain ops: {median['conv_adapter, plain ops'] / median['conv_adapter']:4.2f}x\n", flush=True)


if __name__ == "__main__":
    print(f"# malloc settings: {allocator_in_effect()}\n")
    compare(64, 64, warmup=3, rounds=15)
    compare(224, 32, warmup=2, rounds=7)
