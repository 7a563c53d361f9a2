"""The offline-cpu preset trains every method on the same learning-rate grid size (issue 11), its baselines long
enough, and MetaLR (which meta-trains on validation) is marked in the tables rather than given a meta split."""

from __future__ import annotations

from collections import defaultdict

from benchmarks import run as runner
from benchmarks.selection import trains_on_validation
from benchmarks.sweep import expand, load_preset


def _plan(*argv: str):
    args = runner.get_args_parser(with_catalogue=False).parse_args(["--preset", "offline-cpu", *argv])
    return expand(runner.build_spec(args))


def test_every_method_gets_three_learning_rates_and_baselines_twenty_epochs() -> None:
    plan = _plan("--datasets", "breastmnist")
    lrs: dict[str, set[float]] = defaultdict(set)
    for run in plan:
        lrs[run.config.method].add(run.config.lr)
        assert run.label.endswith(f"lr={run.config.lr:g}") or run.label.endswith(f"lr={run.config.lr}")
    methods = load_preset("offline-cpu")["sweep"]["methods"]
    assert set(lrs) == set(methods) and len(methods) == 16 and "peft_boft" not in methods  # BOFT: GPU only
    assert all(len(v) == 3 for v in lrs.values()), lrs
    assert len(plan) == len(methods) * 3 * 3
    assert lrs["full_ft"] == {3e-4, 1e-3, 3e-3} and lrs["two_stage"] == {1e-4, 3e-4, 1e-3}
    for run in plan:
        if run.config.method in ("full_ft", "two_stage"):
            assert run.config.epochs == 20 and run.config.early_stop_patience == 4
    # MetaLR is the one method that trains on validation: marked in every table
    assert [m for m in lrs if trains_on_validation(m)] == ["metalr"]


def test_a_grid_for_a_method_not_run_is_ignored() -> None:
    plan = _plan("--methods", "lora_c", "--datasets", "breastmnist")
    assert len(plan) == 3 * 3 and {r.config.lr for r in plan} == {3e-4, 1e-3, 3e-3}
