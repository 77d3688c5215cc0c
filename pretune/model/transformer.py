"""The one Transformer of pretune, run bidirectionally (BERT-style encoder) or causally (GPT-style decoder).

Read top to bottom: config -> embeddings -> attention -> feed-forward -> block -> Transformer.
Shapes: B batch, T query length, S key length (T plus cached positions), H hidden, N heads, D = H / N.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from pretune.config import bounds, check_numbers
from pretune.errors import InputError

ACTIVATIONS = ("gelu", "gelu_tanh", "relu")


POSITION_INITS = ("random", "sinusoidal")


def sinusoidal_positions(n: int, dim: int, std: float = 0.02) -> torch.Tensor:
    """[n, dim] sine/cosine position table (sin at even, cos at odd features), scaled to standard deviation `std`."""
    pos = torch.arange(n, dtype=torch.float32).unsqueeze(1)  # [n, 1]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))  # [ceil(dim/2)]
    table = torch.zeros(n, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table * (std / table.std())


@dataclass
class ModelConfig:
    """Architecture. Defaults are BERT-base: about 110M parameters with the tied MLM head."""

    vocab_size: int = field(default=30522, metadata=bounds(ge=1))
    hidden_size: int = field(default=768, metadata=bounds(ge=1))
    num_layers: int = field(default=12, metadata=bounds(ge=1))
    num_heads: int = field(default=12, metadata=bounds(ge=1))
    ffn_size: int = field(default=3072, metadata=bounds(ge=1))
    max_positions: int = field(default=512, metadata=bounds(ge=1))
    type_vocab_size: int = field(default=2, metadata=bounds(ge=0))  # segment embeddings (0 = none, as in GPT-2)
    dropout: float = field(default=0.1, metadata=bounds(ge=0, lt=1))
    attention_dropout: float = field(default=0.1, metadata=bounds(ge=0, lt=1))
    layer_norm_eps: float = field(default=1e-12, metadata=bounds(gt=0))
    pre_ln: bool = False  # False: post-LN as in BERT; True: pre-LN as in GPT-2
    causal: bool = False
    activation: str = "gelu"  # gelu (erf, BERT) | gelu_tanh (GPT-2's gelu_new) | relu
    embedding_layer_norm: bool = True  # LayerNorm on the summed embeddings (BERT yes, GPT-2 no)
    final_layer_norm: bool = False  # LayerNorm after the last block (GPT-2 / pre-LN models)
    pad_token_id: int = field(default=0, metadata=bounds(ge=0))
    # initial position embeddings: random (normal, std 0.02, as BERT) | sinusoidal (Vaswani et al.'s table scaled to
    # std 0.02: nearby positions start alike, so attention to neighbours is there to find from the first step)
    position_init: str = "random"

    def validate(self, source: str | None = None) -> ModelConfig:
        def bad(msg: str) -> InputError:
            return InputError(f"model config: {msg}", path=source)

        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", int) and (not isinstance(value, int) or isinstance(value, bool)):
                raise bad(f"{f.name} must be an integer, got {value!r}")
        check_numbers(self, source, "model config: ")
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "ffn_size", "max_positions"):
            if getattr(self, name) < 1:
                raise bad(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise bad(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.activation not in ACTIVATIONS:
            raise bad(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if not (0.0 <= self.dropout < 1.0 and 0.0 <= self.attention_dropout < 1.0):
            raise bad("dropout and attention_dropout must be in [0, 1)")
        if self.position_init not in POSITION_INITS:
            raise bad(f"position_init must be one of {POSITION_INITS}, got {self.position_init!r}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise bad(f"pad_token_id {self.pad_token_id} is outside the vocabulary (size {self.vocab_size})")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str | None = None) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"model config: unknown keys {unknown}; known keys: {sorted(known)}", path=source)
        return cls(**data).validate(source)


# Named sizes. "base" is BERT-base; the others are for CPUs and tests.
PRESETS: dict[str, dict] = {
    "base": {},
    "small": dict(hidden_size=256, num_layers=4, num_heads=4, ffn_size=1024),
    "mini": dict(hidden_size=128, num_layers=2, num_heads=2, ffn_size=512),
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=2, ffn_size=128, max_positions=128),
}


class TransformerOutput(NamedTuple):
    last_hidden_state: torch.Tensor  # [B, T, H]
    hidden_states: tuple[torch.Tensor, ...] | None  # embeddings + each block's output, when asked
    past_key_values: list[tuple[torch.Tensor, torch.Tensor]] | None  # per layer (k, v): [B, N, S, D]


def activation_fn(name: str):
    if name == "gelu":
        return F.gelu
    if name == "gelu_tanh":
        return lambda x: F.gelu(x, approximate="tanh")
    return F.relu


def fast_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Training-mode dropout. On a CPU, 16 random bits per element are cut from 64-bit draws and an element is kept
    where they are >= p * 2^16 (p rounded to 1/65536), then scaled by the exact keep rate: about 3x faster than
    bernoulli_ (F.dropout), and the mask saved for backward is bool. Elsewhere, F.dropout."""
    if p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    drop = min(round(p * 65536), 65535)
    n = x.numel()
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), None)
    keep = bits.view(torch.int16)[:n].view(x.shape) >= drop - 32768  # P(keep) = 1 - drop / 65536
    return x.mul(keep).mul_(65536 / (65536 - drop))


