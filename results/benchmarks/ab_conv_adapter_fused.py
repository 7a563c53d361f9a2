"""Conv-Adapter's fused grouped-conv kernel (petl/csrc/grouped_conv_cpu.cpp) against the forms it replaces on
channels_last CPU inputs, per adapter and in whole training steps beside full fine-tuning.

Run (alone on the cores, ~4 min):
    python results/benchmarks/ab_conv_adapter_fused.py > results/benchmarks/ab_conv_adapter_fused.txt

Part 1, per adapter (inputs of the real shapes, captured from one forward of the adapted model; forward + backward
of conv1 with one fixed upstream gradient; totals over all adapters): oneDNN's grouped conv, the depth-wise form,
the previous rule (depth-wise form within ``MIN_DEPTHWISE_PIXELS`` / ``MAX_DEPTHWISE_PIXELS_STRIDE_1``, else the
grouped conv) and the fused kernel, with the fused kernel's largest float32 gap to the grouped conv (relative to
the largest value). Part 2, whole training steps (forward, cross-entropy, backward, AdamW) in one warm process,
interleaved step by step: full fine-tuning, Conv-Adapter with the fused kernel and Conv-Adapter with the previous
rule (``petl._grouped_conv_native.applies`` patched to False for its steps). EfficientNet-Lite0 (generic mode,
the offline-cpu preset's adapt_size 16) at the performance table's 64 px / batch 64 and 224 px / batch 32, and
ResNet-50 (resnet mode, adapt_size 8) per adapter at 64 px / batch 32. The process restarts itself with the
steady malloc settings first, as ``benchmarks.run`` and ``benchmarks.performance`` do.
"""
from benchmarks.allocator import allocator_in_effect, restart_with_steady_allocator

if __name__ == "__main__":
    restart_with_steady_allocator()

import contextlib  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from petl import _grouped_conv_native  # noqa: E402
from petl.methods.conv_adapter import (MAX_DEPTHWISE_PIXELS_STRIDE_1, MIN_DEPTHWISE_PIXELS,  # noqa: E402
                                       depthwise_form)

sys.path.insert(0, str(Path(__file__).parent))
from ab_conv_adapter_grouped import adapter_inputs, relative_gap, step_ms  # noqa: E402
from ab_conv_adapter_vs_full_ft import interleaved_medians, make_step  # noqa: E402

torch.set_num_threads(2)
CHANNELS_LAST = torch.channels_last


def previous_rule(conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    pixels = x.shape[-2] * x.shape[-1]
    if pixels < MIN_DEPTHWISE_PIXELS or (conv.stride == (1, 1) and pixels > MAX_DEPTHWISE_PIXELS_STRIDE_1):
        return conv(x)
    return depthwise_form(conv, x)


def per_adapter(backbone: str, img: int, batch: int, adapt_size: int, reps: int) -> None:
    print(f"## Per adapter: {backbone}, adapt_size {adapt_size}, {img} px, batch {batch}, {reps} timed steps "
          f"per form (after 2 warm-up)", flush=True)
    forms = {"grouped": lambda conv, x: conv(x), "depthwise form": depthwise_form, "previous rule": previous_rule,
             "fused": _grouped_conv_native.grouped_conv}
    total = dict.fromkeys(forms, 0.0)
    for shape, adapter in adapter_inputs(backbone, img, batch, adapt_size):
        conv = adapter.conv1
        x = torch.randn(shape).contiguous(memory_format=CHANNELS_LAST).requires_grad_()
        assert _grouped_conv_native.applies(conv, x)
        params = (x, conv.weight, conv.bias)
        fused, grouped = _grouped_conv_native.grouped_conv(conv, x), conv(x)
        upstream = torch.randn_like(grouped)
        grads = zip(torch.autograd.grad(fused, params, upstream), torch.autograd.grad(grouped, params, upstream))
        gap = max([relative_gap(fused, grouped)] + [relative_gap(a, b) for a, b in grads])
        times = {name: step_ms(lambda inp, form=form: form(conv, inp), x, reps) for name, form in forms.items()}
        for name, ms in times.items():
            total[name] += ms
        print(f"{tuple(shape)} stride {conv.stride[0]} groups {conv.groups}: "
              + "  ".join(f"{name} {ms:7.2f}" for name, ms in times.items())
              + f"  previous / fused {times['previous rule'] / times['fused']:4.2f}x  max relative gap {gap:.1e}",
              flush=True)
    print("total ms per step (forward + backward, all adapters): "
          + ", ".join(f"{k} {v:.1f}" for k, v in total.items())
          + f"; previous rule / fused {total['previous rule'] / total['fused']:.2f}x\n", flush=True)


@contextlib.contextmanager
def fused_kernel_off():
    applies = _grouped_conv_native.applies
    _grouped_conv_native.applies = lambda conv, x: False
    try:
        yield
    finally:
        _grouped_conv_native.applies = applies


def whole_steps(img: int, batch: int, warmup: int, rounds: int) -> None:
    full_ft, adapter = make_step("full_ft", img, batch), make_step("conv_adapter", img, batch)

    def previous() -> None:
        with fused_kernel_off():
            adapter()
    cases = {"full_ft": full_ft, "conv_adapter, fused kernel": adapter, "conv_adapter, previous rule": previous}
    median = interleaved_medians(cases, warmup, rounds)
    print(f"## Whole training steps: Lite0, {img} px, batch {batch}: {warmup} warm-up steps each, then {rounds} "
          f"interleaved rounds")
    for name, seconds in median.items():
        print(f"{name:30s} median {seconds * 1e3:7.1f} ms  {batch / seconds:7.1f} img/s  "
              f"vs full_ft {median['full_ft'] / seconds:4.2f}x")
    print(f"fused / previous rule: "
          f"{median['conv_adapter, previous rule'] / median['conv_adapter, fused kernel']:4.2f}x\n", flush=True)


if __name__ == "__main__":
    print(f"# malloc settings: {allocator_in_effect()}\n")
    per_adapter("efficientnet_lite0", 64, 64, adapt_size=16, reps=10)
    per_adapter("efficientnet_lite0", 224, 32, adapt_size=16, reps=5)
    per_adapter("resnet50", 64, 32, adapt_size=8, reps=5)
    whole_steps(64, 64, warmup=3, rounds=15)
    whole_steps(224, 32, warmup=2, rounds=7)
