"""Hugging Face import: read BERT / RoBERTa / XLM-R / RoBERTa-PreLayerNorm / DistilBERT / GPT-2 model folders into
pretune's Transformer, in memory (`open_checkpoint`, what every `--from` accepts) or as a checkpoint directory
(`import_folder`).

A base model's pooler (BertModel, RobertaModel: dense + tanh on [CLS]) is kept as `pooler.dense.*` next to `body.*`:
fine-tuning a [CLS]-pooled classifier starts its pooler from it, and export writes it back.

Plain files (config.json, model.safetensors or pytorch_model.bin, tokenizer files): no network, and `transformers`
is not needed at run time. The weight renaming rules are in `hf_rules`; export is in `hf_export`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from pretune import files
from pretune.errors import InputError
from pretune.interop.hf_rules import (
    ACTIVATIONS_IN,
    BASE_PREFIX,
    FAMILIES,
    IGNORED_SUFFIXES,
    ROBERTA_LIKE,
    TIED_DECODER,
    body_rules,
    head_rules,
    supported,
    to_ours,
)
from pretune.model.transformer import ModelConfig
from pretune.text.hf_tokenizer import is_hf_folder
from pretune.text.tokenizer import PretuneTokenizer, load_hf_tokenizer
from pretune.training import checkpoint as ck


def _family(hf: dict, path: Path) -> str:
    model_type = hf.get("model_type")
    if model_type not in FAMILIES:
        raise InputError(f"unsupported model_type {model_type!r}; pretune imports: {supported()}", path=path)
    return FAMILIES[model_type]


def _weight_map(index: Path) -> dict:
    """A sharded folder's index: weight name -> shard file."""
    weight_map = files.read_json(index).get("weight_map")
    if not isinstance(weight_map, dict):
        raise InputError("expected a 'weight_map' object", path=index)
    return weight_map


def _weight_files(path: Path) -> tuple[list[Path], str, dict | None]:
    """Which files hold a folder's weights: model.safetensors (or its shards), else pytorch_model.bin (or shards).
    Returns (files, "st" | "pt", the shard index's weight_map or None for a single file)."""
    for single, index, loader in (("model.safetensors", "model.safetensors.index.json", "st"),
                                  ("pytorch_model.bin", "pytorch_model.bin.index.json", "pt")):
        if (path / single).is_file():
            return [path / single], loader, None
        if (path / index).is_file():
            weight_map = _weight_map(path / index)
            return [files.child_path(path, str(name)) for name in sorted(set(weight_map.values()))], loader, weight_map
    raise InputError("no PyTorch weights: expected model.safetensors or pytorch_model.bin (or their sharded index)",
                     path=path)


def read_hf_weights(path: Path) -> dict[str, torch.Tensor]:
    """model.safetensors (or its shards), else pytorch_model.bin (or shards) with weights_only=True; float32."""
    shards, loader, _ = _weight_files(path)
    state: dict[str, torch.Tensor] = {}
    for f in shards:
        try:
            if loader == "st":
                state.update(load_file(str(f)))
            else:
                part = torch.load(f, map_location="cpu", weights_only=True)
                if not isinstance(part, dict):
                    raise InputError("expected a state dict of tensors", path=f)
                state.update(part)
        except InputError:
            raise
        except Exception as e:  # noqa: BLE001 - an unpickling refusal, a truncated file: a bad weights file
            reason = str(e).splitlines()[0] if str(e) else ""
            raise InputError(f"cannot read weights ({type(e).__name__}: {reason[:200]}); expected safetensors or "
                             "a plain state dict of tensors", path=f) from None
        if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
            raise InputError("expected a state dict of named tensors", path=f)
    return {_modern_name(k): v.float() if v.is_floating_point() else v for k, v in state.items()}


def _modern_name(key: str) -> str:
    """Old TF-converted checkpoints name LayerNorm parameters gamma / beta."""
    if key.endswith(".gamma"):
        return key[: -len("gamma")] + "weight"
    if key.endswith(".beta"):
        return key[: -len("beta")] + "bias"
    return key


