"""One real BreastMNIST run per method of the CNN PEFT family (slow set): ImageNet EfficientNet-Lite0 (offline
weights) at 32 px, one epoch, through ``python -m benchmarks.run``; each must end in an ``ok`` record with test
metrics and the method's trainable count."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA_ROOT = Path(os.environ.get("PETL_DATA_ROOT", REPO.parent / "shared" / "data"))

FAMILY = ["ssf", "norm_tuning", "partial_ft", "peft_dora", "peft_loha", "peft_lokr", "peft_oft", "peft_boft"]


@pytest.mark.slow
@pytest.mark.parametrize("method", FAMILY)
def test_one_real_breastmnist_run(method: str, tmp_path: Path) -> None:
    if not (DATA_ROOT / "medmnist" / "breastmnist.npz").is_file():
        pytest.skip(f"BreastMNIST not found under {DATA_ROOT}; set PETL_DATA_ROOT")
    out = tmp_path / "out"
    args = ["--methods", method, "--datasets", "breastmnist", "--seeds", "0", "--backbone", "efficientnet_lite0",
            "--weights", "imagenet", "--img-size", "32", "--epochs", "1", "--batch-size", "32", "--device", "cpu",
            "--no-progress", "--data-root", str(DATA_ROOT), "--out", str(out)]
    done = subprocess.run([sys.executable, "-m", "benchmarks.run", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PETL_DATA_ROOT": str(DATA_ROOT)}, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in (out / "runs").glob("*.json")]
    assert len(records) == 1 and records[0]["status"] == "ok", records
    record = records[0]
    assert record["metrics"]["test"]["n"] == 156 and 0 <= record["metrics"]["test"]["auc"] <= 1
    import petl
    expected = petl.apply(petl.build_backbone("efficientnet_lite0", weights=None, num_classes=2), method)
    assert record["params"]["trainable"] == petl.trainable_parameters(expected)
