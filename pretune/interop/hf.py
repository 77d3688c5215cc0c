"""Hugging Face interoperability: read BERT / RoBERTa / XLM-R / DistilBERT / GPT-2 model folders into pretune's
Transformer, and write pretune checkpoints as folders that `transformers` loads with its Auto classes.

Plain files both ways (config.json, model.safetensors or pytorch_model.bin, tokenizer files): no network, and
`transformers` is not needed at run time. Weight layout, ours <- theirs:
- our fused attention `qkv` is the concatenation of query, key and value (GPT-2's `c_attn` is already fused);
- GPT-2's Conv1D weights are stored [in, out] and are transposed;
- RoBERTa's position table starts at padding_idx + 1 (its first positions are reserved for padding);
- the MLM / LM decoders are tied to the word embeddings in both libraries, so only their bias travels.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pretune import files
from pretune.errors import InputError
from pretune.model.transformer import ModelConfig
from pretune.training import checkpoint as ck

FAMILIES = {"bert": "bert", "roberta": "roberta", "xlm-roberta": "roberta", "distilbert": "distilbert", "gpt2": "gpt2"}
EXPORT_FAMILIES = ("bert", "roberta", "gpt2")
BASE_PREFIX = {"bert": "bert.", "roberta": "roberta.", "distilbert": "distilbert.", "gpt2": "transformer."}
ACTIVATIONS_IN = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
ACTIVATIONS_OUT = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}
TIED_DECODER = {
    "bert": "cls.predictions.decoder.weight",
    "roberta": "lm_head.decoder.weight",
    "distilbert": "vocab_projector.weight",
    "gpt2": "lm_head.weight",
}
IGNORED_SUFFIXES = (".position_ids", ".attn.bias", ".attn.masked_bias")  # buffers some versions saved
BERT_TOKENIZERS = ("BertTokenizer", "DistilBertTokenizer")
BYTE_LEVEL_TOKENIZERS = ("GPT2Tokenizer", "RobertaTokenizer")
DEFAULT_TOKENIZER = {"bert": "BertTokenizer", "distilbert": "BertTokenizer", "roberta": "RobertaTokenizer",
                     "gpt2": "GPT2Tokenizer"}


def supported() -> str:
    return ", ".join(sorted(FAMILIES))


# ---- reading a folder -----------------------------------------------------------------------------------------------


def is_hf_folder(path: str | Path) -> bool:
    """True for a directory whose config.json names a `model_type` (pretune's own configs never do)."""
    config = Path(path) / ck.CONFIG
    if not config.is_file():
        return False
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and "model_type" in data and "model" not in data


def _family(hf: dict, path: Path) -> str:
    model_type = hf.get("model_type")
    if model_type not in FAMILIES:
        raise InputError(f"unsupported model_type {model_type!r}; pretune imports: {supported()}", path=path)
    return FAMILIES[model_type]


def _optional_json(path: Path) -> dict:
    return files.read_json(path) if path.is_file() else {}


def read_hf_weights(path: Path) -> dict[str, torch.Tensor]:
    """model.safetensors (or its shards), else pytorch_model.bin (or shards) with weights_only=True; float32."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    for single, index, loader in (("model.safetensors", "model.safetensors.index.json", "st"),
                                  ("pytorch_model.bin", "pytorch_model.bin.index.json", "pt")):
        if (path / single).is_file():
            files = [path / single]
        elif (path / index).is_file():
            weight_map = files.read_json(path / index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise InputError("expected a 'weight_map' object", path=path / index)
            files = [files.child_path(path, str(name)) for name in sorted(set(weight_map.values()))]
        else:
            continue
        state: dict[str, torch.Tensor] = {}
        for f in files:
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
            except (SafetensorError, OSError, RuntimeError, ValueError, EOFError) as e:
                raise InputError(f"cannot read weights ({type(e).__name__}: {e})", path=f) from None
        return {_modern_name(k): v.float() if v.is_floating_point() else v for k, v in state.items()}
    raise InputError("no PyTorch weights: expected model.safetensors or pytorch_model.bin (or their sharded index)",
                     path=path)


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
        if family == "roberta":
            positions -= _roberta_offset(hf)
        values = dict(
            vocab_size=need("vocab_size"), hidden_size=need("hidden_size"), num_layers=need("num_hidden_layers"),
            num_heads=need("num_attention_heads"), ffn_size=need("intermediate_size"), max_positions=positions,
            type_vocab_size=hf.get("type_vocab_size", 2), dropout=hf.get("hidden_dropout_prob", 0.1),
            attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
            layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
            activation=_activation(hf.get("hidden_act", "gelu"), src, "hidden_act"),
        )
    values["pad_token_id"] = pad_token_id
    return ModelConfig.from_dict(values, str(src))


def _roberta_offset(hf: dict) -> int:
    """RoBERTa numbers positions from padding_idx + 1."""
    pad = hf.get("pad_token_id")
    return (1 if pad is None else int(pad)) + 1


# ---- weight mapping -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One of our tensors and where it lives in a Hugging Face state dict."""

    ours: str
    theirs: tuple[str, ...]  # one key, or query / key / value fused into our qkv
    transpose: bool = False  # GPT-2 Conv1D stores [in, out]
    offset: int = 0  # leading rows of their table that we do not have (RoBERTa positions)


def _pair(ours: str, theirs: str, transpose: bool = False) -> list[Rule]:
    """weight + bias of a Linear or LayerNorm."""
    return [Rule(f"{ours}.weight", (f"{theirs}.weight",), transpose), Rule(f"{ours}.bias", (f"{theirs}.bias",))]


def body_rules(family: str, cfg: ModelConfig, p: str, offset: int = 0) -> list[Rule]:
    """Rules for `body.*`; `p` is the prefix of the base model's keys in their state dict ("bert." or "")."""
    rules: list[Rule] = []
    if family == "gpt2":
        rules += [Rule("body.embeddings.word.weight", (f"{p}wte.weight",)),
                  Rule("body.embeddings.position.weight", (f"{p}wpe.weight",))]
        for i in range(cfg.num_layers):
            L, b = f"{p}h.{i}.", f"body.blocks.{i}."
            rules += _pair(b + "norm1", L + "ln_1") + _pair(b + "attn.qkv", L + "attn.c_attn", True)
            rules += _pair(b + "attn.out", L + "attn.c_proj", True) + _pair(b + "norm2", L + "ln_2")
            rules += _pair(b + "ffn.fc1", L + "mlp.c_fc", True) + _pair(b + "ffn.fc2", L + "mlp.c_proj", True)
        return rules + _pair("body.final_norm", f"{p}ln_f")
    e = f"{p}embeddings."
    rules += [Rule("body.embeddings.word.weight", (e + "word_embeddings.weight",)),
              Rule("body.embeddings.position.weight", (e + "position_embeddings.weight",), offset=offset)]
    if cfg.type_vocab_size:
        rules.append(Rule("body.embeddings.segment.weight", (e + "token_type_embeddings.weight",)))
    rules += _pair("body.embeddings.norm", e + "LayerNorm")
    for i in range(cfg.num_layers):
        b = f"body.blocks.{i}."
        if family == "distilbert":
            L = f"{p}transformer.layer.{i}."
            qkv = [L + f"attention.{n}_lin" for n in ("q", "k", "v")]
            names = ("attention.out_lin", "sa_layer_norm", "ffn.lin1", "ffn.lin2", "output_layer_norm")
        else:
            L = f"{p}encoder.layer.{i}."
            qkv = [L + f"attention.self.{n}" for n in ("query", "key", "value")]
            names = ("attention.output.dense", "attention.output.LayerNorm", "intermediate.dense", "output.dense",
                     "output.LayerNorm")
        rules += [Rule(f"{b}attn.qkv.{s}", tuple(f"{q}.{s}" for q in qkv)) for s in ("weight", "bias")]
        for ours, theirs in zip(("attn.out", "norm1", "ffn.fc1", "ffn.fc2", "norm2"), names, strict=True):
            rules += _pair(b + ours, L + theirs)
    return rules


def head_rules(family: str, head: str, p: str) -> list[Rule]:
    """Rules for the pretraining head (`heads.mlm.*`, `heads.lm` has no parameters) or a task head (`head.*`)."""
    if head == "mlm":
        dense, norm, bias = {
            "bert": ("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm", "cls.predictions.bias"),
            "roberta": ("lm_head.dense", "lm_head.layer_norm", "lm_head.bias"),
            "distilbert": ("vocab_transform", "vocab_layer_norm", "vocab_projector.bias"),
        }[family]
        return _pair("heads.mlm.dense", dense) + _pair("heads.mlm.norm", norm) + [Rule("heads.mlm.bias", (bias,))]
    if head == "nsp":  # BERT's next-sentence head: the base model's pooler + cls.seq_relationship
        return (_pair("heads.nsp.pooler.dense", f"{p}pooler.dense")
                + _pair("heads.nsp.classifier", "cls.seq_relationship"))
    if head == "classify":
        if family == "roberta":
            return _pair("head.pooler.dense", "classifier.dense") + _pair("head.classifier", "classifier.out_proj")
        return _pair("head.pooler.dense", f"{p}pooler.dense") + _pair("head.classifier", "classifier")
    if head == "tag":
        return _pair("head.classifier", "classifier")
    return []


def to_ours(rules: list[Rule], theirs: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for r in rules:
        missing = [k for k in r.theirs if k not in theirs]
        if missing:
            raise InputError(f"weights lack {missing[0]!r} (needed for {r.ours})", path=path)
        parts = [theirs[k] for k in r.theirs]
        t = torch.cat(parts, 0) if len(parts) > 1 else parts[0]
        if r.transpose:
            t = t.t()
        out[r.ours] = t[r.offset:].contiguous()
    return out


def to_theirs(rules: list[Rule], ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for r in rules:
        t = ours[r.ours]
        if r.offset:
            t = torch.cat([t.new_zeros(r.offset, *t.shape[1:]), t])
        if r.transpose:
            t = t.t()
        for key, part in zip(r.theirs, t.chunk(len(r.theirs), 0), strict=True):
            out[key] = part.contiguous()
    return out


# ---- import ---------------------------------------------------------------------------------------------------------


def _kind(hf: dict, family: str, state: dict[str, torch.Tensor]) -> str:
    """What the folder holds: 'mlm' | 'lm' | 'classify' | 'tag' | 'body'."""
    arch = (hf.get("architectures") or [""])[0]
    if family == "gpt2":
        return "lm"  # GPT-2's LM head is tied: every GPT-2 body is a causal LM
    if arch.endswith("ForSequenceClassification") and family != "distilbert":  # DistilBERT's: ReLU, no pooler
        return "classify"
    if arch.endswith("ForTokenClassification"):
        return "tag"
    mlm_bias = {"bert": "cls.predictions.bias", "roberta": "lm_head.bias", "distilbert": "vocab_projector.bias"}[family]
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
    tokenizer: object  # PretuneTokenizer
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
    offset = _roberta_offset(hf) if family == "roberta" else 0
    head = kind if kind in ("mlm", "classify", "tag") else None
    if family == "roberta" and kind == "mlm" and cfg.activation != "gelu":
        raise InputError("RoBERTa's MLM head always uses erf GELU; a hidden_act other than 'gelu' is not supported",
                         path=path)
    rules = body_rules(family, cfg, p, offset) + (head_rules(family, head, p) if head else [])
    nsp = family == "bert" and kind == "mlm" and "cls.seq_relationship.weight" in state and cfg.type_vocab_size > 1
    if nsp:
        rules += head_rules(family, "nsp", p)
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
    if family == "roberta" and head == "mlm":
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
    _check_target(out, overwrite)
    imported = convert_folder(src)

    def fill(tmp: Path) -> None:
        files.write_json(tmp / ck.CONFIG, {"format_version": ck.FORMAT_VERSION, **imported.config})
        from safetensors.torch import save_file

        save_file(imported.state, str(tmp / ck.WEIGHTS), metadata={"format": "pt"})
        imported.tokenizer.save(tmp / ck.TOKENIZER)

    files.write_dir_atomic(out, fill)
    return imported


def _check_target(out: Path, overwrite: bool) -> None:
    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not overwrite:
        raise InputError("already exists; pass --overwrite to replace it", path=out)


# ---- tokenizers -----------------------------------------------------------------------------------------------------


def load_hf_tokenizer(path: str | Path):
    """The tokenizer of a Hugging Face folder, built the way `transformers`' AutoTokenizer builds it.

    tokenizer.json is used when present; BERT-family classes take their normalizer from tokenizer_config.json
    (do_lower_case, strip_accents, tokenize_chinese_chars) and GPT-2 / RoBERTa their add_prefix_space, as
    `transformers` does. Without tokenizer.json: vocab.txt (WordPiece) or vocab.json + merges.txt (byte-level BPE).
    Truncation and padding stored in tokenizer.json are dropped: pretune frames and pads sequences itself."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    from pretune.text.tokenizer import PretuneTokenizer

    path = Path(path)
    hf = _optional_json(path / ck.CONFIG)
    tcfg = _optional_json(path / "tokenizer_config.json")
    cls = str(tcfg.get("tokenizer_class") or DEFAULT_TOKENIZER.get(FAMILIES.get(hf.get("model_type"), ""), ""))
    cls = cls.removesuffix("Fast")
    specials = {k: _token_text(tcfg.get(k)) for k in ("unk_token", "cls_token", "sep_token", "pad_token")}
    from_json = (path / "tokenizer.json").is_file()
    if from_json:
        from pretune.text.tokenizer import _read_tokenizer_json

        inner = _read_tokenizer_json(path / "tokenizer.json")
    elif (path / "vocab.txt").is_file() and cls in BERT_TOKENIZERS:
        vocab = _read_vocab_lines(path / "vocab.txt")
        inner = Tokenizer(models.WordPiece(vocab, unk_token=specials["unk_token"] or "[UNK]"))
    elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        vocab, merges = models.BPE.read_file(str(path / "vocab.json"), str(path / "merges.txt"))
        inner = Tokenizer(models.BPE(vocab, merges, dropout=None, continuing_subword_prefix="", end_of_word_suffix="",
                                     fuse_unk=False))
        cls = cls if cls in BYTE_LEVEL_TOKENIZERS else "GPT2Tokenizer"
    else:
        raise InputError("no tokenizer in the folder: expected tokenizer.json, vocab.txt (BERT) or vocab.json + "
                         "merges.txt (GPT-2 / RoBERTa)", path=path)
    if cls in BERT_TOKENIZERS:
        inner.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=bool(tcfg.get("tokenize_chinese_chars", True)),
            strip_accents=tcfg.get("strip_accents"), lowercase=bool(tcfg.get("do_lower_case", True)))
        inner.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        inner.decoder = decoders.WordPiece(prefix="##")
    elif cls in BYTE_LEVEL_TOKENIZERS:
        prefix_space = bool(tcfg.get("add_prefix_space", False))
        inner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix_space)
        inner.decoder = decoders.ByteLevel()
        if not from_json and cls == "RobertaTokenizer":
            sep, cls_tok = specials["sep_token"] or "</s>", specials["cls_token"] or "<s>"
            inner.post_processor = processors.RobertaProcessing(
                (sep, inner.token_to_id(sep) or 0), (cls_tok, inner.token_to_id(cls_tok) or 0),
                trim_offsets=bool(tcfg.get("trim_offsets", True)), add_prefix_space=prefix_space)
    _add_declared_specials(inner, tcfg)
    return PretuneTokenizer(inner, source=path)


def _token_text(value) -> str | None:
    if isinstance(value, dict):  # serialized AddedToken
        value = value.get("content")
    return value if isinstance(value, str) else None


def _read_vocab_lines(path: Path) -> dict[str, int]:
    """vocab.txt as `transformers` reads it: line i (newline stripped) is token i; later duplicates win."""
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read vocabulary ({e})", path=path) from None
    if lines and lines[-1] == "":
        lines.pop()
    return {token: i for i, token in enumerate(lines)}


def _add_declared_specials(inner, tcfg: dict) -> None:
    """Special tokens named in tokenizer_config.json but not yet registered (folders without tokenizer.json)."""
    from tokenizers import AddedToken

    known = {t.content for t in inner.get_added_tokens_decoder().values()}
    names = {_token_text(tcfg.get(k)) for k in ("unk_token", "cls_token", "sep_token", "pad_token", "mask_token",
                                                 "bos_token", "eos_token")}
    new = sorted(n for n in names if n and n not in known and inner.token_to_id(n) is not None)
    if new:
        inner.add_special_tokens([AddedToken(n, special=True, normalized=False) for n in new])


def _tokenizer_files(tok, cfg: ModelConfig, family: str, out: Path) -> None:
    """tokenizer.json (+ vocab.txt or vocab.json/merges.txt) and tokenizer_config.json for `transformers`.

    Encoders get a post-processor framing text as pretune does ([CLS] A [SEP] B [SEP]); GPT-2 adds nothing."""
    from tokenizers import Tokenizer, processors

    inner = Tokenizer.from_str(tok.inner.to_str())
    inner.no_truncation()
    inner.no_padding()
    data = json.loads(inner.to_str())
    s = tok.specials
    cls_t, sep_t, pad_t, unk_t = (tok.id_to_token(i) for i in (s.cls, s.sep, s.pad, s.unk))
    if family != "gpt2":
        second = 1 if cfg.type_vocab_size > 1 else 0
        template = processors.TemplateProcessing(
            single=f"{cls_t}:0 $A:0 {sep_t}:0", pair=f"{cls_t}:0 $A:0 {sep_t}:0 $B:{second} {sep_t}:{second}",
            special_tokens=[(cls_t, s.cls), (sep_t, s.sep)] if cls_t != sep_t else [(cls_t, s.cls)])
        trim = _offset_trimming(data.get("post_processor"))
        inner.post_processor = processors.Sequence([trim, template]) if trim is not None else template
    bert_like = family != "gpt2" and cfg.type_vocab_size > 1 and _bert_pipeline(data)
    config = {
        "tokenizer_class": "BertTokenizer" if bert_like else "PreTrainedTokenizerFast",
        "model_max_length": cfg.max_positions,
        "clean_up_tokenization_spaces": False,
        "unk_token": unk_t, "pad_token": pad_t, "cls_token": cls_t, "sep_token": sep_t,
        "model_input_names": ["input_ids", "token_type_ids", "attention_mask"]
        if family != "gpt2" and cfg.type_vocab_size > 1 else ["input_ids", "attention_mask"],
    }
    if s.mask is not None:
        config["mask_token"] = tok.id_to_token(s.mask)
    if family == "gpt2":
        config.update(bos_token=cls_t, eos_token=sep_t)
    if bert_like:
        norm = data["normalizer"]
        config.update(do_lower_case=bool(norm["lowercase"]), strip_accents=norm["strip_accents"],
                      tokenize_chinese_chars=bool(norm["handle_chinese_chars"]))
    inner.save(str(out / "tokenizer.json"))
    model = data.get("model", {})
    if model.get("type") == "WordPiece":
        inner.model.save(str(out))  # vocab.txt
    elif model.get("type") == "BPE" and (data.get("pre_tokenizer") or {}).get("type") == "ByteLevel":
        inner.model.save(str(out))  # vocab.json + merges.txt
    files.write_json(out / "tokenizer_config.json", config)
    specials_map = {k: v for k, v in config.items() if k.endswith("_token")}
    files.write_json(out / "special_tokens_map.json", specials_map)


def _offset_trimming(post):
    """The ByteLevel offset trimming of an existing post-processor, to keep offsets as they were."""
    from tokenizers import processors

    if not post:
        return None
    if post.get("type") == "Sequence":
        for p in post.get("processors", []):
            found = _offset_trimming(p)
            if found is not None:
                return found
        return None
    if post.get("type") in ("ByteLevel", "RobertaProcessing") and post.get("trim_offsets"):
        return processors.ByteLevel(trim_offsets=True, add_prefix_space=bool(post.get("add_prefix_space", True)))
    return None


def _bert_pipeline(data: dict) -> bool:
    """Whether `transformers`' BertTokenizer rebuilds exactly this tokenizer from its vocabulary and flags."""
    model, norm = data.get("model") or {}, data.get("normalizer") or {}
    plain_added = [t for t in data.get("added_tokens", []) if not t.get("special")]
    return (model.get("type") == "WordPiece" and model.get("continuing_subword_prefix") == "##"
            and model.get("max_input_chars_per_word") == 100 and norm.get("type") == "BertNormalizer"
            and norm.get("clean_text") is True and (data.get("pre_tokenizer") or {}).get("type") == "BertPreTokenizer"
            and not plain_added)


# ---- export ---------------------------------------------------------------------------------------------------------


def _export_family(cfg: ModelConfig, tok, family: str, path: Path) -> str:
    if family == "auto":
        if cfg.causal:
            family = "gpt2"
        else:
            family = "roberta" if tok.id_to_token(tok.specials.cls) == "<s>" else "bert"
    if family not in EXPORT_FAMILIES:
        raise InputError(f"unknown family {family!r}; expected auto or one of {', '.join(EXPORT_FAMILIES)}")
    if family == "gpt2":
        if not (cfg.causal and cfg.pre_ln and cfg.final_layer_norm and not cfg.embedding_layer_norm
                and cfg.type_vocab_size == 0):
            raise InputError("GPT-2 export needs a causal pre-LN model with a final LayerNorm, no embedding "
                             "LayerNorm and no segment embeddings", path=path)
    elif cfg.causal or cfg.pre_ln or not cfg.embedding_layer_norm or cfg.final_layer_norm:
        raise InputError(f"{family} export needs a bidirectional post-LN model with an embedding LayerNorm "
                         "(as BERT); causal pre-LN models export as gpt2", path=path)
    return family


def hf_config(cfg: ModelConfig, family: str, architecture: str, tok, labels: list[str] | None) -> dict:
    """config.json for `transformers`."""
    s = tok.specials
    if family == "gpt2":
        out = {
            "model_type": "gpt2", "vocab_size": cfg.vocab_size, "n_embd": cfg.hidden_size, "n_layer": cfg.num_layers,
            "n_head": cfg.num_heads, "n_inner": cfg.ffn_size, "n_positions": cfg.max_positions,
            "activation_function": ACTIVATIONS_OUT[cfg.activation], "resid_pdrop": cfg.dropout,
            "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.attention_dropout, "layer_norm_epsilon": cfg.layer_norm_eps,
            "bos_token_id": s.cls, "eos_token_id": s.sep, "scale_attn_weights": True,
        }
    else:
        offset = cfg.pad_token_id + 1 if family == "roberta" else 0
        out = {
            "model_type": family, "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
            "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
            "intermediate_size": cfg.ffn_size, "hidden_act": ACTIVATIONS_OUT[cfg.activation],
            "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.attention_dropout,
            "max_position_embeddings": cfg.max_positions + offset, "type_vocab_size": max(cfg.type_vocab_size, 1),
            "layer_norm_eps": cfg.layer_norm_eps, "position_embedding_type": "absolute",
        }
        if family == "roberta":
            out.update(bos_token_id=s.cls, eos_token_id=s.sep)
    out.update(architectures=[architecture], pad_token_id=cfg.pad_token_id, initializer_range=0.02,
               tie_word_embeddings=True, torch_dtype="float32")
    if labels is not None:
        out["id2label"] = {str(i): name for i, name in enumerate(labels)}
        out["label2id"] = {name: i for i, name in enumerate(labels)}
    return out


ARCHITECTURES = {
    ("bert", "mlm"): "BertForMaskedLM", ("bert", "body"): "BertModel", ("bert", "pretraining"): "BertForPreTraining",
    ("bert", "classify"): "BertForSequenceClassification", ("bert", "tag"): "BertForTokenClassification",
    ("roberta", "mlm"): "RobertaForMaskedLM", ("roberta", "body"): "RobertaModel",
    ("roberta", "classify"): "RobertaForSequenceClassification", ("roberta", "tag"): "RobertaForTokenClassification",
    ("gpt2", "lm"): "GPT2LMHeadModel",
}


def export_hf(checkpoint: str | Path, out: str | Path, family: str = "auto", overwrite: bool = False) -> list[str]:
    """Write a pretune checkpoint as a Hugging Face folder; returns notes on what was left out."""
    from safetensors.torch import save_file

    ckpt = open_checkpoint(checkpoint)
    out = Path(out)
    _check_target(out, overwrite)
    if "model" not in ckpt.config:
        raise InputError("config.json has no 'model' section: not a pretune checkpoint", path=ckpt.path)
    cfg = ModelConfig.from_dict(ckpt.config["model"], str(ckpt.path / ck.CONFIG))
    tok = ckpt.tokenizer()
    family = _export_family(cfg, tok, family, ckpt.path)
    state, notes = ckpt.state_dict, []
    task = ckpt.config.get("task")
    labels = None
    if task is not None:
        kind = {"classify": "classify", "pair": "classify", "tag": "tag"}.get(task)
        if kind is None:
            raise InputError(f"task {task!r} has no Hugging Face counterpart; export supports classify, pair, tag "
                             "and pretrained (MLM / causal LM) checkpoints", path=ckpt.path)
        if family == "gpt2":
            raise InputError("task models on a causal body have no Hugging Face counterpart with the same head; "
                             "export supports classify / pair / tag on BERT and RoBERTa bodies", path=ckpt.path)
        if any(k.startswith("head.crf.") for k in state):
            raise InputError("a CRF tag head has no Hugging Face counterpart (AutoModelForTokenClassification); "
                             "fine-tune without --crf to export", path=ckpt.path)
        labels = [str(x) for x in ckpt.config.get("labels", [])]
    elif family == "gpt2":
        kind = "lm"
    else:
        kind = "mlm" if "heads.mlm.bias" in state else "body"
        if kind == "mlm" and family == "bert" and "heads.nsp.classifier.weight" in state:
            kind = "pretraining"  # BertForPreTraining: MLM + NSP
        if family == "roberta" and kind == "mlm" and cfg.activation != "gelu":
            raise InputError("RoBERTa's MLM head always uses erf GELU; export this model with --family bert",
                             path=ckpt.path)
    p = "" if kind == "body" else BASE_PREFIX[family]  # base models are saved without the prefix
    offset = cfg.pad_token_id + 1 if family == "roberta" else 0
    heads = ("mlm", "nsp") if kind == "pretraining" else (kind,)
    rules = body_rules(family, cfg, p, offset) + [r for h in heads for r in head_rules(family, h, p)]
    missing = [r.ours for r in rules if r.ours not in state]
    if missing:
        raise InputError(f"checkpoint lacks {missing[0]!r}: it does not match its config", path=ckpt.path)
    theirs = to_theirs(rules, state)
    if family != "gpt2" and cfg.type_vocab_size == 0:  # BERT always adds a segment embedding: make it zero
        theirs[f"{p}embeddings.token_type_embeddings.weight"] = torch.zeros(1, cfg.hidden_size)
    used = {r.ours for r in rules}
    left = sorted(k for k in state if k not in used)
    if left:
        notes.append(f"not exported (no Hugging Face counterpart): {', '.join(left[:4])}"
                     + (f" and {len(left) - 4} more" if len(left) > 4 else ""))
    if kind == "body":
        notes.append("the pooler of the base model is not part of a pretune checkpoint: transformers initialises it "
                     "(last_hidden_state is unaffected)")
    config = hf_config(cfg, family, ARCHITECTURES[(family, kind)], tok, labels)

    def fill(tmp: Path) -> None:
        files.write_json(tmp / "config.json", config)
        save_file(theirs, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        _tokenizer_files(tok, cfg, family, tmp)

    files.write_dir_atomic(out, fill)
    return notes


# ---- command line ---------------------------------------------------------------------------------------------------


def cmd_import(args) -> None:
    imported = import_folder(args.folder, args.out, overwrite=args.overwrite)
    cfg = imported.config
    what = f"task {cfg['task']} ({len(cfg['labels'])} labels)" if "task" in cfg else f"heads {cfg['heads']}"
    for note in imported.notes:
        print(f"note: {note}")
    print(f"imported {cfg['imported_from']['model_type']} ({what}) -> {args.out}")


def cmd_export(args) -> None:
    if args.format != "hf":
        raise InputError(f"unknown export format {args.format!r}; expected hf")
    notes = export_hf(args.checkpoint, args.out, family=args.family, overwrite=args.overwrite)
    for note in notes:
        print(f"note: {note}")
    print(f"exported {args.checkpoint} -> {args.out} (Hugging Face format)")


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("import", help="convert a local Hugging Face model folder into a pretune checkpoint",
                              description=f"Supported model types: {supported()}. Never uses the network.")
    p.add_argument("folder", help="folder with config.json, model.safetensors or pytorch_model.bin, tokenizer files")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_import)
    e = subparsers.add_parser("export", help="write a checkpoint as a folder that transformers loads")
    e.add_argument("checkpoint", help="checkpoint directory (or run directory)")
    e.add_argument("--format", default="hf", help="hf (the only format)")
    e.add_argument("--family", default="auto", choices=("auto", *EXPORT_FAMILIES),
                   help="auto: gpt2 for causal models, roberta for <s>/</s> vocabularies, else bert")
    e.add_argument("--out", required=True, help="folder to write")
    e.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    e.set_defaults(func=cmd_export)
