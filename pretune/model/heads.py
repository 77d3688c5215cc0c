"""Heads that sit on the Transformer's hidden states. Shapes: B batch, T length, H hidden, V vocabulary."""

from __future__ import annotations

import torch
from torch import nn

from pretune.model.transformer import ModelConfig, activation_fn


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
