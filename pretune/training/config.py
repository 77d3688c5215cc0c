"""Training settings (`[train]`): TrainConfig, and the device, precision and seeding they select."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import torch

from pretune.config import bounds, check_numbers
from pretune.errors import InputError
from pretune.training import distributed as dist

SCHEDULES = ("linear", "cosine", "constant", "wsd")
WSD_DECAY = 0.2  # wsd: the share of max_steps (at the end) over which the lr falls linearly to 0
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class TrainConfig:
    max_steps: int = field(default=1000, metadata=bounds(
        ge=1, help="optimizer steps (pretraining) or a cap (fine-tuning)"))
    batch_size: int = field(default=32, metadata=bounds(ge=1, help="sequences per device per micro-batch"))
    grad_accum: int = field(default=1, metadata=bounds(ge=1))
    lr: float = field(default=5e-4, metadata=bounds(gt=0))
    weight_decay: float = field(default=0.01, metadata=bounds(ge=0))
    adam_beta1: float = field(default=0.9, metadata=bounds(ge=0, lt=1))
    adam_beta2: float = field(default=0.999, metadata=bounds(ge=0, lt=1))
    adam_eps: float = field(default=1e-6, metadata=bounds(gt=0))
    warmup_ratio: float = field(default=0.06, metadata=bounds(ge=0, lt=1))
    warmup_steps: int | None = field(default=None, metadata=bounds(ge=0))
    schedule: str = field(default="linear", metadata={
        "help": "after warm-up: linear | cosine decay to 0, constant, or wsd (warmup-stable-decay: constant, then a "
                "linear decay to 0 over the last fifth of max_steps)"})
    clip_norm: float = field(default=1.0, metadata=bounds(ge=0))  # 0: no clipping
    eval_every: int = field(default=200, metadata=bounds(ge=1))
    eval_batches: int = field(default=50, metadata=bounds(ge=1))
    save_every: int = field(default=500, metadata=bounds(ge=1))
    log_every: int = field(default=20, metadata=bounds(ge=1))
    precision: str = "auto"
    device: str = "auto"
    seed: int = field(default=0, metadata=bounds(ge=0, le=2**63 - 1))
    progress: bool = True
    on_nan: str = "stop"  # stop | skip
    stop_after: int | None = field(default=None, metadata=bounds(ge=1, help=
        "end this invocation after this step (checkpoint saved); --resume continues on max_steps' schedule"))
    compile: bool = False
    fsdp: bool = field(default=False, metadata={
        "help": "under torchrun: shard parameters, gradients and optimizer state (FSDP2) instead of DDP"})

    def validate(self, source: str | None = None) -> TrainConfig:
        def bad(msg):
            return InputError(f"[train] {msg}", path=source)

        check_numbers(self, source, "[train] ")
        if self.schedule not in SCHEDULES:
            raise bad(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.precision not in PRECISIONS:
            raise bad(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise bad(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.on_nan not in ("stop", "skip"):
            raise bad(f"on_nan must be stop or skip, got {self.on_nan!r}")
        return self

    def warmup(self) -> int:
        return self.warmup_steps if self.warmup_steps is not None else int(self.warmup_ratio * self.max_steps)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("--device cuda was asked for, but no CUDA device is available")
        if dist.world_size() > 1 and name == "cuda":
            name = f"cuda:{dist.local_rank()}"
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX); elsewhere oneDNN emulates it, slower."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # an older torch without the probes
        return False


def use_bf16(precision: str, device: torch.device) -> bool:
    """bf16 autocast: always for "bf16"; for "auto" on a CUDA GPU with bf16 and on a CPU with native bf16 (there it
    halves the matmul time: pretraining steps 1.3-1.7x faster, same loss curve)."""
    if precision == "bf16":
        return True
    if precision == "auto":
        if device.type == "cuda":
            return torch.cuda.is_bf16_supported()
        return device.type == "cpu" and cpu_has_bf16()
    return False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
