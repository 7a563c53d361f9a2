"""Command-line runner: parse -> expand the sweep -> train each pending run -> record -> report.

    python -m benchmarks.run --methods linear_probe,lora_c --datasets breastmnist --seeds 0,1 \
        --backbone efficientnet_lite0 --img-size 64 --epochs 2 --set lora_c.rank=4,8 --out results/smoke
    python -m benchmarks.run --preset offline-cpu --dry-run

Every input is validated before the first run trains and before OUT is touched (sweep, data files and, for
the runs about to train, one load of each dataset and of each backbone's weights), so a typo costs a second, not
an hour; bad input prints one line on stderr and exits with code 2. Each run's outcome is recorded (an
exception inside the engine becomes a failed record and the sweep goes on); Ctrl-C stops the sweep and the
engine resumes from its checkpoint next time.

This module is the command line only (parser, planning, printing, main). Pre-flight checks live in
benchmarks/preflight.py; training and recording one run (``run_one``) in benchmarks/execution.py, which every
launcher (``--launcher local [--workers N]`` or ``--launcher submitit``, see benchmarks/launch.py) calls, so a run
trains and records the same way in-process, in a worker process or in a SLURM job. Imports go one way:
run -> launch -> execution.

The command restarts its own process once, before torch loads, with glibc's steady malloc settings
(benchmarks/allocator.py: no mmap and no heap trimming, so each step reuses its buffers; worker processes inherit
them; ``PETL_MALLOC_DEFAULTS=1`` keeps glibc's defaults), and each record names the settings it ran with.

Exit codes: 0 every planned run is recorded ok; 1 a run failed (or a launcher error); 2 bad input, nothing
trained; 3 some runs were being trained by another process and are still unfinished, so the tables lack them
(rerun the same command once it is done; 1 wins over 3); 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

if __name__ == "__main__":   # first, before torch loads: glibc reads its malloc settings only at process start
    from benchmarks.allocator import restart_with_steady_allocator
    restart_with_steady_allocator()

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, NoReturn, Sequence

import petl

from benchmarks import preflight
from benchmarks.config import MEMORY_FORMATS, SELECT_ON, Runtime, RunConfig
from benchmarks.files import WriteError
from benchmarks.store import FAILED, INTERRUPTED, PENDING, RunStore, StoreError
from benchmarks.sweep import (SETTABLE_FIELDS, CHOICES, PlannedRun, SweepError, SweepSpec, coerce_field, expand,
                              list_presets, load_preset, parse_seeds, parse_set, preset_seeds, preset_select_on,
                              split_list)

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_LOCKED = 3
EXIT_INTERRUPTED = 130
EXIT_CODES = ("exit codes: 0 all planned runs ok; 1 a run failed or a launcher error; 2 bad input (nothing trained, "
              "OUT untouched); 3 runs held by another process are unfinished, tables lack them; 130 interrupted")
DEFAULT_DATASETS = "pathmnist"
DEFAULT_OUT = Path("runs")   # git-ignored: a run without --out never rewrites the committed results/
FIELD_HELP = {   # every run setting's --help text (tests check none is missing)
    "backbone": "backbone name (resnet50, efficientnet_lite0, cifar_resnet18, a timm name)",
    "cosine_end": "where the cosine schedule reaches min_lr: after_last (one step after the last epoch, so every "
                  "epoch trains) or last_epoch (the behaviour of records made before that fix)",
    "split_seed": "seed of carved validation / test splits (folder trees, ISIC's validation): the same for every "
                  "run seed and method",
    "weights": "imagenet | none | path to a state-dict file (.pth/.safetensors)",
    "head": "classifier head: linear, or mlp (dropout, 512 hidden units, dropout)",
    "img_size": "training / test input size in pixels", "epochs": "training epochs (>= 1)",
    "batch_size": "batch size", "lr": "learning rate", "head_lr": "head learning rate (none: same as lr)",
    "optimizer": "optimizer", "weight_decay": "weight decay (decoupled for adamw)",
    "momentum": "SGD momentum (sgd only)", "schedule": "learning-rate schedule",
    "min_lr": "final learning rate of the cosine schedule",
    "step_milestones": "epochs at which the step schedule multiplies the lr by step-gamma (comma list)",
    "step_gamma": "lr factor at each step milestone", "warmup_epochs": "epochs of linear lr warm-up",
    "warmup_head_epochs": "head-only epochs before the method's parameters train",
    "augment": "training augmentation", "norm": "input normalisation (imagenet mean/std, half = 0.5/0.5, "
    "backbone = its own config)", "resize_mode": "interpolation to img-size (nearest = MedMNIST v2's (224))",
    "data_size": "MedMNIST file size to load (28/64/128/224; none: 28)", "loss": "training loss",
    "focal_gamma": "focal loss gamma (loss focal only)",
    "early_stop_patience": "epochs without validation improvement before stopping (0: off)",
    "select_metric": "validation metric that picks the kept checkpoint",
    "limit_train_batches": "cap the training batches per epoch (smoke tests; none: all)",
}
FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RunConfig)}


class BadInput(Exception):
    """Any invalid input found before training; printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse's usage dump is noise: one line with the fix
        print(f"error: {message} (see python -m benchmarks.run --help)", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def _flag(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _default_text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    return str(value)


def get_args_parser(with_catalogue: bool = True) -> argparse.ArgumentParser:
    """The runner's parser (launchers reuse it). ``with_catalogue`` adds methods/datasets/presets to --help."""
    parser = _Parser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog=(_catalogue() + "\n\n" + EXIT_CODES) if with_catalogue else EXIT_CODES)
    sweep = parser.add_argument_group("sweep")
    sweep.add_argument("--preset", help="TOML preset in benchmarks/presets/ (name or path); flags override it "
                                        "(start with --preset quickstart: offline, under a minute on a 2-core CPU)")
    sweep.add_argument("--methods", help="comma list of methods; '+' composes (metalr+lora_c)")
    sweep.add_argument("--datasets", help=f"comma list of datasets (default {DEFAULT_DATASETS})")
    sweep.add_argument("--seeds", help="comma list of seeds and ranges, e.g. 0,1,2 or 0-2, for every dataset "
                       "(default: the preset's seeds and dataset_seeds, else 0)")
    sweep.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                       help="method option (lora_c.rank=8) or run setting (lr=1e-3); a comma list sweeps "
                            "(lora_c.rank=4,8); tuple-valued options separate alternatives with ';'")
    sweep.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                       help="import MODULE first (it registers methods with petl.register_method); repeatable. "
                            "Installed packages can instead declare an entry point in the group petl.methods")
    sweep.add_argument("--help-method", metavar="NAME", help="print method NAME's options (type, default, "
                                                             "meaning) and exit")
    run = parser.add_argument_group("run settings (part of each run's key; a preset's values replace the "
                                    "defaults shown)")
    for name in SETTABLE_FIELDS:
        choices = CHOICES.get(name)
        help_text = FIELD_HELP[name]
        if choices:
            help_text += f" ({' | '.join(choices)})"
        help_text += f" (default {_default_text(FIELD_DEFAULTS[name])})"
        run.add_argument(_flag(name), dest=f"field_{name}", metavar=name.upper(), help=help_text)
    where = parser.add_argument_group("execution (not part of the key)")
    where.add_argument("--data-root", type=Path, help="data folder (default $PETL_DATA_ROOT, else "
                                                      "~/.cache/petl/data)")
    where.add_argument("--out", type=Path, default=DEFAULT_OUT,
                       help=f"output folder (default {DEFAULT_OUT}/, git-ignored; the committed tables live in "
                            f"results/ and are written only when asked for, e.g. --out results/offline-cpu)")
    where.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                       help="where to train; auto = cuda when available, else cpu (default auto)")
    where.add_argument("--threads", type=int, metavar="N",
                       help="CPU threads for torch (default: torch's choice, usually one per core)")
    where.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                       help="skip finished runs and continue interrupted ones from their checkpoint "
                            "(--no-resume retrains everything from scratch)")
    where.add_argument("--retry-failed", action="store_true", help="rerun runs whose record says failed")
    where.add_argument("--dry-run", action="store_true", help="print the planned runs and their status, train nothing")
    where.add_argument("--no-progress", action="store_true", help="no progress bars")
    where.add_argument("--skip-unreadable", action="store_true",
                       help="drop unreadable image files from decoded datasets (their count is printed) instead "
                            "of stopping; records say so")
    where.add_argument("--memory-format", choices=MEMORY_FORMATS, default="auto",
                       help="tensor layout of model and batches (default auto: the per-backbone, per-device choice in "
                            "benchmarks/layout.py: measured pairs, else channels_last on CUDA and contiguous on CPU)")
    where.add_argument("--compile", action="store_true", help="torch.compile the model in place (off by default)")
    where.add_argument("--reference", default="full_ft",
                       help="reference method for the statistics table (default full_ft)")
    where.add_argument("--select-on", choices=SELECT_ON, default=None,
                       help="how the end-of-sweep report picks configurations, as benchmarks.report --select-on "
                            "(default: the preset's [report] select_on, else none)")
    from benchmarks.launch import add_launcher_args
    add_launcher_args(parser)
    return parser


