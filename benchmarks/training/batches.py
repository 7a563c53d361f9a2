"""Seeded batch iteration: per-epoch shuffles from a generator seeded by (seed, epoch) so a resumed run sees the
same batches; an infinite validation-batch cycle (for MetaLR) whose position is checkpointed."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import torch

Transform = Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A CPU generator unique to (seed, epoch, stream)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 7_919 + stream)


def shuffled_batches(n: int, batch_size: int, gen: torch.Generator, limit: int | None = None) -> list[torch.Tensor]:
    """Index batches of a random permutation; the last partial batch is kept unless it has a single sample
    (BatchNorm in training mode cannot normalise one sample)."""
    perm = torch.randperm(n, generator=gen)
    out = [perm[i:i + batch_size] for i in range(0, n, batch_size)]
    if len(out) > 1 and len(out[-1]) < 2:
        out = out[:-1]
    return out[:limit] if limit is not None else out


class CyclicBatches:
    """Infinite iterator over (transformed x, y) batches of a split, reshuffled each cycle with (seed, cycle)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, transform: Transform,
                 device: torch.device, seed: int) -> None:
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.transform, self.device, self.seed = transform, device, seed
        self.cycle, self.position = 0, 0
        self._order = self._make_order()

    def _make_order(self) -> list[torch.Tensor]:
        return shuffled_batches(len(self.labels), self.batch_size, epoch_generator(self.seed, self.cycle, stream=1))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.position >= len(self._order):
            self.cycle, self.position = self.cycle + 1, 0
            self._order = self._make_order()
        idx = self._order[self.position]
        self.position += 1
        x = self.transform(self.images[idx].to(self.device, non_blocking=True), None)
        return x, self.labels[idx].to(self.device, non_blocking=True)

    def state_dict(self) -> dict[str, Any]:
        return {"cycle": self.cycle, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cycle, self.position = int(state["cycle"]), int(state["position"])
        self._order = self._make_order()
