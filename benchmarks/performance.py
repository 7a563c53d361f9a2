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
is not inflated by the allocations of the one before it. A training step is the engine's step: forward, loss,
backward and an AdamW step over the method's trainable set (one learning rate, no method regulariser: those
cost nothing measurable), or the method's own trainer when it has one (MetaLR's look-ahead + meta step + real
step). Inference is the eval-mode forward
after ``petl.merge`` (so merging methods run at the plain backbone's cost). On CUDA: bf16 autocast and
channels_last, as in the engine. Random-init weights (speed does not depend on the values).

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
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

DEFAULT_METHODS = ("linear_probe", "full_ft", "bitfit", "peft_lora", "lora_c", "conv_adapter", "gpaf", "metalr")
DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {"lora_c": {"rank": 4, "alpha": 8},
                                               "peft_lora": {"rank": 6, "alpha": 12},   # matched_peft_rank(r50, 4)
                                               "gpaf": {"kind": "prelu"}}
BOUND_FROZEN = 1.5   # full-FT time / frozen-backbone time when no weight gradients are computed (3 units vs 2)
FAR_FROM_BOUND = 0.85   # below this fraction of the bound a method's row gets its cost explanation

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


def _batch(case: Case, device: Any) -> tuple[Any, Any]:
    import torch
    g = torch.Generator().manual_seed(0)
    x = torch.randn(case.batch_size, 3, case.img_size, case.img_size, generator=g)
    y = torch.randint(0, case.num_classes, (case.batch_size,), generator=g)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x.to(device), y.to(device)


def _trainer(case: Case, model: Any, x: Any, y: Any) -> Any:
    """The method's own trainer (hook) or a plain AdamW step on its trainable parameters."""
    import itertools

    import torch

    import petl
    hook = next((petl.get_method(m).hooks["trainer"] for m in [case.method] if "trainer" in petl.get_method(m).hooks),
                None)
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


def _timed(step: Any, case: Case, device: Any) -> Any:
    """Warm up for ``case.warmup`` steps *and* at least ``case.warmup_s`` seconds, then time ``case.steps`` steps.

    A step count alone is not enough on CPU: a cold process runs its first seconds 20-30 % slower (measured:
    the same ResNet-50 forward at 290 img/s first, 370 img/s a few seconds later), which had made the fastest
    method's rows (the linear probe, whose warm-up steps take a fraction of a second) look slow.
    """
    from benchmarks.measure import Throughput
    t0, done = time.perf_counter(), 0
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
    from benchmarks.measure import current_rss_bytes, peak_memory

    torch.manual_seed(0)
    device = torch.device(case.device)
    baseline = current_rss_bytes() if device.type == "cpu" else 0   # interpreter + libraries, before the model
    model = petl.build_backbone(case.backbone, weights=None, num_classes=case.num_classes)
    petl.apply(model, case.method, **case.options)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    model.to(device).train()
    x, y = _batch(case, device)
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
        train = _timed(train_step, case, device)
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
            "memory_kind": train_peak.kind, "threads": torch.get_num_threads()}


