"""Vocabulary extension for continued (domain-adaptive) pretraining.

Domain words are added to the tokenizer as whole tokens; the model gets one new embedding row per word (and a new
row in every tied-decoder bias), initialised as the mean of the rows of the pieces the word was split into before.
Existing rows are left as they were, so the model computes exactly what it did on text without the new words.

Workflow: `pretune vocab extend CKPT words.txt --out tok.json` -> `pretune prepare CORPUS --tokenizer tok.json`
-> `pretune pretrain --init-from CKPT --add-tokens words.txt --shards ...` (pretraining repeats the extension on the
checkpoint's tokenizer, checks it matches the shards' tokenizer, and resizes the model).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from pretune.errors import InputError
from pretune.files import read_input
from pretune.model.heads import MLMHead, SBOHead
from pretune.model.transformer import ModelConfig


def read_word_list(path: str | Path) -> list[str]:
    """Words of a UTF-8 file, one per line; blank lines and lines starting with '#' skipped, duplicates dropped."""
    path = Path(path)
    try:
        text = read_input(path, "word list").decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text (byte {e.start}); expected one word per line", path=path) from None
    words: list[str] = []
    seen: set[str] = set()
    for lineno, line in enumerate(text.lstrip("\ufeff").splitlines(), start=1):
        word = line.strip()
        if not word or word.startswith("#"):
            continue
        if len(word.split()) > 1:
            raise InputError(f"{word!r} holds whitespace; expected one word per line", path=path, line=lineno)
        if word not in seen:
            seen.add(word)
            words.append(word)
    if not words:
        raise InputError("the word list is empty; expected one word per line", path=path)
    return words


def _normalize(tok, word: str) -> str:
    norm = tok.inner.normalizer
    return norm.normalize_str(word) if norm is not None else word


def new_words(tok, words: list[str]) -> dict[str, list[int]]:
    """{normalized word: ids of its current pieces} for the words not yet in the vocabulary, in order."""
    pieces: dict[str, list[int]] = {}
    for word in words:
        content = _normalize(tok, word)
        if not content.strip():
            raise InputError(f"word {word!r} is empty after the tokenizer's normalization")
        if tok.token_to_id(content) is not None or content in pieces:
            continue
        ids = tok.encode(word).ids  # before any word is added: the split the model was trained on
        if not ids:
            raise InputError(f"the tokenizer turns {word!r} into no tokens")
        pieces[content] = ids
    return pieces


def extend_vocabulary(model: nn.Module, tok, words: list[str]) -> ModelConfig:
    """Add `words` to `tok` (in place) and grow `model`'s embeddings and decoder biases to match (in place).

    `model` has a `.body` Transformer (a PretrainModel or a task model). Words already in the vocabulary (after the
    tokenizer's normalization, e.g. lowercasing) are skipped. Each new row is the mean of the old rows of the
    pieces the old tokenizer split the word into. Returns the new ModelConfig (also set on the model)."""
    body = model.body
    cfg: ModelConfig = body.config
    pieces = new_words(tok, words)
    if not pieces:
        return cfg
    new_ids = tok.add_tokens(list(pieces))
    old_size = cfg.vocab_size
    new_size = max(old_size, tok.vocab_size)
    index = [torch.tensor(p) for p in pieces.values()]

    old = body.embeddings.word
    emb = nn.Embedding(new_size, cfg.hidden_size, padding_idx=old.padding_idx,
                       device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        emb.weight[:old_size] = old.weight
        for i, p in zip(new_ids, index, strict=True):
            emb.weight[i] = old.weight[p.to(old.weight.device)].mean(0)
    body.embeddings.word = emb

    for module in model.modules():
        if isinstance(module, (MLMHead, SBOHead)) and module.bias is not None and module.bias.shape[0] == old_size:
            bias = torch.zeros(new_size, device=module.bias.device, dtype=module.bias.dtype)
            with torch.no_grad():
                bias[:old_size] = module.bias
                for i, p in zip(new_ids, index, strict=True):
                    bias[i] = module.bias[p.to(bias.device)].mean()
            module.bias = nn.Parameter(bias)

    new_cfg = dataclasses.replace(cfg, vocab_size=new_size)
    body.config = new_cfg
    if hasattr(model, "config"):
        model.config = new_cfg
    return new_cfg

