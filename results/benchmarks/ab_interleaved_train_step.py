"""Interleaved A/B of training steps (ResNet-50, batch 32, 64 px) in one warm process: full_ft vs lora_c vs peft_lora.

Run: python results/benchmarks/ab_interleaved_train_step.py > results/benchmarks/ab_interleaved_train_step.txt
(2026-11-25, 2-core VM, first run: median ms full_ft 322.2, lora_c 302.4, peft_lora 274.1; two later reruns on a
slower VM state are in the .txt; all cited in results/benchmarks/README.md and results/README.md).
"""
import time, torch, torch.nn.functional as F, petl
torch.manual_seed(0)
g = torch.Generator().manual_seed(0)
x = torch.randn(32, 3, 64, 64, generator=g); y = torch.randint(0, 7, (32,), generator=g)
def mk(method, **o):
    m = petl.build_backbone("resnet50", weights=None, num_classes=7)
    if method: petl.apply(m, method, **o)
    m.train(); opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
    def step():
        opt.zero_grad(set_to_none=True); F.cross_entropy(m(x), y).backward(); opt.step()
    return step
cases = {"full_ft": mk("full_ft"), "lora_c": mk("lora_c", rank=4, alpha=8), "peft_lora": mk("peft_lora", rank=6, alpha=12)}
for s in cases.values():
    for _ in range(3): s()
times = {k: [] for k in cases}
for _ in range(8):
    for k, s in cases.items():
        t = time.perf_counter(); s(); times[k].append(time.perf_counter() - t)
for k, v in times.items():
    v = sorted(v); print(k, "median ms %.1f min %.1f" % (v[len(v)//2]*1000, v[0]*1000))
