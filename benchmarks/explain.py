"""Grad-CAM grids of a finished run: where did the trained model look?

    python -m benchmarks.explain OUT --dataset D --method M --seed S [--n 16] [--split test] [--to FILE.png]
    python -m benchmarks.explain OUT --run KEY_OR_RUN_NAME [...]

Medical users check where a classifier looks before they trust it. This rebuilds the run's model from the adapter
file kept beside its record (:mod:`benchmarks.artifacts`), checks that it reproduces the run's stored logits on the
chosen images (a CAM of another model would mislead), and draws for each image the image, its Grad-CAM overlay
(``pytorch-grad-cam``; target: the predicted class), the true and the predicted label and the predicted class's
probability. The images shown are the most confident wrong predictions and the most confident right ones (about
half each where the split has enough), so both kinds are always on the figure. The target layer is
:func:`petl.backbones.cam_target_layer` (``--layer`` names another). ``--merge`` folds mergeable adapters first
(LoRA-C, SSF, peft LoRA): the CAM of the merged model, as it is deployed.

Bad input (no such run, a run without predictions or adapter, a layer that gets no gradient) is one line on
stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

LOGIT_TOLERANCE = 1e-3     # reloaded model (CPU fp32) vs the run's stored logits, relative to the logits' scale
AUTOCAST_TOLERANCE = 5e-2  # the same for a run evaluated under bf16 / fp16 autocast (its logits carry ~3 digits)


class ExplainError(RuntimeError):
    """Bad input to explain; ``str()`` is one line naming the problem and the fix."""


# ------------------------------------------------------------------------------------------- finding the run
def find_record(out: Path, run: str | None, dataset: str | None, method: str | None,
                seed: int | None) -> dict[str, Any]:
    """The one finished record of ``out`` named by ``run`` (key or run name) or by dataset + method + seed."""
    from benchmarks.records import load_folder
    runs_dir = Path(out) / "runs"
    if not runs_dir.is_dir():
        raise ExplainError(f"{runs_dir} does not exist; pass the --out folder of a benchmarks.run sweep")
    records = [record for _, record in load_folder(runs_dir)]
    if run is not None:
        hits = [r for r in records if run in (r.get("key"), r.get("run_name"))]
        wanted = f"--run {run}"
    else:
        if dataset is None or method is None:
            raise ExplainError("name the run: --run KEY, or --dataset D --method M [--seed S]")
        hits = [r for r in records if r.get("dataset") == dataset and r.get("method") == method
                and (seed is None or int(r.get("seed", -1)) == seed)]
        wanted = f"--dataset {dataset} --method {method}" + (f" --seed {seed}" if seed is not None else "")
    if not hits:
        known = sorted({f"{r.get('dataset')}/{r.get('method')}/s{r.get('seed')}" for r in records})
        raise ExplainError(f"no run matches {wanted} in {runs_dir}; recorded: {', '.join(known[:12]) or 'none'}")
    if len(hits) > 1:
        raise ExplainError(f"{len(hits)} runs match {wanted} in {runs_dir}; pick one with --run "
                           f"({', '.join(str(r.get('key')) for r in hits[:6])})")
    record = hits[0]
    if record.get("status") != "ok":
        raise ExplainError(f"run {record.get('run_name')} did not finish (status {record.get('status')}: "
                           f"{record.get('reason')}); rerun it first")
    return record


def choose_images(pred: np.ndarray, labels: np.ndarray, confidence: np.ndarray, n: int) -> np.ndarray:
    """Row positions to show: the most confident wrong predictions (up to half of ``n``), then the most confident
    right ones, topped up from either kind when one is short; ordered wrong first."""
    right = labels == pred
    order = np.argsort(-confidence, kind="stable")
    wrong_rows, right_rows = order[~right[order]], order[right[order]]
    n = min(n, len(pred))
    n_wrong = min(len(wrong_rows), max(n - len(right_rows), n // 2))
    return np.concatenate([wrong_rows[:n_wrong], right_rows[:n - n_wrong]]).astype(np.int64)


# ------------------------------------------------------------------------------------------------ the maps
def grad_cam(model: torch.nn.Module, layer_name: str, x: torch.Tensor, targets: Sequence[int]) -> np.ndarray:
    """Grad-CAM maps (N, H, W) in [0, 1] at the input size, for class ``targets[i]`` of image ``i``.

    The input gets ``requires_grad`` so the target layer has a gradient even when every parameter is frozen
    (linear probe, a merged model). ``ExplainError`` when the layer gets none (it is not on the path to the
    output, or its output is not a tensor).
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    modules = dict(model.named_modules())
    if layer_name not in modules:
        raise ExplainError(f"the model has no layer {layer_name!r}; pass --layer with a module name "
                           f"(e.g. {', '.join(list(modules)[-4:])})")
    _check_layer(model, modules[layer_name], layer_name, x[:1])
    with GradCAM(model=model, target_layers=[modules[layer_name]]) as cam:
        cam.compute_input_gradient = True
        try:
            maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])
        except (IndexError, ValueError, TypeError):    # pytorch-grad-cam found no usable gradient for the layer
            raise ExplainError(f"layer {layer_name!r} gets no gradient from the class score (not on the path to "
                               f"the output); pass --layer with a feature layer before the pooling") from None
        grads = [g.clone() for g in cam.activations_and_grads.gradients]   # the context's exit clears them
    if not grads or not any(float(g.abs().max()) > 0 for g in grads):
        raise ExplainError(f"layer {layer_name!r} gets a zero gradient from the class score; pass --layer with a "
                           f"feature layer before the pooling")
    return np.asarray(maps, dtype=np.float32)


