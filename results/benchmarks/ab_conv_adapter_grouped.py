"""Conv-Adapter's fast CPU forms against the plain ops, on the shapes the adapters really see (channels_last,
2 threads, alone): the grouped k x k conv (Cin -> Cin / adapt_size, groups = Cin / adapt_size) vs its exact
depth-wise form (a depth-wise Cin -> Cin conv, then the sum of each group's adapt_size channels), and the whole
adapter joined to the block's output vs ``ConvAdapter.add_to``.

Run (alone on the cores, ~1 min):
    python results/benchmarks/ab_conv_adapter_grouped.py > results/benchmarks/ab_conv_adapter_grouped.txt

Per adapter (the inputs captured from one forward of the adapted model), forward + backward with one fixed
upstream gradient: conv1 as the grouped conv vs ``depthwise_form`` vs ``ConvAdapter.grouped_conv`` (the depth-wise
form where its size rule expects it to be faster, else the grouped conv), how far the two forms' float32 outputs
and gradients differ (relative to the largest value: the same function, summed in another order); and the whole
adapter joined to the block's output,
``base + conv2(relu(conv1(x))) * scale`` as separate ops ("unfused") vs ``ConvAdapter.add_to`` (the hook's form:
``grouped_conv``, then the 1 x 1 conv, bias, scale and sum as one addmm). Lite0 (generic mode, beside each
conv_dw) at the performance table's 64 px / batch 64 and 224 px / batch 32 with the offline-cpu preset's
adapt_size 16, and at 64 px with the paper's 8; ResNet-50 (resnet mode, beside each conv2) at 64 px / batch 32,
adapt_size 8. The size rule of ``grouped_conv`` (``MIN_DEPTHWISE_PIXELS``, ``MAX_DEPTHWISE_PIXELS_STRIDE_1``) comes
from the "depthwise form" column. The process restarts itself with the steady malloc settings first, as
``benchmarks.run`` and ``benchmarks.performance`` do.
"""
from benchmarks.allocator import allocator_in_effect, restart_with_steady_allocator

if __name__ == "__main__":
    restart_with_steady_allocator()

import time  # noqa: E402  (after the restart: nothing heavy is loaded twice)

import torch  # noqa: E402

import petl  # noqa: E402
from petl.methods.conv_adapter import ConvAdapter, depthwise_form, slots  # noqa: E402

torch.set_num_threads(2)
CHANNELS_LAST = torch.channels_last


def adapter_inputs(backbone: str, img: int, batch: int, adapt_size: int) -> list[tuple[torch.Size, ConvAdapter]]:
    """(input shape, adapter) for every Conv-Adapter of ``backbone`` at this image and batch size."""
    torch.manual_seed(0)
    model = petl.build_backbone(backbone, weights=None, num_classes=2)
    model = petl.apply(model, "conv_adapter", adapt_size=adapt_size).eval()
    seen: list[tuple[torch.Size, ConvAdapter]] = []
    hooks = [s.adapter.register_forward_pre_hook(lambda mod, args: seen.append((args[0].shape, mod)))
             for s in slots(model)]
    with torch.no_grad():
        model(torch.randn(batch, 3, img, img).contiguous(memory_format=CHANNELS_LAST))
    for hook in hooks:
        hook.remove()
    return seen


def step_ms(fn, x: torch.Tensor, reps: int) -> float:
    """Forward + backward (one fixed upstream gradient) of ``fn(x)``, ms per step after 2 warm-up steps."""
    upstream = torch.randn_like(fn(x))
    for _ in range(2):
        fn(x).backward(upstream)
    start = time.perf_counter()
    for _ in range(reps):
        fn(x).backward(upstream)
    return (time.perf_counter() - start) / reps * 1e3


def relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def compare(backbone: str, img: int, batch: int, adapt_size: int, reps: int) -> None:
    print(f"## {backbone}, adapt_size {adapt_size}, {img} px, batch {batch}, {reps} timed steps per form "
          f"(after 2 warm-up)", flush=True)
    total = {"grouped": 0.0, "depthwise form": 0.0, "grouped_conv": 0.0, "unfused": 0.0, "add_to": 0.0}
    for shape, adapter in adapter_inputs(backbone, img, batch, adapt_size):
        conv = adapter.conv1
        x = torch.randn(shape).contiguous(memory_format=CHANNELS_LAST).requires_grad_()
        params = (x, conv.weight, conv.bias)
        grouped, fast = conv(x), depthwise_form(conv, x)
        upstream = torch.randn_like(grouped)
        grads = zip(torch.autograd.grad(fast, params, upstream), torch.autograd.grad(grouped, params, upstream))
        gap = max([relative_gap(fast, grouped)] + [relative_gap(a, b) for a, b in grads])
        t_grouped = step_ms(conv, x, reps)
        t_depthwise = step_ms(lambda inp: depthwise_form(conv, inp), x, reps)
        t_fast = step_ms(adapter.grouped_conv, x, reps)
        base = torch.randn(adapter.output_shape(x)).contiguous(memory_format=CHANNELS_LAST).requires_grad_()
        t_unfused = step_ms(lambda inp: base + adapter.conv2(adapter.act(conv(inp))) * adapter.scale, x, reps)
        t_add_to = step_ms(lambda inp: adapter.add_to(base, inp), x, reps)
        total["grouped"] += t_grouped
        total["depthwise form"] += t_depthwise
        total["grouped_conv"] += t_fast
        total["unfused"] += t_unfused
        total["add_to"] += t_add_to
        print(f"{tuple(shape)} stride {conv.stride[0]} groups {conv.groups}: grouped {t_grouped:7.2f} ms  "
              f"depthwise form {t_depthwise:7.2f} ms  ({t_grouped / t_depthwise:4.2f}x)  "
              f"grouped_conv {t_fast:7.2f} ms  ({t_grouped / t_fast:4.2f}x)  whole adapter + sum: unfused "
              f"{t_unfused:7.2f} ms  add_to {t_add_to:7.2f} ms  ({t_unfused / t_add_to:4.2f}x)  "
              f"max relative gap {gap:.1e}", flush=True)
    print("total ms per step (forward + backward, all adapters): "
          + ", ".join(f"{k} {v:.1f}" for k, v in total.items())
          + f"; grouped / grouped_conv {total['grouped'] / total['grouped_conv']:.2f}x"
          + f"; unfused / add_to {total['unfused'] / total['add_to']:.2f}x\n", flush=True)


if __name__ == "__main__":
    print(f"# malloc settings: {allocator_in_effect()}\n")
    compare("efficientnet_lite0", 64, 64, adapt_size=16, reps=10)     # the offline-cpu preset's adapt_size
    compare("efficientnet_lite0", 224, 32, adapt_size=16, reps=5)
    compare("efficientnet_lite0", 64, 64, adapt_size=8, reps=10)      # the paper's
    compare("resnet50", 64, 32, adapt_size=8, reps=5)
