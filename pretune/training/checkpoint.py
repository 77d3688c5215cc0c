"""Checkpoint directories: config.json + model.safetensors + tokenizer.json (+ trainer state while training).

Every directory is written under a temporary name and renamed into place, so a crash (even SIGKILL during the
write) leaves either the previous complete checkpoint or the new one, never a half-written mix. Weights are
safetensors only; the optimizer state is a torch file of tensors and plain containers, loaded with weights_only=True.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pretune.errors import InputError
from pretune.files import read_json, write_dir_atomic, write_json
from pretune.model.transformer import ModelConfig
from pretune.text.tokenizer import PretuneTokenizer

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"
TRAINER_STATE = "trainer_state.json"
OPTIMIZER = "optimizer.pt"
FORMAT_VERSION = 1
REQUIRED_MODEL_KEYS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "ffn_size")


def save_weights(path: Path, model: torch.nn.Module | dict[str, torch.Tensor]) -> None:
    """model.safetensors from a model (its state_dict) or a state dict."""
    state = model.state_dict() if isinstance(model, torch.nn.Module) else model
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(path), metadata={"format": "pt"})
    except SafetensorError as e:  # a full disk surfaces here as a SafetensorError: an OSError to write_dir_atomic
        raise OSError(errno.EIO, f"cannot write the weights ({e})", str(path)) from None


def write_model_files(directory: Path, model: torch.nn.Module | dict[str, torch.Tensor], config: dict,
                      tokenizer: PretuneTokenizer) -> None:
    """config.json (+ format_version), model.safetensors and tokenizer.json into `directory`: a usable checkpoint.
    `model` is a model or its state dict (a converted Hugging Face folder)."""
    write_json(directory / CONFIG, {"format_version": FORMAT_VERSION, **config,
                                    "tokenizer_vocab_size": tokenizer.vocab_size})
    save_weights(directory / WEIGHTS, model)
    tokenizer.save(directory / TOKENIZER)


def model_writer(config: dict, tokenizer: PretuneTokenizer) -> Callable[[Path, torch.nn.Module], None]:
    """A `save_model(directory, model)` for the Trainer: writes the model files of `config` and `tokenizer`."""

    def save(directory: Path, model: torch.nn.Module) -> None:
        write_model_files(directory, model, config, tokenizer)

    return save


def save_checkpoint(
    directory: str | Path,
    model: torch.nn.Module,
    config: dict,
    tokenizer: PretuneTokenizer,
    trainer_state: dict | None = None,
    optimizer_state: dict | None = None,
) -> None:
    """Write a complete checkpoint directory atomically."""

    def fill(tmp: Path) -> None:
        write_model_files(tmp, model, config, tokenizer)
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
    loaded_tokenizer: PretuneTokenizer | None = None  # set when converted in memory (a Hugging Face folder)

    def tokenizer(self) -> PretuneTokenizer:
        if self.loaded_tokenizer is not None:
            return self.loaded_tokenizer
        file = self.path / TOKENIZER
        if not file.is_file():
            raise InputError(f"checkpoint has no {TOKENIZER}: it cannot encode text", path=self.path)
        tok = PretuneTokenizer.load(file)
        recorded = self.config.get("tokenizer_vocab_size")
        if isinstance(recorded, int) and recorded != tok.vocab_size:
            raise InputError(f"the tokenizer has {tok.vocab_size} tokens, but the checkpoint was written with one of "
                             f"{recorded} (config.json tokenizer_vocab_size): not its own tokenizer", path=file)
        model = self.config.get("model")
        size = model.get("vocab_size") if isinstance(model, dict) else None
        if isinstance(size, int) and 1 <= size < tok.vocab_size:  # size < 1: model_config() says so
            raise InputError(f"the tokenizer has {tok.vocab_size} tokens, more than the model's vocabulary of {size} "
                             "(config.json model.vocab_size): ids beyond it have no embedding", path=file)
        return tok

    def model_config(self) -> ModelConfig:
        """The `model` object of config.json as a validated ModelConfig; the architecture keys are required."""
        source = self.path / CONFIG
        values = self.config.get("model")
        if not isinstance(values, dict):
            raise InputError('no "model" object (the architecture) in the checkpoint config; expected '
                             '{"model": {"hidden_size": ..., ...}, ...}', path=source)
        missing = [k for k in REQUIRED_MODEL_KEYS if k not in values]
        if missing:
            raise InputError(f'"model" lacks the keys {missing}; the checkpoint config is incomplete', path=source)
        return ModelConfig.from_dict(values, str(source))

    def weights(self, prefix: str) -> dict[str, torch.Tensor]:
        """The tensors under `prefix` (e.g. "body."), with the prefix taken off their names."""
        return {k[len(prefix):]: v for k, v in self.state_dict.items() if k.startswith(prefix)}

    def body_weights(self) -> dict[str, torch.Tensor]:
        """The body's tensors (body.*, prefix taken off); a checkpoint without them is refused, in one line."""
        body = self.weights("body.")
        if body:
            return body
        if self.config.get("ensemble", 1) != 1:  # members.<k>.body.*: K bodies, each in its own space
            raise InputError(f"an ensemble of {self.config['ensemble']} fine-tuned models has one body per member; "
                             "use one member (members/member-0/model in its run directory) or the pretrained "
                             "checkpoint", path=self.path)
        raise InputError("checkpoint holds no body.* weights; expected a pretune checkpoint", path=self.path)

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

    def name(t: torch.Tensor) -> str:
        return str(t.dtype).removeprefix("torch.")

    kinds = [f"{k}: checkpoint {name(v)} vs model {name(own[k])}" for k, v in state.items()
             if k in own and v.is_floating_point() != own[k].is_floating_point()]
    if kinds:  # int64 / bool tensors where the model has float weights (or the reverse): not this model's weights
        raise InputError(f"weights of the wrong kind: {'; '.join(kinds[:3])}", path=source)
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
