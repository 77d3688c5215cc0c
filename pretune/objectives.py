"""Pretraining objectives: each turns token sequences into model inputs and targets, owns its heads and its loss.

An objective is chosen by name (`objective = "mlm"` in the config). The training loop only calls the methods of
`Objective`, so adding one means adding a class here and registering it, never an if-chain in the loop.

Statistics returned by `loss` are (numerator, denominator) pairs, so they add up across batches and ranks:
{"mlm_loss": (sum of token losses, tokens), "mlm_accuracy": (correct tokens, tokens)}.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pretune.errors import InputError
from pretune.model.heads import MLMHead
from pretune.model.transformer import ModelConfig, Transformer

IGNORE = -100
Stats = dict[str, tuple[torch.Tensor, torch.Tensor]]


class PretrainModel(nn.Module):
    """The Transformer body plus the heads of one objective (state-dict keys `body.*`, `heads.<name>.*`)."""

    def __init__(self, cfg: ModelConfig, heads: dict[str, nn.Module]):
        super().__init__()
        self.config = cfg
        self.body = Transformer(cfg)
        self.heads = nn.ModuleDict(heads)

    @property
    def embedding_weight(self) -> torch.Tensor:
        return self.body.embeddings.word.weight


@dataclass
class Specials:
    """What an objective needs to know about the vocabulary."""

    vocab_size: int
    pad: int
    cls: int
    sep: int
    mask: int | None
    special_ids: Sequence[int]

    @classmethod
    def from_tokenizer(cls, tok) -> Specials:
        s = tok.specials
        return cls(tok.vocab_size, s.pad, s.cls, s.sep, s.mask, sorted(tok.special_ids))

    def regular_ids(self) -> torch.Tensor:
        """Ids a random replacement may take: every non-special token."""
        keep = torch.ones(self.vocab_size, dtype=torch.bool)
        keep[list(self.special_ids)] = False
        return keep.nonzero().squeeze(1)


class Objective:
    """Base class. Subclasses set `name`, `causal` and implement heads / collate / loss."""

    name = "base"
    causal = False

    def __init__(self, specials: Specials, **options):
        self.specials = specials
        if options:
            raise InputError(f"objective {self.name!r} takes no options {sorted(options)}")

    def heads(self, cfg: ModelConfig) -> dict[str, nn.Module]:
        raise NotImplementedError

    def dataset(self, shards, max_len: int):
        """Training items from token shards: by default fixed-length packed sequences, so no padding is computed."""
        from pretune.data.corpus import PackedSequences

        return PackedSequences(shards, max_len, self.specials.cls, self.specials.sep)

    def collate(self, items: list[tuple[np.ndarray, np.ndarray]], gen: torch.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def loss(self, model: PretrainModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Stats]:
        raise NotImplementedError

    @staticmethod
    def summarize(totals: dict[str, tuple[float, float]]) -> dict[str, float]:
        """Turn summed (numerator, denominator) pairs into metrics; `*_loss` also gives a perplexity."""
        out = {}
        for key, (num, den) in totals.items():
            value = num / max(den, 1e-12)
            out[key] = value
            if key == "mlm_loss" or key == "lm_loss":
                out[key.replace("loss", "perplexity")] = float(np.exp(min(value, 50.0)))
        return out


def pad_sequences(items: list[tuple[np.ndarray, np.ndarray]], pad_id: int) -> dict[str, torch.Tensor]:
    """Stack (ids, word_starts) pairs; pad only when lengths differ (packed sequences never do)."""
    T = max(len(ids) for ids, _ in items)
    ids = torch.full((len(items), T), pad_id, dtype=torch.long)
    starts = torch.zeros((len(items), T), dtype=torch.bool)
    real = torch.zeros((len(items), T), dtype=torch.bool)
    for i, (a, w) in enumerate(items):
        ids[i, : len(a)] = torch.from_numpy(np.asarray(a, dtype=np.int64))
        starts[i, : len(w)] = torch.from_numpy(np.asarray(w, dtype=bool))
        real[i, : len(a)] = True
    batch = {"input_ids": ids, "word_starts": starts}
    if not bool(real.all()):
        batch["attention_mask"] = real
    return batch


def special_mask(ids: torch.Tensor, special_ids: Sequence[int]) -> torch.Tensor:
    return torch.isin(ids, torch.tensor(list(special_ids), dtype=ids.dtype))


def corrupt(
    ids: torch.Tensor,
    selected: torch.Tensor,
    gen: torch.Generator,
    mask_id: int,
    regular_ids: torch.Tensor,
    mask_ratio: float = 0.8,
    random_ratio: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's 80/10/10 corruption of the `selected` positions: [MASK], a random regular token, or unchanged.

    Returns (inputs, labels) with labels = IGNORE outside the selection."""
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE))
    u = torch.rand(ids.shape, generator=gen)
    to_mask = selected & (u < mask_ratio)
    to_random = selected & (u >= mask_ratio) & (u < mask_ratio + random_ratio)
    inputs = ids.masked_fill(to_mask, mask_id)
    random_tokens = regular_ids[torch.randint(len(regular_ids), ids.shape, generator=gen)]
    inputs = torch.where(to_random, random_tokens, inputs)
    return inputs, labels


