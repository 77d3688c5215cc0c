"""Checkpoint directories: config.json + model.safetensors + tokenizer.json (+ trainer state while training).

Every directory is written under a temporary name and renamed into place, so a crash (even SIGKILL during the
write) leaves either the previous complete checkpoint or the new one, never a half-written mix. Weights are
safetensors only; the optimizer state is a torch file of tensors and plain containers, loaded with weights_only=True.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
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
REQUIRED_MODEL_KEYS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "ffn_size")


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


def write_text(path: Path, text: str) -> None:
    """Write a text file through a temporary file and an atomic rename: readers see the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, data) -> None:
    """Write JSON (indented) atomically."""
    write_text(path, json.dumps(data, indent=2) + "\n")


PAUSE_ENV = "PRETUNE_TEST_CHECKPOINT_PAUSE"  # "stage=seconds": crash tests kill the process inside a write


def _pause(stage: str, replacing: bool) -> None:
    """Test hook: sleep at `stage` (begin | filled | swap) of a write that replaces a directory, when PAUSE_ENV
    asks for it."""
    want = os.environ.get(PAUSE_ENV)
    if replacing and want and want.split("=")[0] == stage:
        time.sleep(float(want.split("=")[1]))


def recover_dir(target: Path) -> None:
    """Undo a swap cut short by a crash: `target` gone but its previous version still at `.target.old`."""
    target = Path(target)
    old = target.with_name(f".{target.name}.old")
    if not target.exists() and old.is_dir():
        os.replace(old, target)


def write_dir_atomic(target: Path, fill: Callable[[Path], None]) -> None:
    """Create `target` with `fill(tmp_dir)`, then swap it in. The old `target` survives until the new one is whole.

    A crash at any point leaves `target` or `.target.old` complete (`recover_dir` / `resolve` find the latter).
    An OSError (disk full, permissions) becomes an InputError naming `target`; the old `target` stays in place."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp")
    old = target.with_name(f".{target.name}.old")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        replacing = target.exists() or old.exists()
        _pause("begin", replacing)
        fill(tmp)
        for f in sorted(tmp.rglob("*")):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        _fsync_dir(tmp)
        _pause("filled", replacing)
        recover_dir(target)
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            os.replace(target, old)
        _pause("swap", replacing)
        os.replace(tmp, target)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        recover_dir(target)
        reason = e.strerror or str(e)
        raise InputError(f"cannot write {target.name}/: {reason}; the previous {target.name}/ (if any) is left "
                         "as it was", path=target) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def safe_filename(name: str, max_len: int = 80) -> str:
    """A file name made from data (a label, a task name) that stays inside its directory: characters other than
    letters, digits, `.`, `_` and `-` become `_`, leading dots go, and a changed name gets a short hash of the
    original so that `a/b` and `a_b` stay distinct."""
    clean = _UNSAFE.sub("_", name).lstrip(".")[:max_len] or "_"
    if clean != name:
        clean += "-" + hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
    return clean


def child_path(root: str | Path, name: str) -> Path:
    """root / name, refusing any `name` that would leave `root` (absolute, `..`, separators, empty)."""
    root = Path(root)
    candidate = (root / name).resolve()
    if not name or name != Path(name).name or name in (".", "..") or candidate.parent != root.resolve():
        raise InputError(f"refusing the file name {name!r}: it would leave the output directory", path=root)
    return root / name


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

    def with_old(p: Path) -> tuple[Path, Path]:
        return p, p.with_name(f".{p.name}.old")

    candidates = [*with_old(path), *with_old(path / "model"), *with_old(path / "best"), *with_old(path / "last")]
    for candidate in candidates:
        if (candidate / CONFIG).is_file():
            return candidate
    if not path.exists():
        raise InputError("checkpoint not found", path=path)
    raise InputError(f"not a checkpoint: no {CONFIG} here, nor in model/, best/ or last/", path=path)


@dataclass
class Checkpoint:
    path: Path
    config: dict
    state_dict: dict[str, torch.Tensor]
    loaded_tokenizer: object | None = None  # set when the checkpoint was converted in memory (Hugging Face folder)

    def tokenizer(self):
        from pretune.text.tokenizer import PretuneTokenizer

        if self.loaded_tokenizer is not None:
            return self.loaded_tokenizer
        file = self.path / TOKENIZER
        if not file.is_file():
            raise InputError(f"checkpoint has no {TOKENIZER}: it cannot encode text", path=self.path)
        return PretuneTokenizer.load(file)

    def model_config(self):
        """The `model` object of config.json as a validated ModelConfig; the architecture keys are required."""
        from pretune.model.transformer import ModelConfig

        source = self.path / CONFIG
        values = self.config.get("model")
        if not isinstance(values, dict):
            raise InputError('no "model" object (the architecture) in the checkpoint config; expected '
                             '{"model": {"hidden_size": ..., ...}, ...}', path=source)
        missing = [k for k in REQUIRED_MODEL_KEYS if k not in values]
        if missing:
            raise InputError(f'"model" lacks the keys {missing}; the checkpoint config is incomplete', path=source)
        return ModelConfig.from_dict(values, str(source))

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
    if "model_type" in config and "model" not in config:
        raise InputError("a Hugging Face model folder, not a pretune checkpoint: open it with "
                         "pretune.interop.hf.open_checkpoint (or `pretune import` it)", path=path)
    weights = path / WEIGHTS
    if not weights.is_file():
        raise InputError(f"checkpoint has no {WEIGHTS}", path=path)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError(f"cannot read weights ({e}); the file is truncated or not safetensors", path=weights) from None
    return Checkpoint(path, config, state)


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path, strict: bool = True,
              check_only: bool = False) -> list[str]:
    """Load weights with clear errors for wrong shapes and missing keys. Returns missing keys when not strict.
    `check_only`: report problems, load nothing (the caller loads, e.g. into FSDP shards)."""
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
    if not check_only:
        model.load_state_dict(state, strict=False)
    return missing
