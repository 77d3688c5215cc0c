"""Use a checkpoint on new text: predict (fine-tuned models), embed (any checkpoint), explain (classify / pair).

All of it runs under torch.inference_mode (explain needs gradients, so it does not), in length-grouped batches
with dynamic padding; results come back in input order.

explain's method: integrated gradients (Sundararajan et al., 2017) on the word embeddings, against a baseline
where every text token's word embedding is zero ([CLS], [SEP], positions and segments kept), for the predicted
class's probability; the scores of a text add up to p(text) - p(baseline). "gradient-x-input" is the one-step
variant (gradient at the text times its embedding).
"""

from __future__ import annotations

import html
import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pretune.errors import InputError
from pretune.finetune.stage import (
    TaskModel,
    encode_split,
    length_warnings,
    load_task_model,
    merge_outputs,
    model_config_of,
    predictions_json,
    run_features,
)
from pretune.interop.hf import open_checkpoint
from pretune.model.transformer import Transformer
from pretune.text.labeled import Example, length_grouped_batches, read_examples
from pretune.training import checkpoint as ck
from pretune.training.trainer import resolve_device

WORD_RE = re.compile(r"\w+(?:-\w+)*|'\w*|[^\w\s]")  # the tokenization of the bundled tagging data
METHODS = ("integrated-gradients", "gradient-x-input")
PAIR_SEPARATOR = " [SEP] "  # explain on a pair: offsets index text + PAIR_SEPARATOR + text_b


def split_words(text: str) -> list[str]:
    """Words of a raw string for the token tasks: runs of word characters (inner hyphens kept), clitics, marks."""
    return WORD_RE.findall(text)


def _device(name: str | None) -> torch.device:
    return resolve_device(name or "auto")


def _loaded(checkpoint, device=None) -> tuple[TaskModel, Any, dict]:
    """A (model, tokenizer, config) tuple as given, or loaded from a checkpoint path."""
    if isinstance(checkpoint, tuple):
        return checkpoint
    return load_task_model(checkpoint, device=_device(device))


# ---- predict ---------------------------------------------------------------------------------------------------------
def to_examples(task: str, inputs: Sequence, fields: dict | None = None) -> list[Example]:
    """Unlabeled examples from Python values. classify: str or {"text": ...}; pair: (a, b) or {"text_a", "text_b"};
    tag/span: a list of words, {"tokens": [...]}, or a str (split with `split_words`). Example objects pass through."""
    fields = fields or {}
    text_key = fields.get("text_field") or ("text_a" if task == "pair" else "text")
    b_key = fields.get("text_b_field") or "text_b"
    out = []
    for i, item in enumerate(inputs):
        line = i + 1
        if isinstance(item, Example):
            out.append(item)
        elif task == "classify":
            text = item.get(text_key) if isinstance(item, dict) else item
            if not isinstance(text, str):
                raise InputError(f"input {i}: expected a text string (or a dict with {text_key!r})")
            out.append(Example(line=line, text=text))
        elif task == "pair":
            a, b = (item.get(text_key), item.get(b_key)) if isinstance(item, dict) else \
                (tuple(item) if isinstance(item, (list, tuple)) and len(item) == 2 else (None, None))
            if not isinstance(a, str) or not isinstance(b, str):
                raise InputError(f"input {i}: expected two texts, as (a, b) or a dict with {text_key!r} and {b_key!r}")
            out.append(Example(line=line, text=a, text_b=b))
        else:
            words = item.get("tokens", item.get("text")) if isinstance(item, dict) else item
            if isinstance(words, str):
                words = split_words(words)
            if not isinstance(words, (list, tuple)) or not words or not all(isinstance(w, str) and w.strip()
                                                                          for w in words):
                raise InputError(f"input {i}: expected a non-empty list of words (or a text to split)")
            out.append(Example(line=line, tokens=list(words)))
    return out


def predict(checkpoint, inputs: Sequence, batch_size: int = 32, device: str | None = None) -> list[dict]:
    """Predictions for `inputs` (see `to_examples`), in order, from a fine-tuned checkpoint path or a loaded
    (model, tokenizer, config) tuple. classify/pair: {"label", "probs": {label: p}}; tag: {"tags", "probs"}
    (probability of each word's tag); span: {"spans": [{"start", "end", "label", "prob"}]} (words, end exclusive)."""
    model, tok, conf = _loaded(checkpoint, device)
    examples = to_examples(model.task, inputs, conf.get("fields"))
    if not examples:
        return []
    data = encode_split(None, examples, model.task, tok, None, conf.get("max_len", 128), model.head_options)
    for w in length_warnings(data, model.task, conf.get("max_len", 128)):
        print(f"pretune: warning: {w}", file=sys.stderr)
    outputs, _ = run_features(model, data.features, tok.specials.pad, batch_size)
    merged = merge_outputs(model.task, model.labels, examples, data.features, outputs)
    return predictions_json(model.task, model.labels, merged)


