"""Train / validate / test one run: ``execute(config, runtime, workdir)`` -> the run record body.

The engine never names a method: it applies ``config.methods`` through ``petl.apply`` (a method with a
``trainer_factory`` last), adds each ``MethodSpec.regularizer`` to the loss and steps with the method's
``trainer_factory`` (else :class:`~benchmarks.training.trainer.PlainTrainer`). Selection uses the validation
split only; the test split is read once, after training, by :func:`final_evaluation`.

A run reads as torchvision's classification reference does: :func:`setup`, :func:`resume`, then per epoch
:func:`train_epoch`, :func:`evaluate` and :func:`end_epoch` (selection and history, on a
:class:`~benchmarks.training.state.TrainState`) and the checkpoint, and at the end :func:`finish` (final
evaluation and the record, spelled once in :func:`run_record`).

A run that selects on validation AUC fails before training when a class is absent from the validation split
(the AUC would be NaN every epoch and the kept checkpoint arbitrary). A resumed run's record covers the whole
run: wall time, training throughput and peak memory are carried through the epoch checkpoint (``"totals"``)
and combined over the processes that trained it, each of which it lists with its commit, host and CPU share
(``efficiency.processes``); the time a killed process spent after its last checkpoint is not known and not
counted.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

import petl
from benchmarks.config import RunConfig, Runtime
from benchmarks.environment import process_origin
from benchmarks.layout import prepare_input, prepare_model, run_layout
from benchmarks.load import LoadMeter
from benchmarks.measure import Throughput, parameter_counts, peak_memory
from benchmarks.metrics import auc_undefined, compute_metrics
from benchmarks.training.batches import CyclicBatches, epoch_generator, shuffled_batches
from benchmarks.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from benchmarks.training.losses import make_criterion
from benchmarks.training.schedule import Schedule
from benchmarks.training.state import TrainState
from benchmarks.training.trainer import PlainTrainer, Trainer
from petl.activations import spline_kernel_status
from petl.trainer import missing_trainer_methods

EVAL_BATCH = 256
WARMUP_BATCHES = 3
SMALL_SPLIT_BYTES = 512 * 2**20   # splits up to this size are moved to the device once
#: a process entry of a checkpoint written before the engine kept one per process
UNKNOWN_PROCESS: dict[str, Any] = {"commit": None, "dirty": None, "host": None, "from_epoch": None,
                                   "wall_time_s": None, "cpu_share": None}


# --- environment ------------------------------------------------------------------------------------------

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast_dtype(runtime: Runtime, device: torch.device) -> torch.dtype | None:
    """bf16 where the GPU has it (no loss scaling needed), else fp16; None (fp32) on CPU or with amp off."""
    if device.type != "cuda" or not runtime.amp:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


# --- data and model ---------------------------------------------------------------------------------------

def load_bundle(config: RunConfig, runtime: Runtime) -> Any:
    """The dataset bundle (tests replace this function with a synthetic or guarded bundle).

    ``runtime.skip_unreadable`` drops unreadable image files (the loader prints their count) instead of failing.
    Carved splits (folder trees, ISIC's validation) come from ``config.split_seed``, never the run seed, so every
    seed and method is validated and tested on the same images.
    """
    from benchmarks.data import load_dataset
    return load_dataset(config.dataset, runtime.data_root, img_size=config.img_size, seed=config.split_seed,
                        data_size=config.data_size, skip_unreadable=runtime.skip_unreadable)


def make_transforms(config: RunConfig, model: nn.Module) -> tuple[Callable, Callable]:
    """(train transform with the configured augmentation, eval transform) normalised per ``config.norm``."""
    from benchmarks.data import IMAGENET_MEAN, IMAGENET_STD, make_batch_transform
    norms: dict[str, Callable[[], tuple[Any, Any]]] = {
        "imagenet": lambda: (IMAGENET_MEAN, IMAGENET_STD),
        "half": lambda: ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        "backbone": lambda: petl.backbone_mean_std(model),
    }
    if config.norm not in norms:
        raise ValueError(f"unknown norm {config.norm!r}; choose one of {', '.join(norms)}")
    mean, std = norms[config.norm]()
    train = make_batch_transform(config.img_size, mean, std, augment=config.augment, train=True,
                                 resize_mode=config.resize_mode)
    evaluate = make_batch_transform(config.img_size, mean, std, augment="none", train=False,
                                    resize_mode=config.resize_mode)
    return train, evaluate


def build_model(config: RunConfig, num_classes: int) -> tuple[nn.Module, Any]:
    """Backbone + methods in order (a method with a trainer_factory last). Returns (model, (its factory, its
    options) or None)."""
    model = petl.build_backbone(config.backbone, config.weights, num_classes, config.head)
    names = config.methods
    factories = {n: petl.get_method(n).trainer_factory for n in names}
    trainer_methods = [n for n in names if factories[n] is not None]
    if len(trainer_methods) > 1:
        raise petl.PetlConfigError(f"at most one method may supply a trainer, got {trainer_methods}")
    for name in [n for n in names if factories[n] is None] + trainer_methods:
        petl.apply(model, name, **config.options.get(name, {}))
    trainer_hook = None
    if trainer_methods:
        name = trainer_methods[0]
        trainer_hook = (factories[name], petl.make_options(name, config.options.get(name, {})))
    return model, trainer_hook


def _split_on(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    return images.to(device) if images.numel() * images.element_size() <= SMALL_SPLIT_BYTES else images


def _as_label_tensor(labels: Any) -> torch.Tensor:
    return torch.as_tensor(labels)


# --- evaluation -------------------------------------------------------------------------------------------

@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, transform: Callable, device: torch.device,
            amp_dtype: torch.dtype | None, meter: Throughput | None = None) -> torch.Tensor:
    """Logits (float32, CPU) for a whole split in eval mode."""
    model.eval()
    out = []
    for i in range(0, len(images), EVAL_BATCH):
        if meter is not None:
            meter.start_batch()
        x = transform(images[i:i + EVAL_BATCH].to(device, non_blocking=True), None)
        with _autocast(device, amp_dtype):
            z = model(x)
        out.append(z.float().cpu())
        if meter is not None:
            meter.end_batch(len(x))
    return torch.cat(out)


def evaluate_split(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, transform: Callable,
                   criterion: Callable, task: str, device: torch.device, amp_dtype: torch.dtype | None,
                   class_names: list[str] | None = None, meter: Throughput | None = None) -> dict[str, Any]:
    return split_metrics(predict(model, images, transform, device, amp_dtype, meter), labels, criterion, task,
                         device, class_names)


def split_metrics(logits: torch.Tensor, labels: torch.Tensor, criterion: Callable, task: str,
                  device: torch.device, class_names: list[str] | None = None) -> dict[str, Any]:
    """The record's metrics of one split from its logits, plus the criterion's loss."""
    metrics = compute_metrics(labels, logits, task, class_names)
    metrics["loss"] = float(criterion(logits.to(device), labels.to(device)))
    return metrics


def final_evaluation(model: nn.Module, bundle: Any, eval_tf: Callable, criterion: Callable,
                     device: torch.device, amp_dtype: torch.dtype | None, workdir: Path) -> dict[str, Any]:
    """Best state already loaded: validation metrics, adapter file, merge, then one timed test pass.

    This is the only place that reads ``bundle.test``. Both splits' logits are returned as ``predictions`` (the
    runner stores them beside the record, :mod:`benchmarks.predictions`).
    """
    from benchmarks.predictions import from_arrays
    names = list(bundle.class_names)
    val_y, test_y = _as_label_tensor(bundle.val.labels), _as_label_tensor(bundle.test.labels)
    val_logits = predict(model, bundle.val.images, eval_tf, device, amp_dtype)
    val = split_metrics(val_logits, val_y, criterion, bundle.task, device, names)
    adapter = petl.save_adapter(model, Path(workdir) / "adapter.safetensors")
    petl.merge(model)
    meter = Throughput(device, warmup=1)
    test_logits = predict(model, bundle.test.images, eval_tf, device, amp_dtype, meter)
    test = split_metrics(test_logits, test_y, criterion, bundle.task, device, names)
    return {"val": val, "test": test, "adapter_bytes": adapter.stat().st_size,
            "infer_images_per_s": meter.images_per_s(),
            "predictions": {"val": from_arrays(val_logits, val_y), "test": from_arrays(test_logits, test_y)}}


# --- training ---------------------------------------------------------------------------------------------

def _clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the method's whole trained state, also during a head-only warm-up: ``petl.trained_state`` reads
    the set the methods train as ``apply`` recorded it, not the warm-up's temporary ``requires_grad``."""
    return {k: v.clone() for k, v in petl.trained_state(model).items()}