def _catalogue() -> str:
    """Methods (with descriptions and options), datasets and presets for --help: the names the options accept
    (cached by benchmarks.catalogue, so --help does not import torch)."""
    from benchmarks import catalogue
    data = catalogue.load()
    lines = ["methods:", *catalogue.methods_text(data)]
    lines += ["", "datasets:", "  " + ", ".join(data["datasets"]) + ", folder:PATH", "", "presets:"]
    lines += [f"  {name:<14} {desc}" for name, desc in list_presets().items()]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- planning
def report_selection(args: argparse.Namespace) -> str:
    """``--select-on``, else the preset's ``[report] select_on``: a grid preset's sweep ends with the tables it
    means (one learning rate per method variant, chosen on validation), not with every grid point side by side."""
    if args.select_on is not None:
        return args.select_on
    return preset_select_on(load_preset(args.preset)) if args.preset else "none"


def build_spec(args: argparse.Namespace) -> SweepSpec:
    """Merge the preset (if any) with the command line; flags given explicitly win."""
    preset = load_preset(args.preset) if args.preset else {}
    sweep = preset.get("sweep", {})
    methods = split_list(args.methods) if args.methods else list(sweep.get("methods", []))
    datasets = split_list(args.datasets) if args.datasets else list(sweep.get("datasets", [DEFAULT_DATASETS]))
    seeds, dataset_seeds = preset_seeds(sweep)
    if args.seeds:   # --seeds chooses the seeds of every dataset, the preset's per-dataset ones included
        seeds, dataset_seeds = parse_seeds(args.seeds), {}
    cli_fields = {}
    for name in SETTABLE_FIELDS:
        value = getattr(args, f"field_{name}")
        if value is not None:
            cli_fields[name] = coerce_field(name, value, _flag(name))
    cli_sets = [parse_set(s) for s in args.sets]
    overridden = {(item.method, item.key) for item in cli_sets}      # a --set on the same key replaces the preset's
    components = {n for m in methods for n in m.split("+")}            # a preset's grid for a method not run: unused
    preset_sets = [item for item in (parse_set(str(s)) for s in sweep.get("set", []))
                   if (item.method, item.key) not in overridden and (item.method is None or item.method in components)]
    return SweepSpec(methods=methods, datasets=datasets, seeds=seeds, dataset_seeds=dataset_seeds,
                     fields=dict(preset.get("config", {})),
                     method_overrides=dict(preset.get("methods", {})), cli_fields=cli_fields,
                     sets=preset_sets + cli_sets)


