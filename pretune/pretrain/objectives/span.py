"""SpanBERT: spans of whole words (length ~ Geometric(0.2) truncated at 10) masked as units, predicted by the MLM
head and by the span boundary objective (SBO). A sequence whose words are too long to reach the masking rate (text
without whitespace, e.g. DNA) gets spans of contiguous tokens instead, with a warning once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pretune.errors import InputError
from pretune.model.heads import MLMHead, SBOHead
from pretune.pretrain.objectives.base import (
    IGNORE,
    PretrainModel,
    Specials,
    corrupt,
    mlm_loss,
    numpy_rng,
    register,
    special_mask,
    token_loss,
)
from pretune.pretrain.objectives.mlm import MASK_OPTIONS, MaskedLM, warn_token_fallback


def span_length_distribution(p: float, max_words: int) -> tuple[np.ndarray, np.ndarray]:
    """SpanBERT's span lengths: Geometric(p) over 1..max_words, renormalized (mean 3.8 words for 0.2 and 10)."""
    lengths = np.arange(1, max_words + 1)
    weights = p * (1 - p) ** (lengths - 1)
    return lengths, weights / weights.sum()


@dataclass(frozen=True)
class Span:
    start: int  # first token
    end: int  # one past the last token
    words: int  # length in words
    drawn: int  # the length drawn (words < drawn only for the last span, cut to meet the budget)


def sample_spans(
    word_starts: np.ndarray,  # [T] bool
    regular: np.ndarray,  # [T] bool: False for special tokens
    budget: float,
    rng: np.random.Generator,
    lengths: np.ndarray,
    probs: np.ndarray,
) -> list[Span]:
    """SpanBERT's span selection for one sequence.

    Until `budget` tokens are chosen: draw a length L (in words), then a start uniformly among the word starts where
    L whole regular words fit without touching an earlier span (the words just before and after a span stay visible:
    they are the boundary for SBO). A span never holds a special token, so it never crosses [SEP] or a document
    boundary. The last span is cut (in whole words) to the length that lands closest to the budget."""
    T = len(regular)
    starts = word_starts | ~regular
    starts[1:] |= ~regular[:-1]
    starts[0] = True
    first = np.flatnonzero(starts)  # [W] first token of each word
    last = np.append(first[1:], T)  # [W] one past its last token
    free = regular[first].copy()  # words a span may take
    W = len(first)
    masked = np.zeros(W, dtype=bool)
    spans: list[Span] = []
    total = 0
    while total < budget:
        L = int(rng.choice(lengths, p=probs))
        cand = _fitting_starts(free & ~masked, masked, L)
        if len(cand) == 0:
            if len(_fitting_starts(free & ~masked, masked, 1)) == 0:
                break  # no room left at all
            continue  # this length does not fit anywhere: draw another
        s = int(rng.choice(cand))
        ntok = np.cumsum(last[s : s + L] - first[s : s + L])  # tokens covered by the first k words, k = 1..L
        k = L
        done = total + ntok[-1] >= budget
        if done:
            options = np.abs(total + np.concatenate(([0], ntok)) - budget)  # k = 0..L
            k = int(np.argmin(options))
            if k == 0:
                break
        masked[s : s + k] = True
        total += int(ntok[k - 1])
        spans.append(Span(int(first[s]), int(last[s + k - 1]), k, L))
        if done:
            break
    return spans


def _fitting_starts(avail: np.ndarray, masked: np.ndarray, L: int) -> np.ndarray:
    """Word indices i where words i..i+L-1 are all available and words i-1 and i+L are not masked."""
    W = len(avail)
    if L > W:
        return np.zeros(0, dtype=np.int64)
    cs = np.concatenate(([0], np.cumsum(avail)))
    i = np.arange(W - L + 1)
    ok = cs[i + L] - cs[i] == L
    ok &= (i == 0) | ~masked[np.maximum(i - 1, 0)]
    ok &= (i + L >= W) | ~masked[np.minimum(i + L, W - 1)]
    return i[ok]


