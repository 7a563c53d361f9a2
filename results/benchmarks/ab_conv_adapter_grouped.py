"""Conv-Adapter's grouped k x k conv (Cin -> Cin / adapt_size, groups = Cin / adapt_size) as one grouped conv
vs the exact form ``ConvAdapter.grouped_conv`` uses on CPU (a depth-wise Cin -> Cin conv, then the sum of each
group's adapt_size channels), on the shapes the adapters really see, channels_last, 2 threads, alone.

Run (alone on the cores, ~2 min):
    python results/benchmarks/ab_conv_adapter_grouped.py > results/benchmarks/ab_conv_adapter_grouped.txt

Per adapter (the inputs captured from one forward of the adapted model): forward + backward time of each form
(gradients of input, weight and bias; same upstream gradient), the adapter's 1 x 1 conv for scale, and how far
the two forms' float32 outputs and gradients differ (relative to the largest value): they are the same function,
summed in another order. Lite0 (generic mode, beside each conv_dw) at the performance table's 64 px / batch 64;
ResNet-50 (resnet mode, beside each conv2) at 64 px / batch 32.
"""
import time

import torch
import torch.nn.functional as F

import petl
from petl.methods.conv_adapter import ConvAdapter, slots

torch.set_num_threads(2)
CHANNELS_LAST = torch.channels_last


def adapter_inputs(backbone: str, img: int, batch: int) -> list[tuple[torch.Size, ConvAdapter]]:
    """(input shape, adapter) for every Conv-Adapter of ``backbone`` at this image and batch size."""
    torch.manual_seed(0)
    model = petl.apply(petl.build_backbone(backbone, weights=None, num_classes=2), "conv_adapter").eval()
    seen: list[tuple[torch.Size, ConvAdapter]] = []
    hooks = [s.adapter.register_forward_pre_hook(lambda mod, args: seen.append((args[0].shape, mod)))
             for s in slots(model)]
    with torch.no_grad():
        model(torch.randn(batch, 3, img, img).contiguous(memory_format=CHANNELS_LAST))
    for hook in hooks:
        hook.remove()
    return seen


def step_ms(fn, x: torch.Tensor, reps: int) -> float:
    for _ in range(2):
        fn(x).square().sum().backward()
    start = time.perf_counter()
    for _ in range(reps):
        fn(x).square().sum().backward()
    return (time.perf_counter() - start) / reps * 1e3


def relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def compare(backbone: str, img: int, batch: int, reps: int) -> None:
    print(f"## {backbone}, {img} px, batch {batch}, {reps} timed steps per form (after 2 warm-up)", flush=True)
    total = {"grouped": 0.0, "depthwise+sum": 0.0, "1x1": 0.0}
    for shape, adapter in adapter_inputs(backbone, img, batch):
        conv = adapter.conv1
        x = torch.randn(shape).contiguous(memory_format=CHANNELS_LAST).requires_grad_()
        params = (x, conv.weight, conv.bias)
        grouped, fast = conv(x), adapter.grouped_conv(x)
        upstream = torch.randn_like(grouped)
        grads = zip(torch.autograd.grad(fast, params, upstream), torch.autograd.grad(grouped, params, upstream))
        gap = max([relative_gap(fast, grouped)] + [relative_gap(a, b) for a, b in grads])
        t_grouped = step_ms(conv, x, reps)
        t_fast = step_ms(adapter.grouped_conv, x, reps)
        h = torch.randn(grouped.shape).contiguous(memory_format=CHANNELS_LAST).requires_grad_()
        t_pointwise = step_ms(adapter.conv2, h, reps)
        total["grouped"] += t_grouped
        total["depthwise+sum"] += t_fast
        total["1x1"] += t_pointwise
        print(f"{tuple(shape)} stride {conv.stride[0]} groups {conv.groups}: grouped {t_grouped:7.2f} ms  "
              f"depthwise+sum {t_fast:7.2f} ms  ({t_grouped / t_fast:4.2f}x)  1x1 {t_pointwise:6.2f} ms  "
              f"max relative gap {gap:.1e}", flush=True)
    print("total ms per step (forward + backward, all adapters): "
          + ", ".join(f"{k} {v:.1f}" for k, v in total.items())
          + f"; grouped / depthwise+sum {total['grouped'] / total['depthwise+sum']:.2f}x\n", flush=True)


if __name__ == "__main__":
    compare("efficientnet_lite0", 64, 64, reps=10)
    compare("resnet50", 64, 32, reps=5)
