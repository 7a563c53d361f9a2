"""Where a sweep's time goes: profile one epoch of each planned run with torch.profiler, split by phase.

    python -m benchmarks.profiling --preset offline-cpu --datasets pneumoniamnist --seeds 0
    python -m benchmarks.profiling --methods gpaf,bitfit --datasets breastmnist --epochs 2 --profile-out DIR --trace

Takes the runner's own arguments (``python -m benchmarks.run --help``: presets, methods, datasets, ``--set``,
run settings, ``--device``, ``--memory-format``, ...), so the profiled runs are exactly the sweep's runs, and
trains each one through the engine (``benchmarks.engine.execute``) for one epoch (unless ``--epochs`` is given)
in a temporary folder: no record is written and the sweep's OUT is not touched.

Phases, from labels this module puts around the engine's functions while it runs (the engine itself carries no
profiling code): ``data`` (dataset loading and the train/eval transforms), ``forward`` (the model's forward in
training, MetaLR's look-ahead forward included), ``backward`` (``Tensor.backward`` / ``torch.autograd.grad``),
``optimiser`` (torch's own ``Optimizer.step`` / ``zero_grad`` spans), ``evaluation`` (validation each epoch and the
final test evaluation with its inference timing), ``checkpoint`` (the epoch checkpoint), and ``other``: the
rest of the run's wall time (model construction, method application, logging and progress bars, the loop).
A span inside another labelled span counts for the outer one (a forward inside evaluation is evaluation).

Output per run: ``PROFILE_OUT/<dataset>__<method>.md`` (phases, the top operators by self CPU time, the machine's
load during the run -- a profile taken while other work shared the cores says so) and, with ``--trace``, a Chrome
trace next to it; ``PROFILE_OUT/summary.md`` has one row per run. Exit codes as the runner's: 2 = bad input.
"""

from __future__ import annotations

if __name__ == "__main__":   # profile the process the runner trains in: the same malloc settings (benchmarks.run)
    from benchmarks.allocator import restart_with_steady_allocator
    restart_with_steady_allocator()

import argparse
import contextlib
import dataclasses
import functools
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

PHASES = ("data", "forward", "backward", "optimiser", "evaluation", "checkpoint")
LABEL = "petl::"
_OPTIMISER_PREFIXES = ("Optimizer.step#", "Optimizer.zero_grad#")
DEFAULT_OUT = Path("results") / "benchmarks" / "profile"


def _labelled(name: str, fn: Callable) -> Callable:
    import torch

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with torch.profiler.record_function(LABEL + name):
            return fn(*args, **kwargs)
    return wrapper


def _label_forward(model: Any) -> Any:
    """Label the root model's forward with pre/post hooks (the post hook always runs, also after an error)."""
    import torch
    spans: list[Any] = []

    def enter(module: Any, args: Any) -> None:
        span = torch.profiler.record_function(LABEL + "forward")
        span.__enter__()
        spans.append(span)

    def leave(module: Any, args: Any, output: Any) -> None:
        if spans:
            spans.pop().__exit__(None, None, None)

    model.register_forward_pre_hook(enter)
    model.register_forward_hook(leave, always_call=True)
    return model


@contextlib.contextmanager
def phase_labels() -> Iterator[None]:
    """Wrap the engine's phase functions (and torch's backward entry points) in profiler labels, then restore."""
    import torch

    from benchmarks import engine
    saved: list[tuple[Any, str, Any]] = []

    def patch(owner: Any, name: str, new: Any) -> None:
        saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, new)

    def transforms(config: Any, model: Any) -> tuple[Callable, Callable]:
        train_tf, eval_tf = make_transforms(config, model)
        return _labelled("data", train_tf), _labelled("data", eval_tf)

    def build(*args: Any, **kwargs: Any) -> Any:
        model, hook = build_model(*args, **kwargs)
        return _label_forward(model), hook

    make_transforms, build_model = engine.make_transforms, engine.build_model
    patch(engine, "make_transforms", transforms)
    patch(engine, "build_model", build)
    patch(engine, "load_bundle", _labelled("data", engine.load_bundle))
    patch(engine, "evaluate_split", _labelled("evaluation", engine.evaluate_split))
    patch(engine, "final_evaluation", _labelled("evaluation", engine.final_evaluation))
    patch(engine, "save_checkpoint", _labelled("checkpoint", engine.save_checkpoint))
    patch(torch.Tensor, "backward", _labelled("backward", torch.Tensor.backward))
    patch(torch.autograd, "grad", _labelled("backward", torch.autograd.grad))
    try:
        yield
    finally:
        for owner, name, old in reversed(saved):
            setattr(owner, name, old)


def _phase_of(name: str) -> str | None:
    if name.startswith(LABEL):
        return name[len(LABEL):]
    if name.startswith(_OPTIMISER_PREFIXES):
        return "optimiser"
    return None


