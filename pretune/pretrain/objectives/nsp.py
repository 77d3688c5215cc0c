"""BERT's pretraining: masked LM plus next-sentence prediction on [CLS] A [SEP] B [SEP] pairs.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pretune.errors import InputError
from pretune.model.heads import MLMHead, NSPHead
from pretune.pretrain.objectives.base import Specials, mlm_loss, pad_sequences, register
from pretune.pretrain.objectives.mlm import MASK_OPTIONS, MaskedLM


class SentencePairs:
    """Next-sentence-prediction items [CLS] A [SEP] B [SEP] (at most max_len tokens) from the documents of a split.

    Each document of >= 2 tokens is cut into ceil(len / (max_len - 3)) chunks of about equal size, at word starts;
    item i is one chunk, split at a random word start into A | B (consecutive segments of one document). With
    probability `random_prob` B is replaced by a segment of another random document, of the length the true B had,
    starting at a random word start (label 1 = random, 0 = next). The randomness of item i is seeded by i, so an
    item is the same whenever it is read (exact resume, fixed validation)."""

    def __init__(self, shards, max_len: int, cls_id: int, sep_id: int, random_prob: float = 0.5, seed: int = 0):
        if max_len < 8:
            raise InputError(f"max_len must be at least 8 for sentence pairs, got {max_len}")
        if shards.n_docs < 2:
            raise InputError("next-sentence prediction needs at least 2 documents in every split",
                             path=shards.directory)
        self.shards, self.max_len, self.cls_id, self.sep_id = shards, max_len, cls_id, sep_id
        self.random_prob, self.seed = random_prob, seed
        self.budget = max_len - 3
        offsets = np.asarray(shards.doc_offsets, dtype=np.int64)
        self.doc_len = np.diff(offsets)
        chunks = np.where(self.doc_len >= 2, -(-self.doc_len // self.budget), 0)
        self.first_item = np.concatenate(([0], np.cumsum(chunks)))  # [n_docs + 1]
        self.n_chunks = chunks

    def __len__(self) -> int:
        return int(self.first_item[-1])

    def _doc(self, d: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = int(self.shards.doc_offsets[d]), int(self.shards.doc_offsets[d + 1])
        return np.asarray(self.shards.tokens[a:b], dtype=np.int64), np.asarray(self.shards.word_starts[a:b]) != 0

    def _chunk_bounds(self, starts: np.ndarray, n: int, k: int) -> tuple[int, int]:
        """Tokens [a, b) of chunk k of n; boundaries move back to a word start within half a chunk."""

        def boundary(j: int) -> int:
            if j <= 0:
                return 0
            if j >= n:
                return len(starts)
            p = j * len(starts) // n
            lo = max(p - len(starts) // (2 * n) + 1, 1)
            ws = np.flatnonzero(starts[lo : p + 1])
            return lo + int(ws[-1]) if len(ws) else p

        return boundary(k), boundary(k + 1)

    def __getitem__(self, i: int) -> dict[str, np.ndarray | int]:
        if not 0 <= i < len(self):
            raise IndexError(f"pair {i} out of range for {len(self)} pairs")
        rng = np.random.default_rng([self.seed, i])
        d = int(np.searchsorted(self.first_item, i, side="right") - 1)
        ids, starts = self._doc(d)
        a, b = self._chunk_bounds(starts, int(self.n_chunks[d]), i - int(self.first_item[d]))
        b = min(b, a + self.budget)  # a boundary moved back to a word start can lengthen a chunk
        chunk, chunk_starts = ids[a:b], starts[a:b]
        cuts = np.flatnonzero(chunk_starts[1:]) + 1  # word starts after the first token
        if len(cuts) == 0:
            cuts = np.arange(1, len(chunk))  # one long word: cut inside it
        cut = int(rng.choice(cuts))
        seg_a, starts_a = chunk[:cut], chunk_starts[:cut]
        seg_b, starts_b = chunk[cut:], chunk_starts[cut:]
        is_random = bool(rng.random() < self.random_prob)
        if is_random:
            seg_b, starts_b = self._random_segment(d, len(seg_b), rng)
        n_a, n_b = len(seg_a), len(seg_b)
        out = np.concatenate(([self.cls_id], seg_a, [self.sep_id], seg_b, [self.sep_id])).astype(np.int64)
        words = np.concatenate(([True], starts_a, [True], starts_b, [True]))
        words[[1, n_a + 2]] = True  # each segment begins a word
        types = np.concatenate((np.zeros(n_a + 2, dtype=np.int64), np.ones(n_b + 1, dtype=np.int64)))
        return {"input_ids": out, "word_starts": words, "token_type_ids": types, "next_label": int(is_random)}

    def _random_segment(self, d: int, want: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """About `want` tokens of a document other than d, from a random word start, ending at a word start."""
        j = int(rng.integers(self.shards.n_docs - 1))
        j += j >= d
        ids, starts = self._doc(j)
        ws = np.flatnonzero(starts)
        s = int(rng.choice(ws)) if len(ws) else 0
        e = min(s + want, len(ids))
        if e < len(ids):  # end at a word start when one is in the segment
            later = np.flatnonzero(starts[s + 1 : e + 1])
            if len(later):
                e = s + 1 + int(later[-1])
        return ids[s:e], starts[s:e]


def pad_pairs(items: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Stack SentencePairs items: input_ids / word_starts / token_type_ids padded, next_label [B]."""
    batch = pad_sequences([(it["input_ids"], it["word_starts"]) for it in items], pad_id)
    types = torch.zeros_like(batch["input_ids"])
    for i, it in enumerate(items):
        types[i, : len(it["token_type_ids"])] = torch.from_numpy(np.asarray(it["token_type_ids"], dtype=np.int64))
    batch["token_type_ids"] = types
    batch["next_label"] = torch.tensor([it["next_label"] for it in items], dtype=torch.long)
    return batch