class Dropout(nn.Dropout):
    """nn.Dropout through `fast_dropout` (no parameters: state dicts are unchanged)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p) if self.training else x


def attention_with_dropout(q, k, v, attn_mask=None, is_causal: bool = False, p: float = 0.0) -> torch.Tensor:
    """What SDPA's math path computes, with `fast_dropout` on the probabilities ([B, N, T, D] -> [B, N, T, D]).

    On a CPU, SDPA with dropout leaves its fused kernel for the math path anyway, whose bernoulli_ mask costs more
    than the two matmuls: this is 1.3x (fp32) to 2.5x (bf16) faster forward + backward."""
    scores = (q @ k.transpose(-2, -1)).mul_(q.shape[-1] ** -0.5)  # [B, N, T, S]
    if is_causal:  # top-left aligned, as SDPA's is_causal
        attn_mask = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).tril()
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    elif attn_mask is not None:  # an additive float mask
        scores = scores + attn_mask
    return fast_dropout(scores.softmax(-1), p) @ v


class Embeddings(nn.Module):
    """token + position (+ segment) embeddings, then LayerNorm (optional) and dropout."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        # causal (GPT-2 style) vocabularies often pad with their end-of-text token, which must keep learning
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=None if cfg.causal else cfg.pad_token_id)
        self.position = nn.Embedding(cfg.max_positions, cfg.hidden_size)
        self.segment = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size) if cfg.type_vocab_size else None
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps) if cfg.embedding_layer_norm else None
        self.dropout = Dropout(cfg.dropout)

    def forward(self, input_ids, token_type_ids=None, position_ids=None):
        B, T = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(T, device=input_ids.device).unsqueeze(0)  # [1, T]
        x = self.word(input_ids) + self.position(position_ids)  # [B, T, H]
        if self.segment is not None:
            if token_type_ids is None:
                x = x + self.segment.weight[0]
            else:  # a single-segment model (RoBERTa) reads every token as segment 0
                x = x + self.segment(token_type_ids.clamp(max=self.segment.num_embeddings - 1))
        if self.norm is not None:
            x = self.norm(x)
        return self.dropout(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention through scaled_dot_product_attention, with an optional key/value cache."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)
        self.out = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.attention_dropout = cfg.attention_dropout

    def forward(self, x, attn_mask=None, is_causal=False, past=None):
        B, T, H = x.shape
        q, k, v = self.qkv(x).split(H, dim=-1)  # 3 x [B, T, H]
        q, k, v = (t.view(B, T, self.num_heads, H // self.num_heads).transpose(1, 2) for t in (q, k, v))  # [B, N, T, D]
        if past is not None:
            k = torch.cat([past[0], k], dim=2)  # [B, N, S, D]
            v = torch.cat([past[1], v], dim=2)
        p = self.attention_dropout if self.training else 0.0
        if p > 0 and x.device.type == "cpu":
            y = attention_with_dropout(q, k, v, attn_mask, is_causal, p)  # [B, N, T, D]
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, dropout_p=p)
        y = y.transpose(1, 2).reshape(B, T, H)
        return self.out(y), (k, v)


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.ffn_size)
        self.fc2 = nn.Linear(cfg.ffn_size, cfg.hidden_size)
        self.act = activation_fn(cfg.activation)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """post-LN (BERT):  x = LN(x + attn(x));  x = LN(x + ffn(x))
    pre-LN (GPT-2):    x = x + attn(LN(x)); x = x + ffn(LN(x))"""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.pre_ln = cfg.pre_ln
        self.attn = SelfAttention(cfg)
        self.norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.ffn = FeedForward(cfg)
        self.norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, x, attn_mask=None, is_causal=False, past=None):
        if self.pre_ln:
            a, kv = self.attn(self.norm1(x), attn_mask, is_causal, past)
            x = x + self.dropout(a)
            x = x + self.dropout(self.ffn(self.norm2(x)))
        else:
            a, kv = self.attn(x, attn_mask, is_causal, past)
            x = self.norm1(x + self.dropout(a))
            x = self.norm2(x + self.dropout(self.ffn(x)))
        return x, kv


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.embeddings = Embeddings(cfg)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.final_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps) if cfg.final_layer_norm else None
        self.apply(init_weights)
        if cfg.position_init == "sinusoidal":  # after init_weights, so the random draws stay the same
            with torch.no_grad():
                self.embeddings.position.weight.copy_(sinusoidal_positions(cfg.max_positions, cfg.hidden_size))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def attention_mask(self, attention_mask, T: int, past_len: int, device) -> tuple[torch.Tensor | None, bool]:
        """Build SDPA's boolean mask (True = may attend) from a [B, S] padding mask and the causal flag.

        Returns (mask, is_causal); mask None with is_causal False means full attention (the fastest kernels)."""
        causal = self.config.causal
        if attention_mask is None or bool(attention_mask.all()):
            if not causal or T == 1:
                return None, False  # one new token attends to the whole cache
            if past_len == 0:
                return None, True
            attention_mask = None
        S = T + past_len
        mask = None
        if attention_mask is not None:
            mask = attention_mask.bool()[:, None, None, :]  # [B, 1, 1, S]
        if causal:
            tri = torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=past_len)  # [T, S]
            mask = tri if mask is None else mask & tri
            if attention_mask is not None:
                # a padded query row may see nothing at all; let it see itself so SDPA does not produce NaN
                mask = mask | _diagonal(T, S, past_len, device)
        return mask, False

    def forward(
        self,
        input_ids: torch.Tensor,  # [B, T]
        attention_mask: torch.Tensor | None = None,  # [B, S] 1/True for real tokens (S includes cached positions)
        token_type_ids: torch.Tensor | None = None,  # [B, T]
        position_ids: torch.Tensor | None = None,  # [B, T]
        past_key_values: list | None = None,
        use_cache: bool = False,
        output_hidden_states: bool = False,
    ) -> TransformerOutput:
        B, T = input_ids.shape
        past_len = past_key_values[0][0].shape[2] if past_key_values else 0
        if past_len + T > self.config.max_positions:
            raise ValueError(f"sequence length {past_len + T} exceeds max_positions {self.config.max_positions}")
        if position_ids is None and past_len:
            position_ids = torch.arange(past_len, past_len + T, device=input_ids.device).unsqueeze(0)
        x = self.embeddings(input_ids, token_type_ids, position_ids)  # [B, T, H]
        mask, is_causal = self.attention_mask(attention_mask, T, past_len, input_ids.device)
        hidden = [x] if output_hidden_states else None
        cache = [] if use_cache else None
        for i, block in enumerate(self.blocks):
            x, kv = block(x, mask, is_causal, past_key_values[i] if past_key_values else None)
            if use_cache:
                cache.append(kv)
            if output_hidden_states:
                hidden.append(x)
        if self.final_norm is not None:
            x = self.final_norm(x)
            if output_hidden_states:
                hidden[-1] = x
        return TransformerOutput(x, tuple(hidden) if hidden is not None else None, cache)


def _diagonal(T: int, S: int, past_len: int, device) -> torch.Tensor:
    """[T, S] with True where key position == query position (query i sits at key past_len + i)."""
    return torch.arange(S, device=device)[None, :] == (torch.arange(T, device=device)[:, None] + past_len)


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """BERT's initialisation: normal(0, 0.02) weights, zero biases, unit LayerNorm."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def model_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Forward FLOPs per token of the body (matmuls only, 2 per multiply-add); training is about 3x this."""
    H, F_, L = cfg.hidden_size, cfg.ffn_size, cfg.num_layers
    per_layer = 2 * (4 * H * H + 2 * H * F_) + 2 * 2 * seq_len * H
    return float(L * per_layer)


def describe(cfg: ModelConfig, n_params: int) -> str:
    kind = "decoder (causal)" if cfg.causal else "encoder (bidirectional)"
    return (
        f"{kind}: {cfg.num_layers} layers, hidden {cfg.hidden_size}, {cfg.num_heads} heads, "
        f"FFN {cfg.ffn_size}, vocab {cfg.vocab_size}, {cfg.max_positions} positions: "
        f"{n_params / 1e6:.2f}M parameters"
    )