def prepare(args: argparse.Namespace, resolve_here: bool = True) -> tuple[list[PlannedRun], Runtime, RunStore]:
    """Everything that can fail on bad input, in one place, before anything trains or OUT is created.

    ``resolve_here=False`` (runs execute on other machines) keeps ``--device auto`` unresolved: the submitting
    host (a SLURM login node) may have no GPU while the compute nodes do. The weights and data loads are checked
    for the runs that will train (not for a dry run, not for finished runs).
    """
    try:
        plan = expand(build_spec(args))
        preflight.check_plan(plan)
        data_root = preflight.check_data(sorted({(r.config.dataset, r.config.data_size) for r in plan}, key=str),
                               args.data_root)
        store = RunStore(args.out)
        preflight.check_records(store)   # an unreadable record is bad input, not a crash of the final report
        store.check_writable()
        device = preflight.resolve_device(args.device) if resolve_here else args.device
        runtime = Runtime(device=device, data_root=data_root, progress=not args.no_progress,
                          skip_unreadable=args.skip_unreadable, memory_format=args.memory_format,
                          compile=args.compile)
        if not args.dry_run:
            pending = [r for r in plan if not args.resume or store.should_run(r.config, args.retry_failed)]
            preflight.check_writable(store, pending)
            preflight.check_weights(pending)
            preflight.check_loads(pending, runtime)
            store.prepare()          # the first write into OUT, after every check passed
    except (SweepError, StoreError, preflight.PreflightError, petl.PetlConfigError) as exc:
        raise BadInput(str(exc)) from None
    return plan, runtime, store


