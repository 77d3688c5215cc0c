"""The five fine-tuning tasks, one class each: what the rest of stage 2 asks instead of branching on a task name.

A `Task` owns its head, the encoding of examples, the loss and its training statistics, decoding, the merging of
sentence windows back per word, its report and metrics, its predictions as JSON and, for self-training, the
confidence of a prediction and the pseudo-labelled example. `get_task(name)` picks one from `TASKS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pretune.errors import InputError
from pretune.evaluate.metrics import classification_report, entity_report, label_runs, sequence_report, span_report
from pretune.finetune.encode import IGNORE, EncodeStats, encode_examples
from pretune.finetune.seqencode import encode_sequences, merge_windows
from pretune.model.heads import ClassificationHead, SpanHead, TokenClassificationHead
from pretune.model.transformer import ModelConfig
from pretune.text.labeled import Example, LabelMap
from pretune.training.batches import label_count, row_count

TAG_CONFIDENCE = ("mean", "min")  # how a tagged sentence's confidence comes from its words'


def gather_words(logits: torch.Tensor, word_index: torch.Tensor) -> torch.Tensor:
    """[B, T, K] scores at each word's first subword -> [B, W, K]."""
    return logits.gather(1, word_index.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))


def _loss_stats(loss: torch.Tensor, labels: torch.Tensor) -> dict:
    n = (labels != IGNORE).sum()
    return {"loss": (loss.detach() * n, n)}


def sentence_confidence(word_probs, how: str = "mean") -> float:
    """Confidence of a tagged sentence from the probability of each word's predicted tag: their mean or minimum
    (min: one doubtful word makes the whole sentence doubtful). An empty sentence has confidence 0."""
    if how not in TAG_CONFIDENCE:
        raise ValueError(f"how must be one of {TAG_CONFIDENCE}, got {how!r}")
    if len(word_probs) == 0:
        return 0.0
    return float(np.mean(word_probs) if how == "mean" else np.min(word_probs))


class Task:
    """Base class. Subclasses set `name` and `metrics` (the first is the early-stopping default) and implement the
    head, forward, decode, merge, report and prediction."""

    name = "base"
    metrics: tuple[str, ...] = ()
    per_word = False  # labels per word (tag, span) rather than one per input

    def head_options(self, sec) -> dict:
        """The [finetune] keys that shape this task's head and encoding (stored in config.json "head")."""
        return {}

    def head(self, cfg: ModelConfig, labels: list[str], options: dict) -> nn.Module:
        raise NotImplementedError

    def encode(self, examples: list[Example], tok, labels: LabelMap | None, max_len: int, options: dict,
               source: str | Path | None = None) -> tuple[list[dict], EncodeStats]:
        return encode_examples(examples, self.name, tok, labels, max_len,
                               all_subwords=bool(options.get("all_subwords")),
                               max_span_width=int(options.get("max_span_width", 8)),
                               truncate=options.get("truncate", "head"), source=source)

    def length_warnings(self, stats: EncodeStats, where: Path, max_len: int) -> list[str]:
        """Lines to print about texts longer than max_len."""
        return []

    def forward(self, model: nn.Module, hidden: torch.Tensor, batch: dict) -> dict:
        """{"logits"} plus {"loss", "stats"} when the batch has labels; `hidden` is the body's [B, T, H]."""
        raise NotImplementedError

    def loss_weight(self, crf: bool = False) -> Callable[[dict], float]:
        """What a batch's loss is a mean over (the Trainer weighs micro-batches by it)."""
        return label_count

    def decode(self, model: nn.Module, batch: dict, logits: torch.Tensor) -> list:
        raise NotImplementedError

    def merge(self, labels: list[str], examples: list[Example], features: list[dict], outputs: list) -> list:
        """Decoded outputs per feature -> one merged prediction per example."""
        raise NotImplementedError

    def report(self, labels: LabelMap, examples: list[Example], merged: list, source=None) -> dict:
        raise NotImplementedError

    def scalar_metrics(self, report: dict, loss: float) -> dict[str, float]:
        """The numbers logged for validation: the task's metrics and loss."""
        return {**{k: float(report[k]) for k in self.metrics[:-1]}, "loss": float(loss)}

    def prediction(self, labels: list[str], m) -> dict:
        """One merged prediction, JSON-ready (the shape `pretune predict` writes, minus the inputs)."""
        raise NotImplementedError

    # ---- self-training
    def confidence(self, m, how: str = "mean") -> float:
        raise InputError(f"self-training supports the tasks classify, pair and tag, not {self.name!r}")

    def pseudo_class(self, m) -> int:
        """The class a pseudo label counts against for a per-class cap (`pseudo_top_k`); 0 when the cap counts
        sentences."""
        return 0

    def pseudo_labeled(self, example: Example, labels: list[str], m) -> Example:
        """`example` with the prediction `m` as its label."""
        raise InputError(f"self-training supports the tasks classify, pair and tag, not {self.name!r}")

    def record(self, example: Example, fields: dict) -> dict:
        """A labeled example as a JSONL row of the training file's format (read back with `fields`)."""
        raise NotImplementedError


