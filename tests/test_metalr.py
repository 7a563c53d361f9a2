"""MetaLR: descent look-ahead, exact meta-gradient, rates move within bounds on real batches, the per-group
normalisation moves every group's rate (the official rule saturates at the clamp bounds), head-rate reset, exact
resume, meta-batches from the validation split, the test split untouched during training, composition with lora_c,
and the per-step cost against a plain Adam step."""

from __future__ import annotations

import io
import math
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.func import functional_call

import petl
from benchmarks import engine
from benchmarks.config import RunConfig, Runtime
from benchmarks.training.batches import CyclicBatches
from petl.methods.metalr import MetaLROptions, MetaLRTrainer, layer_groups

from _engine_helpers import breast_bundle, patch_data, simple_transforms

RT = Runtime(device="cpu", progress=False)
ce = nn.functional.cross_entropy


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # conftest.py says why


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    petl.set_head(m, "2")
    petl.apply(m, "metalr")
    return m


def _val_iter(n: int = 16):
    g = torch.Generator().manual_seed(1)
    while True:
        yield torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def _breast_trainer(init_seed: int = 0, **options: Any) -> tuple[MetaLRTrainer, Any, Any]:
    """timm's tiny ``test_resnet`` (stem, 4 blocks, head: 6 groups) on real BreastMNIST at 28 px, with a cycled
    real validation split. Returns (trainer, train transform, bundle)."""
    b = breast_bundle(n_train=160, n_val=48, n_test=8)
    train_tf, eval_tf = simple_transforms(28)
    torch.manual_seed(init_seed)
    model = petl.apply(petl.build_backbone("test_resnet", None, 2), "metalr").train()
    val = CyclicBatches(b.val.images, b.val.labels, 16, eval_tf, torch.device("cpu"), 0)
    return MetaLRTrainer(model, MetaLROptions(**options), lr=1e-3, val_batches=val), train_tf, b


