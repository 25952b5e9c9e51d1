"""Which examples each process trains on at each step: a pure function of the seed, the epoch and the sizes.

Because nothing here keeps state, a resumed run, and a run on several processes, see exactly the examples an
uninterrupted single-process run sees in the same step: the state only needs the step number.

    epoch e          the examples in order `epoch_order(n, seed, e)` (a seeded permutation, or file order)
    step s of e      the next global batch G = batch_size · grad_accum · world of that order
    process r        every world-th example of the step, from the r-th: its share, cut into micro-batches of
                     batch_size (at most grad_accum of them)

The last step of an epoch takes what is left, rounded down to a multiple of `world` so that every process runs
the same number of micro-batches (DDP needs each forward/backward matched on every process); the fewer than
`world` examples left over are trained in other epochs (with shuffling, other ones are left over each time).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cai_pipeline.rng import derive_seed


def epoch_order(n: int, *, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    if not shuffle:
        return np.arange(n)
    generator = torch.Generator().manual_seed(derive_seed(seed, "train-order", epoch))
    return torch.randperm(n, generator=generator).numpy()


@dataclass(frozen=True)
class StepPlan:
    """How a split is cut into optimizer steps and micro-batches, per process."""

    n: int  # examples in the split
    batch_size: int  # per process and micro-batch
    grad_accum: int
    world: int  # processes

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.grad_accum * self.world

    @property
    def steps_per_epoch(self) -> int:
        full, tail = divmod(self.n, self.global_batch)
        return full + (tail >= self.world)

    def step_examples(self, order: np.ndarray, step_in_epoch: int) -> np.ndarray:
        """Every example of a step, all processes together."""
        start = step_in_epoch * self.global_batch
        chunk = order[start : start + self.global_batch]
        return chunk[: len(chunk) - len(chunk) % self.world]

    def micro_batches(self, order: np.ndarray, step_in_epoch: int, rank: int) -> list[np.ndarray]:
        mine = self.step_examples(order, step_in_epoch)[rank :: self.world]
        return [mine[i : i + self.batch_size] for i in range(0, len(mine), self.batch_size)]

    def epoch_batches(self, order: np.ndarray, rank: int) -> list[np.ndarray]:
        """Process `rank`'s micro-batches of a whole epoch, then its share of the examples no step takes (the
        reference pass scores every example, in the very batches training will use where it can)."""
        batches = [b for s in range(self.steps_per_epoch) for b in self.micro_batches(order, s, rank)]
        left = order[sum(len(self.step_examples(order, s)) for s in range(self.steps_per_epoch)):][rank :: self.world]
        return batches + [left[i : i + self.batch_size] for i in range(0, len(left), self.batch_size)]


def shard_batches(n: int, batch_size: int, rank: int, world: int) -> list[np.ndarray]:
    """Evaluation: every world-th example from the rank-th, in file order, in batches (shares may differ)."""
    mine = np.arange(n)[rank::world]
    return [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
