"""The metric and plot registries: a metric or a figure is one decorated function, and the report's tables and
plots pick it up from there (issue 10, item 6). Each test registers into a copy of the registry, so nothing leaks
into the other tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from benchmarks import metric_registry, plotting, predictions as P, stats
from benchmarks.config import RunConfig
from benchmarks.metric_registry import register_metric
from benchmarks.metrics import compute_metrics
from benchmarks.plotting import register_plot
from benchmarks.report import build_reports
from benchmarks.store import atomic_write_json
from petl.errors import DuplicateRegistrationError, PetlConfigError

LABELS = {"test": np.r_[np.zeros(30), np.ones(20)].astype(np.int64),
          "val": np.r_[np.zeros(15), np.ones(10)].astype(np.int64)}


@pytest.fixture
def registries(monkeypatch):
    """Registrations made inside a test vanish after it. The built-ins register when their modules are imported, so
    those are imported before the copy is taken (else they would register into the copy and vanish with it)."""
    from benchmarks import clinical, curves, learned, report  # noqa: F401
    monkeypatch.setattr(metric_registry, "_METRICS", dict(metric_registry._METRICS))
    monkeypatch.setattr(plotting, "_PLOTS", dict(plotting._PLOTS))


def _logits(split: str, seed: int) -> np.ndarray:
    z = 1.2 * (2 * LABELS[split] - 1) + np.random.default_rng(seed).normal(size=len(LABELS[split]))
    return np.stack([-z / 2, z / 2], axis=1).astype(np.float32)


def write_run(out: Path, method: str, seed: int) -> dict[str, np.ndarray]:
    config = RunConfig(method=method, dataset="breastmnist", seed=seed)
    logits = {s: _logits(s, 10 * seed + i) for i, s in enumerate(LABELS)}
    metrics = {s: compute_metrics(LABELS[s], torch.from_numpy(logits[s]), "multiclass") for s in logits}
    record = {"run_name": config.run_name, "key": config.key(), "label": method, "config": config.to_dict(),
              "status": "ok", "reason": None, "runtime": {"device": "cpu"}, "metrics": metrics,
              "params": {"total": 1000, "trainable": 10, "percent_trainable": 1.0}, "adapter_bytes": 40,
              "efficiency": {"device": "cpu"}, "history": []}
    record["predictions"] = P.write(P.path_for(out / "runs", config.run_name),
                                    {s: P.from_arrays(logits[s], LABELS[s]) for s in logits})
    atomic_write_json(out / "runs" / f"{config.run_name}.json", record)
    return logits


def _softmax(z: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.from_numpy(z).double(), dim=1).numpy()


def test_a_toy_prediction_metric_is_one_decorated_function_and_reaches_the_clinical_table(tmp_path, registries):
    @register_metric("positive_rate", higher_is_better=None, needs="scores", tasks=("binary",),
                     label="predicted positive rate")
    def positive_rate(scores, labels, task):
        return float((scores[:, 1] > 0.5).mean())

    logits = [write_run(tmp_path, "lora_c", seed) for seed in range(2)]
    r = build_reports(tmp_path, reference="lora_c")
    expected = [(_softmax(lg["test"])[:, 1] > 0.5).mean() for lg in logits]
    row = r.clinical.set_index("method").loc["lora_c"]
    assert row["positive_rate_mean"] == pytest.approx(np.mean(expected), abs=1e-12)
    assert row["positive_rate_std"] == pytest.approx(np.std(expected, ddof=1), abs=1e-12)
    csv = pd.read_csv(tmp_path / "tables" / "clinical.csv")
    assert list(csv.columns[-2:]) == ["positive_rate_mean", "positive_rate_std"]     # after the built-ins
    assert "positive_rate_mean" in (tmp_path / "tables" / "report.md").read_text()
    assert csv.columns[4] == "auprc_mean"                                            # built-ins keep their order


def test_a_toy_record_metric_is_computed_by_the_engine_and_shown_in_summary_and_majority_row(tmp_path,
                                                                                             registries):
    @register_metric("top_score", higher_is_better=True, needs="record", label="mean top score",
                     chance=lambda counts: 0.25)
    def top_score(scores, labels, task):
        return float(scores.max(axis=1).mean())

    z = _logits("test", 3)
    assert compute_metrics(LABELS["test"], torch.from_numpy(z), "multiclass")["top_score"] == \
        pytest.approx(_softmax(z).max(axis=1).mean())
    logits = [write_run(tmp_path, "lora_c", seed) for seed in range(2)]
    r = build_reports(tmp_path, reference="lora_c", metric="top_score")
    summary = pd.read_csv(tmp_path / "tables" / "summary.csv").set_index("method")
    assert summary.loc["lora_c", "top_score_mean"] == pytest.approx(
        np.mean([_softmax(lg["test"]).max(axis=1).mean() for lg in logits]))
    majority = pd.read_csv(tmp_path / "tables" / "majority.csv")
    assert majority["top_score"].tolist() == [0.25] and majority["acc"].tolist() == [30 / 50]
    assert "top_score" in (tmp_path / "tables" / "summary.md").read_text().splitlines()[0]
    assert r.statistics.empty or set(r.statistics["metric"]) == {"top_score"}
    # ... and gets a bootstrap interval, resample by resample with its own function
    scores, labels = _softmax(logits[0]["test"]), np.asarray(LABELS["test"])
    idx = np.random.default_rng(1).integers(0, len(labels), size=(5, len(labels)))
    assert stats.resampled_metric(scores, labels, idx, "multiclass", "top_score") == pytest.approx(
        [scores[i].max(axis=1).mean() for i in idx])
    assert stats.interval_metrics() == ("auc", "acc", "balanced_acc", "macro_f1", "top_score")
    row = pd.read_csv(tmp_path / "tables" / "intervals.csv").set_index(["method", "metric"]).loc[("lora_c",
                                                                                                  "top_score")]
    assert row["mean"] == pytest.approx(summary.loc["lora_c", "top_score_mean"])
    assert row["ci95_low"] < row["mean"] < row["ci95_high"]


def test_a_toy_plot_is_one_decorated_function_and_the_report_draws_it(tmp_path, registries):
    seen = []

    @register_plot("toy_counts")
    def toy_counts(inputs: plotting.PlotInputs) -> list[Path]:
        seen.append(sorted(inputs.df["run_name"]))
        path = inputs.folder / "toy_counts.txt"
        path.write_text(f"{len(inputs.records)} records, {len(inputs.preds.by_run)} with predictions\n")
        return [path]

    write_run(tmp_path, "lora_c", 0)
    write_run(tmp_path, "full_ft", 0)
    r = build_reports(tmp_path)
    assert (tmp_path / "plots" / "toy_counts.txt").read_text() == "2 records, 2 with predictions\n"
    assert tmp_path / "plots" / "toy_counts.txt" in r.plots and len(seen) == 1 and len(seen[0]) == 2
    names = {p.name for p in r.plots}      # the built-in figures still come from the same registry
    assert {"auc_vs_params.png", "acc_bars.png", "roc_pr__breastmnist.png", "confusion__breastmnist.png"} <= names


def test_the_built_ins_are_registered_in_their_table_order() -> None:
    import benchmarks.clinical  # noqa: F401
    from benchmarks import curves, learned, report  # noqa: F401
    assert metric_registry.names("record")[:4] == ("acc", "auc", "balanced_acc", "macro_f1")
    assert metric_registry.names("scores", "val_scores")[:6] == ("auprc", "ece", "brier", "sensitivity",
                                                                 "specificity", "threshold")
    assert {"accuracy_vs_params", "metric_bars", "training_curves", "trainer_state", "roc_pr", "reliability",
            "confusion", "learned_activations"} <= set(plotting.plot_names())


def test_duplicates_and_bad_declarations_are_refused(registries) -> None:
    with pytest.raises(DuplicateRegistrationError, match="metric 'auc' is already registered"):
        register_metric("auc", higher_is_better=True, needs="record")(lambda s, y, t: 0.0)
    with pytest.raises(DuplicateRegistrationError, match="plot 'roc_pr' is already registered"):
        register_plot("roc_pr")(lambda inputs: [])
    with pytest.raises(PetlConfigError, match="needs='logits'"):
        register_metric("x", higher_is_better=True, needs="logits")
    with pytest.raises(PetlConfigError, match="tasks"):
        register_metric("x", higher_is_better=True, needs="scores", tasks=("regression",))
    with pytest.raises(PetlConfigError, match="chance= applies to needs='record'"):
        register_metric("x", higher_is_better=True, needs="scores", chance=lambda c: 0.5)
    with pytest.raises(PetlConfigError, match="unknown metric 'nope'"):
        metric_registry.get_metric("nope")


def test_a_metric_is_nan_on_a_task_it_does_not_declare() -> None:
    import benchmarks.clinical  # noqa: F401
    three = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    spec = metric_registry.get_metric("sensitivity")
    assert np.isnan(metric_registry.evaluate(spec, three, np.array([0, 1, 2]), "multiclass",
                                             val_scores=three, val_labels=np.array([0, 1, 2])))
    assert metric_registry.task_kind("multiclass", 2) == "binary" and metric_registry.task_kind("multilabel", 2) \
        == "multilabel"
