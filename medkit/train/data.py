"""Deterministic, resumable data order.

Every epoch gets its own permutation drawn from a private ``torch.Generator`` seeded from
``(seed, epoch)``, so the order depends on nothing else: not on the global RNG (which dropout and
noise sampling use), not on how many times training was interrupted. A checkpoint stores
``(epoch, position)`` (batches of that epoch already consumed) and the sampler restarts exactly
there, without loading the skipped batches.

With several processes a batch is global: ``batch_size x world`` indices of the permutation, of which
process ``rank`` takes the ``rank``-th slice of ``batch_size``. Each process's shard is therefore a function
of ``(seed, epoch, rank)`` only, and the union over the processes is exactly the batch one process with
``batch_size x world`` would draw - so 2 processes x batch b train like 1 process x batch 2b.
"""
from __future__ import annotations

import hashlib
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Sampler


def derive_seed(*parts) -> int:
    """A stable 63-bit seed from any printable parts (unlike ``hash()``, the same in every process)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class ResumableBatchSampler(Sampler[list[int]]):
    """This process's slice of the global batches of one epoch's permutation, drop_last, from batch ``position``."""

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be >= 1")
        if not 0 <= rank < world:
            raise ValueError(f"rank={rank}, world={world}: need 0 <= rank < world")
        if n < batch_size * world:
            per = f" x {world} processes = {batch_size * world}" if world > 1 else ""
            raise ValueError(f"the dataset has {n} items, fewer than batch_size={batch_size}{per}, so no full batch "
                             f"exists (batches are drop_last); lower batch_size or add data")
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.epoch, self.position = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return self.n // (self.batch_size * self.world)

    def set_epoch(self, epoch: int, position: int = 0) -> None:
        self.epoch, self.position = int(epoch), int(position)

    def permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(derive_seed("medkit-data", self.seed, epoch))
        return torch.randperm(self.n, generator=g)

    def __iter__(self) -> Iterator[list[int]]:
        perm = self.permutation(self.epoch)
        bs, glob = self.batch_size, self.batch_size * self.world
        for b in range(self.position, self.batches_per_epoch):
            start = b * glob + self.rank * bs
            yield perm[start:start + bs].tolist()

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.position)


def batch_stream(dataset, batch_size: int, *, seed: int, epoch: int, position: int, num_workers: int = 0,
                 pin_memory: bool = False, rank: int = 0, world: int = 1) -> Iterator[tuple[int, int, object]]:
    """Endless ``(epoch, position_after, batch)`` starting at ``(epoch, position)``; ``batch`` is this
    process's slice of the global batch, ``position`` counts global batches.

    The DataLoader gets a private generator (re-seeded per epoch) because otherwise creating its
    iterator draws a seed from the *global* torch RNG, which would make dropout noise depend on
    where an interruption happened.
    """
    sampler = ResumableBatchSampler(len(dataset), batch_size, seed, rank, world)
    gen = torch.Generator()
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
                        persistent_workers=num_workers > 0, generator=gen)
    nb = sampler.batches_per_epoch
    while True:
        while position >= nb:
            epoch, position = epoch + 1, position - nb
        sampler.set_epoch(epoch, position)
        # process 0 keeps the seed a 1-process run always had, so single-process results are unchanged
        gen.manual_seed(derive_seed("medkit-loader", seed, epoch) if rank == 0
                        else derive_seed("medkit-loader", seed, epoch, rank))
        for batch in loader:
            position += 1
            yield epoch, position, batch
