"""Interleaved A/B of training steps (EfficientNet-Lite0, batch 64, 64 px, 1 thread) in one warm process: BitFit vs
GPAF's linear spline, rational, ACON-C and PReLU units in every activation slot (sharing per block, as the
offline-cpu preset's GPAF), the spline, rational and ACON-C each with petl's fused CPU kernels and with their
plain autograd forms ("autograd": the kernels switched off for that step, as PETL_NATIVE_KERNELS=0 does).

Run alone on the cores: python results/benchmarks/ab_gpaf_train_step.py > results/benchmarks/ab_gpaf_train_step.txt
(cited in results/README.md: what the extra activation slot alone costs against GPAF's 1.3x-of-BitFit target).
"""
import contextlib, time, torch, torch.nn.functional as F, petl
from petl import _native
torch.set_num_threads(1)
torch.manual_seed(0)
x = torch.randn(64, 3, 64, 64); y = torch.randint(0, 2, (64,))
@contextlib.contextmanager
def without_kernels():
    saved = dict(_native._loaded)
    _native._loaded["module"] = None
    try:
        yield
    finally:
        _native._loaded.clear(); _native._loaded.update(saved)
def mk(method, plain=False, **o):
    m = petl.build_backbone("efficientnet_lite0", weights=None, num_classes=2)
    petl.apply(m, method, **o)
    m.train(); opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3)
    def step():
        with without_kernels() if plain else contextlib.nullcontext():
            opt.zero_grad(set_to_none=True); F.cross_entropy(m(x), y).backward(); opt.step()
    return step
cases = {"bitfit": mk("bitfit")}
for kind in ("spline", "rational", "acon_c"):
    cases[f"gpaf_{kind}"] = mk("gpaf", kind=kind, where=["all"], sharing="block")
    cases[f"gpaf_{kind}_autograd"] = mk("gpaf", plain=True, kind=kind, where=["all"], sharing="block")
cases["gpaf_prelu"] = mk("gpaf", kind="prelu", where=["all"], sharing="block")
for s in cases.values():
    for _ in range(3): s()
times = {k: [] for k in cases}
for _ in range(8):
    for k, s in cases.items():
        t = time.perf_counter(); s(); times[k].append(time.perf_counter() - t)
med = {k: sorted(v)[len(v) // 2] * 1000 for k, v in times.items()}
for k, v in med.items():
    print(f"{k} median ms {v:.1f} min {min(times[k]) * 1000:.1f} (x{v / med['bitfit']:.2f} of bitfit)")
