"""Checkpoint directories: config.json + model.safetensors + tokenizer.json (+ trainer state while training).

Every directory is written under a temporary name and renamed into place, so a crash (even SIGKILL during the
write) leaves either the previous complete checkpoint or the new one, never a half-written mix. Weights are
safetensors only; the optimizer state is a torch file of tensors and plain containers, loaded with weights_only=True.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pretune.errors import InputError

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"
TRAINER_STATE = "trainer_state.json"
OPTIMIZER = "optimizer.pt"
FORMAT_VERSION = 1


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json(path: Path, data) -> None:
    """Write JSON through a temporary file and an atomic rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_dir_atomic(target: Path, fill: Callable[[Path], None]) -> None:
    """Create `target` with `fill(tmp_dir)`, then swap it in. The old `target` survives until the new one is whole."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        fill(tmp)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    _fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)


def save_weights(path: Path, model: torch.nn.Module) -> None:
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt"})


def save_checkpoint(
    directory: str | Path,
    model: torch.nn.Module,
    config: dict,
    tokenizer,
    trainer_state: dict | None = None,
    optimizer_state: dict | None = None,
) -> None:
    """Write a complete checkpoint directory atomically."""

    def fill(tmp: Path) -> None:
        write_json(tmp / CONFIG, {"format_version": FORMAT_VERSION, **config})
        save_weights(tmp / WEIGHTS, model)
        tokenizer.save(tmp / TOKENIZER)
        if trainer_state is not None:
            write_json(tmp / TRAINER_STATE, trainer_state)
        if optimizer_state is not None:
            torch.save(optimizer_state, tmp / OPTIMIZER)

    write_dir_atomic(Path(directory), fill)


def resolve(path: str | Path) -> Path:
    """A checkpoint directory from what the user named: the checkpoint itself or a run directory holding one
    (its final `model/`, else `best/`, else `last/`). A directory left mid-swap (`.last.old`) still resolves."""
    path = Path(path)
    if not path.exists():
        raise InputError("checkpoint not found", path=path)
    for candidate in (path, path / "model", path / "best", path / "last", path.with_name(f".{path.name}.old")):
        if (candidate / CONFIG).is_file():
            return candidate
    raise InputError(f"not a checkpoint: no {CONFIG} here, nor in model/, best/ or last/", path=path)


@dataclass
class Checkpoint:
    path: Path
    config: dict
    state_dict: dict[str, torch.Tensor]

    def tokenizer(self):
        from pretune.tokenizer import PretuneTokenizer

        file = self.path / TOKENIZER
        if not file.is_file():
            raise InputError(f"checkpoint has no {TOKENIZER}: it cannot encode text", path=self.path)
        return PretuneTokenizer.load(file)

    def trainer_state(self) -> dict | None:
        f = self.path / TRAINER_STATE
        return read_json(f) if f.is_file() else None

    def optimizer_state(self) -> dict | None:
        f = self.path / OPTIMIZER
        if not f.is_file():
            return None
        try:
            return torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
            raise InputError(f"cannot read optimizer state ({type(e).__name__}): the file is damaged", path=f) from None


def read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise InputError("file not found", path=path) from None
    except json.JSONDecodeError as e:
        raise InputError(f"invalid JSON: {e.msg}", path=path, line=e.lineno) from None
    except UnicodeDecodeError:
        raise InputError("not UTF-8 text", path=path) from None
    if not isinstance(data, dict):
        raise InputError("expected a JSON object", path=path)
    return data


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = resolve(path)
    config = read_json(path / CONFIG)
    weights = path / WEIGHTS
    if not weights.is_file():
        raise InputError(f"checkpoint has no {WEIGHTS}", path=path)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError(f"cannot read weights ({e}); the file is truncated or not safetensors", path=weights) from None
    return Checkpoint(path, config, state)


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path, strict: bool = True) -> list[str]:
    """Load weights with clear errors for wrong shapes and missing keys. Returns missing keys when not strict."""
    own = model.state_dict()
    wrong = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    if wrong:
        raise InputError(f"weights do not fit the model config: {'; '.join(wrong[:3])}", path=source)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if strict and (missing or unexpected):
        raise InputError(
            f"weights do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}", path=source
        )
    model.load_state_dict(state, strict=False)
    return missing
