"""Pretraining objectives: each turns token sequences into model inputs and targets, owns its heads and its loss.

An objective is chosen by name (`objective = "mlm"` in the config). The training loop only calls the methods of
`Objective`, so adding one means adding a class here and registering it, never an if-chain in the loop.

    mlm       BERT's masked LM: 15% of tokens, 80% [MASK] / 10% random / 10% unchanged
    wwm       whole-word masking: words chosen until ~15% of tokens are covered, all pieces of a word together
    span      SpanBERT: spans of whole words (length ~ Geometric(0.2) truncated at 10) + span boundary objective
    mlm+nsp   BERT's MLM + next-sentence prediction on [CLS] A [SEP] B [SEP] pairs
    clm       GPT's causal LM: next-token loss over packed sequences, on a causal model

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
from pretune.model.heads import MLMHead, NSPHead, SBOHead
from pretune.model.transformer import ModelConfig, Transformer

IGNORE = -100
Stats = dict[str, tuple[torch.Tensor, torch.Tensor]]
MASK_OPTIONS = ("mask_prob", "mask_ratio", "random_ratio")


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
    """Base class. Subclasses set `name`, `causal`, `options` and implement heads / collate / loss.

    `options` names the [pretrain] config keys the constructor takes (keyword arguments of the same name)."""

    name = "base"
    causal = False
    options: tuple[str, ...] = ()

    def __init__(self, specials: Specials, **options):
        self.specials = specials
        if options:
            raise InputError(f"objective {self.name!r} takes no options {sorted(options)}")

    def heads(self, cfg: ModelConfig) -> dict[str, nn.Module]:
        raise NotImplementedError

    def check_model(self, cfg: ModelConfig, source=None) -> None:
        """Refuse a model this objective cannot train (e.g. a causal model for a masked objective)."""
        if cfg.causal != self.causal:
            kind = "causal" if self.causal else "bidirectional"
            raise InputError(f"objective {self.name!r} needs a {kind} model, and this one is not", path=source)

    def dataset(self, shards, max_len: int):
        """Training items from token shards: by default fixed-length packed sequences, so no padding is computed."""
        from pretune.text.corpus import PackedSequences

        return PackedSequences(shards, max_len, self.specials.cls, self.specials.sep)

    def collate(self, items: list, gen: torch.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def loss(self, model: PretrainModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Stats]:
        raise NotImplementedError

    @staticmethod
    def summarize(totals: dict[str, tuple[float, float]]) -> dict[str, float]:
        """Turn summed (numerator, denominator) pairs into metrics; `*_loss` also gives a perplexity for the
        language-model losses, and `loss` is the sum of every `*_loss` (the objective's total loss)."""
        out = {}
        for key, (num, den) in totals.items():
            value = num / max(den, 1e-12)
            out[key] = value
            if key == "mlm_loss" or key == "lm_loss":
                out[key.replace("loss", "perplexity")] = float(np.exp(min(value, 50.0)))
        parts = [v for k, v in out.items() if k.endswith("_loss")]
        if parts:
            out["loss"] = float(sum(parts))
        return out


# ---------------------------------------------------------------------------------------------------- helpers


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


def word_index(word_starts: torch.Tensor, special: torch.Tensor) -> torch.Tensor:
    """[B, T] index of the word each token belongs to, counted from 0 per row.

    A word is a start token plus the non-start tokens after it; every special token ([CLS], [SEP], [PAD], [UNK]
    inside a word, ...) is a word of its own, so no word mixes special and regular tokens."""
    starts = word_starts | special
    starts[:, 1:] |= special[:, :-1]
    starts[:, 0] = True
    return starts.long().cumsum(1) - 1


def corrupt(
    ids: torch.Tensor,
    selected: torch.Tensor,
    gen: torch.Generator,
    mask_id: int,
    regular_ids: torch.Tensor,
    mask_ratio: float = 0.8,
    random_ratio: float = 0.1,
    units: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's 80/10/10 corruption of the `selected` positions: [MASK], a random regular token, or unchanged.

    With `units` ([B, T] indices in [0, T)), the choice is made once per unit (a word, a span) and applies to all of
    its tokens; a unit chosen for random replacement gets an independent random token at each position.
    Returns (inputs, labels) with labels = IGNORE outside the selection."""
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE))
    u = torch.rand(ids.shape, generator=gen)
    if units is not None:
        u = u.gather(1, units)
    to_mask = selected & (u < mask_ratio)
    to_random = selected & (u >= mask_ratio) & (u < mask_ratio + random_ratio)
    inputs = ids.masked_fill(to_mask, mask_id)
    random_tokens = regular_ids[torch.randint(len(regular_ids), ids.shape, generator=gen)]
    inputs = torch.where(to_random, random_tokens, inputs)
    return inputs, labels


def mlm_loss(model: PretrainModel, hidden: torch.Tensor, labels: torch.Tensor, head: str = "mlm"):
    """Cross-entropy on the selected positions only; the decoder runs on [N, H], not [B, T, H].

    Statistics are named after the head: `<head>_loss`, `<head>_accuracy`."""
    sel = labels != IGNORE  # [B, T]
    targets = labels[sel]  # [N]
    logits = model.heads[head](hidden[sel], model.embedding_weight)  # [N, V]
    return _token_loss(logits, targets, head)


class SumCrossEntropy(torch.autograd.Function):
    """(summed cross-entropy, argmax) of [N, V] logits of any float dtype, computed in fp32 a block of rows at a time.

    F.cross_entropy(logits.float()) makes four fp32 [N, V] tensors per step (the cast, the log-softmax it keeps for
    backward, the gradient and its zeros); on a CPU each is a fresh mmap that page-faults in. Here only blocks of
    about 4M elements are made (few enough ops that thread synchronisation stays cheap), backward rebuilds the
    softmax from the logits and their log-sum-exp, and the gradient is written once in the logits' dtype: the
    decoder + loss of a bf16 MLM step is about 1.45x faster on a CPU."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, rows: int | None = None):
        N = logits.shape[0]
        rows = rows or max(1, (1 << 22) // logits.shape[1])
        lse = torch.empty(N, dtype=torch.float32, device=logits.device)  # log-sum-exp per row
        pred = torch.empty(N, dtype=torch.long, device=logits.device)
        for a in range(0, N, rows):
            x = logits[a : a + rows].float()  # [rows, V]
            torch.logsumexp(x, -1, out=lse[a : a + rows])
            torch.argmax(x, -1, out=pred[a : a + rows])
        picked = logits.gather(1, targets[:, None]).squeeze(1).float()  # [N]
        ctx.save_for_backward(logits, targets, lse)
        ctx.rows = rows
        ctx.mark_non_differentiable(pred)
        return (lse - picked).sum(), pred

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor, _grad_pred):
        logits, targets, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)
        rows = ctx.rows
        for a in range(0, logits.shape[0], rows):
            g = torch.sub(logits[a : a + rows], lse[a : a + rows, None]).exp_()  # softmax, fp32 [rows, V]
            g[torch.arange(g.shape[0], device=g.device), targets[a : a + rows]] -= 1
            torch.mul(g, grad_loss, out=grad[a : a + rows])
        return grad, None, None


def _token_loss(logits: torch.Tensor, targets: torch.Tensor, prefix: str):
    if logits.device.type == "cpu":
        token_loss, pred = SumCrossEntropy.apply(logits, targets)
    else:
        token_loss = F.cross_entropy(logits.float(), targets, reduction="sum")
        pred = logits.detach().argmax(-1)
    n = targets.new_tensor(targets.numel(), dtype=torch.float32)
    correct = (pred == targets).sum().float()
    return token_loss / n.clamp(min=1), {f"{prefix}_loss": (token_loss.detach(), n), f"{prefix}_accuracy": (correct, n)}


def numpy_rng(gen: torch.Generator) -> np.random.Generator:
    """A numpy generator drawn from the torch one, so per-batch randomness stays a function of the batch seed."""
    return np.random.default_rng(int(torch.randint(2**62, (1,), generator=gen)))


# ---------------------------------------------------------------------------------------------------- mlm / wwm


class MaskedLM(Objective):
    """Masked LM: 15% of non-special tokens selected, of those 80% [MASK], 10% random, 10% kept."""

    name = "mlm"
    options = MASK_OPTIONS

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
        """Which positions to predict: each non-special token with probability mask_prob."""
        ids = batch["input_ids"]
        candidates = ~special_mask(ids, self.specials.special_ids)
        return candidates & (torch.rand(ids.shape, generator=gen) < self.mask_prob)

    def units(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Groups of tokens corrupted as one (None: each token on its own)."""
        return None

    def collate(self, items, gen):
        batch = self.stack(items)
        selected = self.select(batch, gen)
        batch["input_ids"], batch["labels"] = corrupt(
            batch["input_ids"], selected, gen, self.specials.mask, self._regular, self.mask_ratio, self.random_ratio,
            units=self.units(batch),
        )
        del batch["word_starts"]
        return batch

    def loss(self, model, batch):
        out = model.body(batch["input_ids"], attention_mask=batch.get("attention_mask"))
        return mlm_loss(model, out.last_hidden_state, batch["labels"])


class WholeWordMLM(MaskedLM):
    """Whole-word masking: words (in random order) are chosen until about mask_prob of the non-special tokens are
    covered; every piece of a chosen word is predicted. The 80/10/10 choice is made once per word, so a word is
    never half [MASK], half visible."""

    name = "wwm"

    def _words(self, batch):
        ids = batch["input_ids"]
        special = special_mask(ids, self.specials.special_ids)
        return special, word_index(batch["word_starts"], special)

    def select(self, batch, gen):
        ids = batch["input_ids"]
        B, T = ids.shape
        special, wid = self._words(batch)
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


# ---------------------------------------------------------------------------------------------------- span + SBO


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
    return _token_loss(logits, labels[sel], "sbo")


class SpanMLM(MaskedLM):
    """SpanBERT: masked spans of whole words, each replaced as a unit (80% all [MASK], 10% all random, 10% kept),
    predicted by the MLM head and by the span boundary objective; loss = MLM + SBO."""

    name = "span"
    options = (*MASK_OPTIONS, "span_p", "span_max")
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
        for b in range(B):
            for sp in sample_spans(starts[b], reg[b], self.mask_prob * reg[b].sum(), rng, self.lengths, self.probs):
                s, e = sp.start, sp.end
                selected[b, s:e] = True
                units[b, s:e] = s
                left[b, s:e] = max(s - 1, 0)
                right[b, s:e] = min(e, T - 1)
                offset[b, s:e] = np.arange(e - s)
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


# ---------------------------------------------------------------------------------------------------- mlm + nsp


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


# ---------------------------------------------------------------------------------------------------- causal LM


class CausalLM(Objective):
    """Next-token prediction over packed sequences on a causal model: position t predicts token t+1. The "lm" head
    is the tied embedding decoder without bias (GPT-2's layout); statistics lm_loss, lm_accuracy, lm_perplexity."""

    name = "clm"
    causal = True

    def heads(self, cfg):
        return {"lm": MLMHead(cfg, transform=False, bias=False)}

    def collate(self, items, gen):
        batch = pad_sequences(items, self.specials.pad)
        del batch["word_starts"]
        labels = batch["input_ids"].clone()
        if "attention_mask" in batch:
            labels[~batch["attention_mask"]] = IGNORE
        batch["labels"] = labels
        return batch

    def loss(self, model, batch):
        hidden = model.body(batch["input_ids"], attention_mask=batch.get("attention_mask")).last_hidden_state
        return mlm_loss(model, hidden[:, :-1], batch["labels"][:, 1:], head="lm")


OBJECTIVES: dict[str, type[Objective]] = {}


def register(cls: type[Objective]) -> type[Objective]:
    OBJECTIVES[cls.name] = cls
    return cls


for _cls in (MaskedLM, WholeWordMLM, SpanMLM, MLMWithNSP, CausalLM):
    register(_cls)


def build_objective(name: str, specials: Specials, **options) -> Objective:
    if name not in OBJECTIVES:
        raise InputError(f"unknown objective {name!r}; expected one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[name](specials, **options)