def _select_value(metrics: dict[str, Any], select: str) -> float:
    return -metrics["loss"] if select == "loss" else float(metrics[select])


def _head_phase(model: nn.Module, base_trainable: set[str], head_only: bool) -> None:
    """Head-only warm-up: temporarily freeze every non-head parameter of the method's trainable set."""
    head = petl.head_module(model)
    head_ids = {id(p) for p in head.parameters()}
    for name, p in model.named_parameters():
        if name in base_trainable:
            p.requires_grad_(id(p) in head_ids or not head_only)


def validation_auc_problem(config: RunConfig, bundle: Any) -> str | None:
    """The failure reason when ``select_metric`` is AUC but the validation split makes it undefined, else None."""
    if config.select_metric != "auc":
        return None
    bad = auc_undefined(bundle.val.labels, bundle.task, bundle.num_classes, list(bundle.class_names))
    if not bad:
        return None
    what = "class(es) absent from" if bundle.task != "multilabel" else "label(s) without both values in"
    return (f"validation AUC is undefined on {bundle.name}: {what} its validation split: {', '.join(bad)}; the "
            f"checkpoint cannot be selected on it. Select on another metric (--select-metric loss, acc or "
            f"balanced_acc) or use a validation split that has every class")


def make_loss_fn(criterion: Callable, model: nn.Module) -> Callable:
    """Criterion plus every applied method's ``MethodSpec.regularizer(model)``."""
    specs = [petl.get_method(m["method"]) for m in petl.get_state(model).methods]
    regs = [spec.regularizer for spec in specs if spec.regularizer is not None]
    if not regs:
        return criterion
    return lambda z, y: criterion(z, y) + sum(r(model) for r in regs)


