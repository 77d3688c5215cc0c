"""Batches for the Trainer: an endless, resumable, distributed-aware source of collated batches, and the helpers
that weigh, count and move a batch."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from pretune.errors import InputError
from pretune.training import distributed as dist


class BatchSource:
    """Endless, resumable global batches. Epoch e visits `plan(e)` (lists of item indices, one list per global batch
    of batch_size x world items); the randomness of batch b (masking, ...) comes from a generator seeded by (seed,
    epoch, position), so a resumed run sees exactly the batches an uninterrupted one would.

    Under torch.distributed every rank collates the whole global batch with the same generator and keeps its rows
    (`local`): the masking does not depend on how many ranks share the batch, so N ranks train exactly as one
    process with N times the batch. Collated tensors must be batch-first. The state counts items, so a checkpoint
    written under N ranks resumes under M (the rest of the epoch is cut into the new global batches)."""

    def __init__(
        self,
        dataset: Sequence,
        batch_size: int,
        collate: Callable[[list, torch.Generator], dict],
        seed: int = 0,
        shuffle: bool = True,
        plan: Callable[[int], list[list[int]]] | None = None,
    ):
        self.dataset, self.collate, self.seed, self.shuffle = dataset, collate, seed, shuffle
        self.world = dist.world_size()
        self.global_batch = batch_size * self.world
        self.plan = plan or self.default_plan
        self.custom_plan = plan is not None
        self.epoch, self.position, self.offset = 0, 0, 0
        self._batches = self.plan(0)
        if not self._batches:
            raise InputError(f"not enough data for one batch of {self.global_batch} (have {len(dataset)} items)")

    def default_plan(self, epoch: int, start: int = 0) -> list[list[int]]:
        n = len(self.dataset)
        order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
        order = order[start:]
        if len(order) < self.global_batch:  # a tiny dataset: one (smaller) batch rather than none
            return [order.tolist()] if len(order) >= self.world and start == 0 else []
        g = self.global_batch
        return [order[i : i + g].tolist() for i in range(0, len(order) - g + 1, g)]

    def _plan_from(self, epoch: int, start: int) -> list[list[int]]:
        """The batches of `epoch` after its first `start` items (a custom plan skips whole batches)."""
        if start == 0:
            return self.plan(epoch)
        if not self.custom_plan:
            return self.default_plan(epoch, start)
        batches, seen = self.plan(epoch), 0
        while batches and seen < start:
            seen += len(batches.pop(0))
        return batches

    def next_global(self) -> dict:
        """The next whole global batch, collated (the same on every rank)."""
        while self.position >= len(self._batches):
            self.epoch, self.position, self.offset = self.epoch + 1, 0, 0
            self._batches = self.plan(self.epoch)
        indices = self._batches[self.position]
        key = [self.seed, self.epoch, self.position] + ([self.offset] if self.offset else [])
        seed = int(np.random.SeedSequence(key).generate_state(1)[0])
        gen = torch.Generator().manual_seed(seed)
        self.position += 1
        return self.collate([self.dataset[i] for i in indices], gen)

    def local(self, batch: dict) -> dict:
        """This rank's rows of a global batch (rows rank, rank + world, ...)."""
        return dist.local_rows(batch)

    def __next__(self) -> dict:
        return self.local(self.next_global())

    def state_dict(self) -> dict:
        items = self.offset + sum(len(b) for b in self._batches[: self.position])
        return {"epoch": self.epoch, "position": self.position, "offset": self.offset, "items": items,
                "global_batch": self.global_batch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        if int(state.get("global_batch", self.global_batch)) == self.global_batch:
            self.offset, self.position = int(state.get("offset", 0)), int(state["position"])
        else:  # another world size or batch size: continue after the items already seen this epoch
            self.offset, self.position = int(state["items"]), 0
        self._batches = self._plan_from(self.epoch, self.offset)


def label_count(batch: dict) -> float:
    """Loss weight of a batch whose loss is a mean over `labels` != -100 (rows when there is no `labels`)."""
    labels = batch.get("labels")
    if isinstance(labels, torch.Tensor):
        return float((labels != -100).sum())
    return float(batch["input_ids"].shape[0])


def row_count(batch: dict) -> float:
    """Loss weight of a batch whose loss is a mean over its rows."""
    return float(batch["input_ids"].shape[0])


def move(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def count_tokens(batch: dict) -> int:
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())
