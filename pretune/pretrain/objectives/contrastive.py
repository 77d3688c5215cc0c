"""Contrastive learning of one vector per text (SimCSE's loss, Gao et al., 2021): every text of a batch gives two
views, each encoded with its own dropout mask; each text's two mean-pooled vectors are pulled together and pushed
away from the other texts of the batch (in-batch negatives: cross-entropy over cosine similarities / temperature).

Why: a sentence-embedding checkpoint (all-MiniLM-L6-v2 and the other sentence-transformers models) ships no MLM
head, and its pooled vector is what makes it strong with few labels. Continued masked-LM pretraining puts a new,
random head on it and pulls the body toward predicting tokens, away from that vector; this objective adapts the
vector itself to the user's corpus, with no head at all. The pooling is the one fine-tuning uses on a bidirectional
body (`[finetune] pooling` auto = mean over the real tokens).

The views (`views`):
- "split" (default): a cut in the middle half divides the text's tokens into a left and a right part, one view each (the
  inverse cloze task of Lee et al., 2019, made symmetric). The parts share no token, so matching them asks what the
  corpus's texts are about, not which words they repeat.
- "dropout": the whole text twice, only the dropout differs (unsupervised SimCSE). Measured too easy for a model
  already trained contrastively: all-MiniLM-L6-v2 tells the two views of a gloss from 63 others at a loss near
  1e-5, so nothing moves; overlapping random crops (Contriever's) were nearly as easy (loss 0.002), since the shared
  words give the pair away.
A text of a single token gives itself as both views. Split views need no dropout (a model pretrained from scratch
without it, the default, can take a contrastive stage after its masked LM); dropout views do.

Items are whole documents (a corpus line by default), cut to max_len, not packed windows: the vector learnt is the
one of a single text.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pretune.errors import InputError
from pretune.model.heads import masked_mean
from pretune.model.transformer import ModelConfig
from pretune.pretrain.objectives.base import Objective, Specials, register
from pretune.pretrain.shards import Documents

VIEWS = ("split", "dropout")


@register
class SimCSE(Objective):
    """Contrastive learning of one vector per text from two views of it (`views`). Statistics: contrastive_loss,
    contrastive_accuracy (share of texts whose nearest vector among the other view's batch is their own)."""

    name = "simcse"
    options = ("temperature", "views")
    headless = True

    def __init__(self, specials: Specials, temperature: float = 0.05, views: str = "split"):
        super().__init__(specials)
        if not temperature > 0:
            raise InputError(f"temperature must be > 0, got {temperature}")
        if views not in VIEWS:
            raise InputError(f"views must be one of {VIEWS}, got {views!r}")
        self.temperature, self.views = temperature, views

    def heads(self, cfg: ModelConfig) -> dict[str, nn.Module]:
        return {}

    def check_model(self, cfg: ModelConfig, source=None) -> None:
        super().check_model(cfg, source)
        if self.views == "dropout" and cfg.dropout == 0 and cfg.attention_dropout == 0:
            raise InputError("objective 'simcse' with views = 'dropout' needs dropout (its two views of a text differ "
                             "only by their dropout masks), and this model has none: set [model] dropout, e.g. 0.1, "
                             "or views = 'split'", path=source)

    def dataset(self, shards, max_len: int):
        return Documents(shards, max_len, self.specials.cls, self.specials.sep)

    def pair(self, ids: np.ndarray, u: float) -> tuple[np.ndarray, np.ndarray]:
        """The two views of [CLS] text [SEP]; u: a uniform that places the cut."""
        inner = ids[1:-1]
        if self.views == "dropout" or len(inner) < 2:
            return ids, ids
        cut = min(max(round(len(inner) * (0.25 + 0.5 * u)), 1), len(inner) - 1)  # middle half; both non-empty
        return (np.concatenate((ids[:1], inner[:cut], ids[-1:])), np.concatenate((ids[:1], inner[cut:], ids[-1:])))

    def collate(self, items, gen):
        u = torch.rand(len(items), generator=gen).tolist()
        pairs = [self.pair(ids, u[i]) for i, (ids, _) in enumerate(items)]
        views = [p[0] for p in pairs] + [p[1] for p in pairs]  # 2B: the a views, then the b views
        B, T = len(items), max(len(x) for x in views)
        ids = torch.full((2 * B, T), self.specials.pad, dtype=torch.long)
        mask = torch.zeros((2 * B, T), dtype=torch.bool)
        for r, x in enumerate(views):
            ids[r, : len(x)] = torch.from_numpy(x)
            mask[r, : len(x)] = True
        return {"input_ids": ids[:B], "attention_mask": mask[:B], "input_ids_b": ids[B:], "attention_mask_b": mask[B:]}

    def loss(self, model, batch):
        ids = torch.cat([batch["input_ids"], batch["input_ids_b"]])  # [2B, T]
        mask = torch.cat([batch["attention_mask"], batch["attention_mask_b"]])
        B = ids.shape[0] // 2
        hidden = model.body(ids, attention_mask=mask).last_hidden_state  # [2B, T, H]
        vecs = F.normalize(masked_mean(hidden, mask).float(), dim=-1)  # [2B, H]
        logits = vecs[:B] @ vecs[B:].T / self.temperature  # [B, B]: view a of row i against view b of every row
        target = torch.arange(B, device=ids.device)
        total = F.cross_entropy(logits, target, reduction="sum")
        n = ids.new_tensor(B, dtype=torch.float32)
        correct = (logits.detach().argmax(-1) == target).sum().float()
        stats = {"contrastive_loss": (total.detach(), n), "contrastive_accuracy": (correct, n)}
        return total / n.clamp(min=1), stats
