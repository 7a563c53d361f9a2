"""One test set for every seed: carved splits come from the run's ``split_seed`` (default 0), never its seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks import engine
from benchmarks.config import RunConfig, Runtime


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("PETL_CACHE_DIR", str(tmp_path / "cache"))
    for c, cls in enumerate(("a", "b")):
        (tmp_path / "t" / cls).mkdir(parents=True)
        for j in range(20):
            Image.fromarray(np.full((12, 12), j * 10 + c, np.uint8)).save(tmp_path / "t" / cls / f"{j}.png")
    return f"folder:{tmp_path / 't'}"


def test_every_run_seed_and_method_gets_the_same_carved_splits(tree: str) -> None:
    rt = Runtime(device="cpu", progress=False)
    bundles = [engine.load_bundle(RunConfig(method=m, dataset=tree, seed=s, img_size=16), rt)
               for m, s in (("full_ft", 0), ("full_ft", 1), ("lora_c", 2))]
    for b in bundles[1:]:
        assert b.test.ids == bundles[0].test.ids and b.val.ids == bundles[0].val.ids
    other = engine.load_bundle(RunConfig(method="full_ft", dataset=tree, seed=0, img_size=16, split_seed=3), rt)
    assert set(other.test.ids) != set(bundles[0].test.ids)


def test_split_seed_keeps_old_keys_at_its_default() -> None:
    base = RunConfig(method="full_ft", dataset="isic2018", seed=1)
    assert "split_seed" not in base.to_dict()
    assert RunConfig(method="full_ft", dataset="isic2018", seed=1, split_seed=0).key() == base.key()
    assert RunConfig(method="full_ft", dataset="isic2018", seed=1, split_seed=2).key() != base.key()
