"""Which subwords drove a classify / pair prediction, and the text coloured by it (terminal or HTML).

The method: integrated gradients (Sundararajan et al., 2017) on the word embeddings, against a baseline where every
text token's word embedding is zero ([CLS], [SEP], positions and segments kept), for the predicted class's
probability; the scores of a text add up to p(text) - p(baseline). "gradient-x-input" is the one-step variant
(gradient at the text times its embedding). Runs with gradients, so not under torch.inference_mode.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import torch

from pretune.errors import InputError
from pretune.finetune.encode import truncated
from pretune.finetune.model import TaskModel

METHODS = ("integrated-gradients", "gradient-x-input")
PAIR_SEPARATOR = " [SEP] "  # explain on a pair: offsets index text + PAIR_SEPARATOR + text_b


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
    if text_b is None:  # as in training: the model's truncation (head, or head+tail) of the same pieces
        how = model.head_options.get("truncate", "head")
        a_ids, a_off, a_tok = (truncated(lst, room, how) for lst in (a_ids, a_off, a_tok))
    while len(a_ids) + len(b_ids) > room:  # pairs: longest-first, as in training
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
    captured: list[tuple[torch.Tensor, torch.Tensor]] = []  # (e, x) per body: an ensemble has one per member

    def hook(module, args, output):  # output: word embeddings [n, T, H]
        e = output.detach()
        x = (e * scale.unsqueeze(-1).to(e.dtype)).requires_grad_(True)
        captured.append((e, x))
        return x

    bodies = [m.body for m in getattr(model, "members", [model])]
    handles = [b.embeddings.word.register_forward_hook(hook) for b in bodies]
    try:
        with torch.enable_grad():
            logits = model(input_ids.expand(n, -1), token_type_ids=type_ids.expand(n, -1))["logits"]
            p = logits.float().softmax(-1)[:, k]  # [n]
            grads = torch.autograd.grad(p.sum(), [x for _, x in captured])  # each [n, T, H]
    finally:
        for h in handles:
            h.remove()
    scores = torch.zeros(input_ids.shape[1])
    for (e, _), g in zip(captured, grads, strict=True):  # every body's path: their sum is the ensemble's change
        diff = e[0] * content[:, None].to(e.dtype)  # [T, H]; the baseline is 0 for content tokens, e elsewhere
        scores += (diff.float() * g[:-1].float().mean(0)).sum(-1).detach().cpu()  # [T]
    return scores, float(p[-1].detach())


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