def _steps(tr: MetaLRTrainer, train_tf: Any, b: Any, start: int, stop: int, per_epoch: int = 100) -> None:
    """Training steps ``start .. stop-1`` on consecutive 16-image batches, epoch = step // per_epoch."""
    for i in range(start, stop):
        tr.on_epoch_start(i // per_epoch)
        idx = slice(16 * i, 16 * (i + 1))
        x = train_tf(b.train.images[idx], torch.Generator().manual_seed(i))   # seeded flips: resumable
        tr.train_step(x, b.train.labels[idx], ce)


def _moved(tr: MetaLRTrainer, before: list[float]) -> list[float]:
    return [abs(math.log(r / r0)) for r, r0 in zip(tr.rates, before)]


def test_default_group_normalisation_moves_every_group() -> None:
    """The default moves most groups' rates; "max" (the old default) moves little beyond the largest group."""
    tr, tf, b = _breast_trainer(head_reset_epochs=0)
    assert tr.options.normalize == "group" and len(tr.group_names) == 6
    before = list(tr.rates)
    _steps(tr, tf, b, 0, 5)
    moved = _moved(tr, before)
    assert sum(m >= 0.05 for m in moved) >= 5, moved                        # 5 % of log-rate, half a max step
    assert all(m <= -5 * math.log(1 - tr.options.hyper_lr) + 1e-12 for m in moved)  # <= hyper_lr per step
    old, tf, b = _breast_trainer(head_reset_epochs=0, normalize="max")
    _steps(old, tf, b, 0, 5)
    assert sum(m >= 0.05 for m in _moved(old, before)) < sum(m >= 0.05 for m in moved)


def test_official_rule_with_large_hyper_lr_lands_on_the_clamp_bounds() -> None:
    tr, tf, b = _breast_trainer(head_reset_epochs=0, normalize="none", hyper_lr=1e6)
    lo, hi = tr.options.min_rate, tr.options.max_rate
    seen: set[float] = set()
    for step in range(2):
        _steps(tr, tf, b, step, step + 1)
        assert tr.rates == [hi if g < 0 else lo for g in tr.last_meta_grad]   # every rate on a bound, each step
        seen |= set(tr.rates)
    assert seen == {lo, hi}                                                 # and both bounds are reached


def test_head_rate_reset_then_moves() -> None:
    tr, tf, b = _breast_trainer(head_reset_epochs=1)
    head = tr.group_names.index("head")
    before = list(tr.rates)
    _steps(tr, tf, b, 0, 3, per_epoch=2)                  # steps 0, 1 in epoch 0 (reset), step 2 in epoch 1
    assert tr.meta_count[head] == 1 and all(c == 3 for i, c in enumerate(tr.meta_count) if i != head)
    assert tr.rates[head] != tr.lr and all(r != r0 for r, r0 in zip(tr.rates, before))
    tr2, tf, b = _breast_trainer(head_reset_epochs=1)
    _steps(tr2, tf, b, 0, 2, per_epoch=2)
    assert tr2.rates[head] == tr2.lr and tr2.meta_count[head] == 0       # held at lr, its RMS untouched


def test_reset_head_does_not_scale_other_groups() -> None:
    tr = MetaLRTrainer(_tiny_model(), MetaLROptions(normalize="max", head_reset_epochs=5), lr=1e-3,
                       val_batches=_val_iter())
    assert tr.group_names == ["0", "head"]
    tr.on_epoch_start(0)
    assert tr.normalized([2.0, 1000.0], [0, 1]) == [1.0, 0.0]           # the head's huge value is left out
    tr.on_epoch_start(5)
    assert tr.normalized([2.0, 1000.0], [0, 1]) == [0.002, 1.0]
    grp = MetaLRTrainer(_tiny_model(), MetaLROptions(head_reset_epochs=5), lr=1e-3, val_batches=_val_iter())
    grp.on_epoch_start(0)
    assert grp.normalized([-3.0, 1000.0], [0, 1]) == pytest.approx([-1.0, 0.0]) and grp.meta_count == [1, 0]
    ema = 0.99 * (0.01 * 3.0 ** 2) + 0.01 * 0.3 ** 2                       # Adam-style EMA of the square ...
    expected = 0.3 / math.sqrt(ema / (1 - 0.99 ** 2))                       # ... bias-corrected
    assert grp.normalized([0.3, 1.0], [0, 1]) == pytest.approx([expected, 0.0])
    assert grp.normalized([-50.0, 1.0], [0, 1]) == [-1.0, 0.0]             # a spike is clipped to hyper_lr


def _roundtrip(state: Any) -> Any:
    """Through torch.save / torch.load(weights_only=True), as the engine's epoch checkpoint does."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_resume_continues_exactly() -> None:
    full, tf, b = _breast_trainer(head_reset_epochs=1)
    _steps(full, tf, b, 0, 4, per_epoch=2)
    part, tf, b = _breast_trainer(head_reset_epochs=1)
    _steps(part, tf, b, 0, 2, per_epoch=2)
    saved = _roundtrip({"trainer": part.state_dict(), "model": part.model.state_dict(),
                        "val": part.val_batches.state_dict()})
    resumed, tf, b = _breast_trainer(init_seed=1, head_reset_epochs=1)      # other init: all state must load
    resumed.model.load_state_dict(saved["model"])
    resumed.load_state_dict(saved["trainer"])
    resumed.val_batches.load_state_dict(saved["val"])
    _steps(resumed, tf, b, 2, 4, per_epoch=2)
    assert resumed.rates == full.rates and resumed.meta_sq == full.meta_sq and resumed.meta_count == full.meta_count
    for (n, p), q in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(p, q), n


def test_resume_refuses_a_checkpoint_without_rms_state() -> None:
    tr = MetaLRTrainer(_tiny_model(), MetaLROptions(), lr=1e-3, val_batches=_val_iter())
    old = {k: v for k, v in tr.state_dict().items() if k not in ("normalize", "meta_sq", "meta_count")}
    with pytest.raises(petl.PetlConfigError, match="no RMS state.*delete the run's work folder"):
        tr.load_state_dict(old)
    mx = MetaLRTrainer(_tiny_model(), MetaLROptions(normalize="max"), lr=1e-3, val_batches=_val_iter())
    with pytest.raises(petl.PetlConfigError, match="normalize='group'.*normalize='max'"):
        mx.load_state_dict(tr.state_dict())
    mx.load_state_dict(old)                                                  # the old default needs no RMS state


def test_meta_batches_come_from_the_validation_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the engine: every meta-batch MetaLR draws (one per training step) is a validation batch."""
    b = breast_bundle(n_train=48, n_val=32, n_test=8)
    patch_data(monkeypatch, engine, b, 28)
    drawn: list[tuple[bool, bool]] = []
    real_next = CyclicBatches.__next__

    def spy(self: CyclicBatches) -> tuple[torch.Tensor, torch.Tensor]:
        drawn.append((self.images is b.val.images, self.labels is b.val.labels))
        return real_next(self)
    monkeypatch.setattr(CyclicBatches, "__next__", spy)
    cfg = RunConfig(method="metalr", dataset="breastmnist", backbone="test_resnet", weights=None, img_size=28,
                    epochs=1, batch_size=16, limit_train_batches=3)
    rec = engine.execute(cfg, RT, tmp_path)
    assert rec["status"] == "ok" and drawn == [(True, True)] * 3


def test_layer_groups_resnet() -> None:
    assert len(layer_groups(petl.build_backbone("resnet50", None, 2))) == 18   # stem + 16 blocks + head
    assert list(layer_groups(petl.build_backbone("resnet18", None, 2)))[:2] == ["stem", "layer1.0"]


def test_lookahead_is_descent_and_meta_gradient_exact() -> None:
    m = _tiny_model()
    tr = MetaLRTrainer(m, MetaLROptions(), lr=1e-3, val_batches=_val_iter())
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    params = [p for _, ps in zip(tr.group_names, tr.group_params) for _, p in ps]
    names = [n for ps in tr.group_params for n, _ in ps]
    grads = dict(zip(names, torch.autograd.grad(ce(m(x), y), params)))
    alpha = torch.tensor([0.1, 0.2], requires_grad=True)
    new = tr.lookahead(grads, alpha, [0, 1])
    for gi, ps in enumerate(tr.group_params):
        for n, p in ps:
            torch.testing.assert_close(new[n], p.detach() - alpha[gi].detach() * grads[n])
    # meta-gradient with detached train gradients equals the create_graph=True version
    xv, yv = torch.randn(16, 4), torch.randint(0, 3, (16,))
    (g_fast,) = torch.autograd.grad(ce(functional_call(m, new, (xv,)), yv), alpha)
    g_graph = torch.autograd.grad(ce(m(x), y), params, create_graph=True)
    slow = {n: p - alpha[gi] * g for gi, ps in enumerate(tr.group_params) for (n, p), g in
            zip(ps, g_graph[sum(len(q) for q in tr.group_params[:gi]):])}
    (g_slow,) = torch.autograd.grad(ce(functional_call(m, slow, (xv,)), yv), alpha)
    torch.testing.assert_close(g_fast, g_slow)


def test_rates_move_within_bounds_on_breastmnist() -> None:
    b = breast_bundle(n_train=32, n_val=32, n_test=8)
    train_tf, eval_tf = simple_transforms(32)
    torch.manual_seed(0)
    model = petl.apply(petl.build_backbone("resnet18", None, 2), "metalr")
    model.train()
    opts = MetaLROptions(head_reset_epochs=0)
    tr = MetaLRTrainer(model, opts, lr=1e-3,
                       val_batches=CyclicBatches(b.val.images, b.val.labels, 16, eval_tf, torch.device("cpu"), 0))
    before = list(tr.rates)
    assert len(before) == 10 and before[-1] == 1e-3 and before[0] == pytest.approx(1e-4)
    for i in range(2):
        idx = slice(16 * i, 16 * (i + 1))
        tr.on_epoch_start(0)
        tr.train_step(train_tf(b.train.images[idx], None), b.train.labels[idx], ce)
    assert tr.rates != before and all(opts.min_rate <= r <= opts.max_rate for r in tr.rates)
    assert set(tr.log()["rates"]) == set(tr.group_names)


class _Tripwire:
    """Stands in for the test split: any attribute access before final evaluation fails the test."""

    def __init__(self, split: Any) -> None:
        self._split, self.allowed = split, False

    def __getattr__(self, name: str) -> Any:
        if not self.__dict__["allowed"]:
            raise AssertionError(f"test split accessed ({name}) during training")
        return getattr(self.__dict__["_split"], name)


def test_test_split_only_read_at_final_evaluation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    b = breast_bundle(n_train=64, n_val=32, n_test=32)
    b.test = _Tripwire(b.test)
    patch_data(monkeypatch, engine, b, 32)
    real_final = engine.final_evaluation

    def final(*args: Any, **kw: Any) -> Any:
        b.test.allowed = True
        return real_final(*args, **kw)
    monkeypatch.setattr(engine, "final_evaluation", final)
    cfg = RunConfig(method="metalr", dataset="breastmnist", backbone="test_resnet", weights=None, img_size=32,
                    epochs=2, batch_size=32, limit_train_batches=2)
    rec = engine.execute(cfg, RT, tmp_path)
    assert rec["status"] == "ok" and b.test.allowed
    assert "rates" in rec["history"][-1]["trainer"] and len(rec["history"][-1]["trainer"]["rates"]) == 6


def test_metalr_over_lora_c_trains_only_lora_and_head() -> None:
    cfg = RunConfig(method="metalr+lora_c", dataset="x", backbone="resnet18", weights=None, img_size=32)
    torch.manual_seed(0)
    model, (factory, opts) = engine.build_model(cfg, 2)
    names = [m["method"] for m in petl.get_state(model).methods]
    assert names == ["lora_c", "metalr"]
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 2, (4,))
    tr = factory(model, opts, lr=1e-3, val_batches=iter([(x, y)] * 10))
    trained = {n for ps in tr.group_params for n, _ in ps}
    assert trained and all("lora" in n or n.startswith("fc.") for n in trained)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if n not in trained}
    model.train()
    tr.train_step(x, y, ce)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


@pytest.mark.benchmark
def test_step_cost_ratio_vs_plain_adam(capsys: pytest.CaptureFixture) -> None:
    """Not a timed assertion: prints the MetaLR / plain-Adam per-step time ratio (target <= 3x)."""
    torch.manual_seed(0)
    x, y = torch.randn(32, 3, 64, 64), torch.randint(0, 2, (32,))
    model = petl.apply(petl.build_backbone("resnet18", None, 2), "metalr").train()
    tr = MetaLRTrainer(model, MetaLROptions(), lr=1e-3, val_batches=iter([(x, y)] * 100))
    plain = torch.optim.Adam(model.parameters(), 1e-3)

    def plain_step() -> None:
        plain.zero_grad()
        ce(model(x), y).backward()
        plain.step()

    def timed(fn: Any, n: int = 5) -> float:
        fn()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t) / n
    t_plain, t_meta = timed(plain_step), timed(lambda: tr.train_step(x, y, ce))
    with capsys.disabled():
        print(f"\nMetaLR step {t_meta * 1e3:.1f} ms, plain Adam {t_plain * 1e3:.1f} ms, ratio {t_meta / t_plain:.2f}")
