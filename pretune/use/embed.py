"""Contextual embeddings from any checkpoint (pretrained or fine-tuned), in length-grouped batches with dynamic padding
under torch.inference_mode; results come back in input order."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pretune import files
from pretune.errors import InputError
from pretune.finetune.model import TaskModel
from pretune.interop.hf import open_checkpoint
from pretune.model.heads import masked_mean
from pretune.model.transformer import Transformer
from pretune.text.labeled import length_grouped_batches, read_examples
from pretune.training import checkpoint as ck
from pretune.training.config import resolve_device
from pretune.use.io import read_lines


def load_body(checkpoint, device: str | None = None) -> tuple[Transformer, Any, dict]:
    """The Transformer body (eval mode), tokenizer and config.json of any pretune checkpoint (pretrained or
    fine-tuned)."""
    ckpt = open_checkpoint(checkpoint)
    tok = ckpt.tokenizer()
    cfg = ckpt.model_config()
    state = ckpt.body_weights()
    body = Transformer(cfg)
    ck.load_into(body, state, ckpt.path)
    return body.to(resolve_device(device or "auto")).eval(), tok, ckpt.config


def _encode_texts(tok, texts: list[str], max_len: int) -> tuple[list[list[int]], list[list[str]], int]:
    """[CLS] ids [SEP] per text, cut to max_len; also the token strings and how many texts were cut."""
    cls, sep = tok.specials.cls, tok.specials.sep
    ids, tokens, cut = [], [], 0
    for enc in tok.encode_batch(texts):
        body_ids, body_tokens = list(enc.ids), list(enc.tokens)
        if len(body_ids) > max_len - 2:
            cut += 1
            body_ids, body_tokens = body_ids[: max_len - 2], body_tokens[: max_len - 2]
        ids.append([cls, *body_ids, sep])
        tokens.append([tok.id_to_token(cls), *body_tokens, tok.id_to_token(sep)])
    return ids, tokens, cut


def embed(checkpoint, texts: Sequence[str], layers: str = "last", pool: str = "cls", batch_size: int = 32,
          max_len: int | None = None, device: str | None = None, return_tokens: bool = False):
    """Contextual embeddings of `texts` from any checkpoint (path or a loaded (body, tokenizer, config) tuple).

    layers: "last" (the last layer) or "last4" (mean of the last four layers' outputs; fewer when the model has
    fewer). pool: "cls" ([CLS] vector) or "mean" (mean over the real tokens, [CLS]/[SEP] included) -> float32
    [N, H]; "none" -> one float32 [T_i, H] array per text. With return_tokens, also the token strings per text."""
    if layers not in ("last", "last4"):
        raise InputError(f"layers must be last or last4, got {layers!r}")
    if pool not in ("cls", "mean", "none"):
        raise InputError(f"pool must be cls, mean or none, got {pool!r}")
    body, tok, conf = checkpoint if isinstance(checkpoint, tuple) else load_body(checkpoint, device)
    if isinstance(body, TaskModel):
        body = body.body
    texts = list(texts)
    if not all(isinstance(t, str) for t in texts):
        raise InputError("embed expects a list of text strings")
    max_len = max_len or conf.get("max_len") or min(body.config.max_positions, 512)
    if not 3 <= max_len <= body.config.max_positions:
        raise InputError(f"max_len must be in 3..{body.config.max_positions}, got {max_len}")
    ids, tokens, cut = _encode_texts(tok, texts, max_len)
    if cut:
        print(f"pretune: warning: {cut} of {len(texts)} texts are longer than max_len {max_len} subwords and "
              "were truncated", file=sys.stderr)
    device_ = next(body.parameters()).device
    results: list = [None] * len(texts)
    with torch.inference_mode():
        for idx in length_grouped_batches([len(x) for x in ids], batch_size, shuffle=False, seed=0):
            T = max(len(ids[i]) for i in idx)
            input_ids = torch.full((len(idx), T), tok.specials.pad, dtype=torch.long)
            mask = torch.zeros((len(idx), T), dtype=torch.bool)
            for r, i in enumerate(idx):
                input_ids[r, : len(ids[i])] = torch.tensor(ids[i])
                mask[r, : len(ids[i])] = True
            input_ids, mask = input_ids.to(device_), mask.to(device_)
            out = body(input_ids, attention_mask=mask, output_hidden_states=layers == "last4")
            if layers == "last4":
                h = torch.stack(out.hidden_states[1:][-4:]).mean(0)  # block outputs only, not the embeddings
            else:
                h = out.last_hidden_state  # [B, T, H]
            h = h.float()
            if pool == "cls":
                vecs = h[:, 0]
            elif pool == "mean":
                vecs = masked_mean(h, mask)
            for r, i in enumerate(idx):
                results[i] = (h[r, : len(ids[i])] if pool == "none" else vecs[r]).cpu().numpy()
    H = body.config.hidden_size
    arr = results if pool == "none" else (np.stack(results) if results else np.zeros((0, H), np.float32))
    return (arr, tokens) if return_tokens else arr


def read_texts(path: str | Path, field: str = "text") -> list[str]:
    """Texts to embed: .txt one per non-empty line; JSONL / CSV / TSV: the `field` column."""
    path = Path(path)
    if path.suffix.lower() == ".txt":
        lines = read_lines(path)
        texts = [ln.rstrip("\r") for ln in lines if ln.strip()]
        if not texts:
            raise InputError("file is empty", path=path)
        return texts
    return [ex.text or "" for ex in read_examples(path, "classify", text_field=field, require_labels=False)]


def embed_file(checkpoint, input_path, output_path, layers: str = "last", pool: str = "cls", field: str = "text",
               batch_size: int = 32, max_len: int | None = None, overwrite: bool = False,
               device: str | None = None) -> tuple[int, ...]:
    """Write embeddings as .npy: [N, H] pooled, or [N, T_max, H] zero-padded for pool "none" (then the tokens of
    each text go to <output stem>.tokens.jsonl, one JSON list per line). Returns the array's shape."""
    out = Path(output_path)
    if out.suffix != ".npy":
        raise InputError("expected an output file name ending in .npy", path=out)
    tokens_out = out.with_name(out.stem + ".tokens.jsonl")
    files.check_output(out, overwrite, Path(input_path))
    if pool == "none":
        files.check_output(tokens_out, overwrite, Path(input_path))
    texts = read_texts(input_path, field)
    arr, tokens = embed(checkpoint, texts, layers=layers, pool=pool, batch_size=batch_size, max_len=max_len,
                        device=device, return_tokens=True)
    if pool == "none":
        T, H = max(len(t) for t in tokens), arr[0].shape[1]
        padded = np.zeros((len(arr), T, H), dtype=np.float32)
        for i, a in enumerate(arr):
            padded[i, : len(a)] = a
        arr = padded
        text = "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in tokens)
        files.write_atomic(tokens_out, lambda f: f.write(text))
    files.write_atomic(out, lambda f: np.save(f, np.asarray(arr, dtype=np.float32)), binary=True)
    return tuple(np.shape(arr))