@dataclass
class Segment:
    """This process's share of a run (all of it unless resumed): its clock, machine load, training throughput
    and peak memory, which :meth:`totals` adds to the earlier processes' checkpointed totals."""

    t_start: float
    load: LoadMeter
    meter: Throughput
    start_epoch: int = 0
    peak_bytes: int = 0          # max over this process's epochs (each measured on its own)
    peak_kind: str = ""
    origin: dict[str, Any] = field(default_factory=dict)   # environment.process_origin: commit, dirty, host

    def totals(self, prior: dict[str, Any] | None) -> dict[str, Any]:
        """Whole-run totals so far: ``prior`` (earlier processes, from the checkpoint) plus this process, and
        ``processes``: one entry per process (its origin, first epoch, wall time and CPU share), so a run resumed
        at another commit or on another host says so. Processes checkpointed before entries were kept count as
        entries of unknown origin."""
        p = prior or {"wall_time_s": 0.0, "train_images": 0, "train_time_s": 0.0, "peak_memory_bytes": 0,
                      "peak_memory_kind": self.peak_kind, "segments": 0}
        images, seconds = self.meter.measured()
        wall = time.perf_counter() - self.t_start
        earlier = p.get("processes") or [dict(UNKNOWN_PROCESS) for _ in range(int(p["segments"]))]
        this = {**self.origin, "from_epoch": self.start_epoch, "wall_time_s": round(wall, 3),
                "cpu_share": self.load.cpu_share()}
        return {"wall_time_s": float(p["wall_time_s"]) + wall,
                "train_images": int(p["train_images"]) + images,
                "train_time_s": float(p["train_time_s"]) + seconds,
                "peak_memory_bytes": max(int(p["peak_memory_bytes"]), int(self.peak_bytes)),
                "peak_memory_kind": self.peak_kind or str(p["peak_memory_kind"]), "segments": int(p["segments"]) + 1,
                "processes": [*earlier, this]}


