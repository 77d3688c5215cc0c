"""Heads that sit on the Transformer's hidden states. Shapes: B batch, T length, H hidden, V vocabulary."""

from __future__ import annotations

import torch
from torch import nn

from pretune.model.transformer import ModelConfig, activation_fn, init_weights


class MLMHead(nn.Module):
    """dense -> activation -> LayerNorm -> decoder tied to the input embeddings (+ bias).

    Called on the hidden states of the selected positions only ([N, H] -> [N, V]): for a small hidden size and a
    30k vocabulary the decoder is most of the model's FLOPs, so the ~85% of unselected positions are never decoded."""

    def __init__(self, cfg: ModelConfig, transform: bool = True, bias: bool = True):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size) if transform else None
        self.act = activation_fn(cfg.activation)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps) if transform else None
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size)) if bias else None

    def forward(self, h: torch.Tensor, embedding_weight: torch.Tensor) -> torch.Tensor:
        if self.dense is not None:
            h = self.norm(self.act(self.dense(h)))
        return nn.functional.linear(h, embedding_weight, self.bias)


class Pooler(nn.Module):
    """BERT's pooler: dense + tanh on the [CLS] state ([B, T, H] -> [B, H])."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


# ---- fine-tuning heads (task models: state-dict keys head.*) ------------------------------------------------------


POOLING = ("cls", "mean")


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """[B, T, H] states -> [B, H] mean over the real tokens (`mask` [B, T]; None: all), [CLS] / [SEP] included."""
    if mask is None:
        return hidden.mean(1)
    m = mask.to(hidden.dtype).unsqueeze(-1)  # [B, T, 1]
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


class ClassificationHead(nn.Module):
    """BERT's sequence classifier: `pooler.dense` + tanh -> dropout -> `classifier` ([B, T, H] -> [B, K]).

    pooling "cls": the pooled state is [CLS] (position 0), or `positions` [B] (a causal body pools its last token).
    pooling "mean": the mean of the states of the real tokens (`mask` [B, T]). Used for classify and pair."""

    def __init__(self, cfg: ModelConfig, num_labels: int, pooling: str = "cls"):
        super().__init__()
        if pooling not in POOLING:
            raise ValueError(f"pooling must be one of {POOLING}, got {pooling!r}")
        self.pooling = pooling
        self.pooler = Pooler(cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(cfg.hidden_size, num_labels)

    def forward(self, hidden: torch.Tensor, positions: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.pooling == "mean":
            hidden = masked_mean(hidden, mask).unsqueeze(1)  # [B, 1, H]
        elif positions is not None:
            hidden = hidden[torch.arange(hidden.shape[0], device=hidden.device), positions].unsqueeze(1)  # [B, 1, H]
        return self.classifier(self.dropout(self.pooler(hidden)))  # [B, K]


class TokenClassificationHead(nn.Module):
    """dropout -> `classifier` per token ([B, T, H] -> [B, T, K] emission scores), plus an optional `crf`.

    With `crf` and BIO `labels`, the CRF forbids invalid moves (I-X after O or after another type, I-X first)."""

    def __init__(self, cfg: ModelConfig, num_labels: int, crf: bool = False, labels: list[str] | None = None):
        super().__init__()
        from pretune.model.crf import CRF, bio_constraints

        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(cfg.hidden_size, num_labels)
        self.crf = None
        if crf:
            allowed_start, allowed = bio_constraints(labels) if labels is not None else (None, None)
            self.crf = CRF(num_labels, allowed_transitions=allowed, allowed_start=allowed_start)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(hidden))  # [B, T, K]


class SpanHead(nn.Module):
    """Span classifier over candidate spans (label 0 = NULL, not an entity).

    A span from subword i to subword j (inclusive) is [h_i; h_j; attention-pooled h_i..h_j; width embedding]
    -> `dense` -> activation -> dropout -> `classifier`: [B, T, H] + [B, S, 2] -> [B, S, K]. The pooling
    weights come from a learned score per token (`attention`), normalised over the tokens inside each span."""

    def __init__(self, cfg: ModelConfig, num_labels: int, max_span_width: int = 8, width_dim: int = 32):
        super().__init__()
        H = cfg.hidden_size
        self.max_span_width = max_span_width
        self.attention = nn.Linear(H, 1)
        self.width = nn.Embedding(max_span_width + 1, width_dim)
        self.dense = nn.Linear(3 * H + width_dim, H)
        self.act = activation_fn(cfg.activation)
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(H, num_labels)

    def forward(
        self,
        hidden: torch.Tensor,  # [B, T, H]
        span_index: torch.Tensor,  # [B, S, 2] first and last subword position of each span (inclusive)
        span_width: torch.Tensor | None = None,  # [B, S] width in words (default: in subwords)
    ) -> torch.Tensor:
        B, T, H = hidden.shape
        start, end = span_index[..., 0], span_index[..., 1]  # [B, S]
        h_start = hidden.gather(1, start.unsqueeze(-1).expand(-1, -1, H))  # [B, S, H]
        h_end = hidden.gather(1, end.unsqueeze(-1).expand(-1, -1, H))
        pos = torch.arange(T, device=hidden.device)
        inside = (pos >= start.unsqueeze(-1)) & (pos <= end.unsqueeze(-1))  # [B, S, T]
        scores = self.attention(hidden).squeeze(-1).float()  # [B, T]
        weights = scores.unsqueeze(1).masked_fill(~inside, float("-inf")).softmax(-1)  # [B, S, T]
        pooled = torch.bmm(weights.to(hidden.dtype), hidden)  # [B, S, H]
        if span_width is None:
            span_width = end - start + 1
        width = self.width(span_width.clamp(0, self.max_span_width))  # [B, S, W]
        x = torch.cat([h_start, h_end, pooled, width.to(hidden.dtype)], dim=-1)
        return self.classifier(self.dropout(self.act(self.dense(self.dropout(x)))))  # [B, S, K]


class SBOHead(nn.Module):
    """SpanBERT's span boundary objective: predict span token i of span [s, e] from the states just outside the span
    and i's offset inside it: [h(s-1); h(e+1); p(i-s)] -> Linear(3H, H) -> GELU -> LN -> Linear(H, H) -> GELU -> LN
    -> decoder tied to the input embeddings (+ bias). Offsets beyond `max_span_tokens - 1` share the last embedding."""

    def __init__(self, cfg: ModelConfig, max_span_tokens: int = 32):
        super().__init__()
        H = cfg.hidden_size
        self.max_span_tokens = max_span_tokens
        self.position = nn.Embedding(max_span_tokens, H)
        self.mlp = nn.Sequential(
            nn.Linear(3 * H, H), nn.GELU(), nn.LayerNorm(H, eps=cfg.layer_norm_eps),
            nn.Linear(H, H), nn.GELU(), nn.LayerNorm(H, eps=cfg.layer_norm_eps),
        )
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.apply(init_weights)

    def forward(
        self,
        left: torch.Tensor,  # [N, H] state of the token before each target's span
        right: torch.Tensor,  # [N, H] state of the token after it
        offset: torch.Tensor,  # [N] position of the target inside its span, from 0
        embedding_weight: torch.Tensor,  # [V, H]
    ) -> torch.Tensor:  # [N, V]
        p = self.position(offset.clamp(0, self.max_span_tokens - 1))
        h = self.mlp(torch.cat([left, right, p], dim=-1))
        return nn.functional.linear(h, embedding_weight, self.bias)


class NSPHead(nn.Module):
    """BERT's next-sentence head: tanh pooler on [CLS] -> Linear(H, 2) ([B, T, H] -> [B, 2]; class 1 = B is random)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.pooler = Pooler(cfg)
        self.classifier = nn.Linear(cfg.hidden_size, 2)
        self.apply(init_weights)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pooler(hidden))
