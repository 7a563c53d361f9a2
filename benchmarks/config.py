"""Run configuration: one frozen dataclass per run, hashed into the run's stable key.

Everything that changes a run's result is a field of ``RunConfig`` (and so part of its key); everything that
only says where and how to execute it (device, data root, output folder, progress bars) is in ``Runtime``.

Key compatibility: fields added after records were first written (``KEY_DEFAULT_SKIPPED``) are left out of
``to_dict`` and of the hash while they hold the value earlier records implicitly had, so every earlier record keeps
its key, and a record without the field reads back with that value. Where the default is that value too
(``weights_sha256``, ``split_seed``) nothing changes for new runs; where the default changed a result
(``cosine_end``: the cosine schedule now ends after the last epoch), new runs get new keys, so a sweep never reuses
a record made under the old behaviour as if it were the new one. A local weights
file is keyed by its content (``weights_sha256``), not its path: the path stays in the record for display, a
changed file gets a new key, and the same file at another path keeps its key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Fields hashed into the key only when they differ from this default (added after records existed).
KEY_DEFAULT_SKIPPED: dict[str, Any] = {"weights_sha256": None, "split_seed": 0, "cosine_end": "last_epoch"}
# Fields the sweep derives itself; never set from a preset or the command line.
DERIVED_FIELDS = ("weights_sha256",)

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "step", "plateau", "constant")
COSINE_ENDS = ("after_last", "last_epoch")   # where the cosine reaches min_lr (benchmarks.training.schedule)
LOSSES = ("ce", "weighted_ce", "focal")
NORMS = ("imagenet", "half", "backbone")       # ImageNet mean/std; MedMNIST v2's 0.5/0.5; the backbone's own cfg
AUGMENTS = ("none", "light", "medical", "randaugment")
SELECT_METRICS = ("auc", "acc", "balanced_acc", "loss")
RESIZE_MODES = ("bilinear", "nearest")


@dataclass(frozen=True)
class RunConfig:
    """A fully resolved run. ``method`` may compose registered methods with '+' (``metalr+lora_c``)."""

    method: str
    dataset: str
    seed: int = 0
    options: dict[str, dict[str, Any]] = field(default_factory=dict)   # {"lora_c": {"rank": 4}, ...}
    backbone: str = "resnet50"
    weights: str | None = "imagenet"
    head: str = "linear"
    img_size: int = 224
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    head_lr: float | None = None            # None: same as lr
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    momentum: float = 0.9                   # SGD only
    schedule: str = "cosine"
    min_lr: float = 0.0
    step_milestones: tuple[int, ...] = ()   # epochs at which "step" multiplies the lr by step_gamma
    step_gamma: float = 0.1
    warmup_epochs: int = 0                  # linear lr warm-up
    warmup_head_epochs: int = 0             # head-only epochs before the method's trainable set trains
    augment: str = "none"
    norm: str = "imagenet"
    resize_mode: str = "bilinear"           # "nearest" reproduces MedMNIST v2's (224) upsampling
    data_size: int | None = None            # MedMNIST file size (28/64/128/224); None: 28
    split_seed: int = 0                     # seeds carved val/test splits; the same for every run seed and method
    cosine_end: str = "after_last"          # min_lr one step after the last epoch; "last_epoch": older records
    loss: str = "ce"
    focal_gamma: float = 2.0
    early_stop_patience: int = 0            # 0: off; else epochs without validation improvement
    select_metric: str = "auc"              # validation metric that picks the kept checkpoint
    limit_train_batches: int | None = None  # for smoke tests: cap the batches per epoch
    weights_sha256: str | None = None       # content hash of a local weights file (set by the sweep)

    def __post_init__(self) -> None:
        if self.schedule != "cosine" and self.cosine_end != KEY_DEFAULT_SKIPPED["cosine_end"]:
            # no effect on other schedules: held at the legacy value, so their records keep their keys
            object.__setattr__(self, "cosine_end", KEY_DEFAULT_SKIPPED["cosine_end"])

    @property
    def methods(self) -> list[str]:
        return self.method.split("+")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields; ``KEY_DEFAULT_SKIPPED`` fields only when they differ from their legacy value."""
        d = dataclasses.asdict(self)
        d["step_milestones"] = list(self.step_milestones)
        for name, default in KEY_DEFAULT_SKIPPED.items():
            if d[name] == default:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        d = dict(d)
        d["step_milestones"] = tuple(d.get("step_milestones", ()))
        for name, legacy in KEY_DEFAULT_SKIPPED.items():
            d.setdefault(name, legacy)      # a record from before the field existed had the legacy behaviour
        return cls(**d)

    def key(self) -> str:
        """Stable 12-hex-digit hash of the resolved configuration (a weights file counts by its content)."""
        d = self.to_dict()
        digest = d.pop("weights_sha256", None)
        if digest is not None:
            d["weights"] = f"sha256:{digest}"
        blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def run_name(self) -> str:
        """File-safe ``dataset__method__sSEED__key``; a ``folder:PATH`` dataset's path becomes one name part
        (its slashes would otherwise nest the record under runs/ where no reader finds it)."""
        dataset = re.sub(r"[^\w.+=-]+", "_", self.dataset).strip("_")[:80]
        return f"{dataset}__{self.method}__s{self.seed}__{self.key()}"


# Tensor layouts a run can ask for; here, not in benchmarks.layout, so that --help need not import torch.
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
SELECT_ON = ("none", "val")   # how a report picks configurations: all of them, or one per method on validation


@dataclass(frozen=True)
class Runtime:
    """Where and how to execute runs; not part of any run's key."""

    device: str = "auto"                 # auto | cpu | cuda
    data_root: Path | None = None        # None: $PETL_DATA_ROOT, else ~/.cache/petl/data
    progress: bool = True
    amp: bool = True                     # CUDA only
    channels_last: bool = True           # CUDA only; what memory_format="auto" does where nothing is measured
    memory_format: str = "auto"          # one of MEMORY_FORMATS (resolved by benchmarks.layout)
    compile: bool = False                # nn.Module.compile in place (benchmarks.layout)
    skip_unreadable: bool = False        # drop (and count) unreadable image files instead of failing


_SHA256_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, computed once per (path, size, mtime) in this process."""
    p = Path(path).resolve()
    st = p.stat()
    stamp = (str(p), st.st_size, st.st_mtime_ns)
    if stamp not in _SHA256_CACHE:
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _SHA256_CACHE[stamp] = h.hexdigest()
    return _SHA256_CACHE[stamp]


def with_weights_hash(config: RunConfig) -> RunConfig:
    """``config`` with ``weights_sha256`` set when ``weights`` is a local file (None / "imagenet" unchanged)."""
    if config.weights in (None, "imagenet"):
        return dataclasses.replace(config, weights_sha256=None)
    return dataclasses.replace(config, weights_sha256=file_sha256(config.weights))


def apply_method_recipes(config: RunConfig) -> RunConfig:
    """Fold each method's published-recipe hook (``MethodSpec.recipe``) into the config.

    Called when a sweep is expanded, so the run key covers the recipe actually used. A recipe hook takes the
    method's options dataclass and returns RunConfig field overrides (two_stage: head warm-up epochs, lrs).
    """
    import petl
    for name in config.methods:
        spec = petl.get_method(name)
        if spec.recipe is not None:
            options = petl.make_options(name, config.options.get(name, {}))
            config = dataclasses.replace(config, **spec.recipe(options))
    return config
