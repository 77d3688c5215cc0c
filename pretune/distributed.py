"""torch.distributed helpers: launched by `torchrun`, which sets RANK, WORLD_SIZE and LOCAL_RANK.

Without torchrun every function here is a no-op for a single process, so the training loop reads the same either way.
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as tdist
from torch import nn


def world_size() -> int:
    return tdist.get_world_size() if tdist.is_available() and tdist.is_initialized() else 1


def rank() -> int:
    return tdist.get_rank() if tdist.is_available() and tdist.is_initialized() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    return rank() == 0


def setup() -> None:
    """Join the process group when started by torchrun (nccl on GPUs, gloo on CPUs)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not tdist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank())
        tdist.init_process_group(backend)


def teardown() -> None:
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    if world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=False)


def maybe_no_sync(model: nn.Module, sync: bool):
    """Skip the gradient all-reduce on micro-batches before the last one of an accumulation."""
    if sync or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


def all_reduce_totals(totals: dict[str, list[float]]) -> dict[str, tuple[float, float]]:
    """Sum (numerator, denominator) statistics over ranks."""
    if world_size() == 1 or not totals:
        return {k: (v[0], v[1]) for k, v in totals.items()}
    keys = sorted(totals)
    t = torch.tensor([[totals[k][0], totals[k][1]] for k in keys], dtype=torch.float64)
    tdist.all_reduce(t)
    return {k: (float(t[i, 0]), float(t[i, 1])) for i, k in enumerate(keys)}


def all_finite(value: float, device: torch.device) -> bool:
    """True when every rank's loss is finite (all ranks then take the same branch)."""
    if world_size() == 1:
        return True
    t = torch.tensor([0.0 if value == value and abs(value) != float("inf") else 1.0])
    tdist.all_reduce(t)
    return float(t) == 0.0
