"""Text generation from a causal checkpoint: greedy or sampled (temperature, top-k, top-p), with a key/value cache.

The prompt is encoded as [CLS] + its tokens (the start every pretraining sequence had; <|endoftext|> for GPT-2
vocabularies). With the cache, the prompt is run once and each new token costs one position's work; generation stops
at the end token ([SEP], or <|endoftext|>) or after max_new_tokens, or at the model's last position.
"""

from __future__ import annotations

import torch

from pretune.errors import InputError
from pretune.interop.hf import open_checkpoint
from pretune.model.heads import MLMHead
from pretune.pretrain.objectives import PretrainModel
from pretune.training import checkpoint as ck


def load_causal_model(path: str, device: str | torch.device = "cpu"):
    """(model, tokenizer) from a checkpoint of a causal model; InputError for a bidirectional one."""
    ckpt = open_checkpoint(path)
    cfg = ckpt.model_config()
    if not cfg.causal:
        raise InputError("this is a bidirectional (masked-LM / encoder) model, which cannot generate text; "
                         "generation needs a causal model, e.g. one pretrained with objective = \"clm\"",
                         path=ckpt.path)
    model = PretrainModel(cfg, {"lm": MLMHead(cfg, transform=False, bias=False)})
    state = {k: v for k, v in ckpt.state_dict.items() if k.startswith(("body.", "heads.lm."))}
    missing = [k for k in ck.load_into(model, state, ckpt.path, strict=False) if k.startswith("body.")]
    if missing:
        raise InputError(f"checkpoint lacks weights of the model body: {missing[:3]}", path=ckpt.path)
    return model.to(device).eval(), ckpt.tokenizer()


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Keep the top_k largest logits and the smallest set whose probability reaches top_p; others -> -inf. [V]"""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs >= top_p  # mass before this token already reaches top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return logits


def check_options(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None) -> None:
    if max_new_tokens < 0:
        raise InputError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if not temperature >= 0 or temperature == float("inf"):  # nan compares false
        raise InputError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise InputError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise InputError(f"top_p must be in (0, 1], got {top_p}")


@torch.no_grad()
def generate_ids(
    model: PretrainModel,
    prompt_ids: list[int],
    *,
    max_new_tokens: int = 50,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    end_id: int | None = None,
    banned_ids: list[int] | tuple[int, ...] = (),
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> list[int]:
    """New token ids after `prompt_ids` (the end token included when reached). temperature 0 means greedy."""
    check_options(max_new_tokens, temperature, top_k, top_p)
    if not prompt_ids:
        raise InputError("the prompt must hold at least one token")
    if not model.config.causal:
        raise InputError("generation needs a causal model")
    max_positions = model.config.max_positions
    if len(prompt_ids) >= max_positions:
        raise InputError(f"the prompt has {len(prompt_ids)} tokens; the model takes at most {max_positions} "
                         "positions, with room for one new token")
    was_training = model.training
    model.eval()
    device = model.embedding_weight.device
    seq = torch.tensor([prompt_ids], dtype=torch.long, device=device)  # [1, T]
    step_input, past, new = seq, None, []
    banned = torch.tensor(list(banned_ids), dtype=torch.long, device=device)
    for _ in range(max_new_tokens):
        if seq.shape[1] >= max_positions:
            break
        if use_cache:
            out = model.body(step_input, past_key_values=past, use_cache=True)
            past = out.past_key_values
        else:
            out = model.body(seq)
        logits = model.heads["lm"](out.last_hidden_state[0, -1], model.embedding_weight).float()  # [V]
        if len(banned):
            logits[banned] = float("-inf")
        if greedy or temperature == 0:
            token = int(logits.argmax())
        else:
            logits = filter_logits(logits / temperature, top_k, top_p)
            token = int(torch.multinomial(logits.softmax(-1).cpu(), 1, generator=generator))
        new.append(token)
        step_input = torch.tensor([[token]], dtype=torch.long, device=device)
        seq = torch.cat([seq, step_input], dim=1)
        if token == end_id:
            break
    model.train(was_training)
    return new


def generate(
    model: PretrainModel,
    tok,
    prompt: str,
    *,
    max_new_tokens: int = 50,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    seed: int | None = None,
    use_cache: bool = True,
) -> str:
    """The prompt and its continuation, decoded together (special tokens left out)."""
    s = tok.specials
    prompt_ids = [s.cls, *tok.encode(prompt).ids]
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    # never produce padding, [MASK] or [CLS]; [SEP] (the end token) and [UNK] stay possible
    banned = sorted({i for i in (s.pad, s.cls, s.mask) if i is not None} - {s.sep})
    new = generate_ids(model, prompt_ids, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                       top_p=top_p, greedy=greedy, end_id=s.sep, banned_ids=banned, generator=generator,
                       use_cache=use_cache)
    if new and new[-1] == s.sep:
        new = new[:-1]
    return tok.decode(prompt_ids[1:] + new)