class Classify(Task):
    """One text, one label: a classifier on the pooled [CLS] state (a causal body: its last token)."""

    name = "classify"
    metrics = ("accuracy", "macro_f1", "micro_f1", "loss")

    def head_options(self, sec) -> dict:
        options = {"pooling": sec.pooling} if sec.pooling != "cls" else {}  # [CLS] checkpoints keep their old config
        truncate = "head+tail" if sec.truncate == "auto" else sec.truncate  # "head": checkpoints before the option
        return options | ({"truncate": truncate} if truncate != "head" else {})

    def head(self, cfg: ModelConfig, labels: list[str], options: dict) -> nn.Module:
        return ClassificationHead(cfg, len(labels), pooling=options.get("pooling", "cls"))

    def length_warnings(self, stats: EncodeStats, where: Path, max_len: int) -> list[str]:
        if not stats.n_truncated:
            return []
        return [f"{where}: {stats.n_truncated} of {stats.n_examples} texts are longer than max_len {max_len} "
                "subwords and were truncated"]

    def forward(self, model: nn.Module, hidden: torch.Tensor, batch: dict) -> dict:
        input_ids, attention_mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        positions = None
        if model.config.causal:  # a left-to-right body has seen the whole input only at its last token
            positions = (attention_mask.long().sum(1) - 1) if attention_mask is not None else \
                torch.full((input_ids.shape[0],), input_ids.shape[1] - 1, device=input_ids.device)
        logits = model.head(hidden, positions, attention_mask)  # [B, K]
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE)
            n = (labels != IGNORE).sum()
            correct = ((logits.argmax(-1) == labels) & (labels != IGNORE)).sum()
            out["stats"] = {"loss": (out["loss"].detach() * n, n), "accuracy": (correct, n)}
        return out

    def decode(self, model: nn.Module, batch: dict, logits: torch.Tensor) -> list:
        """Per row: probabilities [K] (np.ndarray)."""
        return list(logits.softmax(-1).cpu().numpy())

    def merge(self, labels: list[str], examples: list[Example], features: list[dict], outputs: list) -> list:
        merged: list = [None] * len(examples)
        for f, probs in zip(features, outputs, strict=True):
            merged[f["example"]] = probs
        return merged

    def report(self, labels: LabelMap, examples: list[Example], merged: list, source=None) -> dict:
        y_true = [labels.index(ex.label, source, ex.line) for ex in examples]
        y_pred = [int(np.argmax(p)) for p in merged]
        return classification_report(y_true, y_pred, labels.names)

    def prediction(self, labels: list[str], m) -> dict:
        k = int(np.argmax(m))
        return {"label": labels[k], "probs": {lab: round(float(p), 6) for lab, p in zip(labels, m, strict=True)}}

    def confidence(self, m, how: str = "mean") -> float:
        return float(np.max(m))

    def pseudo_class(self, m) -> int:
        return int(np.argmax(m))

    def pseudo_labeled(self, example: Example, labels: list[str], m) -> Example:
        return dataclasses.replace(example, label=labels[int(np.argmax(m))])

    def record(self, example: Example, fields: dict) -> dict:
        return {fields.get("text_field") or "text": example.text, fields.get("label_field") or "label": example.label}


class Pair(Classify):
    """Two texts ([CLS] a [SEP] b [SEP]), one label."""

    name = "pair"

    def record(self, example: Example, fields: dict) -> dict:
        return {fields.get("text_field") or "text_a": example.text, fields.get("text_b_field") or "text_b":
                example.text_b, fields.get("label_field") or "label": example.label}


class WordTask(Task):
    """A task over words (tag, span): sentences longer than max_len are split into windows, merged back per word."""

    metrics = ("f1", "precision", "recall", "loss")
    per_word = True

    def length_warnings(self, stats: EncodeStats, where: Path, max_len: int) -> list[str]:
        lines = []
        if stats.n_split:
            lines.append(f"{where}: {stats.n_split} of {stats.n_examples} sentences are longer than max_len "
                         f"{max_len} subwords and were split into windows (predictions are merged back per word)")
        if stats.n_truncated:
            lines.append(f"{where}: {stats.n_truncated} sentences hold a word longer than max_len; its subwords "
                         "were cut")
        if stats.n_spans_lost:
            lines.append(f"{where}: {stats.n_spans_lost} gold spans cannot be predicted (wider than max_span_width "
                         "or cut by a window)")
        return lines