def phase_seconds(events: Sequence[Any], wall_s: float) -> dict[str, float]:
    """Seconds per phase from the profiler's events: outermost labelled spans only; ``other`` is the rest of
    ``wall_s``. Each event needs ``name`` and ``time_range.start`` / ``.end`` in microseconds."""
    spans = sorted(((e.time_range.start, e.time_range.end, phase) for e in events
                    if (phase := _phase_of(e.name)) is not None), key=lambda s: (s[0], -s[1]))
    seconds = dict.fromkeys(PHASES, 0.0)
    outer_end = float("-inf")
    for start, end, phase in spans:
        if start >= outer_end:               # not inside the previous outermost span (one thread: spans nest)
            seconds[phase] = seconds.get(phase, 0.0) + (end - start) / 1e6
            outer_end = end
    seconds["other"] = max(0.0, wall_s - sum(seconds.values()))
    return seconds


def render_run(title: str, command: str, seconds: dict[str, float], wall_s: float, load: dict[str, Any],
               top_ops: str, images: int | None) -> str:
    from benchmarks.load import describe
    lines = [f"# Profile: {title}", "", f"Made with `{command}`. Wall time {wall_s:.1f} s"
             + (f", {images} training images" if images else "") + f"; machine: {describe(load)} "
             f"({load.get('threads')} threads, {load.get('cpus')} CPUs). A CPU share well below 1 means the run "
             "shared its cores: the seconds below are then inflated, the shares less so.", "",
             "| phase | seconds | share |", "|---|---:|---:|"]
    for phase, s in seconds.items():
        lines.append(f"| {phase} | {s:.3f} | {s / wall_s:.1%} |" if wall_s > 0 else f"| {phase} | {s:.3f} | |")
    lines += ["", "## Top operators by self CPU time", "", "```", top_ops, "```", ""]
    return "\n".join(lines)


def get_parser() -> argparse.ArgumentParser:
    from benchmarks.run import get_args_parser
    parser = get_args_parser(with_catalogue=False)
    parser.prog = "python -m benchmarks.profiling"
    parser.description = __doc__.split("\n\n")[0]
    group = parser.add_argument_group("profile")
    group.add_argument("--profile-out", type=Path, default=DEFAULT_OUT,
                       help=f"folder for the per-run summaries and summary.md (default {DEFAULT_OUT})")
    group.add_argument("--trace", action="store_true", help="also write a Chrome trace per run (large)")
    group.add_argument("--top", type=int, default=15, help="operators in each run's table (default 15)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    from benchmarks import engine
    from benchmarks.load import LoadMeter
    from benchmarks.run import EXIT_BAD_INPUT, BadInput, prepare
    args = get_parser().parse_args(argv)
    args.dry_run = True                      # prepare() validates everything but writes nothing into OUT
    try:
        plan, runtime, _ = prepare(args)
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not plan:
        print("error: the arguments plan no run; name --methods / --datasets or a --preset", file=sys.stderr)
        return EXIT_BAD_INPUT
    command = "python -m benchmarks.profiling " + " ".join(argv if argv is not None else sys.argv[1:])
    out = args.profile_out
    out.mkdir(parents=True, exist_ok=True)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if runtime.device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    summary = ["# Profiles: seconds per phase of each run", "", f"Made with `{command}`.", "",
               "| run | wall s | " + " | ".join(PHASES + ("other",)) + " | cpu share |",
               "|---|---:|" + "---:|" * (len(PHASES) + 2)]
    failed = 0
    for run in plan:
        config = run.config if getattr(args, "field_epochs", None) is not None \
            else dataclasses.replace(run.config, epochs=1)
        name = f"{config.dataset}__{config.method}"
        load = LoadMeter()                 # its host probes stay outside the profiled span and the wall time
        with tempfile.TemporaryDirectory(prefix="petl-profile-") as work, phase_labels(), \
                torch.profiler.profile(activities=activities) as prof:
            t0 = time.perf_counter()
            record = engine.execute(config, runtime, Path(work))
            wall = time.perf_counter() - t0
        machine = load.summary()
        if record.get("status") != "ok":
            failed += 1
            print(f"{name}: run {record.get('status')}: {record.get('reason')}", file=sys.stderr)
        seconds = phase_seconds(prof.events(), wall)
        top = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=60)
        images = (record.get("efficiency") or {}).get("train_images_per_s")
        (out / f"{name}.md").write_text(render_run(f"{name} ({config.backbone}, {config.img_size} px, batch "
                                                   f"{config.batch_size}, {config.epochs} epoch(s))", command,
                                                   seconds, wall, machine, top, None)
                                        + (f"\nTraining throughput in the record: {images:.1f} img/s.\n"
                                           if images else ""))
        if args.trace:
            prof.export_chrome_trace(str(out / f"{name}.trace.json"))
        share = machine.get("cpu_share")
        summary.append(f"| {name} | {wall:.1f} | " + " | ".join(f"{seconds[p]:.1f} ({seconds[p] / wall:.0%})"
                                                                for p in PHASES + ("other",))
                       + f" | {share if share is not None else ''} |")
        print(f"{name}: {wall:.1f} s, " + ", ".join(f"{p} {seconds[p]:.1f} s" for p in PHASES + ("other",)),
              flush=True)
    (out / "summary.md").write_text("\n".join(summary) + "\n")
    print(f"wrote {out / 'summary.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