def read_inputs(path: str | Path, task: str, fields: dict | None = None) -> tuple[list[Example], list[dict]]:
    """Unlabeled examples from a file, with a JSON record of each input to echo in the output.

    .txt: one input per line (classify: the text; tag/span: words split with `split_words`); other files are
    read like training data (JSONL / CSV / TSV / CoNLL) with labels optional."""
    path = Path(path)
    fields = {k: v for k, v in (fields or {}).items() if v is not None}
    if path.suffix.lower() == ".txt":
        if task == "pair":
            raise InputError("pair inputs need two texts: give JSONL, CSV or TSV with text_a and text_b", path=path)
        lines = _text_lines(path)
        examples = [Example(line=i + 1, text=ln.rstrip("\r")) if task == "classify" else
                    Example(line=i + 1, tokens=split_words(ln)) for i, ln in enumerate(lines) if ln.strip()]
        if not examples or (task != "classify" and any(not ex.tokens for ex in examples)):
            raise InputError("no inputs found (or a line without words)", path=path)
    else:
        examples = read_examples(path, task, require_labels=False, **fields)
    records = []
    raw_lines = None
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        raw_lines = path.read_text(encoding="utf-8-sig").split("\n")
    for ex in examples:
        if raw_lines is not None:
            records.append(json.loads(raw_lines[ex.line - 1]))
        elif task in ("classify", "pair"):
            rec = {fields.get("text_field") or ("text_a" if task == "pair" else "text"): ex.text}
            if task == "pair":
                rec[fields.get("text_b_field") or "text_b"] = ex.text_b
            records.append(rec)
        else:
            records.append({"tokens": ex.tokens})
    return examples, records


def _write_atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _check_output(path: Path, overwrite: bool, *inputs: Path) -> None:
    if any(path.resolve() == Path(p).resolve() for p in inputs):
        raise InputError("the output would overwrite the input", path=path)
    if path.is_dir():
        raise InputError("expected a file path, found a directory", path=path)
    if path.exists() and not overwrite:
        raise InputError("already exists; pass --overwrite to replace it", path=path)


def predict_file(checkpoint, input_path: str | Path, output_path: str | Path, batch_size: int = 32,
                 overwrite: bool = False, device: str | None = None) -> int:
    """JSONL out: each input's record (the JSONL object itself, or its fields) plus "prediction". Returns the count."""
    out = Path(output_path)
    _check_output(out, overwrite, Path(input_path))
    model, tok, conf = _loaded(checkpoint, device)
    examples, records = read_inputs(input_path, model.task, conf.get("fields"))
    preds = predict((model, tok, conf), examples, batch_size=batch_size)
    lines = [json.dumps({**rec, "prediction": p}, ensure_ascii=False) + "\n"
             for rec, p in zip(records, preds, strict=True)]
    _write_atomic(out, lambda f: f.write("".join(lines).encode("utf-8")))
    return len(lines)


# ---- embed -----------------------------------------------------------------------------------------------------------
def load_body(checkpoint, device: str | None = None) -> tuple[Transformer, Any, dict]:
    """The Transformer body (eval mode), tokenizer and config.json of any pretune checkpoint (pretrained or
    fine-tuned)."""
    ckpt = open_checkpoint(checkpoint)
    tok = ckpt.tokenizer()
    cfg = model_config_of(ckpt)
    state = {k[len("body."):]: v for k, v in ckpt.state_dict.items() if k.startswith("body.")}
    if not state:
        raise InputError("checkpoint holds no body.* weights; expected a pretune checkpoint", path=ckpt.path)
    body = Transformer(cfg)
    ck.load_into(body, state, ckpt.path)
    return body.to(_device(device)).eval(), tok, ckpt.config


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
                m = mask.unsqueeze(-1).float()
                vecs = (h * m).sum(1) / m.sum(1)
            for r, i in enumerate(idx):
                results[i] = (h[r, : len(ids[i])] if pool == "none" else vecs[r]).cpu().numpy()
    H = body.config.hidden_size
    arr = results if pool == "none" else (np.stack(results) if results else np.zeros((0, H), np.float32))
    return (arr, tokens) if return_tokens else arr


