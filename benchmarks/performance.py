"""Performance report: per-method training / inference throughput and peak memory on one backbone.

    python -m benchmarks.performance --backbone resnet50 --img-size 64,224 --batch-size 32 --device auto
    python -m benchmarks.performance --render-only --out results/performance-cpu    # Markdown from the JSON

Output goes to ``runs/performance-<device>/performance.{csv,json}`` and ``runs/performance-<device>.md`` by
default (git-ignored; one per device, so a GPU measurement never overwrites the CPU one; an OUT holding another
device's measurement is refused), and ``runs/performance.md`` is rebuilt with every device's report side by
side. The committed report is written only when asked for: ``--out results/performance-cpu`` (run_all.sh).
``--render-only`` rebuilds the Markdown (and CSV) from an existing performance.json
without measuring anything.

Each (method, image size) is measured in a fresh spawned process, so the CPU peak resident memory of one method
is not inflated by the allocations of the one before it. The process starts with glibc malloc's mmap and trim
thresholds fixed high (``benchmarks.allocator.steady_allocator_env``), so its steps reuse their buffers as a
long-lived process's do; a fresh process with glibc's defaults pays page faults on every step, which had made
bare steps slower than the same steps inside a sweep. A training step is the engine's step: forward, loss,
backward and an AdamW step over the method's trainable set (one learning rate, no method regulariser: those
cost nothing measurable), or the method's own trainer when it has one (MetaLR's look-ahead + meta step + real
step). Inference is the eval-mode forward
after ``petl.merge`` (so merging methods run at the plain backbone's cost). On CUDA: bf16 autocast. Memory
layout and compilation as the engine decides them (``--memory-format``, ``--compile``; ``benchmarks.layout``).
Random-init weights (speed does not depend on the values).

Each row also carries the step's FLOPs split into forward / input-gradient / weight-gradient
(``benchmarks.flops``, counted on the very step that is timed; per-layer tables in OUT/flops/) and the FLOP
ratio to full fine-tuning -- the method's own compute bound -- next to the measured ratio. With
``--records SWEEP_OUT`` the report adds "sweep / bare": the training img/s inside that sweep's records of the
same machine and commit over this bare step (``benchmarks.sweep_efficiency``).

The physical bound the ratios are read against: a frozen backbone still needs the input gradients
(activation gradients) through every layer below the highest trainable one, but no weight gradients, so its
step costs about 2/3 of full fine-tuning's FLOPs (forward 1 + input-grad 1 + weight-grad 1 units for full FT,
forward 1 + input-grad 1 for a frozen backbone with adapters everywhere), i.e. a speed-up of at most ~1.5x.
The linear probe needs no backward through the backbone at all: its step is one forward, the floor.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

DEFAULT_METHODS = ("linear_probe", "full_ft", "bitfit", "peft_lora", "lora_c", "conv_adapter", "gpaf", "metalr",
                   "ssf", "norm_tuning", "partial_ft", "peft_dora", "peft_loha", "peft_lokr", "peft_oft")
# peft_boft is left out of the default list: peft builds two dense D x D matrices per conv on every forward
# (~1.6 TFLOP per ResNet-50 forward); measure it with --methods peft_boft on a GPU or on Lite0.
DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {"lora_c": {"rank": 4, "alpha": 8},
                                               "peft_lora": {"rank": 6, "alpha": 12},   # matched_peft_rank(r50, 4)
                                               "gpaf": {"kind": "prelu"},
                                               # the others at LoRA-C r=4's ResNet-50 budget (matched_options)
                                               "peft_dora": {"rank": 5, "alpha": 10},
                                               "peft_loha": {"rank": 3, "alpha": 6},
                                               "peft_lokr": {"rank": 92, "alpha": 184, "decompose_factor": 8},
                                               "peft_oft": {"block_size": 32},
                                               "peft_boft": {"block_size": 8},
                                               "partial_ft": {"stages": 1}}


def method_options(preset: str | None) -> dict[str, dict[str, Any]]:
    """Options per method: ``DEFAULT_OPTIONS``, with a preset's ``[methods.NAME] options`` in their place.

    Why: the defaults are matched to LoRA-C's ResNet-50 budget and some do not apply to other backbones (OFT's
    block size, GPAF's ResNet positions); a sweep's own options make its sweep / bare column like for like."""
    if preset is None:
        return dict(DEFAULT_OPTIONS)
    from benchmarks.sweep import load_preset
    tables = load_preset(preset).get("methods", {})
    return {**DEFAULT_OPTIONS, **{m: dict(t["options"]) for m, t in tables.items() if "options" in t}}


BOUND_FROZEN = 1.5   # full-FT time / frozen-backbone time when no weight gradients are computed (3 units vs 2)
FAR_FROM_BOUND = 0.9    # below this share of its bound a method is "far from the bound" (issue 12's target)

BOUND_TEXT = (
    "**The physical bound.** A training step of full fine-tuning costs about 3 units per layer: the forward (1), "
    "the input (activation) gradients (1) and the weight gradients (1). A frozen backbone with trainable parts "
    "spread through it still needs the forward and the input gradients through every layer below the highest "
    "trainable one, but no weight gradients: about 2 units, i.e. 2/3 of full fine-tuning's FLOPs, so a "
    f"parameter-efficient method trains at most ~{BOUND_FROZEN}x as fast as full fine-tuning (the `bound` column "
    "gives each method's share of that). The linear probe needs no backward through the backbone at all (one "
    "forward, the head's step): it is the floor of training cost, not a target for the others. The 3-unit split "
    "is approximate: on CPU a convolution's weight gradient can cost more than its input gradient, so skipping it "
    "can save a little more than a third, and rows above 100 % are within that and the run-to-run noise.")

FLOP_TEXT = (
    "**Each method's own bound.** `FLOP bound` is full fine-tuning's FLOPs per training step over the method's "
    "(`benchmarks.flops`: torch's per-op formulas, convolutions and matmuls, counted on the step that is timed and "
    "split into forward / input-gradient / weight-gradient; element-wise work counts 0): the speed-up it would "
    "have if every FLOP cost the same. `bound` says what share of it the measured ratio reaches; below ~90 % the "
    "difference is work the FLOP count does not see (memory traffic of element-wise ops, optimiser state, "
    "BatchNorm statistics, poorly vectorised thin convolutions).")
SWEEP_TEXT = (
    "**Sweep / bare.** Training img/s inside the sweep records in {records} of the same machine, commit, "
    "backbone, image size and batch size (median over runs), over the bare step above; the target is >= 0.85. "
    "The CPU share is the median of the runs' `efficiency.machine_load.cpu_share` (process CPU seconds / (wall x "
    "threads)): well below 1 means the sweep shared its cores. The probe is the median of the runs' host probe "
    "(`benchmarks.load.host_probe_ms`, a fixed conv block timed at each run's start and end) against this row's: "
    "a host that was slower when the sweep ran (invisible to the CPU share; other tenants on its cores, say) "
    "shows as a larger sweep probe, and the ratio is then not the runner's doing. * = the sweep ran the method "
    "with other options than this measurement (e.g. the preset's GPAF spline, here the default).")

# Why a method's step costs what it does, relative to the bound (documentation for the table; the measurement
# itself is the same for every method).
COST_NOTES: dict[str, str] = {
    "full_ft": "the reference: forward, input gradients and weight gradients of every layer, AdamW over all weights.",
    "linear_probe": "forward only through the backbone (no backward), plus the head's step: the floor.",
    "bitfit": "frozen convs, so no conv weight gradients; bias / BN-affine gradients are cheap reductions over "
              "activations. Close to the bound by construction.",
    "gpaf": "frozen convs; the learnable activations add element-wise work in forward and backward and their "
            "parameter gradients are reductions, so it sits near the bound.",
    "lora_c": "its default form (`auto`) materialises W + (B A) for every 3x3 conv and for most 1x1 convs (the "
              "rank-r branch is slower on CPU except on the smallest feature maps), so autograd computes the full "
              "conv weight gradient dW and projects it onto A and B: the weight-gradient unit the bound assumes is "
              "saved is paid again, plus the matmuls that build B A.",
    "peft_lora": "HF peft adds a separate branch per adapted conv (k x k conv Cin -> r, then 1x1 r -> Cout, nothing "
                 "materialised): few FLOPs, but each branch re-reads the conv's full-resolution input activation in "
                 "the forward and twice in the backward (input and lora_A weight gradients) with thin, poorly "
                 "vectorised convs, so on CPU it is memory-bound and costs more than its FLOPs; the gap grows with "
                 "the image size.",
    "conv_adapter": "a parallel adapter (k x k conv Cin -> Cin/adapt_size, ReLU, 1x1 back, per-channel scale) beside "
                    "conv2 of every block plus an extra BN: extra forward and backward work at full resolution in "
                    "every block, again memory-bound on CPU.",
    "metalr": "trains every weight (so full fine-tuning's 3 units are its floor) and adds per step a look-ahead "
              "forward on a validation batch through theta - alpha * g (torch.func.functional_call, buffers "
              "cloned) and a backward through that look-ahead to the per-layer rates (input and weight-gradient "
              "work again): roughly twice full fine-tuning's work, hence well below 1x. It is not a "
              "parameter-efficient method in cost, only in what it tunes (the rates).",
    "two_stage": "head-only epochs cost like the linear probe, the full epochs like full fine-tuning.",
    "ssf": "frozen convs; a per-channel scale and shift folded into each BatchNorm's affine (the BN runs with "
           "gamma * w, gamma * b + beta), so the extra work is two element-wise products per BN and their "
           "reductions in the backward; merged, it is the plain network.",
    "norm_tuning": "the same trainable set as BitFit on ResNet-50 and Lite0 (no conv biases), so the same cost.",
    "partial_ft": "full weight gradients in the trained top stage(s) only; below them neither weight nor input "
                  "gradients are needed (the backward stops at the lowest trainable layer), so with stages=1 it "
                  "can beat the frozen-backbone bound.",
    "peft_dora": "peft's LoRA branch plus the DoRA magnitude: every step builds W + B A to take its "
                 "per-output-channel norm (detached, as the DoRA paper recommends) and rescales the base and LoRA "
                 "outputs, extra element-wise work at full resolution on top of LoRA's branch.",
    "peft_loha": "peft builds the Hadamard product (W1a W1b) * (W2a W2b) as a full-size delta and runs a second "
                 "conv with it: one extra full conv forward and backward per adapted layer.",
    "peft_lokr": "peft builds the Kronecker product W1 kron W2 as a full-size delta and runs a second conv with it, "
                 "as LoHa does.",
    "peft_oft": "peft rotates the unfolded input patches with the block-diagonal R (1 x 1 convs only here): an "
                "extra batched matmul over every input activation of the adapted convs, memory-bound on CPU.",
    "peft_boft": "peft multiplies two dense D x D permutation matrices with the block-diagonal rotation on every "
                 "forward (O(D^3) per conv, D = Cin k k up to 4608 on ResNet-50), far more work than the convs.",
}


@dataclass(frozen=True)
class Case:
    method: str
    options: dict[str, Any]
    backbone: str
    img_size: int
    batch_size: int
    num_classes: int
    steps: int
    warmup: int
    device: str
    warmup_s: float = 3.0
    memory_format: str = "auto"
    compile: bool = False


def _batch(case: Case, device: Any, layout: str) -> tuple[Any, Any]:
    import torch

    from benchmarks.layout import prepare_input
    g = torch.Generator().manual_seed(0)
    x = torch.randn(case.batch_size, 3, case.img_size, case.img_size, generator=g)
    y = torch.randint(0, case.num_classes, (case.batch_size,), generator=g)
    return prepare_input(x, layout).to(device), y.to(device)


def _trainer(case: Case, model: Any, x: Any, y: Any) -> Any:
    """The method's own trainer (hook) or a plain AdamW step on its trainable parameters."""
    import itertools

    import torch

    import petl
    hook = petl.get_method(case.method).trainer_factory
    if hook is not None:
        options = petl.make_options(case.method, case.options)
        return hook(model, options, lr=1e-4, val_batches=itertools.repeat((x, y)), grad_scaler=None)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    class _Plain:
        def train_step(self, xb: Any, yb: Any, loss_fn: Any) -> float:
            loss = loss_fn(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return float(loss.detach())

    return _Plain()


def _timed(step: Any, case: Case, device: Any, done: int = 0) -> Any:
    """Warm up for ``case.warmup`` steps *and* at least ``case.warmup_s`` seconds, then time ``case.steps`` steps.

    ``done``: steps already run (the FLOP-counted step is the first warm-up step; the seconds start after it).

    A step count alone is not enough on CPU: a cold process runs its first seconds 20-30 % slower (measured:
    the same ResNet-50 forward at 290 img/s first, 370 img/s a few seconds later), which had made the fastest
    method's rows (the linear probe, whose warm-up steps take a fraction of a second) look slow.
    """
    from benchmarks.measure import Throughput
    t0 = time.perf_counter()
    while done < case.warmup or time.perf_counter() - t0 < case.warmup_s:
        step()
        done += 1
    meter = Throughput(device, warmup=0)
    for _ in range(case.steps):
        meter.start_batch()
        step()
        meter.end_batch(case.batch_size)
    return meter


def measure(case: Case) -> dict[str, Any]:
    """Train and inference throughput plus peak memory of one method (runs in its own process)."""
    import contextlib

    import torch
    import torch.nn.functional as F

    import petl
    from benchmarks.flops import count_step
    from benchmarks.layout import prepare_model, resolve_memory_format
    from benchmarks.load import host_probe_ms
    from benchmarks.measure import current_rss_bytes, peak_memory

    torch.manual_seed(0)
    device = torch.device(case.device)
    probe = host_probe_ms()     # how fast the host was for this row (compared with the sweep records' probes)
    baseline = current_rss_bytes() if device.type == "cpu" else 0   # interpreter + libraries, before the model
    model = petl.build_backbone(case.backbone, weights=None, num_classes=case.num_classes)
    petl.apply(model, case.method, **case.options)
    layout = resolve_memory_format(case.memory_format, case.backbone, device)
    model = prepare_model(model, layout)
    model.to(device).train()
    x, y = _batch(case, device, layout)
    trainer = _trainer(case, model, x, y)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" \
        else contextlib.nullcontext

    def train_step() -> None:
        with autocast():
            trainer.train_step(x, y, F.cross_entropy)

    def infer_step() -> None:
        with autocast():
            model(x)

    with peak_memory(device) as train_peak:
        flops = count_step(model, train_step)      # one real step (the first warm-up step), before any compilation
        if case.compile:
            model.compile()
        train = _timed(train_step, case, device, done=1)
    probe = min(probe, host_probe_ms())         # as benchmarks.load.probe_ms: the warm reading counts
    merged = petl.merge(model)
    model.eval()
    with peak_memory(device) as infer_peak, torch.inference_mode():
        infer = _timed(infer_step, case, device)
    return {"method": case.method, "img_size": case.img_size, "batch_size": case.batch_size,
            "trainable_params": petl.trainable_parameters(model), "merged_layers": merged,
            "train_images_per_s": train.images_per_s(), "train_step_s": train.mean_batch_s(),
            "infer_images_per_s": infer.images_per_s(),
            "train_peak_mb": (train_peak.peak_bytes - baseline) / 2**20,
            "infer_peak_mb": (infer_peak.peak_bytes - baseline) / 2**20, "baseline_mb": baseline / 2**20,
            "memory_kind": train_peak.kind, "threads": torch.get_num_threads(), "memory_format": layout,
            "compile": case.compile, "host_probe_ms": probe, **flops.as_row(), "flops_per_layer": flops.layer_rows()}


def measure_isolated(case: Case) -> dict[str, Any]:
    """:func:`measure` in a fresh spawned process (clean peak memory, steady allocator); its exception is
    re-raised here."""
    from benchmarks.allocator import steady_allocator_env
    ctx = multiprocessing.get_context("spawn")
    with steady_allocator_env(), ctx.Pool(1) as pool:
        return pool.apply(measure, (case,))


def add_ratios(df: pd.DataFrame) -> pd.DataFrame:
    """Throughput ratios to full fine-tuning and to the linear probe, per image size; with FLOP counts (rows
    measured since they were added), the FLOP bound ``flop_bound_vs_full_ft`` = full FT's FLOPs / the method's and
    ``measured_vs_bound`` = measured ratio / that bound."""
    out = []
    for _, g in df.groupby("img_size", sort=True):
        g = g.copy()
        by = g.set_index("method")
        for ref in ("full_ft", "linear_probe"):
            if ref in by.index:
                g[f"train_vs_{ref}"] = g["train_images_per_s"] / by.loc[ref, "train_images_per_s"]
                g[f"train_mem_vs_{ref}"] = g["train_peak_mb"] / by.loc[ref, "train_peak_mb"]
        if "gflop_step" in g and "full_ft" in by.index and pd.notna(by.loc["full_ft", "gflop_step"]):
            g["flop_bound_vs_full_ft"] = by.loc["full_ft", "gflop_step"] / g["gflop_step"]
            g["measured_vs_bound"] = g["train_vs_full_ft"] / g["flop_bound_vs_full_ft"]
            # full FT's eval model is the plain backbone: merged methods should infer at >= 0.98x of it
            g["infer_vs_plain"] = g["infer_images_per_s"] / by.loc["full_ft", "infer_images_per_s"]
        out.append(g)
    return pd.concat(out, ignore_index=True)


def verdict(row: pd.Series) -> str:
    """Where a method stands against its FLOP bound when counted, else the frozen-backbone bound (~1.5x)."""
    if row["method"] == "full_ft":
        return "reference"
    if pd.notna(row.get("measured_vs_bound", float("nan"))):
        return f"{row['measured_vs_bound']:.0%} of its FLOP bound"
    if row["method"] == "linear_probe":
        return "floor (forward only)"
    ratio = row.get("train_vs_full_ft")
    if ratio is None or pd.isna(ratio):
        return ""
    return f"{ratio / BOUND_FROZEN:.0%} of the ~{BOUND_FROZEN}x bound"


def _times(ratio: float | None) -> str:
    """A ratio cell ("1.23x"), empty when its reference row was not measured (e.g. --methods without linear_probe)."""
    return "" if ratio is None or pd.isna(ratio) else f"{ratio:.2f}x"


def to_markdown(df: pd.DataFrame, meta: dict[str, Any]) -> str:
    """The report: how it was measured, the bound it is read against, one table per image size, and why each
    method far from the bound is there."""
    lines = [f"# Performance: {meta['backbone']}, per method", "",
             f"Made with `{meta['command']}` on {meta['device_name']} ({meta['device']}, {meta['precision']}, "
             f"{meta['threads']} threads), {meta['date']}. Each row is a fresh process"
             + (" (glibc malloc: " + ", ".join(f"{k}={v}" for k, v in meta["allocator"].items())
                + ": steps reuse their buffers, as in a long-lived process)" if meta.get("allocator") else "") + "; "
             f"{meta['steps']} measured steps after at least {meta['warmup']} warm-up step(s) and "
             f"{meta.get('warmup_s', 0):g} s of warm-up. Peak memory: "
             f"{meta['memory_kind']}" + (" minus the process's resident memory before the model was built "
                                         "(interpreter + libraries)" if meta['device'] == 'cpu' else "")
             + ".", "", BOUND_TEXT, ""]
    has_flops = "flop_bound_vs_full_ft" in df
    has_sweep = "sweep_vs_bare" in df
    if has_flops:
        lines += [FLOP_TEXT, ""]
    if has_sweep:
        lines += [SWEEP_TEXT.format(records=meta.get("records", "the records")), ""]
    nan = float("nan")
    for size, g in df.groupby("img_size", sort=True):
        head = "| method | trainable | train img/s | vs full_ft |"
        rule = "|---|---:|---:|---:|"
        if has_flops:
            head += " FLOP bound | GFLOP/step fwd / in-grad / w-grad |"
            rule += "---:|---:|"
        if has_sweep:
            head += " sweep img/s | sweep / bare |"
            rule += "---:|---:|"
        lines += [f"## {size} px, batch {int(g['batch_size'].iloc[0])}", "",
                  head + " vs linear_probe | infer img/s (merged)" + (" | infer vs plain" if has_flops else "")
                  + " | train peak MB | vs full_ft mem | bound |",
                  rule + "---:|---:|" + ("---:|" if has_flops else "") + "---:|---:|---|"]
        for _, r in g.iterrows():
            cells = (f"| {r['method']} | {int(r['trainable_params']):,} | {r['train_images_per_s']:.1f} | "
                     f"{_times(r.get('train_vs_full_ft'))} |")
            if has_flops:
                cells += (f" {_times(r.get('flop_bound_vs_full_ft'))} | {r.get('gflop_forward', nan):.1f} / "
                          f"{r.get('gflop_input_grad', nan):.1f} / {r.get('gflop_weight_grad', nan):.1f} |")
            if has_sweep:
                sweep = r.get("sweep_images_per_s", nan)
                if pd.isna(sweep):
                    cells += " | |"
                else:
                    flag = "*" if str(r.get("options_differ")) == "True" else ""
                    share, probe = r.get("sweep_cpu_share", nan), r.get("sweep_probe_ms", nan)
                    notes = ([f"cpu share {share:.2f}"] if pd.notna(share) else []) + \
                        ([f"probe {probe:.1f} vs {r['host_probe_ms']:.1f} ms"]
                         if pd.notna(probe) and pd.notna(r.get("host_probe_ms", nan)) else [])
                    cells += (f" {sweep:.1f}{flag} | {r.get('sweep_vs_bare', nan):.2f}"
                              + (f" ({', '.join(notes)})" if notes else "") + " |")
            lines.append(cells + f" {_times(r.get('train_vs_linear_probe'))} | "
                         f"{r['infer_images_per_s']:.1f}{' (merged)' if r['merged_layers'] else ''} | "
                         + (f"{_times(r.get('infer_vs_plain'))} | " if has_flops else "") +
                         f"{r['train_peak_mb']:.0f} | {_times(r.get('train_mem_vs_full_ft'))} | "
                         f"{verdict(r)} |")
        lines.append("")
    lines += explanations(df)
    return "\n".join(lines)


def explanations(df: pd.DataFrame) -> list[str]:
    """A "why" section: every method with its ratios, "far from the bound" when at some size it reaches less than
    ``FAR_FROM_BOUND`` of its bound, and the cost structure that explains where it stands. The bound is the
    method's own FLOP bound where FLOPs were counted (``measured_vs_bound``), else the generic frozen-backbone
    ~1.5x."""
    if "train_vs_full_ft" not in df:
        return []
    lines = ["## Why each method stands where it does", ""]
    for method, g in df.groupby("method", sort=False):
        ratios = ", ".join(f"{r:.2f}x at {s} px" for s, r in zip(g["img_size"], g["train_vs_full_ft"]))
        if "measured_vs_bound" in g and g["measured_vs_bound"].notna().all():
            share, bound = g["measured_vs_bound"].min(), "its FLOP bound"
        else:
            share, bound = (g["train_vs_full_ft"] / BOUND_FROZEN).min(), f"the ~{BOUND_FROZEN}x bound"
        if method in ("full_ft", "linear_probe"):
            head = f"* **{method}** ({ratios} of full fine-tuning):"
        elif share < FAR_FROM_BOUND:
            head = f"* **{method}** ({ratios}; down to {share:.0%} of {bound}), far from the bound:"
        else:
            head = f"* **{method}** ({ratios}; at least {share:.0%} of {bound}), near the bound:"
        lines.append(f"{head} {COST_NOTES.get(method, 'no cost note for this method; see its module docstring.')}")
    return lines + [""]


def _positive_ints(text: str) -> list[int]:
    """argparse type: "64,224" -> [64, 224]."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of integers (e.g. 64,224)") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive integers (e.g. 64,224)")
    return values


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.performance", description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="resnet50", help="backbone measured (default resnet50; random init)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help=f"comma list of methods, each in its own process (default {','.join(DEFAULT_METHODS)})")
    p.add_argument("--img-size", type=_positive_ints, default=[64, 224], help="comma list (default 64,224)")
    p.add_argument("--batch-size", type=_positive_ints, default=[32],
                   help="one value, or one per --img-size (comma list; default 32)")
    p.add_argument("--num-classes", type=int, default=7, help="classes of the head (default 7)")
    p.add_argument("--steps", type=int, default=5, help="timed training / inference steps per case (default 5)")
    p.add_argument("--warmup", type=int, default=2,
                   help="warm-up steps (at least; see --warmup-seconds) (default 2)")
    p.add_argument("--warmup-seconds", type=float, default=3.0,
                   help="warm up for at least this long before timing (a cold CPU is 20-30%% slower at first) "
                        "(default 3)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto = cuda when available, else cpu (default auto)")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for performance.csv / .json; the Markdown goes to OUT.md "
                        "(default runs/performance-<device>, git-ignored; the committed one: "
                        "--out results/performance-<device>)")
    p.add_argument("--render-only", action="store_true",
                   help="rebuild OUT.md and OUT/performance.csv from OUT/performance.json; measure nothing")
    p.add_argument("--memory-format", choices=("auto", "channels_last", "contiguous"), default="auto",
                   help="layout of model and batch (default auto: benchmarks/layout.py's per-backbone, "
                        "per-device choice)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model in place (default off; compile "
                                                          "time is spent in the warm-up, not in the timed steps)")
    p.add_argument("--preset", default=None,
                   help="take each method's options from this preset's [methods.NAME] tables (e.g. offline-cpu, to "
                        "time the options its sweep ran; methods it leaves alone keep the defaults); default: the "
                        "ResNet-50 budget-matched options of DEFAULT_OPTIONS")
    p.add_argument("--records", type=Path, default=None,
                   help="a sweep output folder (with runs/): add the sweep / bare column from its records of the "
                        "same machine and commit (default none: no such column)")
    return p


PER_DEVICE_PREFIX = "performance-"   # OUT_ROOT/performance-<device>/: one folder per device kind


def default_out(device: str) -> Path:
    """One output per device kind, so measurements on different machines never overwrite each other."""
    return Path("runs") / f"{PER_DEVICE_PREFIX}{device}"   # never the committed results/ unless --out says so


def write_outputs(out: Path, df: pd.DataFrame, meta: dict[str, Any], failures: list[str]) -> str:
    """performance.csv in OUT and the Markdown report in OUT.md (plus the all-devices index next to them when OUT
    is a ``performance-<device>`` folder); returns the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    df = with_sweep(df, meta)
    df.to_csv(out / "performance.csv", index=False)
    md = render(df, meta, failures)
    out.with_suffix(".md").write_text(md + "\n")
    if out.name.startswith(PER_DEVICE_PREFIX):
        write_index(out.parent)
    return md


def with_sweep(df: pd.DataFrame, meta: dict[str, Any]) -> pd.DataFrame:
    """``df`` plus the sweep / bare columns when ``meta["records"]`` names a sweep folder that exists."""
    from benchmarks.sweep_efficiency import add_sweep_ratio, load_records, sweep_throughput
    folder = meta.get("records")
    if not folder or not (Path(folder) / "runs").is_dir() or "sweep_vs_bare" in df:
        return df
    return add_sweep_ratio(df, sweep_throughput(load_records(Path(folder)), meta))


def write_layer_flops(out: Path, rows: list[dict[str, Any]]) -> None:
    """OUT/flops/<size>px-<method>.csv: each measured row's per-layer FLOP split (popped from the row)."""
    for row in rows:
        layers = row.pop("flops_per_layer", None)
        if layers:
            (out / "flops").mkdir(parents=True, exist_ok=True)
            pd.DataFrame(layers).to_csv(out / "flops" / f"{row['img_size']}px-{row['method']}.csv", index=False)


def render(df: pd.DataFrame, meta: dict[str, Any], failures: list[str]) -> str:
    """One device's Markdown report, with the cases that failed (e.g. out of memory) listed at the end."""
    md = to_markdown(df, meta)
    if failures:
        md += "\n## Cases that failed\n\n" + "\n".join(f"* {f}" for f in failures) + "\n"
    return md


def write_index(folder: Path) -> Path:
    """``folder/performance.md``: every device's report found in ``folder/performance-*/performance.json``, one
    section each (CPU and GPU measurements side by side without one overwriting the other)."""
    sections, devices = [], set()
    for path in sorted(folder.glob(f"{PER_DEVICE_PREFIX}*/performance.json")):
        data = json.loads(path.read_text())
        devices.add(data["meta"]["device"])
        body = render(with_sweep(add_ratios(pd.DataFrame(data["rows"])), data["meta"]), data["meta"],
                      list(data.get("failures", [])))
        body = "\n".join("#" + line if line.startswith("#") else line for line in body.splitlines())
        sections.append(f"{body}\n\nSource: [{path.parent.name}.md]({path.parent.name}.md), "
                        f"[{path.parent.name}/performance.json]({path.parent.name}/performance.json).")
    lines = ["# Performance report", "",
             f"One section per device measured, rebuilt from {folder}/{PER_DEVICE_PREFIX}<device>/performance.json by "
             f"`python -m benchmarks.performance` (or `--render-only`). "
             + ("No GPU measurement is here yet: run the same command on a machine with CUDA (`--device cuda`)."
                if "cuda" not in devices else ""), ""]
    index = folder / "performance.md"
    index.write_text("\n".join(lines + sections) + "\n")
    return index


def render_only(out: Path, records: Path | None = None) -> int:
    """Rebuild the Markdown and CSV from ``OUT/performance.json`` (no measurement)."""
    path = out / "performance.json"
    if not path.is_file():
        print(f"error: {path} not found; pass the --out folder of an earlier measurement", file=sys.stderr)
        return 2
    try:
        data = json.loads(path.read_text())
        rows, meta, failures = data["rows"], data["meta"], list(data.get("failures", []))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        print(f"error: {path} is not a performance.json written by this tool ({exc}); re-measure", file=sys.stderr)
        return 2
    if not rows:
        print(f"error: {path} holds no measured rows; re-measure", file=sys.stderr)
        return 2
    if records is not None:
        meta = {**meta, "records": str(records)}
    md = write_outputs(out, add_ratios(pd.DataFrame(rows)), meta, failures)
    print(md)
    print(f"\nwrote {out.with_suffix('.md')} and {out / 'performance.csv'} from {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    import torch

    import petl
    from benchmarks.environment import collect_environment
    from benchmarks.allocator import steady_allocator_settings
    args = get_parser().parse_args(argv)
    if args.render_only:
        kind = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        return render_only(args.out or default_out(kind), args.records)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in petl.available_methods()]
    sizes, batches = args.img_size, args.batch_size
    if unknown:
        print(f"error: unknown method(s) {', '.join(unknown)}; available: {', '.join(petl.available_methods())}",
              file=sys.stderr)
        return 2
    if len(batches) not in (1, len(sizes)):
        print("error: --batch-size takes one value or one per --img-size", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available; use --device cpu or auto", file=sys.stderr)
        return 2
    from benchmarks.sweep import SweepError
    try:
        options = method_options(args.preset)
    except SweepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    out = args.out or default_out(device)
    previous = out / "performance.json"
    if previous.is_file():
        try:
            earlier = json.loads(previous.read_text()).get("meta", {}).get("device")
        except (json.JSONDecodeError, AttributeError):
            earlier = None
        if earlier is not None and earlier != device:
            print(f"error: {out} holds {earlier} measurements and this run measures {device}; pass another --out "
                  f"(default {default_out(device)})", file=sys.stderr)
            return 2
    rows, failures = [], []
    for size, batch in zip(sizes, batches * len(sizes) if len(batches) == 1 else batches):
        for method in methods:
            case = Case(method, options.get(method, {}), args.backbone, size, batch, args.num_classes,
                        args.steps, args.warmup, device, args.warmup_seconds, args.memory_format, args.compile)
            t0 = time.time()
            try:
                row = measure_isolated(case)
            except Exception as exc:  # e.g. out of memory at 224 px: reported in the table, the exit code says so
                failures.append(f"{size}px {method}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                print(f"{failures[-1]}", file=sys.stderr, flush=True)
                continue
            print(f"{size}px {method}: train {row['train_images_per_s']:.1f} img/s, infer "
                  f"{row['infer_images_per_s']:.1f} img/s, peak {row['train_peak_mb']:.0f} MB "
                  f"({time.time() - t0:.0f} s)", flush=True)
            rows.append(row)
    if not rows:
        print("error: every case failed; nothing written", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    write_layer_flops(out, rows)
    df = add_ratios(pd.DataFrame(rows))
    env = collect_environment(device)
    meta = {"backbone": args.backbone, "device": device, "device_name": env.get("device_name", device),
            "precision": ("bf16 autocast" if device == "cuda" else "float32") + f", {rows[0]['memory_format']}"
                         + (", compiled" if args.compile else ""),
            "threads": rows[0]["threads"], "steps": args.steps, "warmup": args.warmup, "warmup_s": args.warmup_seconds,
            "memory_kind": rows[0]["memory_kind"], "date": time.strftime("%Y-%m-%d"),
            "host_probe_ms": statistics.median(r["host_probe_ms"] for r in rows),
            "command": "python -m benchmarks.performance " + " ".join(argv if argv is not None else sys.argv[1:]),
            "options": {m: options.get(m, {}) for m in methods}, "environment": env,
            "allocator": steady_allocator_settings(),
            **({"records": str(args.records)} if args.records is not None else {})}
    out.mkdir(parents=True, exist_ok=True)
    (out / "performance.json").write_text(json.dumps({"meta": meta, "rows": rows, "failures": failures},
                                                     indent=2, default=str))
    print(write_outputs(out, df, meta, failures))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
