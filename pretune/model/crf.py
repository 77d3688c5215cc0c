"""Linear-chain CRF for sequence tagging (batch-first), with optional hard transition constraints.

Shapes: B batch, T time, K tags. `mask` [B, T] is a prefix mask (True for real tokens, mask[:, 0] True).
Scores are computed in float32 whatever the emission dtype, so the layer is safe under autocast.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pretune.errors import InputError

__all__ = ["CRF", "bio_constraints"]

DISALLOWED = -1e4  # score given to a forbidden start or transition; constant, never learned


class CRF(nn.Module):
    """Learnable start [K], end [K] and transition [K, K] (from i to j) scores over emission scores.

    `allowed_transitions` [K, K] and `allowed_start` [K] (bool) forbid some moves: their scores are fixed
    at -1e4, so training cannot revive them and Viterbi never picks them when an allowed path exists.
    """

    def __init__(
        self,
        num_tags: int,
        allowed_transitions: Tensor | None = None,
        allowed_start: Tensor | None = None,
    ):
        super().__init__()
        if num_tags < 1:
            raise ValueError(f"num_tags must be >= 1, got {num_tags}")
        self.num_tags = num_tags
        self.start = nn.Parameter(torch.empty(num_tags).uniform_(-0.1, 0.1))
        self.end = nn.Parameter(torch.empty(num_tags).uniform_(-0.1, 0.1))
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags).uniform_(-0.1, 0.1))
        if allowed_transitions is None:
            allowed_transitions = torch.ones(num_tags, num_tags, dtype=torch.bool)
        if allowed_start is None:
            allowed_start = torch.ones(num_tags, dtype=torch.bool)
        allowed_transitions = torch.as_tensor(allowed_transitions).bool()
        allowed_start = torch.as_tensor(allowed_start).bool()
        if allowed_transitions.shape != (num_tags, num_tags) or allowed_start.shape != (num_tags,):
            raise ValueError(
                f"constraints must have shapes [{num_tags}, {num_tags}] and [{num_tags}], got "
                f"{list(allowed_transitions.shape)} and {list(allowed_start.shape)}"
            )
        self.register_buffer("allowed_transitions", allowed_transitions)
        self.register_buffer("allowed_start", allowed_start)

    def extra_repr(self) -> str:
        return f"num_tags={self.num_tags}"

    # effective (masked) parameters ------------------------------------------------------------------
    def _start(self) -> Tensor:  # [K]
        return self.start.masked_fill(~self.allowed_start, DISALLOWED)

    def _transitions(self) -> Tensor:  # [K, K]
        return self.transitions.masked_fill(~self.allowed_transitions, DISALLOWED)

    def _check(self, emissions: Tensor, mask: Tensor, tags: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if emissions.dim() != 3 or emissions.shape[-1] != self.num_tags:
            raise ValueError(f"emissions must be [B, T, {self.num_tags}], got {list(emissions.shape)}")
        if mask.shape != emissions.shape[:2]:
            raise ValueError(f"mask must be {list(emissions.shape[:2])}, got {list(mask.shape)}")
        if tags is not None and tags.shape != emissions.shape[:2]:
            raise ValueError(f"tags must be {list(emissions.shape[:2])}, got {list(tags.shape)}")
        if emissions.shape[1] == 0:
            raise ValueError("sequences must have at least one position")
        mask = mask.bool()
        # a prefix mask: first position real, never a real position after a padded one
        if not bool(mask[:, 0].all()) or bool((mask[:, 1:] & ~mask[:, :-1]).any()):
            raise ValueError("mask must be a prefix mask (True for the first L >= 1 positions of each row)")
        return emissions.float(), mask

    # ---------------------------------------------------------------------------------------------
    def log_partition(self, emissions: Tensor, mask: Tensor) -> Tensor:
        """log Z: log-sum-exp of the scores of all tag paths of each sequence. [B, T, K], [B, T] -> [B]."""
        emissions, mask = self._check(emissions, mask)
        trans = self._transitions()
        alpha = self._start() + emissions[:, 0]  # [B, K]
        for t in range(1, emissions.shape[1]):
            # [B, K_prev, 1] + [K_prev, K_next] + [B, 1, K_next] -> logsumexp over prev -> [B, K_next]
            nxt = torch.logsumexp(alpha.unsqueeze(2) + trans + emissions[:, t].unsqueeze(1), dim=1)
            alpha = torch.where(mask[:, t : t + 1], nxt, alpha)
        return torch.logsumexp(alpha + self.end, dim=1)

    def score(self, emissions: Tensor, tags: Tensor, mask: Tensor) -> Tensor:
        """Score of the given tag path of each sequence (tags at padded positions are ignored). -> [B]."""
        emissions, mask = self._check(emissions, mask, tags)
        tags = tags.long().masked_fill(~mask, 0)  # [B, T]; padding may hold -100
        emit = emissions.gather(2, tags.unsqueeze(2)).squeeze(2)  # [B, T]
        total = self._start()[tags[:, 0]] + emit.masked_fill(~mask, 0.0).sum(1)
        trans = self._transitions()[tags[:, :-1], tags[:, 1:]]  # [B, T-1]
        total = total + trans.masked_fill(~mask[:, 1:], 0.0).sum(1)
        last = mask.sum(1) - 1  # [B]
        last_tags = tags.gather(1, last.unsqueeze(1)).squeeze(1)
        return total + self.end[last_tags]

    def forward(self, emissions: Tensor, tags: Tensor, mask: Tensor) -> Tensor:
        """Mean negative log-likelihood of `tags` over the batch (a scalar to minimise)."""
        return (self.log_partition(emissions, mask) - self.score(emissions, tags, mask)).mean()

    @torch.no_grad()
    def decode(self, emissions: Tensor, mask: Tensor) -> list[list[int]]:
        """Viterbi: the best tag path of each sequence, as a list of length mask.sum() per row."""
        emissions, mask = self._check(emissions, mask)
        batch, steps, k = emissions.shape
        trans = self._transitions()
        keep = torch.arange(k, device=emissions.device).expand(batch, k)  # identity pointers for padding
        best = self._start() + emissions[:, 0]  # [B, K]
        pointers = []
        for t in range(1, steps):
            cand = best.unsqueeze(2) + trans  # [B, K_prev, K_next]
            top, arg = cand.max(dim=1)  # [B, K_next]
            step_mask = mask[:, t : t + 1]
            best = torch.where(step_mask, top + emissions[:, t], best)
            pointers.append(torch.where(step_mask, arg, keep))
        last = (best + self.end).argmax(dim=1)  # [B]; padded steps carry scores, so this is at position L-1
        path = [last]
        for ptr in reversed(pointers):
            last = ptr.gather(1, last.unsqueeze(1)).squeeze(1)
            path.append(last)
        tags = torch.stack(path[::-1], dim=1).cpu()  # [B, T]
        lengths = mask.sum(1).cpu()
        return [tags[b, : int(lengths[b])].tolist() for b in range(batch)]


def bio_constraints(labels: list[str]) -> tuple[Tensor, Tensor]:
    """(allowed_start [K], allowed [K, K]) for BIO labels: I-X only after B-X or I-X, never first."""
    kinds: list[tuple[str, str]] = []
    for i, label in enumerate(labels):
        if label == "O":
            kinds.append(("O", ""))
        elif label[:2] in ("B-", "I-") and len(label) > 2:
            kinds.append((label[0], label[2:]))
        else:
            raise InputError(f"label {i} is {label!r}; expected BIO labels: 'O', 'B-TYPE' or 'I-TYPE'")
    k = len(labels)
    allowed_start = torch.tensor([kind != "I" for kind, _ in kinds], dtype=torch.bool)
    allowed = torch.ones(k, k, dtype=torch.bool)
    for j, (kind_j, type_j) in enumerate(kinds):
        if kind_j == "I":
            for i, (kind_i, type_i) in enumerate(kinds):
                allowed[i, j] = kind_i in ("B", "I") and type_i == type_j
    return allowed_start, allowed
