"""The rules shared by Hugging Face import and export: which model types pretune reads, how their activations are
named, and where each of our tensors lives in their state dicts.

Weight layout, ours <- theirs:
- our fused attention `qkv` is the concatenation of query, key and value (GPT-2's `c_attn` is already fused);
- GPT-2's Conv1D weights are stored [in, out] and are transposed;
- RoBERTa's (and RoBERTa-PreLayerNorm's) position table starts at padding_idx + 1 (its first positions are reserved
  for padding);
- RoBERTa-PreLayerNorm is pre-LN: each block's LayerNorms sit before attention (`attention.LayerNorm`) and before the
  feed-forward (`intermediate.LayerNorm`), and the base model ends with `LayerNorm` (our final norm);
- the base model's pooler (`pooler.dense`, dense + tanh on [CLS]) is our `pooler.dense` when nothing else holds it
  (a classifier's `head.pooler.dense`, BERT's NSP `heads.nsp.pooler.dense`);
- the MLM / LM decoders are tied to the word embeddings in both libraries, so only their bias travels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from pretune.errors import InputError
from pretune.model.transformer import ModelConfig

FAMILIES = {"bert": "bert", "roberta": "roberta", "xlm-roberta": "roberta",
            "roberta-prelayernorm": "roberta-prelayernorm", "distilbert": "distilbert", "gpt2": "gpt2"}
BASE_PREFIX = {"bert": "bert.", "roberta": "roberta.", "roberta-prelayernorm": "roberta_prelayernorm.",
               "distilbert": "distilbert.", "gpt2": "transformer."}
ROBERTA_LIKE = ("roberta", "roberta-prelayernorm")  # positions from padding_idx + 1; the same MLM / classifier heads
ACTIVATIONS_IN = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
ACTIVATIONS_OUT = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}
TIED_DECODER = {
    "bert": "cls.predictions.decoder.weight",
    "roberta": "lm_head.decoder.weight",
    "roberta-prelayernorm": "lm_head.decoder.weight",
    "distilbert": "vocab_projector.weight",
    "gpt2": "lm_head.weight",
}
IGNORED_SUFFIXES = (".position_ids", ".attn.bias", ".attn.masked_bias")  # buffers some versions saved


def supported() -> str:
    """The model types pretune imports, for messages."""
    return ", ".join(sorted(FAMILIES))


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
        elif family == "roberta-prelayernorm":
            L = f"{p}encoder.layer.{i}."
            qkv = [L + f"attention.self.{n}" for n in ("query", "key", "value")]
            names = ("attention.output.dense", "attention.LayerNorm", "intermediate.dense", "output.dense",
                     "intermediate.LayerNorm")
        else:
            L = f"{p}encoder.layer.{i}."
            qkv = [L + f"attention.self.{n}" for n in ("query", "key", "value")]
            names = ("attention.output.dense", "attention.output.LayerNorm", "intermediate.dense", "output.dense",
                     "output.LayerNorm")
        rules += [Rule(f"{b}attn.qkv.{s}", tuple(f"{q}.{s}" for q in qkv)) for s in ("weight", "bias")]
        for ours, theirs in zip(("attn.out", "norm1", "ffn.fc1", "ffn.fc2", "norm2"), names, strict=True):
            rules += _pair(b + ours, L + theirs)
    if family == "roberta-prelayernorm":
        rules += _pair("body.final_norm", f"{p}LayerNorm")
    return rules


def head_rules(family: str, head: str, p: str) -> list[Rule]:
    """Rules for the pretraining head (`heads.mlm.*`, `heads.lm` has no parameters), a task head (`head.*`) or the
    base model's pooler (`pooler.*`)."""
    if head == "mlm":
        dense, norm, bias = {
            "bert": ("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm", "cls.predictions.bias"),
            "roberta": ("lm_head.dense", "lm_head.layer_norm", "lm_head.bias"),
            "roberta-prelayernorm": ("lm_head.dense", "lm_head.layer_norm", "lm_head.bias"),
            "distilbert": ("vocab_transform", "vocab_layer_norm", "vocab_projector.bias"),
        }[family]
        return _pair("heads.mlm.dense", dense) + _pair("heads.mlm.norm", norm) + [Rule("heads.mlm.bias", (bias,))]
    if head == "nsp":  # BERT's next-sentence head: the base model's pooler + cls.seq_relationship
        return (_pair("heads.nsp.pooler.dense", f"{p}pooler.dense")
                + _pair("heads.nsp.classifier", "cls.seq_relationship"))
    if head == "pooler":  # the base model's pooler, kept apart from any head
        return _pair("pooler.dense", f"{p}pooler.dense")
    if head == "classify":
        if family in ROBERTA_LIKE:
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