class Tag(WordTask):
    """One BIO tag per word, scored at its first subword (or every subword); optionally a CRF over the words."""

    name = "tag"

    def head_options(self, sec) -> dict:
        return {"crf": sec.crf, "all_subwords": sec.all_subwords}

    def head(self, cfg: ModelConfig, labels: list[str], options: dict) -> nn.Module:
        return TokenClassificationHead(cfg, len(labels), crf=bool(options.get("crf")), labels=labels)

    def forward(self, model: nn.Module, hidden: torch.Tensor, batch: dict) -> dict:
        logits = model.head(hidden)  # [B, T, K]
        out = {"logits": logits}
        labels = batch["labels"]
        if labels is not None:
            if model.crf is not None:
                word_index, word_mask = batch["word_index"], batch["word_mask"]
                word_em, word_tags = gather_words(logits, word_index), labels.gather(1, word_index)
                word_tags = word_tags.masked_fill(~word_mask, 0)
                out["loss"] = model.crf(word_em, word_tags, word_mask)
            else:
                out["loss"] = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
            out["stats"] = _loss_stats(out["loss"], labels)
        return out

    def loss_weight(self, crf: bool = False) -> Callable[[dict], float]:
        return row_count if crf else label_count  # the CRF's loss is a mean over sentences

    def decode(self, model: nn.Module, batch: dict, logits: torch.Tensor) -> list:
        """Per row: (tag ids, probabilities) per word of the window."""
        word_em = gather_words(logits, batch["word_index"])  # [B, W, K]
        probs = word_em.softmax(-1)
        mask = batch["word_mask"]
        if model.crf is not None:
            paths = model.crf.decode(word_em, mask)
        else:
            best = word_em.argmax(-1).cpu()
            paths = [best[b, : int(mask[b].sum())].tolist() for b in range(len(best))]
        probs = probs.cpu()
        return [(path, [float(probs[b, w, t]) for w, t in enumerate(path)]) for b, path in enumerate(paths)]

    def merge(self, labels: list[str], examples: list[Example], features: list[dict], outputs: list) -> list:
        """Per example: (tag names, probabilities) per word."""
        tags: list[list[str]] = [["O"] * len(ex.tokens or []) for ex in examples]
        probs: list[list[float]] = [[0.0] * len(ex.tokens or []) for ex in examples]
        for f, (path, p) in zip(features, outputs, strict=True):
            for w, (t, q) in enumerate(zip(path, p, strict=True)):
                tags[f["example"]][f["word_offset"] + w] = labels[t]
                probs[f["example"]][f["word_offset"] + w] = q
        return list(zip(tags, probs, strict=True))

    def report(self, labels: LabelMap, examples: list[Example], merged: list, source=None) -> dict:
        return entity_report([list(ex.tags or []) for ex in examples], [tags for tags, _ in merged])

    def prediction(self, labels: list[str], m) -> dict:
        return {"tags": m[0], "probs": [round(p, 6) for p in m[1]]}

    def confidence(self, m, how: str = "mean") -> float:
        """A sentence's confidence: the mean (or min) of its words' tag probabilities."""
        return sentence_confidence(m[1], how)

    def pseudo_labeled(self, example: Example, labels: list[str], m) -> Example:
        return dataclasses.replace(example, tags=list(m[0]))

    def record(self, example: Example, fields: dict) -> dict:
        return {"tokens": example.tokens, "tags": example.tags}


class Span(WordTask):
    """Labeled word spans, nested or overlapping: every candidate span up to max_span_width words is classified
    (label 0 = NULL, not an entity)."""

    name = "span"

    def head_options(self, sec) -> dict:
        return {"max_span_width": sec.max_span_width}

    def head(self, cfg: ModelConfig, labels: list[str], options: dict) -> nn.Module:
        return SpanHead(cfg, len(labels), max_span_width=int(options.get("max_span_width", 8)))

    def forward(self, model: nn.Module, hidden: torch.Tensor, batch: dict) -> dict:
        logits = model.head(hidden, batch["span_index"], batch["span_width"])  # [B, S, K]
        out = {"logits": logits}
        span_labels = batch["span_labels"]
        if span_labels is not None:
            out["loss"] = F.cross_entropy(logits.float().flatten(0, 1), span_labels.flatten(), ignore_index=IGNORE)
            out["stats"] = _loss_stats(out["loss"], span_labels)
        return out

    def loss_weight(self, crf: bool = False) -> Callable[[dict], float]:
        return lambda batch: float((batch["span_labels"] != IGNORE).sum())  # labeled candidate spans

    def decode(self, model: nn.Module, batch: dict, logits: torch.Tensor) -> list:
        """Per row: [(span index, label id, probability)] for each span whose best label is not NULL."""
        probs = logits.softmax(-1)  # [B, S, K]
        p, label = probs.max(-1)
        keep = (label != 0) & batch["span_mask"]
        rows: list[list] = [[] for _ in range(len(probs))]
        for b, s in keep.nonzero().tolist():
            rows[b].append((s, int(label[b, s]), float(p[b, s])))
        return rows

    def merge(self, labels: list[str], examples: list[Example], features: list[dict], outputs: list) -> list:
        """Per example: sorted (start, end, label, probability) over words."""
        spans: list[list] = [[] for _ in examples]
        for f, rows in zip(features, outputs, strict=True):
            a = f["word_offset"]
            for s_index, label, p in rows:
                s, e = f["spans"][s_index]
                spans[f["example"]].append((s + a, e + a, labels[label], p))
        return [sorted(x) for x in spans]

    def report(self, labels: LabelMap, examples: list[Example], merged: list, source=None) -> dict:
        true = [set(ex.spans or []) for ex in examples]
        pred = [{(s, e, lab) for s, e, lab, _ in spans} for spans in merged]
        return span_report(true, pred)

    def prediction(self, labels: list[str], m) -> dict:
        return {"spans": [{"start": s, "end": e, "label": lab, "prob": round(p, 6)} for s, e, lab, p in m]}