def _text_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file (InputError naming the file when missing or not UTF-8)."""
    try:
        return path.read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        raise InputError("file not found", path=path) from None
    except UnicodeDecodeError as e:
        raise InputError(f"expected UTF-8 text (byte {e.start})", path=path) from None


def read_texts(path: str | Path, field: str = "text") -> list[str]:
    """Texts to embed: .txt one per non-empty line; JSONL / CSV / TSV: the `field` column."""
    path = Path(path)
    if path.suffix.lower() == ".txt":
        lines = _text_lines(path)
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
    _check_output(out, overwrite, Path(input_path))
    if pool == "none":
        _check_output(tokens_out, overwrite, Path(input_path))
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
        _write_atomic(tokens_out, lambda f: f.write(text.encode("utf-8")))
    _write_atomic(out, lambda f: np.save(f, np.asarray(arr, dtype=np.float32)))
    return tuple(np.shape(arr))


# ---- explain ---------------------------------------------------------------------------------------------------------
@dataclass
class Explanation:
    label: str
    prob: float  # the model's probability of `label` for the text
    method: str
    text: str  # what the offsets index (a pair: text + PAIR_SEPARATOR + text_b)
    items: list[tuple[str, int, int, float]]  # (token, start, end, score) per subword of the text(s)
    baseline_prob: float  # probability of `label` at the baseline (integrated gradients)


def explain_full(model: TaskModel, tok, text: str, text_b: str | None = None, target: str | None = None,
                 method: str = "integrated-gradients", steps: int = 32, max_len: int | None = None) -> Explanation:
    """Attribute the probability of class `target` (default: the predicted one) to the text's subwords."""
    if not isinstance(model, TaskModel) or model.task not in ("classify", "pair"):
        raise InputError("explain needs a fine-tuned classify or pair checkpoint")
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if (model.task == "pair") != (text_b is not None):
        raise InputError("a pair model needs two texts (--text and --text-b); a classify model one")
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    max_len = max_len or model.config.max_positions
    cls, sep = tok.specials.cls, tok.specials.sep
    enc_a = tok.encode(text)
    a_ids, a_off, a_tok = list(enc_a.ids), list(enc_a.offsets), list(enc_a.tokens)
    b_ids, b_off, b_tok = [], [], []
    if text_b is not None:
        enc_b = tok.encode(text_b)
        b_ids, b_off, b_tok = list(enc_b.ids), list(enc_b.offsets), list(enc_b.tokens)
    room = max_len - (3 if text_b is not None else 2)
    while len(a_ids) + len(b_ids) > room:  # longest-first, as in training
        side = (a_ids, a_off, a_tok) if len(a_ids) > len(b_ids) else (b_ids, b_off, b_tok)
        for lst in side:
            lst.pop()
    ids = [cls, *a_ids, sep] + ([*b_ids, sep] if text_b is not None else [])
    types = [0] * (len(a_ids) + 2) + [1] * (len(b_ids) + 1 if text_b is not None else 0)
    content = torch.zeros(len(ids), dtype=torch.bool)
    content[1 : 1 + len(a_ids)] = True
    if b_ids:
        content[len(a_ids) + 2 : len(a_ids) + 2 + len(b_ids)] = True
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], device=device)
    type_ids = torch.tensor([types], device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            probs = model(input_ids, token_type_ids=type_ids)["logits"].float().softmax(-1)[0]
        k = int(probs.argmax()) if target is None else model.labels.index(_check_label(model, target))
        if method == "integrated-gradients":
            alphas = (torch.arange(steps, device=device) + 0.5) / steps  # midpoint Riemann sum
        else:
            alphas = torch.ones(1, device=device)
        scores, base_p = _integrated_gradients(model, input_ids, type_ids, content.to(device), alphas, k)
    finally:
        model.train(was_training)
    shift = len(text) + len(PAIR_SEPARATOR)
    items = [(t, s, e, float(scores[1 + i])) for i, (t, (s, e)) in enumerate(zip(a_tok, a_off, strict=True))]
    items += [(t, s + shift, e + shift, float(scores[len(a_ids) + 2 + i]))
              for i, (t, (s, e)) in enumerate(zip(b_tok, b_off, strict=True))]
    shown = text if text_b is None else text + PAIR_SEPARATOR + text_b
    return Explanation(model.labels[k], float(probs[k]), method, shown, items, base_p)


def _check_label(model: TaskModel, target: str) -> str:
    if target not in model.labels:
        raise InputError(f"unknown label {target!r}; the model's labels: {', '.join(model.labels)}")
    return target


def _integrated_gradients(model: TaskModel, input_ids, type_ids, content, alphas, k: int) -> tuple[torch.Tensor, float]:
    """Scores [T] = sum over H of (e - baseline) * mean over alphas of d p_k / d embedding at baseline + a (e - b),
    where the baseline zeroes the word embedding of content tokens. Also returns p_k at the baseline."""
    alphas = torch.cat([alphas, alphas.new_zeros(1)])  # the last row is the baseline itself
    n = len(alphas)
    scale = torch.where(content[None, :], alphas[:, None], torch.ones_like(alphas)[:, None])  # [n, T]
    captured: dict[str, torch.Tensor] = {}

    def hook(module, args, output):  # output: word embeddings [n, T, H]
        e = output.detach()
        x = (e * scale.unsqueeze(-1).to(e.dtype)).requires_grad_(True)
        captured["e"], captured["x"] = e, x
        return x

    handle = model.body.embeddings.word.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = model(input_ids.expand(n, -1), token_type_ids=type_ids.expand(n, -1))["logits"]
            p = logits.float().softmax(-1)[:, k]  # [n]
            (grads,) = torch.autograd.grad(p.sum(), captured["x"])  # [n, T, H]
    finally:
        handle.remove()
    e = captured["e"][0]  # [T, H]; the baseline is 0 for content tokens, e elsewhere
    diff = e * content[:, None].to(e.dtype)
    scores = (diff.float() * grads[:-1].float().mean(0)).sum(-1)  # [T]
    return scores.detach().cpu(), float(p[-1].detach())


def explain(model: TaskModel, tok, text: str, text_b: str | None = None, target: str | None = None,
            method: str = "integrated-gradients", steps: int = 32) -> tuple[str, list[tuple[str, int, int, float]]]:
    """(label, [(token, start, end, score)]): each subword's contribution to the probability of the predicted
    (or `target`) class, by integrated gradients (default) or gradient x input; see the module docstring."""
    ex = explain_full(model, tok, text, text_b, target, method, steps)
    return ex.label, ex.items


def _rgb(score: float, top: float) -> tuple[int, int, int, float]:
    """Green for support of the label, red against; alpha in [0, 1] by |score| / top."""
    a = min(1.0, abs(score) / top) if top > 0 else 0.0
    return ((40, 160, 60) if score >= 0 else (210, 50, 50)) + (a,)


def _pieces(text: str, items: list[tuple[str, int, int, float]]) -> list[tuple[str, float | None]]:
    """Cut `text` into (substring, score or None) in order, one piece per token span."""
    out, pos = [], 0
    for _, s, e, score in sorted(items, key=lambda x: x[1]):
        if s < pos or e <= s:
            continue  # overlapping or empty span (e.g. two subwords with one offset): keep the first
        if s > pos:
            out.append((text[pos:s], None))
        out.append((text[s:e], score))
        pos = e
    if pos < len(text):
        out.append((text[pos:], None))
    return out


def explain_ansi(text: str, items: list[tuple[str, int, int, float]]) -> str:
    """The text with each token's background coloured by its score (24-bit ANSI colours)."""
    top = max((abs(x[3]) for x in items), default=0.0)
    out = []
    for piece, score in _pieces(text, items):
        if score is None:
            out.append(piece)
            continue
        r, g, b, a = _rgb(score, top)
        mix = [int(255 - a * (255 - c)) for c in (r, g, b)]  # blend with white
        out.append(f"\x1b[48;2;{mix[0]};{mix[1]};{mix[2]}m\x1b[38;2;0;0;0m{piece}\x1b[0m")
    return "".join(out)


def explain_html(text: str, items: list[tuple[str, int, int, float]], label: str | None = None,
                 method: str | None = None) -> str:
    """An HTML snippet (no <html>/<body>): the text with each token's background coloured by its score
    (green: for the label, red: against), the score in each token's tooltip."""
    top = max((abs(x[3]) for x in items), default=0.0)
    parts = []
    for piece, score in _pieces(text, items):
        if score is None:
            parts.append(html.escape(piece))
            continue
        r, g, b, a = _rgb(score, top)
        parts.append(f'<span style="background-color: rgba({r}, {g}, {b}, {a:.3f}); border-radius: 3px" '
                     f'title="{score:+.4f}">{html.escape(piece)}</span>')
    head = ""
    if label is not None or method is not None:
        bits = [f"label: <b>{html.escape(label)}</b>" if label is not None else "",
                f"method: {html.escape(method)}" if method is not None else ""]
        head = f'<div class="pretune-explain-head">{" &middot; ".join(b for b in bits if b)}</div>'
    body = "".join(parts).replace("\n", "<br>")
    return f'<div class="pretune-explain">{head}<div style="line-height: 1.8">{body}</div></div>'


# ---- CLI -------------------------------------------------------------------------------------------------------------
def cmd_predict(args) -> None:
    n = predict_file(args.checkpoint, args.input, args.output, batch_size=args.batch_size, overwrite=args.overwrite,
                     device=args.device)
    print(f"{n} predictions -> {args.output}")


def cmd_embed(args) -> None:
    shape = embed_file(args.checkpoint, args.input, args.output, layers=args.layers, pool=args.pool,
                       field=args.field, batch_size=args.batch_size, max_len=args.max_len, overwrite=args.overwrite,
                       device=args.device)
    print(f"embeddings {list(shape)} -> {args.output}")


def cmd_explain(args) -> None:
    html_out = Path(args.html) if args.html else None
    if html_out is not None:
        _check_output(html_out, args.overwrite)
    model, tok, conf = load_task_model(args.checkpoint, device=_device(args.device))
    ex = explain_full(model, tok, args.text, args.text_b, args.label, args.method, args.steps, conf.get("max_len"))
    color = sys.stdout.isatty() if args.color is None else args.color
    summary = f"{ex.label} (p = {ex.prob:.3f}); {ex.method}"
    if ex.method == "integrated-gradients":
        summary += f": scores add up to p(text) - p(baseline) = {ex.prob - ex.baseline_prob:+.3f}"
    print(summary)
    if color:
        print(explain_ansi(ex.text, ex.items))
    for token, _, _, score in sorted(ex.items, key=lambda x: -abs(x[3]))[: args.top]:
        print(f"  {score:+.4f}  {token}")
    if html_out is not None:
        snippet = explain_html(ex.text, ex.items, ex.label, ex.method)
        _write_atomic(html_out, lambda f: f.write(snippet.encode("utf-8")))
        print(f"html: {html_out}")


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise ValueError(value)
    return n


def register_cli(sub) -> None:
    import argparse

    def command(name: str, func, help: str, batched: bool = True) -> argparse.ArgumentParser:
        """A subcommand with the options every use of a checkpoint shares."""
        c = sub.add_parser(name, help=help)
        c.add_argument("--from", "--checkpoint", dest="checkpoint", required=True, metavar="CKPT")
        if batched:
            c.add_argument("--batch-size", type=_positive, default=32)
        c.add_argument("--device", default="auto")
        c.add_argument("--overwrite", action="store_true", help="replace an existing output file")
        c.set_defaults(func=func)
        return c

    p = command("predict", cmd_predict, "predict labels (tags, spans) with a fine-tuned checkpoint")
    p.add_argument("--input", required=True, help="JSONL / CSV / TSV in the task's format (labels optional), "
                   "or .txt with one input per line")
    p.add_argument("--output", required=True, help="JSONL: each input's record plus \"prediction\"")

    e = command("embed", cmd_embed, "contextual embeddings from any checkpoint, saved as .npy")
    e.add_argument("--input", required=True, help=".txt (one text per line) or JSONL / CSV / TSV with --field")
    e.add_argument("--output", required=True, help="X.npy: [N, H] pooled, [N, T, H] with --pool none")
    e.add_argument("--layers", choices=("last", "last4"), default="last")
    e.add_argument("--pool", choices=("cls", "mean", "none"), default="cls")
    e.add_argument("--field", default="text")
    e.add_argument("--max-len", type=_positive, default=None)

    x = command("explain", cmd_explain, "which tokens drove a classify / pair prediction", batched=False)
    x.add_argument("--text", required=True)
    x.add_argument("--text-b", default=None, help="second text of a pair model")
    x.add_argument("--label", default=None, help="explain this label (default: the predicted one)")
    x.add_argument("--method", choices=METHODS, default="integrated-gradients")
    x.add_argument("--steps", type=_positive, default=32, help="integrated-gradients steps")
    x.add_argument("--top", type=_positive, default=10, help="list this many tokens by |score|")
    x.add_argument("--html", default=None, help="write an HTML snippet here")
    x.add_argument("--color", action=argparse.BooleanOptionalAction, default=None,
                   help="coloured text (default: when stdout is a terminal)")
