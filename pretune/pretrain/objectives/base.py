"""What every pretraining objective shares: the model with its heads, the vocabulary's specials, the `Objective`
interface and its registry, and the pieces the objectives are built from (padding, masking, the token loss).

An objective is chosen by name (`objective = "mlm"` in the config). The training loop only calls the methods of
`Objective`, so adding one means a module in this package with a class decorated `@register` (imported by the
package's __init__), never an if-chain in the loop.

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
from pretune.model.transformer import ModelConfig, Transformer
from pretune.pretrain.shards import PackedSequences

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
    kmer_overlap: int = 0  # k of an overlapping k-mer tokenizer (pretune.text.kmers): mask runs of k tokens

    @classmethod
    def from_tokenizer(cls, tok) -> Specials:
        s = tok.specials
        return cls(tok.vocab_size, s.pad, s.cls, s.sep, s.mask, sorted(tok.special_ids),
                   int(getattr(tok, "kmer_overlap", 0)))

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
    kmer_runs = False  # masks runs of k tokens for an overlapping k-mer tokenizer (else refused with one)
    headless = False  # trains the body alone (no head to warm up)

    def __init__(self, specials: Specials, **options):
        self.specials = specials
        if options:
            raise InputError(f"objective {self.name!r} takes no options {sorted(options)}")
        if specials.kmer_overlap > 1 and not (self.causal or self.kmer_runs):
            raise InputError(f"objective {self.name!r} would hide single tokens of an overlapping k-mer tokenizer, "
                             f"which their neighbours give away (they share {specials.kmer_overlap - 1} of their "
                             f"{specials.kmer_overlap} characters); use objective 'mlm', which masks runs of "
                             f"{specials.kmer_overlap} tokens")

    def heads(self, cfg: ModelConfig) -> dict[str, nn.Module]:
        raise NotImplementedError

    def check_model(self, cfg: ModelConfig, source=None) -> None:
        """Refuse a model this objective cannot train (e.g. a causal model for a masked objective)."""
        if cfg.causal != self.causal:
            kind = "causal" if self.causal else "bidirectional"
            raise InputError(f"objective {self.name!r} needs a {kind} model, and this one is not", path=source)

    def dataset(self, shards, max_len: int):
        """Training items from token shards: by default fixed-length packed sequences, so no padding is computed."""
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


OBJECTIVES: dict[str, type[Objective]] = {}


def register(cls: type[Objective]) -> type[Objective]:
    """Class decorator: make an objective available by its name (in the order the modules register them)."""
    OBJECTIVES[cls.name] = cls
    return cls


def build_objective(name: str, specials: Specials, **options) -> Objective:
    if name not in OBJECTIVES:
        raise InputError(f"unknown objective {name!r}; expected one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[name](specials, **options)


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
    return token_loss(logits, targets, head)


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


def token_loss(logits: torch.Tensor, targets: torch.Tensor, prefix: str):
    """Mean cross-entropy of [N, V] logits and statistics `<prefix>_loss`, `<prefix>_accuracy`."""
    if logits.device.type == "cpu":
        total, pred = SumCrossEntropy.apply(logits, targets)
    else:
        total = F.cross_entropy(logits.float(), targets, reduction="sum")
        pred = logits.detach().argmax(-1)
    n = targets.new_tensor(targets.numel(), dtype=torch.float32)
    correct = (pred == targets).sum().float()
    return total / n.clamp(min=1), {f"{prefix}_loss": (total.detach(), n), f"{prefix}_accuracy": (correct, n)}


def numpy_rng(gen: torch.Generator) -> np.random.Generator:
    """A numpy generator drawn from the torch one, so per-batch randomness stays a function of the batch seed."""
    return np.random.default_rng(int(torch.randint(2**62, (1,), generator=gen)))