def mlm_loss(model: PretrainModel, hidden: torch.Tensor, labels: torch.Tensor, head: str = "mlm"):
    """Cross-entropy on the selected positions only; the decoder runs on [N, H], not [B, T, H]."""
    sel = labels != IGNORE  # [B, T]
    targets = labels[sel]  # [N]
    logits = model.heads[head](hidden[sel], model.embedding_weight)  # [N, V]
    token_loss = F.cross_entropy(logits.float(), targets, reduction="sum")
    n = targets.new_tensor(targets.numel(), dtype=torch.float32)
    correct = (logits.argmax(-1) == targets).sum().float()
    return token_loss / n.clamp(min=1), {"mlm_loss": (token_loss.detach(), n), "mlm_accuracy": (correct, n)}


class MaskedLM(Objective):
    """Masked LM: 15% of non-special tokens selected, of those 80% [MASK], 10% random, 10% kept."""

    name = "mlm"

    def __init__(self, specials: Specials, mask_prob: float = 0.15, mask_ratio: float = 0.8, random_ratio: float = 0.1):
        super().__init__(specials)
        if specials.mask is None:
            raise InputError("the tokenizer has no [MASK] token, so masked-LM objectives cannot be used")
        if not 0 < mask_prob < 1 or mask_ratio + random_ratio > 1:
            raise InputError("mask_prob must be in (0, 1) and mask_ratio + random_ratio <= 1")
        self.mask_prob, self.mask_ratio, self.random_ratio = mask_prob, mask_ratio, random_ratio
        self._regular = specials.regular_ids()

    def heads(self, cfg: ModelConfig) -> dict[str, nn.Module]:
        return {"mlm": MLMHead(cfg)}

    def select(self, batch: dict[str, torch.Tensor], gen: torch.Generator) -> torch.Tensor:
        """Which positions to predict: each non-special token with probability mask_prob."""
        ids = batch["input_ids"]
        candidates = ~special_mask(ids, self.specials.special_ids)
        return candidates & (torch.rand(ids.shape, generator=gen) < self.mask_prob)

    def collate(self, items, gen):
        batch = pad_sequences(items, self.specials.pad)
        selected = self.select(batch, gen)
        batch["input_ids"], batch["labels"] = corrupt(
            batch["input_ids"], selected, gen, self.specials.mask, self._regular, self.mask_ratio, self.random_ratio
        )
        del batch["word_starts"]
        return batch

    def loss(self, model, batch):
        out = model.body(batch["input_ids"], attention_mask=batch.get("attention_mask"))
        return mlm_loss(model, out.last_hidden_state, batch["labels"])


OBJECTIVES: dict[str, type[Objective]] = {"mlm": MaskedLM}


def register(cls: type[Objective]) -> type[Objective]:
    OBJECTIVES[cls.name] = cls
    return cls


def build_objective(name: str, specials: Specials, **options) -> Objective:
    if name not in OBJECTIVES:
        raise InputError(f"unknown objective {name!r}; expected one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[name](specials, **options)
