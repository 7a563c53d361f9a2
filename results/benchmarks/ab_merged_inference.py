"""Interleaved A/B of inference (eval, no_grad) in one warm process: plain EfficientNet-Lite0 vs LoRA-C merged.

Issue 12's target "merged LoRA-C inference >= 0.98x the plain backbone" cannot be judged from the performance
command's separate-process 10-step cells (they move by tens of percent between processes); here both models are
stepped in turn, round after round, in both layouts, at 64 px (batch 64) and 224 px (batch 32). LoRA-C uses the
offline-cpu preset's options (rank 4, alpha 8) with its B factors moved off zero, so merging changes the weights.

Run: python results/benchmarks/ab_merged_inference.py > results/benchmarks/ab_merged_inference.txt
"""
import platform
import time

import torch

import petl

torch.manual_seed(0)


def build(method: str | None, layout: torch.memory_format) -> torch.nn.Module:
    model = petl.build_backbone("efficientnet_lite0", weights=None, num_classes=2)
    if method is not None:
        petl.apply(model, method, rank=4, alpha=8)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.requires_grad and "lora" in name.lower():
                    p.add_(0.01 * torch.randn_like(p))
        merged = petl.merge(model)
        assert merged > 0, "nothing was merged"
    return model.eval().to(memory_format=layout)


def main() -> None:
    print(f"# python results/benchmarks/ab_merged_inference.py, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    for size, batch, rounds in ((64, 64, 30), (224, 32, 10)):
        for layout_name, layout in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
            x = torch.randn(batch, 3, size, size).contiguous(memory_format=layout)
            cases = {"plain": build(None, layout), "lora_c merged": build("lora_c", layout)}
            times = {k: [] for k in cases}
            with torch.inference_mode():
                for m in cases.values():
                    for _ in range(3):
                        m(x)
                for _ in range(rounds):
                    for k, m in cases.items():
                        t = time.perf_counter()
                        m(x)
                        times[k].append(time.perf_counter() - t)
            med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
            for k, v in times.items():
                print(f"{size}px batch {batch} {layout_name:13s} {k:14s} median ms {med[k] * 1e3:7.1f} "
                      f"min {min(v) * 1e3:7.1f} img/s {batch / med[k]:7.1f}")
            print(f"{size}px {layout_name}: merged / plain throughput = {med['plain'] / med['lora_c merged']:.3f}x")


if __name__ == "__main__":
    main()