def measure_isolated(case: Case) -> dict[str, Any]:
    """:func:`measure` in a fresh spawned process (clean peak memory); its exception is re-raised here."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(measure, (case,))


def add_ratios(df: pd.DataFrame) -> pd.DataFrame:
    """Throughput ratios to full fine-tuning and to the linear probe, per image size."""
    out = []
    for _, g in df.groupby("img_size", sort=True):
        g = g.copy()
        by = g.set_index("method")
        for ref in ("full_ft", "linear_probe"):
            if ref in by.index:
                g[f"train_vs_{ref}"] = g["train_images_per_s"] / by.loc[ref, "train_images_per_s"]
                g[f"train_mem_vs_{ref}"] = g["train_peak_mb"] / by.loc[ref, "train_peak_mb"]
        out.append(g)
    return pd.concat(out, ignore_index=True)


def verdict(row: pd.Series) -> str:
    """Where a method stands against the frozen-backbone bound (~1.5x full FT's training throughput)."""
    if row["method"] == "full_ft":
        return "reference"
    if row["method"] == "linear_probe":
        return "floor (forward only)"
    ratio = row.get("train_vs_full_ft")
    if ratio is None or pd.isna(ratio):
        return ""
    return f"{ratio / BOUND_FROZEN:.0%} of the ~{BOUND_FROZEN}x bound"


def to_markdown(df: pd.DataFrame, meta: dict[str, Any]) -> str:
    """The report: how it was measured, the bound it is read against, one table per image size, and why each
    method far from the bound is there."""
    lines = [f"# Performance: {meta['backbone']}, per method", "",
             f"Made with `{meta['command']}` on {meta['device_name']} ({meta['device']}, {meta['precision']}, "
             f"{meta['threads']} threads), {meta['date']}. Each row is a fresh process; "
             f"{meta['steps']} measured steps after at least {meta['warmup']} warm-up step(s) and "
             f"{meta.get('warmup_s', 0):g} s of warm-up. Peak memory: "
             f"{meta['memory_kind']}" + (" minus the process's resident memory before the model was built "
                                         "(interpreter + libraries)" if meta['device'] == 'cpu' else "")
             + ".", "", BOUND_TEXT, ""]
    for size, g in df.groupby("img_size", sort=True):
        lines += [f"## {size} px, batch {int(g['batch_size'].iloc[0])}", "",
                  "| method | trainable | train img/s | vs full_ft | vs linear_probe | infer img/s (merged) | "
                  "train peak MB | vs full_ft mem | bound |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for _, r in g.iterrows():
            lines.append(f"| {r['method']} | {int(r['trainable_params']):,} | {r['train_images_per_s']:.1f} | "
                         f"{r.get('train_vs_full_ft', float('nan')):.2f}x | "
                         f"{r.get('train_vs_linear_probe', float('nan')):.2f}x | "
                         f"{r['infer_images_per_s']:.1f}{' (merged)' if r['merged_layers'] else ''} | "
                         f"{r['train_peak_mb']:.0f} | {r.get('train_mem_vs_full_ft', float('nan')):.2f}x | "
                         f"{verdict(r)} |")
        lines.append("")
    lines += explanations(df)
    return "\n".join(lines)


def explanations(df: pd.DataFrame) -> list[str]:
    """A "why" section: each method below ``FAR_FROM_BOUND`` of the bound at some size, with its ratios and the
    cost structure that explains them; the reference and the floor are described too."""
    if "train_vs_full_ft" not in df:
        return []
    lines = ["## Why each method stands where it does", ""]
    for method, g in df.groupby("method", sort=False):
        ratios = ", ".join(f"{r:.2f}x at {s} px" for s, r in zip(g["img_size"], g["train_vs_full_ft"]))
        share = (g["train_vs_full_ft"] / BOUND_FROZEN).min()
        if method in ("full_ft", "linear_probe"):
            head = f"* **{method}** ({ratios} of full fine-tuning):"
        elif share < FAR_FROM_BOUND:
            head = f"* **{method}** ({ratios}; down to {share:.0%} of the ~{BOUND_FROZEN}x bound), far from the bound:"
        else:
            head = f"* **{method}** ({ratios}; at least {share:.0%} of the bound), near the bound:"
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
    return p


PER_DEVICE_PREFIX = "performance-"   # OUT_ROOT/performance-<device>/: one folder per device kind


def default_out(device: str) -> Path:
    """One output per device kind, so measurements on different machines never overwrite each other."""
    return Path("runs") / f"{PER_DEVICE_PREFIX}{device}"   # never the committed results/ unless --out says so


def write_outputs(out: Path, df: pd.DataFrame, meta: dict[str, Any], failures: list[str]) -> str:
    """performance.csv in OUT and the Markdown report in OUT.md (plus the all-devices index next to them when OUT
    is a ``performance-<device>`` folder); returns the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "performance.csv", index=False)
    md = render(df, meta, failures)
    out.with_suffix(".md").write_text(md + "\n")
    if out.name.startswith(PER_DEVICE_PREFIX):
        write_index(out.parent)
    return md


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
        body = render(add_ratios(pd.DataFrame(data["rows"])), data["meta"], list(data.get("failures", [])))
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


def render_only(out: Path) -> int:
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
    md = write_outputs(out, add_ratios(pd.DataFrame(rows)), meta, failures)
    print(md)
    print(f"\nwrote {out.with_suffix('.md')} and {out / 'performance.csv'} from {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    import torch

    import petl
    from benchmarks.environment import collect_environment
    args = get_parser().parse_args(argv)
    if args.render_only:
        kind = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        return render_only(args.out or default_out(kind))
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
            case = Case(method, DEFAULT_OPTIONS.get(method, {}), args.backbone, size, batch, args.num_classes,
                        args.steps, args.warmup, device, args.warmup_seconds)
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
    df = add_ratios(pd.DataFrame(rows))
    env = collect_environment(device)
    meta = {"backbone": args.backbone, "device": device, "device_name": env.get("device_name", device),
            "precision": "bf16 autocast, channels_last" if device == "cuda" else "float32",
            "threads": rows[0]["threads"], "steps": args.steps, "warmup": args.warmup, "warmup_s": args.warmup_seconds,
            "memory_kind": rows[0]["memory_kind"], "date": time.strftime("%Y-%m-%d"),
            "command": "python -m benchmarks.performance " + " ".join(argv if argv is not None else sys.argv[1:]),
            "options": {m: DEFAULT_OPTIONS.get(m, {}) for m in methods}, "environment": env}
    out.mkdir(parents=True, exist_ok=True)
    (out / "performance.json").write_text(json.dumps({"meta": meta, "rows": rows, "failures": failures},
                                                     indent=2, default=str))
    print(write_outputs(out, df, meta, failures))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