def span_boundary_loss(model: PretrainModel, hidden: torch.Tensor, batch: dict[str, torch.Tensor]):
    """SBO: each span token predicted from h(s-1), h(e+1) and its offset inside the span."""
    labels = batch["labels"]
    sel = labels != IGNORE  # [B, T]
    rows = sel.nonzero(as_tuple=True)[0]  # [N], in the order of labels[sel]
    left = hidden[rows, batch["sbo_left"][sel]]  # [N, H]
    right = hidden[rows, batch["sbo_right"][sel]]
    logits = model.heads["sbo"](left, right, batch["sbo_offset"][sel], model.embedding_weight)  # [N, V]
    return token_loss(logits, labels[sel], "sbo")


@register
class SpanMLM(MaskedLM):
    """SpanBERT: masked spans of whole words, each replaced as a unit (80% all [MASK], 10% all random, 10% kept),
    predicted by the MLM head and by the span boundary objective; loss = MLM + SBO."""

    name = "span"
    options = (*MASK_OPTIONS, "span_p", "span_max")
    kmer_runs = False
    max_span_tokens = 32  # SBO position embeddings (offsets beyond share the last one)

    def __init__(self, specials: Specials, mask_prob: float = 0.15, mask_ratio: float = 0.8,
                 random_ratio: float = 0.1, span_p: float = 0.2, span_max: int = 10):
        super().__init__(specials, mask_prob, mask_ratio, random_ratio)
        if not 0 < span_p <= 1:
            raise InputError(f"span_p must be in (0, 1], got {span_p}")
        if span_max < 1:
            raise InputError(f"span_max must be >= 1 word, got {span_max}")
        self.lengths, self.probs = span_length_distribution(span_p, span_max)

    def heads(self, cfg):
        return {"mlm": MLMHead(cfg), "sbo": SBOHead(cfg, self.max_span_tokens)}

    def collate(self, items, gen):
        batch = self.stack(items)
        starts = batch.pop("word_starts").numpy()
        ids = batch["input_ids"]
        B, T = ids.shape
        regular = ~special_mask(ids, self.specials.special_ids)
        rng = numpy_rng(gen)
        selected = np.zeros((B, T), dtype=bool)
        units = np.tile(np.arange(T), (B, 1))
        left, right, offset = (np.zeros((B, T), dtype=np.int64) for _ in range(3))
        reg = regular.numpy()
        short = 0
        for b in range(B):
            budget = self.mask_prob * reg[b].sum()
            spans = sample_spans(starts[b], reg[b], budget, rng, self.lengths, self.probs)
            if budget >= 1 and sum(sp.end - sp.start for sp in spans) < 0.5 * budget:
                # whole words cannot come near the budget (text without whitespace is one long word): spans of
                # contiguous tokens instead
                short += 1
                spans = sample_spans(np.ones(T, dtype=bool), reg[b], budget, rng, self.lengths, self.probs)
            for sp in spans:
                s, e = sp.start, sp.end
                selected[b, s:e] = True
                units[b, s:e] = s
                left[b, s:e] = max(s - 1, 0)
                right[b, s:e] = min(e, T - 1)
                offset[b, s:e] = np.arange(e - s)
        if short:
            warn_token_fallback(self, "span", short, B)
        batch["input_ids"], batch["labels"] = corrupt(
            ids, torch.from_numpy(selected), gen, self.specials.mask, self._regular, self.mask_ratio,
            self.random_ratio, units=torch.from_numpy(units),
        )
        batch["sbo_left"], batch["sbo_right"] = torch.from_numpy(left), torch.from_numpy(right)
        batch["sbo_offset"] = torch.from_numpy(offset)
        return batch

    def loss(self, model, batch):
        hidden = model.body(batch["input_ids"], attention_mask=batch.get("attention_mask")).last_hidden_state
        loss, stats = mlm_loss(model, hidden, batch["labels"])
        sbo, sbo_stats = span_boundary_loss(model, hidden, batch)
        return loss + sbo, {**stats, **sbo_stats}
