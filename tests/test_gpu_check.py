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


def _steps() -> dict[str, list[str]]:
    """Each `step NAME LIMIT python -m MODULE ...` line of the script: NAME -> the module and its arguments."""
    import shlex
    text = SCRIPT.read_text().replace("\\\n", " ")
    steps = {}
    for line in text.splitlines():
        if line.startswith("step ") and '"$PYTHON" -m ' in line:
            words = shlex.split(line.replace('"$PYTHON"', "python").replace("$", "X"))
            steps[words[1]] = words[words.index("-m") + 1:]
    return steps


def test_step_limits_fit_in_eight_minutes_and_every_step_has_one():
    import re
    limits = [int(x) for x in re.search(r"STEP_LIMITS=\(([\d ]+)\)", SCRIPT.read_text()).group(1).split()]
    steps = _steps()
    assert sum(limits) <= 8 * 60 and len(limits) == len(steps) == 5
    assert set(steps) == {"tests", "performance", "sweep", "layout", "compile"}


def test_every_benchmarks_step_parses_with_its_modules_own_flags():
    """A renamed or removed flag would only show on the GPU machine, inside its few minutes: parse them here."""
    from benchmarks import layout_ab, performance, run
    parsers = {"benchmarks.performance": performance.get_parser(), "benchmarks.layout_ab": layout_ab.get_parser(),
               "benchmarks.run": run.get_args_parser(with_catalogue=False)}
    steps = {name: words for name, words in _steps().items() if words[0] in parsers}
    assert set(steps) == {"performance", "sweep", "layout", "compile"}
    for name, (module, *args) in steps.items():
        parsed = parsers[module].parse_args(args)
        assert parsed.device == "cuda", name
    assert "--compile" in steps["compile"] and steps["compile"][steps["compile"].index("--layouts") + 1] == \
        "channels_last"