def _activation(name, path: Path, what: str) -> str:
    if name not in ACTIVATIONS_IN:
        raise InputError(f"unsupported {what} {name!r}; supported: {', '.join(ACTIVATIONS_IN)}", path=path)
    return ACTIVATIONS_IN[name]


def model_config_from_hf(hf: dict, family: str, pad_token_id: int, path: Path) -> ModelConfig:
    """pretune's ModelConfig for a Hugging Face config.json; InputError for what our Transformer cannot express."""
    src = path / ck.CONFIG

    def need(key, default=None):
        value = hf.get(key, default)
        if value is None:
            raise InputError(f"config.json lacks {key!r}", path=src)
        return value

    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise InputError("decoder / cross-attention variants are not supported; import an encoder", path=src)
    if family == "gpt2":
        if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx", False):
            raise InputError("GPT-2 attention scaling variants are not supported (scale_attn_weights must be true, "
                             "scale_attn_by_inverse_layer_idx false)", path=src)
        H = need("n_embd")
        values = dict(
            vocab_size=need("vocab_size"), hidden_size=H, num_layers=need("n_layer"), num_heads=need("n_head"),
            ffn_size=hf.get("n_inner") or 4 * H, max_positions=need("n_positions"), type_vocab_size=0,
            dropout=hf.get("resid_pdrop", 0.1), attention_dropout=hf.get("attn_pdrop", 0.1),
            layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5), pre_ln=True, causal=True,
            activation=_activation(hf.get("activation_function", "gelu_new"), src, "activation_function"),
            embedding_layer_norm=False, final_layer_norm=True,
        )
    elif family == "distilbert":
        values = dict(
            vocab_size=need("vocab_size"), hidden_size=need("dim"), num_layers=need("n_layers"),
            num_heads=need("n_heads"), ffn_size=need("hidden_dim"), max_positions=need("max_position_embeddings"),
            type_vocab_size=0, dropout=hf.get("dropout", 0.1), attention_dropout=hf.get("attention_dropout", 0.1),
            layer_norm_eps=1e-12, activation=_activation(hf.get("activation", "gelu"), src, "activation"),
        )
    else:
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise InputError(f"position_embedding_type {hf['position_embedding_type']!r} is not supported; "
                             "only 'absolute'", path=src)
        positions = need("max_position_embeddings")
        if family in ROBERTA_LIKE:
            positions -= _roberta_offset(hf)
        values = dict(
            vocab_size=need("vocab_size"), hidden_size=need("hidden_size"), num_layers=need("num_hidden_layers"),
            num_heads=need("num_attention_heads"), ffn_size=need("intermediate_size"), max_positions=positions,
            type_vocab_size=hf.get("type_vocab_size", 2), dropout=hf.get("hidden_dropout_prob", 0.1),
            attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
            layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
            activation=_activation(hf.get("hidden_act", "gelu"), src, "hidden_act"),
        )
        if family == "roberta-prelayernorm":  # LayerNorms before attention / feed-forward, one after the last block
            values.update(pre_ln=True, final_layer_norm=True)
    values["pad_token_id"] = pad_token_id
    return ModelConfig.from_dict(values, str(src))


def _roberta_offset(hf: dict) -> int:
    """RoBERTa numbers positions from padding_idx + 1."""
    pad = hf.get("pad_token_id")
    return (1 if pad is None else int(pad)) + 1


def weight_names(path: Path) -> set[str]:
    """The names of a Hugging Face folder's weights (as read_hf_weights names them), read without their values where
    the format allows it (a safetensors header, the shard index); a single pytorch_model.bin is read whole
    (weights_only)."""
    shards, loader, weight_map = _weight_files(path)
    if weight_map is not None:
        names = set(weight_map)
    elif loader == "st":
        try:
            with safe_open(str(shards[0]), framework="pt") as f:
                names = set(f.keys())
        except Exception as e:  # noqa: BLE001 - a truncated or foreign file: a bad weights file
            raise InputError(f"cannot read weights ({type(e).__name__}); expected safetensors",
                             path=shards[0]) from None
    else:
        return set(read_hf_weights(path))
    return {_modern_name(k) for k in names}


