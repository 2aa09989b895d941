"""Data randomness as a function of (seed, epoch, rank), so a resumed run sees the same batches and augmentations.

Shuffling comes from torch's DistributedSampler (its order depends only on seed and epoch; MONAI's Workflow calls
set_epoch). Augmentations use MONAI's per-transform random states: with worker processes they are re-seeded in each
worker from the DataLoader generator (monai.data.utils.worker_init_fn), without workers they live in the main
process. This handler re-seeds both at every epoch start, before Ignite creates the epoch's data iterator.
"""

from __future__ import annotations

import torch
from monai.data.utils import set_rnd
from monai.utils import min_version, optional_import

from bundle.engines import distributed as dist_utils

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")

MAX_SEED = 2**31 - 1


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """A distinct, reproducible seed per (seed, epoch, rank)."""
    return (int(seed) * 1_000_003 + int(epoch) * 10_007 + int(rank) * 101) % MAX_SEED


class EpochDataSeeder:
    """Re-seeds the DataLoader generator and the dataset's random transforms at every EPOCH_STARTED.

    Args:
        seed: the run seed.
        generator: the torch.Generator given to the training DataLoader.
        dataset: the training dataset (its Randomizable transforms are re-seeded for num_workers == 0).
    """

    def __init__(self, seed: int, generator: torch.Generator, dataset=None) -> None:
        self.seed = int(seed)
        self.generator = generator
        self.dataset = dataset

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine) -> None:
        seed = epoch_seed(self.seed, engine.state.epoch, dist_utils.get_rank())
        self.generator.manual_seed(seed)
        if self.dataset is not None:
            set_rnd(self.dataset, seed)


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU torch.Generator with a fixed seed (DataLoaders draw their worker seeds from it, not the global RNG)."""
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return generator


def subset_items(items: list, max_items: int | None, seed: int = 0) -> list:
    """A reproducible random subset of at most `max_items` datalist items, in their original order (None: all).

    For short demo runs; the same seed gives the same subset on any machine.
    """
    if max_items is None or max_items <= 0 or max_items >= len(items):
        return list(items)
    generator = torch.Generator().manual_seed(int(seed))
    chosen = torch.randperm(len(items), generator=generator)[: int(max_items)].sort().values
    return [items[i] for i in chosen.tolist()]