def print_plan(plan: list[PlannedRun], store: RunStore) -> None:
    """One line per planned run: its record name, a label naming what sets its configuration apart from the
    other configurations of its method (benchmarks.labels), and its status."""
    from benchmarks.labels import labels_for
    labels = labels_for([run.config.to_dict() for run in plan])
    name_width = max([len("run"), *(len(r.config.run_name) for r in plan)])
    width = max([len("configuration"), *map(len, labels)])
    print(f"{'run':<{name_width}}  {'configuration':<{width}}  status")
    for run, label in zip(plan, labels):
        print(f"{run.config.run_name:<{name_width}}  {label:<{width}}  {store.status(run.config)}")
    print(f"{len(plan)} run(s)")


def import_plugins(words: Sequence[str]) -> None:
    """Import the ``--import MODULE`` plugins before anything parses method names (their methods then appear in
    --help, in validation and, through $PETL_PLUGINS, in worker processes)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--import", dest="imports", action="append", default=[])
    known, _ = pre.parse_known_args(list(words))
    if known.imports:
        from petl.plugins import add_modules
        add_modules([m for item in known.imports for m in split_list(item)])


def help_method(name: str) -> int:
    """``--help-method NAME``: the method's options with type, default and help text."""
    from benchmarks import catalogue
    data = catalogue.load()
    if name not in data["methods"]:
        print(f"error: --help-method: unknown method {name!r}; available methods: {', '.join(data['methods'])}",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    print(catalogue.method_help(data, name))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    words = list(argv if argv is not None else sys.argv[1:])
    try:
        import_plugins(words)
    except petl.PetlConfigError as exc:
        print(f"error: --import: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    args = get_args_parser(with_catalogue="-h" in words or "--help" in words).parse_args(words)
    if args.help_method:
        return help_method(args.help_method)
    if args.threads is not None and args.threads < 1:
        print(f"error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from benchmarks import launch
    try:
        launcher = launch.launcher_from_args(args)   # launcher options first: cheap, and no files touched
        plan, runtime, store = prepare(args, resolve_here=not launch.runs_elsewhere(args))
        select_on = report_selection(args)           # read now: the preset may change while the sweep trains
    except (BadInput, launch.LaunchError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:   # e.g. during the pre-flight data load: nothing was written yet
        print("\ninterrupted before training: nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.device == "auto" and runtime.device != "auto":
        print(f"device: {runtime.device} (--device auto)")
    if args.threads is not None:
        import torch
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)   # worker processes start with the same count
    if args.dry_run:
        print_plan(plan, store)
        return 0
    try:
        launched = launcher.launch(plan, runtime, store, resume=args.resume, retry_failed=args.retry_failed)
    except WriteError as exc:   # e.g. the disk filled up: the record being written is the old one or absent
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("\ninterrupted: finished runs are recorded; rerun the same command to resume from the last epoch",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    if launched.submitted:   # a real cluster: the jobs run later; the report is built by benchmarks.report
        return 0
    outcomes = launched.outcomes
    # Runs another process was training when we reached them: fine if they were recorded meanwhile.
    held = [run.config.run_name for run, outcome in outcomes
            if outcome == "locked" and store.status(run.config) in (PENDING, INTERRUPTED)]
    from benchmarks.report import build_reports
    try:
        tables = build_reports(store.out, reference=args.reference, select_on=select_on)
    except (StoreError, OSError) as exc:   # e.g. a record made unreadable meanwhile, a full disk: runs stay recorded
        print(f"error: the runs are recorded, but the report could not be built: {' '.join(str(exc).split())}",
              file=sys.stderr)
        return EXIT_FAILED
    print()
    print(tables.summary_markdown)
    print(f"\nrecords: {store.runs_dir}  tables: {store.out / 'tables'}  plots: {store.out / 'plots'}")
    # Exit 1 while any planned run is failed, including failed records skipped without --retry-failed.
    failed = [run.config.run_name for run, outcome in outcomes if outcome in (FAILED, f"skipped ({FAILED})")]
    if failed:
        print(f"{len(failed)} run(s) failed (see {store.out / 'tables' / 'report.md'}; rerun with --retry-failed): "
              f"{', '.join(failed)}", file=sys.stderr)
    if held:
        print(f"warning: {len(held)} run(s) are being trained by another process and are not in the tables yet "
              f"(rerun the same command once they finish): {', '.join(held)}", file=sys.stderr)
    if failed or launched.errors:
        return EXIT_FAILED
    return EXIT_LOCKED if held else 0


if __name__ == "__main__":
    sys.exit(main())