def _check_layer(model: torch.nn.Module, layer: torch.nn.Module, name: str, x: torch.Tensor) -> None:
    """The layer must output a spatial feature map (N, C, H, W) that carries a gradient from the input."""
    seen: list[Any] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        with torch.enable_grad():
            model(x.clone().requires_grad_(True))
    finally:
        handle.remove()
    if not seen:
        raise ExplainError(f"layer {name!r} is not used by the model's forward; pass --layer with a feature layer")
    out = seen[-1]
    if not isinstance(out, torch.Tensor) or out.dim() != 4:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ExplainError(f"layer {name!r} outputs {shape}, not a spatial feature map (N, C, H, W); pass --layer "
                           f"with a conv / stage layer before the pooling")
    if not out.requires_grad:
        raise ExplainError(f"layer {name!r} gets no gradient (its output does not depend on the input through "
                           f"autograd); pass --layer with a feature layer before the pooling")


# ------------------------------------------------------------------------------------------------- figure
def draw_grid(images: np.ndarray, maps: np.ndarray, true_names: list[str], pred_names: list[str],
              probs: np.ndarray, title: str, path: Path, cols: int = 4) -> Path:
    """One PNG: per image a pair of panels (image, CAM overlay) titled true / predicted / probability, the title
    green for a right prediction and red for a wrong one; one colour bar for the CAM scale."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    n = len(images)
    cols = max(1, min(cols, n))
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(2.3 * 2 * cols, 2.75 * rows + 0.9), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    shown = None
    for i in range(n):
        r, c = divmod(i, cols)
        ax_img, ax_cam = axes[r, 2 * c], axes[r, 2 * c + 1]
        img = images[i]
        gray = img.ndim == 2
        ax_img.imshow(img, cmap="gray" if gray else None, vmin=0, vmax=1)
        ax_cam.imshow(img, cmap="gray" if gray else None, vmin=0, vmax=1)
        shown = ax_cam.imshow(maps[i], cmap="jet", alpha=0.45, vmin=0, vmax=1)
        right = true_names[i] == pred_names[i]
        color = "darkgreen" if right else "firebrick"
        text = f"true: {true_names[i]}\npred: {pred_names[i]}\np(pred) = {probs[i]:.2f}"
        ax_img.set_title(text, fontsize=7.5, color=color, loc="left")
        ax_cam.set_title("Grad-CAM", fontsize=7.5, color=color)
    fig.suptitle(title, fontsize=10)
    handles = [Line2D([], [], color="darkgreen", lw=3, label="right prediction"),
               Line2D([], [], color="firebrick", lw=3, label="wrong prediction")]
    fig.legend(handles=handles, loc="lower left", ncol=2, fontsize=8, frameon=False, bbox_to_anchor=(0.0, 0.0))
    fig.tight_layout(rect=(0, 0.05, 0.92, 0.96))
    if shown is not None:
        cax = fig.add_axes((0.935, 0.15, 0.012, 0.7))
        fig.colorbar(shown, cax=cax).set_label("Grad-CAM (0 = low, 1 = high)", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------ pipeline
def explain(out: Path, record: dict[str, Any], *, n: int = 16, split: str = "test", to: Path | None = None,
            layer: str | None = None, merge: bool = False, data_root: Path | None = None,
            bundle: Any = None) -> Path:
    """Write the Grad-CAM grid of ``record``'s run (see the module docstring); returns the PNG's path."""
    import petl
    from benchmarks.artifacts import adapter_path
    from benchmarks.config import RunConfig, Runtime
    from benchmarks.engine import load_bundle, make_transforms
    from benchmarks.predictions import load_for_record
    from petl.backbones import cam_target_layer
    runs_dir = Path(out) / "runs"
    name = str(record.get("run_name"))
    splits = load_for_record(record, runs_dir)
    if splits is None:
        raise ExplainError(f"run {name} has no predictions file (recorded before predictions were kept); rerun it "
                           f"with python -m benchmarks.run --no-resume")
    if split not in splits:
        raise ExplainError(f"run {name} has no {split!r} predictions; choose --split {' or '.join(sorted(splits))}")
    path = adapter_path(record, runs_dir)
    if n < 1:
        raise ExplainError(f"--n must be >= 1, got {n}")
    model = petl.load_adapter(path).eval()
    if merge:
        petl.merge(model)
    config = RunConfig.from_dict(record["config"])
    if bundle is None:
        bundle = load_bundle(config, Runtime(device="cpu", data_root=data_root, progress=False))
    stored = splits[split]
    task = "multilabel" if stored.labels.ndim == 2 else "multiclass"
    scores = stored.scores(task)
    pred = scores.argmax(1)
    confidence = scores[np.arange(len(pred)), pred]
    truth = stored.labels
    if task == "multilabel":   # shown: the top label; right when that label is present
        truth = np.where(stored.labels[np.arange(len(pred)), pred] > 0.5, pred, -1)
    rows = choose_images(pred, truth, confidence, n)
    images_u8 = getattr(bundle, split).images[torch.as_tensor(stored.index[rows])]
    _, eval_tf = make_transforms(config, model)
    x = eval_tf(images_u8, None)
    with torch.no_grad():
        logits = model(x).float().numpy()
    want = stored.logits[rows]
    err, scale = float(np.abs(logits - want).max()), max(float(np.abs(want).max()), 1.0)
    precision = str((record.get("runtime") or {}).get("precision", "fp32"))
    tolerance = LOGIT_TOLERANCE if precision == "fp32" else AUTOCAST_TOLERANCE
    if err > tolerance * scale:
        raise ExplainError(f"the model rebuilt from {path} does not reproduce run {name}'s stored {split} logits "
                           f"(max |difference| {err:.3g}); its adapter or data changed: rerun the run")
    layer_name = layer or cam_target_layer(model, config.backbone)
    maps = grad_cam(model, layer_name, x, pred[rows])
    shown = _display_images(images_u8, config.img_size)
    class_names = list(bundle.class_names)
    label = lambda i: "(none)" if i < 0 else textwrap.shorten(class_names[int(i)], 22, placeholder="…")  # noqa: E731
    n_wrong = int((truth[rows] != pred[rows]).sum())
    title = (f"Grad-CAM of {record.get('label') or record.get('method')} on {record.get('dataset')} {split} "
             f"(seed {record.get('seed')}, layer {layer_name}{', merged' if merge else ''}): "
             f"{n_wrong} wrong, {len(rows) - n_wrong} right, most confident first")
    target = Path(to) if to is not None else Path(out) / "explain" / f"{name}.{split}.gradcam.png"
    return draw_grid(shown, maps, [label(t) for t in truth[rows]], [label(p) for p in pred[rows]],
                     confidence[rows], title, target)


def _display_images(images_u8: torch.Tensor, size: int) -> np.ndarray:
    """The images as the model saw them (resized to ``size``), in [0, 1]: (N, H, W) gray or (N, H, W, 3)."""
    from benchmarks.data.transforms import resize
    x = resize(images_u8.float().div(255.0), size, "bilinear").clamp(0, 1)
    return x[:, 0].numpy() if x.shape[1] == 1 else x.permute(0, 2, 3, 1).numpy()


# ------------------------------------------------------------------------------------------------------ CLI
def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.explain", description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="the --out folder of a sweep (holds runs/)")
    p.add_argument("--run", help="run key or run name (instead of --dataset/--method/--seed)")
    p.add_argument("--dataset")
    p.add_argument("--method")
    p.add_argument("--seed", type=int)
    p.add_argument("--n", type=int, default=16, help="images on the grid (default 16)")
    p.add_argument("--split", default="test", choices=("val", "test"))
    p.add_argument("--layer", help="target layer (default: petl.backbones.cam_target_layer)")
    p.add_argument("--merge", action="store_true", help="fold mergeable adapters first (the deployed model)")
    p.add_argument("--data-root", type=Path, help="data folder (default $PETL_DATA_ROOT)")
    p.add_argument("--to", type=Path, help="PNG path (default OUT/explain/<run>.<split>.gradcam.png)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    import petl
    from benchmarks.artifacts import ArtifactError
    from benchmarks.data.errors import DataError
    from benchmarks.predictions import PredictionsError
    from benchmarks.store import StoreError
    args = get_args_parser().parse_args(argv)
    try:
        record = find_record(args.out, args.run, args.dataset, args.method, args.seed)
        path = explain(args.out, record, n=args.n, split=args.split, to=args.to, layer=args.layer,
                       merge=args.merge, data_root=args.data_root)
    except (ExplainError, ArtifactError, PredictionsError, StoreError, DataError, petl.PetlError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
