"""Decide a backbone's memory layout (and compilation) by measurement: interleaved training steps, one process.

    python -m benchmarks.layout_ab --backbone efficientnet_lite0 --img-size 64 --batch-size 64 --preset offline-cpu
    python -m benchmarks.layout_ab --backbone resnet50 --img-size 224 --batch-size 32 --device cuda --compile

For each method, the variants (contiguous, channels_last; with ``--compile`` also both compiled) are built once and
then stepped in turn, round after round, so that a change of machine state (another process, clock, thermal)
hits every variant alike. A step is the performance command's (forward, loss, backward, AdamW over the method's
trainable set; CUDA: bf16 autocast). Reported per variant: median and minimum step time over the rounds, and for
a compiled variant its first step (the compile time) -- whether compiling pays depends on how many steps a run
makes, so the report gives the break-even step count.

The output (Markdown, ``--out``) ends with the ``MEASURED_LAYOUT`` entry the measurement supports for
``benchmarks/layout.py``: the faster layout when it is faster for every method measured, else none. The machine's
load during the measurement (``benchmarks.load``) is printed with it: measure on idle cores.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

LAYOUTS = ("contiguous", "channels_last")


def _variant(base: Any, method: str, options: dict[str, Any], layout: str, compiled: bool, x: Any, y: Any,
             device: Any) -> Callable[[], None]:
    import torch
    import torch.nn.functional as F

    import petl
    from benchmarks.layout import prepare_input, prepare_model
    model = petl.apply(copy.deepcopy(base), method, **options)
    model = prepare_model(model, layout, compiled).to(device).train()
    xb = prepare_input(x, layout).to(device)
    yb = y.to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" \
        else contextlib.nullcontext

    def step() -> None:
        with autocast():
            loss = F.cross_entropy(model(xb), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    return step


def measure(backbone: str, methods: Sequence[str], img_size: int, batch_size: int, rounds: int, device_name: str,
            with_compile: bool, options: dict[str, dict[str, Any]], num_classes: int = 7,
            layouts: Sequence[str] = LAYOUTS) -> list[dict[str, Any]]:
    """One row per (method, layout, compiled): first-step, median and minimum step seconds. ``options`` maps a
    method to its options (``benchmarks.performance.method_options``: ResNet-50 defaults, or a preset's);
    ``layouts`` narrows the variants (e.g. only channels_last, to time compilation alone at half the compiles)."""
    import torch

    import petl
    device = torch.device(device_name)
    torch.manual_seed(0)
    base = petl.build_backbone(backbone, weights=None, num_classes=num_classes)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, img_size, img_size, generator=g)
    y = torch.randint(0, num_classes, (batch_size,), generator=g)
    rows = []
    for method in methods:
        variants = {(layout, compiled): _variant(base, method, options.get(method, {}), layout, compiled,
                                                 x, y, device)
                    for compiled in ((False, True) if with_compile else (False,)) for layout in layouts}
        first, times = {}, {key: [] for key in variants}
        for key, step in variants.items():          # first step (compilation, allocator warm-up), then one more
            t0 = time.perf_counter()
            step()
            first[key] = time.perf_counter() - t0
            step()
        for _ in range(rounds):
            for key, step in variants.items():
                t0 = time.perf_counter()
                step()
                times[key].append(time.perf_counter() - t0)
        for (layout, compiled), values in times.items():
            rows.append({"method": method, "layout": layout, "compiled": compiled,
                         "first_step_s": first[(layout, compiled)], "median_step_s": statistics.median(values),
                         "min_step_s": min(values), "rounds": rounds})
    return rows


def suggestion(rows: list[dict[str, Any]]) -> str | None:
    """The layout that is faster (uncompiled median) for every method measured, else None (also when only one
    layout was measured: nothing was compared)."""
    if len({r["layout"] for r in rows}) < 2:
        return None
    winners = set()
    for method in {r["method"] for r in rows}:
        plain = {r["layout"]: r["median_step_s"] for r in rows if r["method"] == method and not r["compiled"]}
        winners.add(min(plain, key=plain.get))
    return winners.pop() if len(winners) == 1 else None


def reference_step(rows: list[dict[str, Any]], method: str) -> float:
    """The median step every variant of ``method`` is compared with: uncompiled, in the first layout measured
    (contiguous unless ``--layouts`` left it out)."""
    return next(q["median_step_s"] for q in rows if q["method"] == method and not q["compiled"])


def to_markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    from benchmarks.load import describe
    lines = [f"# Layout A/B: {meta['backbone']}, {meta['img_size']} px, batch {meta['batch_size']}, {meta['device']}",
             "", f"Made with `{meta['command']}` on {meta['device_name']}; machine during the measurement: "
             f"{describe(meta['load'])}. Interleaved rounds in one process; step = forward + loss + backward + AdamW.",
             "", "| method | layout | compiled | median ms | min ms | vs uncompiled, first layout | first step ms | "
             "break-even steps |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        ref = reference_step(rows, r["method"])
        gain = ref - r["median_step_s"]
        extra = r["first_step_s"] - r["median_step_s"]
        even = f"{extra / gain:.0f}" if r["compiled"] and gain > 0 else ("never" if r["compiled"] else "")
        lines.append(f"| {r['method']} | {r['layout']} | {'yes' if r['compiled'] else 'no'} | "
                     f"{r['median_step_s'] * 1e3:.1f} | {r['min_step_s'] * 1e3:.1f} | "
                     f"{ref / r['median_step_s']:.2f}x | {r['first_step_s'] * 1e3:.0f} | {even} |")
    best = suggestion(rows)
    lines += ["", "Entry for `benchmarks/layout.py` `MEASURED_LAYOUT` (uncompiled medians; only when one layout wins "
              "for every method): " + (f'`("{meta["backbone"]}", "{meta["device"]}"): "{best}"`' if best else
                                       "none (no layout wins for every method, or only one was measured)"), ""]
    return "\n".join(lines)


def get_parser() -> argparse.ArgumentParser:
    from benchmarks.performance import DEFAULT_METHODS, _positive_ints
    p = argparse.ArgumentParser(prog="python -m benchmarks.layout_ab", description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    p.add_argument("--img-size", type=_positive_ints, default=[64], help="one size")
    p.add_argument("--batch-size", type=_positive_ints, default=[64], help="one batch size")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--compile", action="store_true", help="also measure each layout compiled")
    p.add_argument("--layouts", default=",".join(LAYOUTS),
                   help="comma list of layouts to measure (default both; one layout with --compile times "
                        "compilation alone)")
    p.add_argument("--preset", default=None,
                   help="method options from this preset's [methods.NAME] tables (e.g. offline-cpu for Lite0: "
                        "the ResNet-50 defaults do not all apply to it), as benchmarks.performance --preset")
    p.add_argument("--out", type=Path, default=None, help="Markdown file (default: print only)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    import petl
    from benchmarks.environment import device_name
    from benchmarks.load import LoadMeter
    args = get_parser().parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in petl.available_methods()]
    if unknown:
        print(f"error: unknown method(s) {', '.join(unknown)}; available: {', '.join(petl.available_methods())}",
              file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available; use --device cpu", file=sys.stderr)
        return 2
    layouts = [x.strip() for x in args.layouts.split(",") if x.strip()]
    if not layouts or any(x not in LAYOUTS for x in layouts) or len(set(layouts)) != len(layouts):
        print(f"error: --layouts takes a comma list of {', '.join(LAYOUTS)}, got {args.layouts!r}", file=sys.stderr)
        return 2
    if args.rounds < 1 or len(args.img_size) != 1 or len(args.batch_size) != 1:
        print("error: give one --img-size, one --batch-size and --rounds >= 1", file=sys.stderr)
        return 2
    load = LoadMeter()
    from benchmarks.performance import method_options
    from benchmarks.sweep import SweepError
    try:
        options = method_options(args.preset)
    except SweepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = measure(args.backbone, methods, args.img_size[0], args.batch_size[0], args.rounds, args.device,
                   args.compile, options, layouts=layouts)
    meta = {"backbone": args.backbone, "img_size": args.img_size[0], "batch_size": args.batch_size[0],
            "device": args.device, "device_name": device_name(args.device), "load": load.summary(),
            "command": "python -m benchmarks.layout_ab " + " ".join(argv if argv is not None else sys.argv[1:])}
    md = to_markdown(rows, meta)
    print(md)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(md + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
