"""A fresh process's bare step vs one whose allocator is warm: why partial_ft's sweep beat its bare step (1.44x).

Run (alone on the cores): python results/benchmarks/ab_cold_allocator.py > results/benchmarks/ab_cold_allocator.txt

``benchmarks.performance`` times each method in a fresh process; a sweep trains in a long-lived one that has
already loaded a dataset and often run other methods. glibc's malloc serves large blocks with mmap and hands
freed heap memory back to the OS until frees of large blocks raise its (dynamic) thresholds, so a fresh process
may pay page faults on every step's activation buffers (``ab_bare_weights.txt`` ruled out the weights' values). Each arm here is a fresh child process
timing the same train step (Lite0, 64 px, batch 64, the preset's options, channels_last, random weights, AdamW)
for ``BLOCKS`` blocks of 5 steps after 5 warm-up steps:

* ``cold``: the child as ``benchmarks.performance`` started it before this A/B (glibc defaults);
* ``warm``: first 5 full_ft steps in the same child (a process that has run larger steps, as a sweep's has),
  then the method;
* ``fixed``: glibc defaults replaced by ``MALLOC_MMAP_THRESHOLD_`` = 1 GiB and ``MALLOC_TRIM_THRESHOLD_`` = 4 GiB
  (no mmap for tensor buffers, no trimming), read by glibc at process start.

Each arm prints img/s (median over blocks) and the child's minor page faults (``resource.getrusage``). Arms
alternate, ``ROUNDS`` children per arm.
"""
import os
import statistics
import subprocess
import sys

METHODS = ("partial_ft", "full_ft")
BLOCKS, ROUNDS = 12, 2
FIXED = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 32)}

CHILD = r"""
import resource, statistics, sys, time
import torch, torch.nn.functional as F
import petl
from benchmarks.layout import prepare_input, prepare_model
from benchmarks.performance import method_options
torch.set_num_threads(2)
opts = method_options("offline-cpu")
g = torch.Generator().manual_seed(0)
x = prepare_input(torch.randn(64, 3, 64, 64, generator=g), "channels_last")
y = torch.randint(0, 7, (64,), generator=g)

def trainer(method):
    torch.manual_seed(0)
    m = petl.build_backbone("efficientnet_lite0", weights=None, num_classes=7)
    petl.apply(m, method, **opts.get(method, {}))
    m = prepare_model(m, "channels_last").train()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
    def step():
        loss = F.cross_entropy(m(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step

method, warm, blocks = sys.argv[1], sys.argv[2] == "warm", int(sys.argv[3])
if warm:
    other = trainer("full_ft")
    for _ in range(5):
        other()
    del other
step = trainer(method)
for _ in range(5):
    step()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rates = []
for _ in range(blocks):
    t0 = time.perf_counter()
    for _ in range(5):
        step()
    rates.append(320 / (time.perf_counter() - t0))
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
print(f"{statistics.median(rates):.1f} {faults / (5 * blocks):.0f}")
"""


def child(method: str, arm: str) -> tuple[float, float]:
    env = dict(os.environ, **FIXED) if arm == "fixed" else dict(os.environ)
    out = subprocess.run([sys.executable, "-c", CHILD, method, arm, str(BLOCKS)], env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    return float(out[0]), float(out[1])


print(f"python {sys.version.split()[0]}; {BLOCKS} blocks of 5 steps per child, {ROUNDS} children per arm; "
      f"img/s = median over blocks, faults = minor page faults per measured step", flush=True)
for method in METHODS:
    results: dict[str, list[tuple[float, float]]] = {"cold": [], "warm": [], "fixed": []}
    for _ in range(ROUNDS):
        for arm in results:
            results[arm].append(child(method, arm))
    line = ", ".join(f"{arm} {statistics.median(r for r, _ in rs):.1f} img/s ({statistics.median(f for _, f in rs):.0f} "
                     f"faults/step; children {' / '.join(f'{r:.0f}' for r, _ in rs)})" for arm, rs in results.items())
    print(f"{method}: {line}", flush=True)
