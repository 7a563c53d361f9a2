"""What a run was computed with: package versions, device, CPU model, git commit.

Stored in every run record so a number in a table can be traced to the software and hardware that produced it
(a result without its environment cannot be compared with a later one).
"""

from __future__ import annotations

import functools
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.allocator import allocator_in_effect

PACKAGES = ("torch", "torchvision", "timm", "peft", "numpy", "medmnist", "petl")
REPO_ROOT = Path(__file__).resolve().parent.parent


def package_version(name: str) -> str | None:
    """Installed version of a distribution, or None when it is not installed (never an error: it is a fact)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU's marketing name (``platform.processor()`` is often empty on Linux, so read /proc/cpuinfo)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    """Human-readable accelerator name for ``device`` ("cuda", "cuda:1", "cpu")."""
    if device.startswith("cuda"):
        import torch
        if torch.cuda.is_available():
            return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({cpu_model()})"


def git_state(repo: Path = REPO_ROOT) -> dict[str, Any]:
    """Commit hash and dirty flag of the source tree (changes outside results/); None values without git."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    # results/ is output, not source: a sweep's own records and tables must not mark the next run's code dirty
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


@functools.lru_cache(maxsize=None)
def _static_environment() -> dict[str, Any]:
    # Cached: git costs a subprocess per call, and the first call (before the process's first run trains) fixes
    # the commit the process's code was loaded from; a commit made while a sweep runs must not relabel its runs.
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {name: package_version(name) for name in PACKAGES},
        "cpu": cpu_model(),
        "git": git_state(),
        "allocator": allocator_in_effect(),   # glibc malloc settings the process started with
    }


def collect_environment(device: str = "cpu") -> dict[str, Any]:
    """The environment block of a run record; ``device`` is the device the run actually used."""
    env = dict(_static_environment())
    env["device"] = device
    env["device_name"] = device_name(device)
    import torch
    env["torch_threads"] = torch.get_num_threads()
    env["cuda"] = torch.version.cuda
    return env


def process_origin(device: str = "cpu") -> dict[str, Any]:
    """What one training process ran as: commit, dirty flag and host (the accelerator's or CPU's name).

    A run resumed by a later process may run at another commit or on another host; the engine keeps one of these
    per process (``efficiency.processes``) so the record does not pass the last process's origin off as the
    whole run's."""
    git = _static_environment()["git"]
    return {"commit": git["commit"], "dirty": git["dirty"], "host": device_name(device)}
