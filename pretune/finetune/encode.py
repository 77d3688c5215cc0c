"""Encoding labeled examples for a task model: subword alignment of word labels, candidate spans, windows over
long sentences, and padding features into batches (`collate`, `task_collate`).

Features are plain dicts of lists / ints, one per model input; `feature["example"]` points back to the example.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pretune.errors import InputError
from pretune.text.labeled import Example, LabelMap, check_task

TRUNCATE = ("head", "head+tail")  # classify: which pieces of an over-long text are kept (see truncated)

IGNORE = -100  # label value the losses skip


# ---------------------------------------------------------------------------------------------- alignment


def align_word_labels(
    word_ids: list[int | None], word_labels: list[int], all_subwords: bool = False, ignore: int = IGNORE
) -> list[int]:
    """Per-subword labels: each word's first subword gets its label, later subwords `ignore`
    (or the word's label too when `all_subwords`); positions without a word (specials) get `ignore`."""
    out: list[int] = []
    seen: set[int] = set()
    for w in word_ids:
        if w is None:
            out.append(ignore)
        elif w not in seen:
            seen.add(w)
            out.append(word_labels[w])
        else:
            out.append(word_labels[w] if all_subwords else ignore)
    return out


def first_subword_positions(word_ids: list[int | None]) -> list[int]:
    """Position of each word's first subword, in word order (words without subwords are absent)."""
    first: dict[int, int] = {}
    for pos, w in enumerate(word_ids):
        if w is not None and w not in first:
            first[w] = pos
    return [first[w] for w in sorted(first)]


def enumerate_spans(n_words: int, max_width: int) -> list[tuple[int, int]]:
    """All (start, end_exclusive) word spans with 1 <= width <= max_width, ordered by start then width."""
    if max_width < 1:
        raise InputError(f"max span width must be at least 1, got {max_width}")
    return [(s, e) for s in range(n_words) for e in range(s + 1, min(n_words, s + max_width) + 1)]


# ---------------------------------------------------------------------------------------------- encoding


@dataclass
class EncodeStats:
    n_examples: int
    n_truncated: int  # examples cut to fit max_len (classify/pair; tag/span: a single over-long word)
    n_split: int  # tag/span examples spread over several windows
    n_spans_lost: int = 0  # gold spans no candidate can hit (crossing a window split or wider than max width)


def _special_id(tokenizer: Any, name: str) -> int:
    """Id of special token `name` ("cls", "sep", "unk", ...) from `tokenizer.specials`."""
    return int(getattr(tokenizer.specials, name))


def _word_pieces(tokenizer: Any, word_lists: list[list[str]], unk_id: int) -> list[list[list[int]]]:
    """Subword ids per word per example; a word the tokenizer drops entirely becomes [unk]."""
    out = []
    for words, enc in zip(word_lists, tokenizer.encode_words_batch(word_lists), strict=True):
        pieces: list[list[int]] = [[] for _ in words]
        for tok_id, w in zip(enc.ids, enc.word_ids, strict=True):
            if w is not None:
                pieces[w].append(tok_id)
        out.append([p if p else [unk_id] for p in pieces])
    return out


def _windows(counts: list[int], cap: int, avoid: list[bool] | None = None) -> list[tuple[int, int]]:
    """Greedy word windows [a, b) whose piece counts sum to <= cap (each count <= cap).
    ``avoid[b]`` marks boundaries inside a gold span: a window ends before them when it can."""
    windows = []
    a, n = 0, len(counts)
    while a < n:
        k, total = a, 0
        while k < n and total + counts[k] <= cap:
            total += counts[k]
            k += 1
        k = max(k, a + 1)
        if k < n and avoid is not None:
            b = k
            while b > a and avoid[b]:
                b -= 1
            k = b if b > a else k
        windows.append((a, k))
        a = k
    return windows


def truncated(ids: list[int], room: int, how: str = "head") -> list[int]:
    """`ids` cut to `room` pieces: the first `room` (head), or the first quarter and the last three quarters of
    the room (head+tail: a long text's end often says what it is, e.g. "This package contains the documentation")."""
    if len(ids) <= room:
        return ids
    if how == "head":
        return ids[:room]
    head = room // 4
    return ids[:head] + ids[len(ids) - (room - head):]


def _encode_texts(
    examples: list[Example], task: str, tokenizer: Any, label_map: LabelMap | None, max_len: int, source: Any,
    truncate: str = "head",
) -> tuple[list[dict], int]:
    cls_id, sep_id = _special_id(tokenizer, "cls"), _special_id(tokenizer, "sep")
    ids_a = [e.ids for e in tokenizer.encode_batch([ex.text or "" for ex in examples])]
    ids_b = [e.ids for e in tokenizer.encode_batch([ex.text_b or "" for ex in examples])] if task == "pair" else []
    features, n_truncated = [], 0
    for i, ex in enumerate(examples):
        a = list(ids_a[i])
        if task == "pair":
            b = list(ids_b[i])
            room = max_len - 3
            if len(a) + len(b) > room:  # longest-first: trim the longer side (b on ties) one piece at a time
                n_truncated += 1
                while len(a) + len(b) > room:
                    if len(a) > len(b):
                        a.pop()
                    else:
                        b.pop()
            input_ids = [cls_id, *a, sep_id, *b, sep_id]
            type_ids = [0] * (len(a) + 2) + [1] * (len(b) + 1)
        else:
            if len(a) > max_len - 2:
                n_truncated += 1
                a = truncated(a, max_len - 2, truncate)
            input_ids = [cls_id, *a, sep_id]
            type_ids = [0] * len(input_ids)
        label = None
        if label_map is not None and ex.label is not None:
            label = label_map.index(ex.label, source, ex.line)
        features.append({"input_ids": input_ids, "token_type_ids": type_ids, "label": label, "example": i})
    return features, n_truncated


def _encode_words(
    examples: list[Example],
    task: str,
    tokenizer: Any,
    label_map: LabelMap | None,
    max_len: int,
    all_subwords: bool,
    max_span_width: int,
    source: Any,
) -> tuple[list[dict], EncodeStats]:
    cls_id, sep_id = _special_id(tokenizer, "cls"), _special_id(tokenizer, "sep")
    unk_id = _special_id(tokenizer, "unk")
    cap = max_len - 2
    all_pieces = _word_pieces(tokenizer, [list(ex.tokens or []) for ex in examples], unk_id)
    features: list[dict] = []
    stats = EncodeStats(n_examples=len(examples), n_truncated=0, n_split=0)
    for i, (ex, pieces) in enumerate(zip(examples, all_pieces, strict=True)):
        if any(len(p) > cap for p in pieces):
            stats.n_truncated += 1
            pieces = [p[:cap] for p in pieces]
        word_labels = None
        if task == "tag" and label_map is not None and ex.tags is not None:
            word_labels = [label_map.index(t, source, ex.line) for t in ex.tags]
        gold: dict[tuple[int, int], int] = {}
        avoid = None
        if task == "span" and label_map is not None and ex.spans is not None:
            gold = {(s, e): label_map.index(lab, source, ex.line) for s, e, lab in ex.spans}
            avoid = [False] * (len(pieces) + 1)
            for s, e in gold:
                for b in range(s + 1, e):
                    avoid[b] = True
        windows = _windows([len(p) for p in pieces], cap, avoid)
        stats.n_split += len(windows) > 1
        hit = 0
        for a, b in windows:
            input_ids, word_ids = [cls_id], [None]
            for w in range(a, b):
                input_ids += pieces[w]
                word_ids += [w - a] * len(pieces[w])
            input_ids.append(sep_id)
            word_ids.append(None)
            feat: dict[str, Any] = {"input_ids": input_ids, "token_type_ids": [0] * len(input_ids)}
            starts = first_subword_positions(word_ids)
            if task == "tag":
                feat["word_positions"] = starts
                if word_labels is not None:
                    feat["labels"] = align_word_labels(word_ids, word_labels[a:b], all_subwords)
            else:
                feat["word_starts"] = starts
                feat["word_ends"] = [p + len(pieces[w]) - 1 for w, p in zip(range(a, b), starts, strict=True)]
                cands = enumerate_spans(b - a, max_span_width)
                feat["spans"] = cands
                if avoid is not None:
                    feat["span_labels"] = [gold.get((s + a, e + a), 0) for s, e in cands]
                    hit += sum(1 for s, e in gold if a <= s and e <= b and e - s <= max_span_width)
            feat["word_offset"] = a
            feat["example"] = i
            features.append(feat)
        stats.n_spans_lost += len(gold) - hit
    return features, stats


def encode_examples(
    examples: list[Example],
    task: str,
    tokenizer: Any,
    label_map: LabelMap | None,
    max_len: int,
    *,
    all_subwords: bool = False,
    max_span_width: int = 8,
    truncate: str = "head",
    source: str | Path | None = None,
) -> tuple[list[dict], EncodeStats]:
    """One feature dict (plain lists / ints) per model input.

    classify: [CLS] text [SEP]; pair: [CLS] a [SEP] b [SEP] (type ids 0 then 1), longest-first truncation;
    classify keeps the first max_len - 2 subwords of a longer text, or with truncate = "head+tail" its first quarter
    and last three quarters (`truncated`); both carry "label" (int or None). tag: "labels" (first subword, -100
    elsewhere; absent without labels), "word_positions", "word_offset". span: "word_starts", "word_ends", "spans"
    (window-local word spans), "span_labels" (0 = NULL; absent without labels), "word_offset". Tag/span sentences
    longer than max_len - 2 subwords are split into windows at word boundaries (never truncated); a split avoids
    cutting through a gold span when it can, and gold spans that no window holds are counted in ``n_spans_lost``.
    `source` (the file the examples came from) is only used in error messages.
    """
    check_task(task)
    if max_len < (4 if task == "pair" else 3):
        raise InputError(f"max_len {max_len} is too small for task '{task}'")
    if task in ("classify", "pair"):
        features, n_truncated = _encode_texts(examples, task, tokenizer, label_map, max_len, source, truncate)
        return features, EncodeStats(n_examples=len(examples), n_truncated=n_truncated, n_split=0)
    for ex in examples:
        if not ex.tokens:
            raise InputError(f"task '{task}' needs tokens in every example", source, ex.line)
    return _encode_words(examples, task, tokenizer, label_map, max_len, all_subwords, max_span_width, source)


# ---------------------------------------------------------------------------------------------- batching


def collate(features: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad a list of features to the longest in the batch.

    Always: input_ids [B,T] (pad_id), attention_mask [B,T] bool, token_type_ids [B,T].
    classify/pair: labels [B] (-100 where unknown). tag: labels [B,T] (-100 pad).
    span: span_index [B,S,2] (first/last subword position of each candidate), span_mask [B,S] bool,
    span_labels [B,S] (-100 pad). Label tensors are left out when no feature in the batch has labels.
    """
    if not features:
        raise ValueError("collate needs at least one feature")
    B = len(features)
    T = max(len(f["input_ids"]) for f in features)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, T), dtype=torch.bool)
    token_type_ids = torch.zeros((B, T), dtype=torch.long)
    for r, f in enumerate(features):
        n = len(f["input_ids"])
        input_ids[r, :n] = torch.tensor(f["input_ids"], dtype=torch.long)
        token_type_ids[r, :n] = torch.tensor(f["token_type_ids"], dtype=torch.long)
        attention_mask[r, :n] = True
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
    first = features[0]
    if "spans" in first:
        S = max(len(f["spans"]) for f in features)
        span_index = torch.zeros((B, S, 2), dtype=torch.long)
        span_mask = torch.zeros((B, S), dtype=torch.bool)
        span_labels = torch.full((B, S), IGNORE, dtype=torch.long)
        for r, f in enumerate(features):
            k = len(f["spans"])
            if k:
                starts, ends = f["word_starts"], f["word_ends"]
                span_index[r, :k] = torch.tensor([[starts[s], ends[e - 1]] for s, e in f["spans"]])
                span_mask[r, :k] = True
            if "span_labels" in f:
                span_labels[r, :k] = torch.tensor(f["span_labels"], dtype=torch.long)
        batch.update(span_index=span_index, span_mask=span_mask)
        if any("span_labels" in f for f in features):
            batch["span_labels"] = span_labels
    elif "word_positions" in first or "token_offset" in first:  # tag, seqtag: a label per token
        if any("labels" in f for f in features):
            labels = torch.full((B, T), IGNORE, dtype=torch.long)
            for r, f in enumerate(features):
                if "labels" in f:
                    labels[r, : len(f["labels"])] = torch.tensor(f["labels"], dtype=torch.long)
            batch["labels"] = labels
    elif any(f.get("label") is not None for f in features):
        batch["labels"] = torch.tensor(
            [IGNORE if f.get("label") is None else f["label"] for f in features], dtype=torch.long
        )
    return batch


def task_collate(features: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """`collate` plus what the task model needs: tag word_index/word_mask [B, W], span span_width [B, S]."""
    batch = collate(features, pad_id)
    if "word_positions" in features[0]:
        W = max(len(f["word_positions"]) for f in features)
        index = torch.zeros((len(features), W), dtype=torch.long)
        mask = torch.zeros((len(features), W), dtype=torch.bool)
        for r, f in enumerate(features):
            index[r, : len(f["word_positions"])] = torch.tensor(f["word_positions"], dtype=torch.long)
            mask[r, : len(f["word_positions"])] = True
        batch.update(word_index=index, word_mask=mask)
    elif "spans" in features[0]:
        width = torch.zeros(batch["span_mask"].shape, dtype=torch.long)
        for r, f in enumerate(features):
            if f["spans"]:
                width[r, : len(f["spans"])] = torch.tensor([e - s for s, e in f["spans"]], dtype=torch.long)
        batch["span_width"] = width
    return batch
