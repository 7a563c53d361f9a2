"""CPU speed of the methods on ResNet-50 (batch 32, 64 px, 7 classes): training step and merged inference.

Run (results in results/benchmarks/README.md):
    pytest tests/benchmarks -m benchmark --benchmark-only --benchmark-enable -p no:cacheprovider -o addopts="" \
        --benchmark-json results/benchmarks/cpu_resnet50_64px.json
Check the project's targets (merged LoRA-C inference >= 0.98x plain; LoRA-C training >= 1.2x full FT and >= 0.9x
peft LoRA at the matched budget) on that file:
    python -m tests.benchmarks.targets results/benchmarks/cpu_resnet50_64px.json
"""

from __future__ import annotations

import time
from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import petl
from petl.methods.lora_c import LoRAConv2d, applicable_forms
from petl.methods.peft_lora import matched_peft_rank

pytestmark = pytest.mark.benchmark

BATCH, SIZE, CLASSES, LORA_RANK = 32, 64, 7, 4
ROUNDS, WARMUP = 3, 1
WARM_CPU_S = 3.0


def _model() -> nn.Module:
    torch.manual_seed(0)
    return petl.build_backbone("resnet50", weights=None, num_classes=CLASSES)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(BATCH, 3, SIZE, SIZE, generator=g), torch.randint(0, CLASSES, (BATCH,), generator=g)


@pytest.fixture(scope="module", autouse=True)
def _warm_cpu() -> None:
    """Warm the CPU up before the first timed case: a cold process runs its first seconds 20-30 % slower (it had
    made full_ft, the first case, look 1.3x slower than in an interleaved A/B)."""
    model, (x, _) = _model().eval(), _batch()
    start = time.perf_counter()
    with torch.inference_mode():
        while time.perf_counter() - start < WARM_CPU_S:
            model(x)


def _train_step(model: nn.Module) -> Callable[[], None]:
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    x, y = _batch()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return step


def _peft_rank() -> int:
    return matched_peft_rank(_model(), LORA_RANK)


TRAIN_CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "full_ft": ("full_ft", {}),
    "linear_probe": ("linear_probe", {}),
    "bitfit": ("bitfit", {}),
    "peft_lora_matched": ("peft_lora", {"rank": "matched"}),
    "lora_c_materialize": ("lora_c", {"rank": LORA_RANK, "form": "materialize"}),
    "lora_c_auto": ("lora_c", {"rank": LORA_RANK, "form": "auto"}),
    "conv_adapter": ("conv_adapter", {}),                      # the paper's adapt_size 8: 217,631 trainable
    "conv_adapter_matched": ("conv_adapter", {"adapt_size": 4}),  # 375,287: the adapt_size nearest LoRA-C r4's 452,103
}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_bench_train_step(benchmark, case):
    method, options = TRAIN_CASES[case]
    if options.get("rank") == "matched":
        options = {**options, "rank": _peft_rank()}
    model = petl.apply(_model(), method, **options)
    benchmark.extra_info.update({"method": method, "options": options, "batch": BATCH, "size": SIZE,
                                 "trainable": petl.trainable_parameters(model), "threads": torch.get_num_threads()})
    benchmark.pedantic(_train_step(model), rounds=ROUNDS, iterations=1, warmup_rounds=WARMUP)


@pytest.mark.parametrize("case", ["plain", "lora_c_merged"])
def test_bench_inference(benchmark, case):
    model = _model()
    if case == "lora_c_merged":
        petl.apply(model, "lora_c", rank=LORA_RANK)
        with torch.no_grad():
            for layer in model.modules():
                if isinstance(layer, LoRAConv2d):
                    layer.lora_B.normal_(0, 0.01)
        assert petl.merge(model) == 52
    model.eval()
    x, _ = _batch()
    benchmark.extra_info.update({"batch": BATCH, "size": SIZE, "threads": torch.get_num_threads()})

    def infer() -> None:
        with torch.inference_mode():
            model(x)
    benchmark.pedantic(infer, rounds=ROUNDS + 2, iterations=1, warmup_rounds=WARMUP)


# single-layer forward+backward of each exact LoRA-C form at ResNet-50 / 64 px shapes: the evidence for ``auto``
CONV_CASES = {"1x1_256-64_16px": (256, 64, 1, 1, 16), "1x1_1024-256_4px": (1024, 256, 1, 1, 4),
              "1x1_512-2048_2px": (512, 2048, 1, 1, 2), "3x3_96-96_16px": (96, 96, 3, 1, 16)}


@pytest.mark.parametrize("form", ["materialize", "branch", "grouped"])
@pytest.mark.parametrize("case", list(CONV_CASES))
def test_bench_lora_c_single_conv_forms(benchmark, case, form):
    cin, cout, k, stride, hw = CONV_CASES[case]
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=False).requires_grad_(False)
    if form not in applicable_forms(conv):
        pytest.skip(f"form {form} does not apply to {case}")
    layer = LoRAConv2d(conv, rank=LORA_RANK, form=form)
    x = torch.randn(BATCH, cin, hw, hw, requires_grad=True)
    benchmark.extra_info.update({"case": case, "form": form})
    benchmark.pedantic(lambda: layer(x).sum().backward(), rounds=10, iterations=1, warmup_rounds=2)