@register
class MLMWithNSP(MaskedLM):
    """BERT's pretraining: masked LM on [CLS] A [SEP] B [SEP] pairs (segment ids 0 / 1) plus next-sentence
    prediction (B follows A, or comes from another document with probability nsp_prob); loss = MLM + NSP."""

    name = "mlm+nsp"
    options = (*MASK_OPTIONS, "nsp_prob")

    def __init__(self, specials: Specials, mask_prob: float = 0.15, mask_ratio: float = 0.8,
                 random_ratio: float = 0.1, nsp_prob: float = 0.5):
        super().__init__(specials, mask_prob, mask_ratio, random_ratio)
        if not 0 < nsp_prob < 1:
            raise InputError(f"nsp_prob must be in (0, 1), got {nsp_prob}")
        self.nsp_prob = nsp_prob

    def heads(self, cfg):
        return {"mlm": MLMHead(cfg), "nsp": NSPHead(cfg)}

    def check_model(self, cfg, source=None):
        super().check_model(cfg, source)
        if cfg.type_vocab_size < 2:
            raise InputError(f"objective {self.name!r} needs segment embeddings (type_vocab_size >= 2), "
                             f"the model has {cfg.type_vocab_size}", path=source)

    def dataset(self, shards, max_len):
        return SentencePairs(shards, max_len, self.specials.cls, self.specials.sep, self.nsp_prob)

    def stack(self, items):
        return pad_pairs(items, self.specials.pad)

    def loss(self, model, batch):
        hidden = model.body(batch["input_ids"], attention_mask=batch.get("attention_mask"),
                            token_type_ids=batch["token_type_ids"]).last_hidden_state
        loss, stats = mlm_loss(model, hidden, batch["labels"])
        logits = model.heads["nsp"](hidden)  # [B, 2]
        target = batch["next_label"]
        nsp = F.cross_entropy(logits.float(), target, reduction="sum")
        n = target.new_tensor(target.numel(), dtype=torch.float32)
        correct = (logits.argmax(-1) == target).sum().float()
        stats.update(nsp_loss=(nsp.detach(), n), nsp_accuracy=(correct, n))
        return loss + nsp / n, stats
