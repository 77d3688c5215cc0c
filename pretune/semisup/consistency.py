"""Consistency training on unlabeled text (UDA, Xie et al. 2020), added to the fine-tuning loss.

Each training batch also carries `uda_batch_size` pool items, drawn with the batch's own generator (so a resumed run
sees the same ones), once as they are and once noised: a fraction `uda_mask_prob` of their tokens replaced by
[MASK], plus the model's dropout. The loss term is

    uda_weight * mean over the unlabeled items of  mask * KL(sharpen(p_clean) || p_noisy)

where p_clean is the prediction on the clean text (eval mode, no gradient), sharpen(p) = softmax(logits /
uda_temperature), and mask keeps only the items whose clean prediction has probability >= uda_threshold. For tagging
each word is an item. Classify, pair and tag; the pool is read like self-training's (`pool.read_pool`). `build`
makes the term a [finetune] section asks for.
"""

from __future__ import annotations

import torch
from torch import nn

from pretune.finetune.data import encode_split
from pretune.finetune.encode import task_collate
from pretune.finetune.tasks import gather_words
from pretune.semisup.pool import read_pool

PREFIX = "unlabeled_"  # batch keys of the unlabeled rows: unlabeled_input_ids, unlabeled_noisy_ids, ...


def consistency_loss(clean_logits: torch.Tensor, noisy_logits: torch.Tensor, temperature: float = 1.0,
                     threshold: float = 0.0) -> tuple[torch.Tensor, int]:
    """(mean over items of mask * KL(sharpen(softmax(clean)) || softmax(noisy)), number of items kept by the mask).

    Both logits are [N, K]; the clean ones are a fixed target (no gradient flows into them). An item counts when its
    clean prediction's top probability is >= `threshold`; the mean is over all N items (masked ones add 0)."""
    clean = clean_logits.detach().float()
    if clean.shape != noisy_logits.shape or clean.ndim != 2:
        raise ValueError(f"logits must both be [N, K], got {tuple(clean.shape)} and {tuple(noisy_logits.shape)}")
    if len(clean) == 0:
        return noisy_logits.sum() * 0.0, 0
    keep = clean.softmax(-1).amax(-1) >= threshold
    target = (clean / temperature).log_softmax(-1)
    kl = (target.exp() * (target - noisy_logits.float().log_softmax(-1))).sum(-1)
    return (kl * keep).mean(), int(keep.sum())


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, mask_id: int, prob: float,
                keep_ids: list[int], generator: torch.Generator | None = None) -> torch.Tensor:
    """A copy of `input_ids` with each real token ([CLS]/[SEP] and padding excepted) replaced by `mask_id` with
    probability `prob`."""
    candidates = attention_mask.bool() & ~torch.isin(input_ids, torch.tensor(keep_ids, dtype=input_ids.dtype))
    draw = torch.rand(input_ids.shape, generator=generator) < prob
    return input_ids.masked_fill(candidates & draw, mask_id)


class Consistency:
    """The unlabeled half of a UDA training step: `batch(gen)` adds pool rows to a collated batch, `split` takes
    them out again, `loss(model, rows)` is the weighted consistency term and its logged stats. `pool_info`: what
    reading the pool did (`pool.read_pool`), for the log."""

    def __init__(self, features: list[dict], tok, batch_size: int, weight: float, temperature: float,
                 threshold: float, mask_prob: float, pool_info: dict | None = None):
        if not features:
            raise ValueError("consistency training needs unlabeled features")
        self.features, self.batch_size = features, min(batch_size, len(features))
        self.weight, self.temperature, self.threshold, self.mask_prob = weight, temperature, threshold, mask_prob
        self.pool_info = pool_info
        s = tok.specials
        self.pad_id = s.pad
        self.mask_id = s.mask if s.mask is not None else s.unk
        self.keep_ids = [s.cls, s.sep, s.pad]
        self.seen = self.kept = 0  # unlabeled items scored / counted by the confidence mask, in this process
        self.top_confidence = 0.0  # the highest clean-prediction probability seen

    def batch(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """`batch_size` pool items (distinct, drawn with `generator`), collated, with their noised input ids."""
        picked = torch.randperm(len(self.features), generator=generator)[: self.batch_size].tolist()
        rows = task_collate([self.features[i] for i in picked], self.pad_id)
        rows = {k: v for k, v in rows.items() if k not in ("labels", "span_labels")}
        rows["noisy_ids"] = mask_tokens(rows["input_ids"], rows["attention_mask"], self.mask_id, self.mask_prob,
                                        self.keep_ids, generator)
        return {PREFIX + k: v for k, v in rows.items()}

    @staticmethod
    def split(batch: dict) -> tuple[dict, dict]:
        """(the labeled part of a training batch, its unlabeled rows without the prefix)."""
        labeled = {k: v for k, v in batch.items() if not k.startswith(PREFIX)}
        unlabeled = {k[len(PREFIX):]: v for k, v in batch.items() if k.startswith(PREFIX)}
        return labeled, unlabeled

    def loss(self, model: nn.Module, rows: dict) -> tuple[torch.Tensor, dict]:
        """(weight * consistency loss, stats {"uda_loss", "uda_confident"}) of a task model on unlabeled rows."""
        inputs = {k: v for k, v in rows.items() if k != "noisy_ids"}
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                clean = _item_logits(model, inputs)
        finally:
            model.train(was_training)
        noisy = _item_logits(model, {**inputs, "input_ids": rows["noisy_ids"]})
        loss, n_kept = consistency_loss(clean, noisy, self.temperature, self.threshold)
        self.seen, self.kept = self.seen + len(clean), self.kept + n_kept
        if len(clean):
            self.top_confidence = max(self.top_confidence, float(clean.float().softmax(-1).amax()))
        n = torch.tensor(float(len(clean)))
        stats = {"uda_loss": (loss.detach() * n, n), "uda_confident": (torch.tensor(float(n_kept)), n)}
        return self.weight * loss, stats

    def idle_warning(self) -> str | None:
        """A warning when the confidence mask let no item through: the term then changed nothing."""
        if self.seen == 0 or self.kept > 0:
            return None
        return (f"consistency training had no effect: none of the {self.seen} unlabeled predictions reached "
                f"uda_threshold {self.threshold:g} (the most confident was {self.top_confidence:.2f}); "
                f"lower --uda-threshold")


def _item_logits(model: nn.Module, inputs: dict) -> torch.Tensor:
    """[N, K] logits of the items a consistency term compares: one per text (classify/pair), one per word (tag)."""
    logits = model(**inputs)["logits"]
    if logits.ndim == 2:
        return logits
    words = gather_words(logits, inputs["word_index"])  # [B, W, K]
    return words[inputs["word_mask"]]


def from_section(sec, tok, exclude: list, batch_size: int, seed: int) -> tuple[Consistency, dict]:
    """The consistency term a FinetuneSection asks for (uda_* keys), on its pool without the `exclude` texts;
    returns it with the pool info of `pool.read_pool` (also its `pool_info`)."""
    pool, info = read_pool(sec.unlabeled, sec.task, sec.fields(), exclude, sec.pool_size, seed)
    data = encode_split(None, pool, sec.task, tok, None, sec.max_len, sec.head_options())
    term = Consistency(data.features, tok, sec.uda_batch_size or batch_size, sec.uda_weight, sec.uda_temperature,
                       sec.uda_threshold, sec.uda_mask_prob, pool_info=info)
    return term, info
