"""The offline-cpu preset trains every method on the same learning-rate grid size (issue 11), its baselines long
enough, and MetaLR (which meta-trains on validation) is marked in the tables rather than given a meta split;
BreastMNIST, the smallest test set, gets seeds 0-4 and the other datasets 0-2 (issue 17)."""

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
    assert len(plan) == len(methods) * 3 * 5                         # 3 learning rates x BreastMNIST's 5 seeds
    assert lrs["full_ft"] == {3e-4, 1e-3, 3e-3} and lrs["two_stage"] == {1e-4, 3e-4, 1e-3}
    for run in plan:
        if run.config.method in ("full_ft", "two_stage"):
            assert run.config.epochs == 20 and run.config.early_stop_patience == 4
    # MetaLR is the one method that trains on validation: marked in every table
    assert [m for m in lrs if trains_on_validation(m)] == ["metalr"]


def test_a_grid_for_a_method_not_run_is_ignored() -> None:
    plan = _plan("--methods", "lora_c", "--datasets", "breastmnist")
    assert len(plan) == 3 * 5 and {r.config.lr for r in plan} == {3e-4, 1e-3, 3e-3}


def test_breastmnist_gets_five_seeds_and_the_other_datasets_three() -> None:
    plan = _plan("--methods", "lora_c")
    seeds: dict[str, set[int]] = defaultdict(set)
    for run in plan:
        seeds[run.config.dataset].add(run.config.seed)
    assert seeds == {"breastmnist": {0, 1, 2, 3, 4}, "pneumoniamnist": {0, 1, 2}, "isic2018": {0, 1, 2}}
    assert len(plan) == 3 * (5 + 3 + 3)


def test_seeds_flag_chooses_every_datasets_seeds() -> None:
    plan = _plan("--methods", "lora_c", "--seeds", "7")
    assert {(r.config.dataset, r.config.seed) for r in plan} == {
        ("breastmnist", 7), ("pneumoniamnist", 7), ("isic2018", 7)}