def folder_kind(path: str | Path) -> str:
    """What a Hugging Face folder holds, from its config and its weights' names alone: 'mlm' | 'lm' | 'classify' |
    'tag' | 'body' (what `convert_folder` imports it as)."""
    path = Path(path)
    hf = files.read_json(path / ck.CONFIG)
    return _kind(hf, _family(hf, path), weight_names(path))


def _kind(hf: dict, family: str, state: dict[str, torch.Tensor] | set[str]) -> str:
    """What the folder holds: 'mlm' | 'lm' | 'classify' | 'tag' | 'body' (`state`: the weights, or their names)."""
    arch = (hf.get("architectures") or [""])[0]
    if family == "gpt2":
        return "lm"  # GPT-2's LM head is tied: every GPT-2 body is a causal LM
    if arch.endswith("ForSequenceClassification") and family != "distilbert":  # DistilBERT's: ReLU, no pooler
        return "classify"
    if arch.endswith("ForTokenClassification"):
        return "tag"
    mlm_bias = "cls.predictions.bias" if family == "bert" else "vocab_projector.bias" if family == "distilbert" \
        else "lm_head.bias"
    return "mlm" if mlm_bias in state else "body"


def _base_prefix(family: str, state: dict[str, torch.Tensor], path: Path) -> str:
    probe = "wte.weight" if family == "gpt2" else "embeddings.word_embeddings.weight"
    for p in (BASE_PREFIX[family], ""):
        if p + probe in state:
            return p
    raise InputError(f"weights do not look like a {family} model: no {BASE_PREFIX[family]}{probe}", path=path)


def _labels(hf: dict, n: int, path: Path) -> list[str]:
    id2label = hf.get("id2label") or {}
    try:
        names = [str(id2label[k]) for k in sorted(id2label, key=int)]
    except (ValueError, TypeError):
        raise InputError("id2label keys must be integers", path=path / ck.CONFIG) from None
    if len(names) != n:
        names = [f"LABEL_{i}" for i in range(n)]
    return names


@dataclass
class Imported:
    config: dict  # pretune's config.json content
    state: dict[str, torch.Tensor]  # pretune keys
    tokenizer: PretuneTokenizer
    notes: list[str] = field(default_factory=list)  # what was left out, for the user