@dataclass
class Run:
    """One run set up for training: what every step below reads (the model, its trainer, the splits on the
    device, transforms, loss); built by :func:`setup`."""

    config: RunConfig
    runtime: Runtime
    workdir: Path
    device: torch.device
    amp_dtype: torch.dtype | None
    bundle: Any
    model: nn.Module
    layout: str
    trainer: Trainer
    val_cycle: CyclicBatches
    train_tf: Callable
    eval_tf: Callable
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    criterion: Callable
    loss_fn: Callable
    base_trainable: set[str]
    params: dict[str, Any]


def setup(config: RunConfig, runtime: Runtime, workdir: Path, device: torch.device, amp_dtype: torch.dtype | None,
          bundle: Any) -> Run:
    """Model with its methods on the device, transforms, loss and trainer (the method's own, else plain)."""
    model, trainer_hook = build_model(config, bundle.num_classes)
    layout = run_layout(runtime, config.backbone, device)
    model = prepare_model(model, layout, runtime.compile)
    model.to(device)
    train_tf, eval_tf = make_transforms(config, model)
    train_x, train_y = _split_on(bundle.train.images, device), _as_label_tensor(bundle.train.labels)
    val_x, val_y = _split_on(bundle.val.images, device), _as_label_tensor(bundle.val.labels)
    criterion = make_criterion(config.loss, bundle.task, train_y, bundle.num_classes, config.focal_gamma, device)
    loss_fn = make_loss_fn(criterion, model)
    params = parameter_counts(model)
    base_trainable = {n for n, p in model.named_parameters() if p.requires_grad}

    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    head_lr = config.head_lr if config.head_lr is not None else config.lr
    val_cycle = CyclicBatches(val_x, val_y, config.batch_size, eval_tf, device, config.seed)
    trainer: Trainer
    if trainer_hook is not None:
        factory, options = trainer_hook
        trainer = factory(model, options, lr=config.lr, val_batches=val_cycle, grad_scaler=scaler)
        missing = missing_trainer_methods(trainer)
        if missing:
            raise petl.PetlConfigError(f"the trainer of method(s) {config.method!r} lacks {', '.join(missing)} of "
                                       f"the petl.trainer.Trainer contract; add them to its class")
    else:
        schedule = Schedule(config.schedule, config.lr, head_lr, config.epochs, config.min_lr, config.warmup_epochs,
                            config.warmup_head_epochs, tuple(config.step_milestones), config.step_gamma,
                            maximize=config.select_metric != "loss", cosine_end=config.cosine_end)
        trainer = PlainTrainer(model, list(petl.head_module(model).parameters()), config.optimizer, schedule,
                               config.weight_decay, config.momentum, scaler)
    return Run(config=config, runtime=runtime, workdir=workdir, device=device, amp_dtype=amp_dtype, bundle=bundle,
               model=model, layout=layout, trainer=trainer, val_cycle=val_cycle, train_tf=train_tf, eval_tf=eval_tf,
               train_x=train_x, train_y=train_y, val_x=val_x, val_y=val_y, criterion=criterion, loss_fn=loss_fn,
               base_trainable=base_trainable, params=params)


def resume(run: Run) -> tuple[TrainState, int]:
    """(The loop's state, the first epoch to train): fresh, or restored from the work folder's checkpoint with
    the model, trainer, validation cycle and RNG exactly where it was written."""
    ckpt = load_checkpoint(run.workdir)
    if ckpt is None:
        return TrainState(best_state=_clone_state(run.model)), 0
    state = TrainState.from_checkpoint(ckpt)
    run.model.load_state_dict({k: v.to(run.device) for k, v in ckpt["state"].items()}, strict=False)
    run.trainer.load_state_dict(ckpt["trainer"])
    run.val_cycle.load_state_dict(ckpt["val_cycle"])
    set_rng_state(ckpt["rng"])
    epochs = run.config.epochs
    start_epoch = state.epoch + 1
    if state.stopped_early(run.config.early_stop_patience):
        start_epoch = epochs   # it had stopped early; the kill came before its record was written
    name = run.workdir.name
    print(f"{name}: resuming from epoch {start_epoch + 1}/{epochs} (checkpoint after epoch {state.epoch + 1} in "
          f"{run.workdir})" if start_epoch < epochs else
          f"{name}: training had finished (checkpoint after epoch {state.epoch + 1}); evaluating the kept state",
          flush=True)
    return state, start_epoch


