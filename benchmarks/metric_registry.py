"""The one registry of the metrics the benchmark reports: adding a metric is one decorated function.

    @register_metric("auprc", higher_is_better=True, needs="scores", tasks=("binary", "multiclass"), label="AUPRC")
    def auprc(scores, labels, task): ...

Every metric function takes ``(scores, labels, task)``: softmax / sigmoid scores (N x C), the true labels, and the
task (``multiclass``, which includes binary, or ``multilabel``). ``needs`` says what the metric is computed from,
and so where it appears:

* ``"record"``: computed by the engine on each run's test (and validation) logits through
  :func:`benchmarks.metrics.compute_metrics` and stored in the record, so it needs no predictions file. The
  summary table, the seed-level statistics, the majority-class row (``chance``, from the test class counts) and
  ``report --metric`` iterate these. Records made before a metric was registered lack it: their cells read "–".
* ``"scores"``: computed by the report from the stored per-image test predictions; the clinical table shows its
  mean and std over seeds.
* ``"val_scores"``: as ``"scores"``, and the function also receives ``val_scores`` and ``val_labels`` (a threshold
  chosen on validation and applied unchanged to test).

``tasks`` names the kinds of task the metric is defined on (``binary``, ``multiclass``, ``multilabel``); on any
other task it is NaN, so its table cell reads "–" instead of a number with no meaning. Metrics appear in the
order they are registered. Every ``"record"`` metric also gets a bootstrap interval (:mod:`benchmarks.stats`: the
four built-ins through a vectorised form, any other through its own function, resample by resample).

This module imports nothing heavy, so ``--help`` and the report's argument parsing stay light.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from petl.errors import DuplicateRegistrationError, PetlConfigError

NEEDS = ("record", "scores", "val_scores")
TASKS = ("binary", "multiclass", "multilabel")


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric: its function and what the tables need to know about it."""

    name: str
    fn: Callable[..., float]
    higher_is_better: bool | None      # None: a value that is not a score (a threshold chosen on validation)
    needs: str
    tasks: tuple[str, ...]
    label: str
    chance: Callable[[tuple[int, ...]], float] | None = None   # "record" metrics: value of always answering
    # the most frequent class, from the test count per class (the summary's majority-class row)

    def applies(self, task_kind: str) -> bool:
        return task_kind in self.tasks


_METRICS: dict[str, MetricSpec] = {}


def register_metric(name: str, *, higher_is_better: bool | None, needs: str, tasks: Sequence[str] = TASKS,
                    label: str | None = None,
                    chance: Callable[[tuple[int, ...]], float] | None = None) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn(scores, labels, task[, val_scores, val_labels]) -> float`` as metric ``name``.

    A second registration of one name raises ``DuplicateRegistrationError`` (it would replace a column silently).
    """
    if needs not in NEEDS:
        raise PetlConfigError(f"metric {name!r}: needs={needs!r} is not one of {', '.join(NEEDS)}")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise PetlConfigError(f"metric {name!r}: tasks {tuple(tasks)!r} must be a non-empty subset of {TASKS}")
    if chance is not None and needs != "record":
        raise PetlConfigError(f"metric {name!r}: chance= applies to needs='record' metrics only (the majority row "
                              f"is built from the records' class counts)")

    def decorate(fn: Callable[..., float]) -> Callable[..., float]:
        if name in _METRICS:
            raise DuplicateRegistrationError(f"metric {name!r} is already registered; choose another name")
        _METRICS[name] = MetricSpec(name, fn, higher_is_better, needs, tuple(tasks), label or name, chance)
        return fn

    return decorate


def get_metric(name: str) -> MetricSpec:
    try:
        return _METRICS[name]
    except KeyError:
        raise PetlConfigError(f"unknown metric {name!r}; registered: {', '.join(_METRICS)}") from None


def metrics(*needs: str) -> list[MetricSpec]:
    """The registered metrics whose ``needs`` is one of ``needs`` (all when none given), in registration order."""
    return [m for m in _METRICS.values() if not needs or m.needs in needs]


def names(*needs: str) -> tuple[str, ...]:
    return tuple(m.name for m in metrics(*needs))


def task_kind(task: str, num_classes: int) -> str:
    """``binary`` / ``multiclass`` / ``multilabel`` from a run's task and its number of score columns."""
    if task == "multilabel":
        return "multilabel"
    return "binary" if num_classes == 2 else "multiclass"


def evaluate(spec: MetricSpec, scores: Any, labels: Any, task: str, val_scores: Any = None,
             val_labels: Any = None) -> float:
    """``spec`` on one run's predictions; NaN on a task it is not defined on."""
    if not spec.applies(task_kind(task, int(scores.shape[1]))):
        return float("nan")
    if spec.needs == "val_scores":
        return float(spec.fn(scores, labels, task, val_scores=val_scores, val_labels=val_labels))
    return float(spec.fn(scores, labels, task))
