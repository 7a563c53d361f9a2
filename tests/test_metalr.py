"""MetaLR: descent look-ahead, exact meta-gradient, rates move within bounds on real batches, the test split is
untouched during training, composition with lora_c, and the per-step cost against a plain Adam step."""

from __future__ import annotations

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
    cfg = RunConfig(method="metalr", dataset="breastmnist", backbone="resnet18", weights=None, img_size=32,
                    epochs=2, batch_size=32, limit_train_batches=2)
    rec = engine.execute(cfg, RT, tmp_path)
    assert rec["status"] == "ok" and b.test.allowed
    assert "rates" in rec["history"][-1]["trainer"] and len(rec["history"][-1]["trainer"]["rates"]) == 10


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