def convert_folder(path: str | Path) -> Imported:
    """Read a Hugging Face model folder into pretune's layout, in memory."""
    path = Path(path)
    hf = files.read_json(path / ck.CONFIG)
    family = _family(hf, path)
    tok = load_hf_tokenizer(path)
    state = {k: v for k, v in read_hf_weights(path).items() if not k.endswith(IGNORED_SUFFIXES)}
    p = _base_prefix(family, state, path)
    pad = hf.get("pad_token_id")
    if pad is None or isinstance(pad, bool) or not isinstance(pad, int):
        pad = tok.specials.pad
    cfg = model_config_from_hf(hf, family, pad, path)
    if tok.vocab_size > cfg.vocab_size:
        raise InputError(f"the tokenizer has {tok.vocab_size} tokens but the model only {cfg.vocab_size} embeddings",
                         path=path)
    kind = _kind(hf, family, state)
    offset = _roberta_offset(hf) if family in ROBERTA_LIKE else 0
    head = kind if kind in ("mlm", "classify", "tag") else None
    if family in ROBERTA_LIKE and kind == "mlm" and cfg.activation != "gelu":
        raise InputError("RoBERTa's MLM head always uses erf GELU; a hidden_act other than 'gelu' is not supported",
                         path=path)
    rules = body_rules(family, cfg, p, offset) + (head_rules(family, head, p) if head else [])
    nsp = family == "bert" and kind == "mlm" and "cls.seq_relationship.weight" in state and cfg.type_vocab_size > 1
    if nsp:
        rules += head_rules(family, "nsp", p)
    elif kind in ("mlm", "body") and f"{p}pooler.dense.weight" in state:  # a task checkpoint has no place for it
        rules += head_rules(family, "pooler", p)
    ours = to_ours(rules, state, path)
    used = {k for r in rules for k in r.theirs}
    decoder = TIED_DECODER[family]
    if decoder in state:
        used.add(decoder)
        if not torch.equal(state[decoder], ours["body.embeddings.word.weight"]):
            raise InputError(f"{decoder} differs from the word embeddings: untied output layers are not supported",
                             path=path)
    if family == "bert" and head == "mlm":
        used.add("cls.predictions.decoder.bias")
    if family in ROBERTA_LIKE and head == "mlm":
        used.add("lm_head.decoder.bias")
    notes = []
    left = sorted(k for k in state if k not in used)
    if left:
        shown = ", ".join(left[:4]) + (f" and {len(left) - 4} more" if len(left) > 4 else "")
        notes.append(f"not imported (no pretune counterpart): {shown}")
    source = {"format": "huggingface", "model_type": hf.get("model_type"), "architectures": hf.get("architectures"),
              "path": str(path)}
    if kind in ("classify", "tag"):
        n = ours["head.classifier.weight"].shape[0]
        labels = _labels(hf, n, path)
        head_options = {"crf": False, "all_subwords": False} if kind == "tag" else {}  # finetune's defaults
        config = {"model": cfg.to_dict(), "task": kind, "labels": labels, "head": head_options,
                  "max_len": min(cfg.max_positions, 512), "imported_from": source}
    else:
        if kind == "body":
            notes.append("the folder has no pretraining head: an MLM head starts from random weights")
        heads = {"mlm": ["mlm", "nsp"] if nsp else ["mlm"], "lm": ["lm"]}.get(kind, [])
        objective = "clm" if cfg.causal else "mlm+nsp" if nsp else "mlm"
        config = {"model": cfg.to_dict(), "objective": objective, "heads": heads, "imported_from": source}
    return Imported(config, ours, tok, notes)


def import_hf(path: str | Path) -> ck.Checkpoint:
    """A Hugging Face folder as an in-memory pretune Checkpoint (what `--from DIR` uses)."""
    imported = convert_folder(path)
    return ck.Checkpoint(Path(path), imported.config, imported.state, loaded_tokenizer=imported.tokenizer)


def open_checkpoint(path: str | Path) -> ck.Checkpoint:
    """A pretune checkpoint, or a Hugging Face model folder converted in memory: what every `--from` accepts."""
    resolved = ck.resolve(path)
    config = files.read_json(resolved / ck.CONFIG)
    if "model_type" in config and "model" not in config:
        return import_hf(resolved)
    return ck.load_checkpoint(resolved)


def import_folder(src: str | Path, out: str | Path, overwrite: bool = False) -> Imported:
    """Convert a Hugging Face folder into a pretune checkpoint directory `out` (written atomically)."""
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise InputError("expected a Hugging Face model folder (config.json + weights + tokenizer files)", path=src)
    if not is_hf_folder(src):
        raise InputError(f"not a Hugging Face model folder: no config.json with a model_type ({supported()})",
                         path=src)
    check_target(out, overwrite)
    imported = convert_folder(src)
    files.write_dir_atomic(out, lambda tmp: ck.write_model_files(tmp, imported.state, imported.config,
                                                                 imported.tokenizer))
    return imported


def check_target(out: Path, overwrite: bool) -> None:
    """Refuse to replace a non-empty `out` unless the user passed --overwrite (import and export)."""
    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not overwrite:
        raise InputError("already exists; pass --overwrite to replace it", path=out)
