"""benchmarks/gpu_check.sh on a machine without CUDA: its syntax, its usage errors and its skip logic.

The GPU steps themselves run only on a CUDA machine (the script is the project's GPU evidence when one exists)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, **env})


def test_script_parses():
    done = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_usage_errors_exit_2(tmp_path):
    done = _run()
    assert done.returncode == 2 and "usage: bash benchmarks/gpu_check.sh DATA_DIR" in done.stderr
    done = _run(str(tmp_path))
    assert done.returncode == 2 and "medmnist/breastmnist.npz not found" in done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer of a machine without CUDA")
def test_without_cuda_exits_3_and_writes_nothing(tmp_path):
    (tmp_path / "data" / "medmnist").mkdir(parents=True)
    (tmp_path / "data" / "medmnist" / "breastmnist.npz").write_bytes(b"")      # only its presence is checked
    results = tmp_path / "results"
    done = _run(str(tmp_path / "data"), str(results))
    assert done.returncode == 3
    assert "no CUDA GPU visible" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not results.exists()