def train_epoch(run: Run, epoch: int, meter: Throughput) -> tuple[list[float], str | None]:
    """One epoch of training steps: (the batch losses, the failure reason of a non-finite loss or None)."""
    config = run.config
    _head_phase(run.model, run.base_trainable, head_only=epoch < config.warmup_head_epochs)
    run.trainer.on_epoch_start(epoch)
    run.model.train()
    gen = epoch_generator(config.seed, epoch)
    batches = shuffled_batches(len(run.train_y), config.batch_size, gen, config.limit_train_batches)
    losses: list[float] = []
    reason = None
    bar = tqdm(batches, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not run.runtime.progress, leave=False)
    for b, idx in enumerate(bar):
        meter.start_batch()
        x = run.train_tf(run.train_x[idx].to(run.device, non_blocking=True), gen)
        x = prepare_input(x, run.layout)
        y = run.train_y[idx].to(run.device, non_blocking=True)
        with _autocast(run.device, run.amp_dtype):
            loss = run.trainer.train_step(x, y, run.loss_fn)
        meter.end_batch(len(idx))
        if not math.isfinite(loss):
            reason = f"non-finite training loss ({loss}) at epoch {epoch} batch {b}"
            break
        losses.append(loss)
        bar.set_postfix(loss=f"{loss:.4f}")
    bar.close()
    return losses, reason


def evaluate(run: Run) -> dict[str, Any]:
    """The validation split's metrics and loss (the model selection's only view of held-out data)."""
    return evaluate_split(run.model, run.val_x, run.val_y, run.eval_tf, run.criterion, run.bundle.task, run.device,
                          run.amp_dtype)


def end_epoch(run: Run, state: TrainState, epoch: int, losses: list[float], val: dict[str, Any],
              t_epoch: float) -> str | None:
    """Select on the epoch's validation metrics and log it: the failure reason when there is nothing to select
    on (non-finite loss, NaN select metric), else None with ``state`` updated and the epoch in its history."""
    config = run.config
    if not math.isfinite(val["loss"]):
        return f"non-finite validation loss at epoch {epoch}"
    score = _select_value(val, config.select_metric)
    if math.isnan(score):
        return (f"validation {config.select_metric} is NaN at epoch {epoch}, so no checkpoint can be selected on "
                f"it; select on another metric (--select-metric loss, acc or balanced_acc)")
    run.trainer.on_epoch_end(score)
    state.observe(epoch, score, lambda: _clone_state(run.model))
    log = run.trainer.log()
    lr = float(next(iter(run.trainer.learning_rates().values())))
    state.history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "val_loss": val["loss"],
                          "val_acc": val["acc"], "val_auc": val["auc"], "lr": lr,
                          "epoch_time_s": time.perf_counter() - t_epoch, "trainer": log})
    if run.runtime.progress:
        tqdm.write(f"epoch {epoch + 1}: loss {state.history[-1]['train_loss']:.4f} val_auc {val['auc']:.4f} "
                   f"val_acc {val['acc']:.4f}")
    return None