class SeqTag(Task):
    """One label per character of a sequence (e.g. per nucleotide): a classifier per token, long sequences cut
    into overlapping windows and merged back per character (`pretune.finetune.seqencode`)."""

    name = "seqtag"
    metrics = ("accuracy", "segment_f1", "macro_f1", "loss")

    def head_options(self, sec) -> dict:
        overlap = sec.window_overlap if sec.window_overlap is not None else sec.max_len // 4
        decode = sec.decode_settings()
        return {"window_overlap": overlap, **({"smooth": sec.smooth} if sec.smooth > 1 else {}),
                **({"decode": decode} if decode else {})}

    def head(self, cfg: ModelConfig, labels: list[str], options: dict) -> nn.Module:
        return TokenClassificationHead(cfg, len(labels))

    def encode(self, examples: list[Example], tok, labels: LabelMap | None, max_len: int, options: dict,
               source: str | Path | None = None) -> tuple[list[dict], EncodeStats]:
        overlap = int(options.get("window_overlap", max_len // 4))
        return encode_sequences(examples, tok, labels, max_len, overlap, source, int(options.get("smooth", 0)),
                                options.get("decode"))

    def length_warnings(self, stats: EncodeStats, where: Path, max_len: int) -> list[str]:
        return []  # long sequences are the rule here; windows are merged back per character

    def forward(self, model: nn.Module, hidden: torch.Tensor, batch: dict) -> dict:
        logits = model.head(hidden)  # [B, T, K]
        out = {"logits": logits}
        labels = batch.get("labels")
        if labels is not None:
            out["loss"] = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
            out["stats"] = _loss_stats(out["loss"], labels)
        return out

    def decode(self, model: nn.Module, batch: dict, logits: torch.Tensor) -> list:
        """Per row: the probabilities [n_tokens, K] of the window's tokens (without [CLS]/[SEP])."""
        probs = logits.float().softmax(-1).cpu().numpy()
        n = batch["attention_mask"].sum(1).cpu().tolist()
        return [probs[b, 1: int(n[b]) - 1] for b in range(len(probs))]

    def merge(self, labels: list[str], examples: list[Example], features: list[dict], outputs: list) -> list:
        """Per example: (label id per character, its probability), as numpy arrays."""
        return merge_windows(len(labels), examples, features, outputs, labels)

    def report(self, labels: LabelMap, examples: list[Example], merged: list, source=None) -> dict:
        true = []
        for ex in examples:
            index = {name: labels.index(name, source, ex.line) for name in set(ex.tags or [])}
            true.append(np.asarray([index[t] for t in ex.tags or []], dtype=np.int64))
        return sequence_report(true, [ids for ids, _ in merged], labels.names, background=0)

    def prediction(self, labels: list[str], m) -> dict:
        """{"labels": one character per input character when every label is one character, else a list of names;
        "segments": runs of one label other than the background (labels[0]), end exclusive; "mean_prob"}."""
        ids, probs = m
        names = [labels[int(i)] for i in ids]
        segments = [{"start": s, "end": e, "label": labels[k]} for s, e, k in sorted(label_runs(ids, 0))]
        return {"labels": "".join(names) if all(len(n) == 1 for n in labels) else names, "segments": segments,
                "mean_prob": round(float(np.mean(probs)) if len(probs) else 0.0, 6)}


TASKS: dict[str, Task] = {t.name: t for t in (Classify(), Pair(), Tag(), Span(), SeqTag())}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise InputError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}") from None


def predictions_json(task: str, labels: list[str], merged: list) -> list:
    """JSON-ready predictions of `task`, one per example (the shape `pretune predict` writes, minus the inputs)."""
    kind = get_task(task)
    return [kind.prediction(labels, m) for m in merged]

