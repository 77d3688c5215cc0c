"""Masked language modelling: BERT's MLM (15% of tokens, 80% [MASK] / 10% random / 10% unchanged) and whole-word
masking (words chosen until ~15% of tokens are covered, all pieces of a word together). A sequence whose words are
too long to come near the rate (text without whitespace, e.g. DNA: one word) is masked by single tokens instead,
with a warning once.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from pretune.errors import InputError
from pretune.model.heads import MLMHead
from pretune.model.transformer import ModelConfig
from pretune.pretrain.objectives.base import (
    Objective,
    Specials,
    corrupt,
    mlm_loss,
    pad_sequences,
    register,
    special_mask,
    word_index,
)

MASK_OPTIONS = ("mask_prob", "mask_ratio", "random_ratio")

@register
class MaskedLM(Objective):
    """Masked LM: 15% of non-special tokens selected, of those 80% [MASK], 10% random, 10% kept."""

    name = "mlm"
    options = MASK_OPTIONS
    kmer_runs = True

    def __init__(self, specials: Specials, mask_prob: float = 0.15, mask_ratio: float = 0.8, random_ratio: float = 0.1):
        super().__init__(specials)
        if specials.mask is None:
            raise InputError("the tokenizer has no [MASK] token, so masked-LM objectives cannot be used")
        if not 0 < mask_prob < 1 or mask_ratio < 0 or random_ratio < 0 or mask_ratio + random_ratio > 1:
            raise InputError("mask_prob must be in (0, 1), mask_ratio and random_ratio >= 0 with a sum <= 1")
        self.mask_prob, self.mask_ratio, self.random_ratio = mask_prob, mask_ratio, random_ratio
        self._regular = specials.regular_ids()

    def heads(self, cfg: ModelConfig) -> dict[str, nn.Module]:
        return {"mlm": MLMHead(cfg)}

    def stack(self, items: list) -> dict[str, torch.Tensor]:
        return pad_sequences(items, self.specials.pad)

    def select(self, batch: dict[str, torch.Tensor], gen: torch.Generator) -> torch.Tensor:
        """Which positions to predict: each non-special token with probability mask_prob; with an overlapping
        k-mer tokenizer, runs of k tokens (`kmer_runs`)."""
        ids = batch["input_ids"]
        candidates = ~special_mask(ids, self.specials.special_ids)
        if self.specials.kmer_overlap > 1:
            return kmer_runs(candidates, self.specials.kmer_overlap, self.mask_prob, gen)
        return candidates & (torch.rand(ids.shape, generator=gen) < self.mask_prob)

    def units(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Groups of tokens corrupted as one (None: each token on its own)."""
        return None

    def select_units(self, batch: dict[str, torch.Tensor], gen: torch.Generator):
        """(positions to predict [B, T], groups corrupted as one or None)."""
        return self.select(batch, gen), self.units(batch)

    def collate(self, items, gen):
        batch = self.stack(items)
        selected, units = self.select_units(batch, gen)
        batch["input_ids"], batch["labels"] = corrupt(
            batch["input_ids"], selected, gen, self.specials.mask, self._regular, self.mask_ratio, self.random_ratio,
            units=units,
        )
        del batch["word_starts"]
        return batch

    def loss(self, model, batch):
        out = model.body(batch["input_ids"], attention_mask=batch.get("attention_mask"))
        return mlm_loss(model, out.last_hidden_state, batch["labels"])


@register
class WholeWordMLM(MaskedLM):
    """Whole-word masking: words (in random order) are chosen until about mask_prob of the non-special tokens are
    covered; every piece of a chosen word is predicted. The 80/10/10 choice is made once per word, so a word is
    never half [MASK], half visible."""

    name = "wwm"
    kmer_runs = False

    def _words(self, batch):
        ids = batch["input_ids"]
        special = special_mask(ids, self.specials.special_ids)
        return special, word_index(batch["word_starts"], special)

    def select(self, batch, gen):
        return self.select_units(batch, gen)[0]

    def select_units(self, batch, gen):
        """Whole words up to the budget. A row where whole words cannot come near it (text without whitespace,
        such as DNA, is one long word: under half the budget is reached) falls back to single tokens, chosen the
        same way, and a warning is printed once."""
        special, wid = self._words(batch)
        chosen = self._choose(batch["input_ids"], special, wid, gen)
        budget = self.mask_prob * (~special).sum(1)
        short = (chosen.sum(1) < 0.5 * budget) & (budget >= 1)
        if short.any():
            warn_token_fallback(self, "whole-word", int(short.sum()), len(short))
            T = wid.shape[1]
            tokens = torch.arange(T).expand_as(wid)
            wid = torch.where(short[:, None], tokens, wid)
            chosen = torch.where(short[:, None], self._choose(batch["input_ids"], special, wid, gen), chosen)
        return chosen, wid

    def _choose(self, ids, special, wid, gen):
        B, T = ids.shape
        regular = (~special).long()
        lengths = torch.zeros(B, T, dtype=torch.long).scatter_add_(1, wid, torch.ones_like(wid))  # tokens per word
        eligible = torch.zeros(B, T, dtype=torch.long).scatter_add_(1, wid, regular) > 0  # regular words
        budget = self.mask_prob * regular.sum(1, keepdim=True).float()  # [B, 1]
        keys = torch.rand(B, T, generator=gen).masked_fill(~eligible, 2.0)
        order = keys.argsort(1)  # eligible words first, in random order
        ok = eligible.gather(1, order)
        size = lengths.gather(1, order) * ok
        total = size.cumsum(1).float()
        before = total - size
        # take words while the total stays within budget, plus the one crossing it when that lands closer
        take = ok & ((total <= budget) | ((before < budget) & (total - budget < budget - before)))
        chosen = torch.zeros(B, T, dtype=torch.bool).scatter_(1, order, take)
        return chosen.gather(1, wid) & ~special

    def units(self, batch):
        return self._words(batch)[1]


def kmer_runs(candidates: torch.Tensor, k: int, rate: float, gen: torch.Generator) -> torch.Tensor:
    """[B, T] runs of k neighbouring candidate tokens (DNABERT's masking of overlapping k-mers, where a single
    hidden k-mer is given away by its neighbours). Runs start at each candidate with probability
    1 - (1 - rate)^(1/k), so a token is covered with probability `rate` away from the edges; runs may merge and
    stop at the first non-candidate (a special token)."""
    p_start = 1 - (1 - rate) ** (1 / k)
    cur = candidates & (torch.rand(candidates.shape, generator=gen) < p_start)
    chosen = cur.clone()
    for _ in range(k - 1):
        cur = torch.cat([torch.zeros_like(cur[:, :1]), cur[:, :-1]], 1) & candidates
        chosen |= cur
    return chosen


def warn_token_fallback(objective, what: str, rows: int, total: int) -> None:
    """Once per objective: say that `what` masking fell back to single tokens."""
    if getattr(objective, "_warned_fallback", False):
        return
    objective._warned_fallback = True
    print(f"pretune: warning: {what} masking reaches under half of mask_prob {objective.mask_prob:g} in {rows} of "
          f"{total} sequences (words far longer than the spans, e.g. text without whitespace such as DNA); those "
          "sequences are masked by single tokens instead", file=sys.stderr)
