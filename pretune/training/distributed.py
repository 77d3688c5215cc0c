"""torch.distributed helpers: launched by `torchrun`, which sets RANK, WORLD_SIZE and LOCAL_RANK.

Without torchrun every function here is a no-op for a single process, so the training loop reads the same either way.

What gets wrapped is a `LossModule` (forward(batch) = loss_fn(model, batch)), not the bare model: objectives call
`model.body` and `model.heads[...]` directly, and DDP's gradient hooks and FSDP2's all-gathers only fire when the
forward of the wrapped module runs. Weights and optimizer state go in and out through
`torch.distributed.checkpoint.state_dict`, so a checkpoint written under FSDP (sharded), DDP or one process holds
the same full tensors under the same names and resumes under any of them, with any number of ranks.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator

import torch
import torch.distributed as tdist
from torch import nn

from pretune.model.transformer import Block


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
    """Leave the process group; on success after a barrier, so no rank closes its connections while another still
    talks (after an error the others may never arrive: no barrier then)."""
    if tdist.is_available() and tdist.is_initialized():
        if sys.exc_info()[0] is None:
            tdist.barrier()
        tdist.destroy_process_group()


def barrier() -> None:
    if world_size() > 1:
        tdist.barrier()


def local_rows(batch: dict) -> dict:
    """This rank's rows (rank, rank + world, ...) of a batch-first global batch; other values are kept whole."""
    world = world_size()
    if world == 1:
        return batch
    r, n = rank(), batch["input_ids"].shape[0]
    return {k: v[r::world] if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == n else v
            for k, v in batch.items()}


class LossModule(nn.Module):
    """The module DDP / FSDP wrap: its forward is the objective's loss on the model (state-dict keys `model.*`)."""

    def __init__(self, model: nn.Module, loss_fn: Callable[[nn.Module, dict], tuple[torch.Tensor, dict]]):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        return self.loss_fn(self.model, batch)


def is_fsdp(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def wrap(module: LossModule, device: torch.device, fsdp: bool = False) -> nn.Module:
    """DDP (default) or FSDP2 (`fsdp`: every Transformer block is a shard unit, the rest one root unit).

    FSDP2 replaces the parameters of `module` in place, so build the optimizer after this call."""
    if world_size() == 1:
        return module
    if fsdp:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (world_size(),))
        for sub in module.modules():
            if isinstance(sub, Block):
                fully_shard(sub, mesh=mesh)
        fully_shard(module, mesh=mesh)
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # static_graph: parameters a loss never touches (a pooler a token task does not use) are handled once, cheaply
    return DistributedDataParallel(module, device_ids=ids, static_graph=True)


@contextlib.contextmanager
def maybe_no_sync(model: nn.Module, sync: bool) -> Iterator[None]:
    """Skip the gradient all-reduce (DDP) / reduce-scatter (FSDP2) on micro-batches before the last one."""
    if sync:
        yield
    elif hasattr(model, "no_sync"):
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


@contextlib.contextmanager
def unsharded(model: nn.Module) -> Iterator[None]:
    """Gather FSDP2's root parameters for code that calls submodules directly (evaluation); no-op otherwise."""
    if not is_fsdp(model):
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def full_state_dict(module: LossModule) -> dict[str, torch.Tensor] | None:
    """The inner model's full weights (keys without the `model.` prefix) on rank 0, None on other ranks.

    A collective under FSDP2 (every rank must call it); elsewhere only rank 0 does any work."""
    if not is_fsdp(module):
        return module.model.state_dict() if is_main() else None
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(module, options=_options(cpu_offload=True))
    if not is_main():
        return None
    return {k.removeprefix("model."): v for k, v in state.items()}


def load_full_state_dict(module: LossModule, state: dict[str, torch.Tensor]) -> None:
    """Load full weights of the inner model (every rank passes the same tensors; FSDP2 keeps its shard)."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(module, {f"model.{k}": v for k, v in state.items()}, options=_options())


def optimizer_state(module: LossModule, optimizer: torch.optim.Optimizer) -> dict | None:
    """Full optimizer state keyed by parameter names (the same under 1 process, DDP and FSDP2); rank 0 only."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    if not is_fsdp(module) and not is_main():
        return None
    state = get_optimizer_state_dict(module, optimizer, options=_options(cpu_offload=world_size() > 1))
    return state if is_main() else None


def load_optimizer_state(module: LossModule, optimizer: torch.optim.Optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(module, optimizer, state, options=_options())


class StateView:
    """A model whose `state_dict()` is a given (gathered) dict; other attributes come from the real model. Lets a
    `save_model(dir, model)` callback written for plain models save FSDP-sharded ones."""

    def __init__(self, model: nn.Module, state: dict[str, torch.Tensor]):
        self._model, self._state = model, state

    def state_dict(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        return self._state

    def __getattr__(self, name: str):
        return getattr(self._model, name)


def all_reduce_sum(values: list[float]) -> list[float]:
    """Element-wise sums over ranks (float64; on the GPU for nccl)."""
    if world_size() == 1:
        return list(values)
    device = torch.device("cuda", torch.cuda.current_device()) if tdist.get_backend() == "nccl" else None
    t = torch.tensor(values, dtype=torch.float64, device=device)
    tdist.all_reduce(t)
    return t.tolist()


def all_reduce_totals(totals: dict[str, list[float]]) -> dict[str, tuple[float, float]]:
    """Sum (numerator, denominator) statistics over ranks. Ranks may hold different keys (one with no evaluation
    batch holds none), so the small dicts are gathered as objects rather than reduced as one tensor."""
    if world_size() == 1:
        return {k: (float(v[0]), float(v[1])) for k, v in totals.items()}
    gathered: list[dict | None] = [None] * world_size()
    tdist.all_gather_object(gathered, {k: (float(v[0]), float(v[1])) for k, v in totals.items()})
    out: dict[str, tuple[float, float]] = {}
    for part in gathered:
        for k, (num, den) in (part or {}).items():
            a, b = out.get(k, (0.0, 0.0))
            out[k] = (a + num, b + den)
    return dict(sorted(out.items()))