def run_record(status: str, reason: str | None, *, wall_time_s: float, metrics: dict[str, Any] | None = None,
               best_epoch: int = -1, history: list[dict[str, Any]] | None = None,
               params: dict[str, Any] | None = None, adapter_bytes: int | None = None,
               predictions: dict[str, Any] | None = None, efficiency: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run record body, the one place it is spelled (a run that failed before training leaves the defaults).
    ``predictions`` holds arrays: the runner writes them to a file beside the record, see benchmarks/execution.py."""
    history = history if history is not None else []
    record: dict[str, Any] = {"status": status, "reason": reason,
                              "metrics": metrics if metrics is not None else {"val": {}, "test": {}},
                              "best_epoch": best_epoch, "epochs_run": len(history), "history": history,
                              "params": params, "adapter_bytes": adapter_bytes}
    if predictions is not None:
        record["predictions"] = predictions
    record["efficiency"] = efficiency if efficiency is not None else {}
    record["wall_time_s"] = wall_time_s
    return record


def finish(run: Run, state: TrainState, segment: Segment, status: str, reason: str | None) -> dict[str, Any]:
    """The record of a run whose loop ended: for ``"ok"``, the kept best state evaluated (validation, adapter file,
    merge, test: :func:`final_evaluation`); always the whole-run efficiency figures."""
    _head_phase(run.model, run.base_trainable, head_only=False)
    metrics, adapter_bytes, infer, predictions = None, None, None, None
    if status == "ok":
        run.model.load_state_dict({k: v.to(run.device) for k, v in state.best_state.items()}, strict=False)
        final = final_evaluation(run.model, run.bundle, run.eval_tf, run.criterion, run.device, run.amp_dtype,
                                 run.workdir)
        metrics = {"val": final["val"], "test": final["test"]}
        adapter_bytes, infer, predictions = final["adapter_bytes"], final["infer_images_per_s"], final["predictions"]
    epoch_times = [h["epoch_time_s"] for h in state.history]
    totals = segment.totals(state.totals)
    if not totals["peak_memory_kind"]:         # no epoch trained at all (e.g. zero epochs): name the device's kind
        totals["peak_memory_kind"] = "cuda_max_memory_allocated" if run.device.type == "cuda" else "cpu_peak_rss"
    efficiency = {
        "train_images_per_s": totals["train_images"] / totals["train_time_s"] if totals["train_time_s"] > 0 else None,
        "infer_images_per_s": infer, "peak_memory_bytes": totals["peak_memory_bytes"],
        "peak_memory_kind": totals["peak_memory_kind"],
        "epoch_time_s": float(np.mean(epoch_times)) if epoch_times else None, "device": str(run.device),
        # throughput, peak memory and wall time cover every process that trained the run (from epoch 0) unless
        # it resumed from a checkpoint written before totals were carried (then: from start_epoch)
        "measured_from_epoch": 0 if state.carried else segment.start_epoch, "segments": totals["segments"],
        "processes": totals["processes"],
        "memory_format": run.layout, "machine_load": segment.load.summary(),
        "spline_kernel": spline_kernel_status()}
    return run_record(status, reason, metrics=metrics, best_epoch=state.best_epoch, history=state.history,
                      params=run.params, adapter_bytes=adapter_bytes, predictions=predictions, efficiency=efficiency,
                      wall_time_s=totals["wall_time_s"])


def execute(config: RunConfig, runtime: Runtime, workdir: Path, stop_after_epoch: int | None = None) -> dict:
    """Run (or resume) one training run; see the module docstring and the engine contract in the docs.

    ``stop_after_epoch`` ends the process after that many epochs (checkpoint written, status ``"interrupted"``),
    as a kill would: tests and the runner's resume checks use it.
    """
    t_start, load = time.perf_counter(), LoadMeter()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(runtime.device)
    amp_dtype = autocast_dtype(runtime, device)
    segment = Segment(t_start, load, Throughput(device, warmup=WARMUP_BATCHES), origin=process_origin(str(device)))
    seed_everything(config.seed)

    bundle = load_bundle(config, runtime)
    problem = validation_auc_problem(config, bundle)
    if problem is not None:
        return run_record("failed", problem, wall_time_s=time.perf_counter() - segment.t_start)
    run = setup(config, runtime, workdir, device, amp_dtype, bundle)
    state, segment.start_epoch = resume(run)

    status, reason = "ok", None
    for epoch in range(segment.start_epoch, config.epochs):
        t_epoch = time.perf_counter()
        with peak_memory(device) as peak:
            losses, reason = train_epoch(run, epoch, segment.meter)
            val = evaluate(run) if reason is None else None
        segment.peak_bytes, segment.peak_kind = max(segment.peak_bytes, peak.peak_bytes), peak.kind
        if val is not None:
            reason = end_epoch(run, state, epoch, losses, val, t_epoch)
        if reason is not None:
            status = "failed"
            break
        save_checkpoint(state.to_checkpoint(model_state=_clone_state(run.model), trainer=run.trainer.state_dict(),
                                            val_cycle=run.val_cycle.state_dict(), rng=rng_state(),
                                            totals=segment.totals(state.totals)), workdir)
        if state.stopped_early(config.early_stop_patience):
            break
        if stop_after_epoch is not None and stop_after_epoch <= epoch + 1 < config.epochs:
            status = "interrupted"
            break
    return finish(run, state, segment, status, reason)
