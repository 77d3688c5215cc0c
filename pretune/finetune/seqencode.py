"""Encoding per-character labeled sequences (task ``seqtag``) for a token model, and merging the predictions of
overlapping windows back to one label per character.

Every character belongs to the token whose offsets start at or before it (with a per-character tokenizer: one
token per character; with k-mers or subwords: the token covering it). A token is trained on the label of its first
character and its prediction is given to every character it covers. Sequences longer than max_len - 2 tokens
are cut into windows that share `overlap` tokens; each token takes its prediction from the window where it lies
farthest from a cut edge. With `smooth` > 1 each character's label probabilities are averaged over the `smooth`
characters around it before the argmax (fewer, longer segments). With a ``decode`` setting (``{"kind": "orf", ...}``)
the labels come from the gene-structure decoder of `pretune.finetune.genes` instead of the argmax.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pretune.errors import InputError
from pretune.finetune.encode import IGNORE, EncodeStats
from pretune.finetune.genes import OrfDecode, decode_orfs, strand_label_ids
from pretune.text.labeled import Example, LabelMap


def char_to_token(offsets: list[tuple[int, int]], n_chars: int) -> np.ndarray:
    """[n_chars] index of the token covering each character: the last token starting at or before it."""
    starts = np.asarray([s for s, _ in offsets], dtype=np.int64)
    if len(starts) == 0:
        return np.zeros(n_chars, dtype=np.int64)
    index = np.searchsorted(starts, np.arange(n_chars), side="right") - 1
    return np.clip(index, 0, len(starts) - 1)


def sequence_windows(n: int, cap: int, overlap: int) -> list[tuple[int, int]]:
    """Token windows [a, b) of at most `cap` tokens covering 0..n, neighbours sharing `overlap` tokens (the last
    window is moved back to end at n, so it is full)."""
    if cap < 1:
        raise InputError(f"a window must hold at least one token, got {cap}")
    if n <= cap:
        return [(0, n)]
    if not 0 <= overlap < cap:
        raise InputError(f"window overlap must be in [0, {cap - 1}], got {overlap}")
    stride = cap - overlap
    out = []
    a = 0
    while a + cap < n:
        out.append((a, a + cap))
        a += stride
    out.append((n - cap, n))
    return out


def encode_sequences(examples: list[Example], tokenizer: Any, labels: LabelMap | None, max_len: int, overlap: int,
                     source: str | Path | None = None, smooth: int = 0,
                     decode: dict | None = None) -> tuple[list[dict], EncodeStats]:
    """One feature per window: input_ids [CLS] tokens [SEP], "labels" (the token's first character's label id;
    -100 at [CLS]/[SEP]; absent without labels), "token_offset", "example"; the first window of each example also
    carries "char_token" (see `char_to_token`), "n_tokens", "smooth" and "decode" (for `merge_windows`)."""
    if max_len < 3:
        raise InputError(f"max_len {max_len} is too small for task 'seqtag'")
    cls_id, sep_id = int(tokenizer.specials.cls), int(tokenizer.specials.sep)
    cap = max_len - 2
    encodings = tokenizer.encode_batch([ex.text or "" for ex in examples])
    features: list[dict] = []
    stats = EncodeStats(n_examples=len(examples), n_truncated=0, n_split=0)
    for i, (ex, enc) in enumerate(zip(examples, encodings, strict=True)):
        ids = list(enc.ids)
        if not ids:
            raise InputError("the sequence gives no tokens", source, ex.line)
        char_token = char_to_token(enc.offsets, len(ex.text or ""))
        token_labels = None
        if labels is not None and ex.tags is not None:
            index = {name: labels.index(name, source, ex.line) for name in set(ex.tags)}
            first_char = np.asarray([s for s, _ in enc.offsets], dtype=np.int64).clip(0, len(ex.tags) - 1)
            char_ids = np.asarray([index[t] for t in ex.tags], dtype=np.int64)
            token_labels = char_ids[first_char].tolist()
        windows = sequence_windows(len(ids), cap, min(overlap, cap - 1))
        stats.n_split += len(windows) > 1
        for w, (a, b) in enumerate(windows):
            input_ids = [cls_id, *ids[a:b], sep_id]
            feat: dict[str, Any] = {"input_ids": input_ids, "token_type_ids": [0] * len(input_ids),
                                    "token_offset": a, "example": i}
            if token_labels is not None:
                feat["labels"] = [IGNORE, *token_labels[a:b], IGNORE]
            if w == 0:
                feat["char_token"], feat["n_tokens"], feat["smooth"] = char_token, len(ids), smooth
                feat["decode"] = decode
            features.append(feat)
    return features, stats


def smooth_probs(probs: np.ndarray, width: int) -> np.ndarray:
    """[n, K] -> the mean of each row's `width` neighbours (centred; fewer at the ends). width <= 1: unchanged."""
    if width <= 1 or len(probs) == 0:
        return probs
    n = len(probs)
    cum = np.concatenate([np.zeros((1, probs.shape[1]), dtype=np.float64), np.cumsum(probs, axis=0, dtype=np.float64)])
    pos = np.arange(n)
    lo, hi = np.maximum(pos - width // 2, 0), np.minimum(pos + (width - 1) // 2 + 1, n)
    return ((cum[hi] - cum[lo]) / (hi - lo)[:, None]).astype(np.float32)


def merge_probs(n_labels: int, examples: list[Example], features: list[dict], outputs: list) -> list[np.ndarray]:
    """Per example: the label probabilities of every character [n_chars, K] (smoothed when the features ask for
    it), from the token probabilities of each window ([n_window_tokens, K] per feature)."""
    n_tokens = {f["example"]: f["n_tokens"] for f in features if "n_tokens" in f}
    char_token = {f["example"]: f["char_token"] for f in features if "char_token" in f}
    smooth = {f["example"]: int(f.get("smooth", 0)) for f in features if "char_token" in f}
    probs = {i: np.zeros((n, n_labels), dtype=np.float32) for i, n in n_tokens.items()}
    best = {i: np.full(n, -1, dtype=np.int64) for i, n in n_tokens.items()}
    for f, p in zip(features, outputs, strict=True):
        i, a = f["example"], f["token_offset"]
        n, m = n_tokens[i], len(p)
        j = np.arange(m)
        left = np.where(a == 0, n, j)  # distance to a cut edge; the sequence's own ends are not cuts
        right = np.where(a + m == n, n, m - 1 - j)
        score = np.minimum(left, right)
        take = score > best[i][a: a + m]
        probs[i][a: a + m][take] = p[take]
        best[i][a: a + m][take] = score[take]
    return [smooth_probs(probs[i][char_token[i]], smooth[i]) for i in range(len(examples))]


def merge_windows(n_labels: int, examples: list[Example], features: list[dict], outputs: list,
                  names: list[str] | None = None) -> list:
    """Per example: (label id per character [n_chars] int array, its probability [n_chars] float array), from the
    token probabilities of each window ([n_window_tokens, K] per feature): the argmax, or with a "decode" setting
    in the features the ORF decoder's labels (it needs the label `names` to find the strands)."""
    decode = {f["example"]: f.get("decode") for f in features if "char_token" in f}
    merged = []
    for i, chars in enumerate(merge_probs(n_labels, examples, features, outputs)):
        if decode.get(i):
            if names is None:
                raise InputError("the ORF decoder needs the label names")
            fwd, rev = strand_label_ids(names)
            ids = decode_orfs(examples[i].text or "", chars, fwd, rev, OrfDecode.from_dict(decode[i]))
        else:
            ids = chars.argmax(-1)
        merged.append((ids, chars[np.arange(len(ids)), ids]))
    return merged
