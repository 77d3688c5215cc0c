"""Evaluation metrics: classification (accuracy, macro/micro F1), entity-level F1, span F1.

Entity chunking follows seqeval's default (non-strict, conlleval-style) rules, so the numbers match
`seqeval.metrics` without depending on it. Every ratio with a zero denominator is 0.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from pretune.errors import InputError

__all__ = ["classification_report", "entity_spans", "entity_report", "span_report", "sequence_report",
           "format_report", "headline_metrics"]

HEADLINE_KEYS = ("accuracy", "macro_f1", "micro_f1", "f1", "precision", "recall", "segment_f1")  # display order


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


def _prf(tp: int, n_pred: int, n_true: int) -> dict:
    precision = _ratio(tp, n_pred)
    recall = _ratio(tp, n_true)
    f1 = _ratio(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "support": int(n_true)}


# ---------------------------------------------------------------------------------------------------------
# classification


def _as_label_ids(values: Sequence[int], name: str, num_labels: int) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise InputError(f"{name} must be a flat sequence of label ids, got an array of shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{name} must hold integer label ids, got dtype {arr.dtype}")
    bad = (arr < 0) | (arr >= num_labels)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(f"{name}[{i}] = {int(arr[i])} is not a label id; expected 0..{num_labels - 1}")
    return arr.astype(np.int64)


def classification_report(y_true: Sequence[int], y_pred: Sequence[int], labels: list[str]) -> dict:
    """Accuracy, macro/micro F1, per-class precision/recall/F1/support and the confusion matrix.

    `y_true`/`y_pred` are label ids indexing `labels`. Macro-F1 averages over the classes that occur in
    `y_true` or `y_pred` (sklearn's convention when labels are not given). Confusion rows are true labels,
    columns predicted labels.
    """
    labels = list(labels)
    k = len(labels)
    if k == 0:
        raise InputError("labels must name at least one class")
    t = _as_label_ids(y_true, "y_true", k)
    p = _as_label_ids(y_pred, "y_pred", k)
    if len(t) != len(p):
        raise InputError(f"y_true has {len(t)} items but y_pred has {len(p)}; expected the same number")

    confusion = np.bincount(t * k + p, minlength=k * k).reshape(k, k)  # [K_true, K_pred]
    tp = np.diag(confusion)
    n_true = confusion.sum(axis=1)
    n_pred = confusion.sum(axis=0)

    per_class = {name: _prf(int(tp[i]), int(n_pred[i]), int(n_true[i])) for i, name in enumerate(labels)}
    present = [name for i, name in enumerate(labels) if n_true[i] + n_pred[i] > 0]
    macro_f1 = float(np.mean([per_class[name]["f1"] for name in present])) if present else 0.0
    micro = _prf(int(tp.sum()), int(n_pred.sum()), int(n_true.sum()))
    return {
        "accuracy": _ratio(int(tp.sum()), len(t)),
        "macro_f1": macro_f1,
        "micro_f1": micro["f1"],
        "support": len(t),
        "labels": labels,
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }


# ---------------------------------------------------------------------------------------------------------
# entities from tag sequences (seqeval default mode)


def _split_tag(tag: str) -> tuple[str, str]:
    """(prefix letter, type) as seqeval splits a tag: 'B-PER' -> ('B', 'PER'), 'O' -> ('O', '_')."""
    return tag[0], tag[1:].split("-", maxsplit=1)[-1] or "_"


def _chunk_ends(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag not in ("O", ".") and prev_type != type_


def _chunk_starts(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    if tag in ("B", "S"):
        return True
    if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag not in ("O", ".") and prev_type != type_


def entity_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Chunks of a tag sequence as (type, start, end_exclusive), with seqeval's default conventions.

    B-X always starts a chunk; I-X continues a chunk of type X and starts a new one after O or after a
    different type; E-X/S-X close a chunk (IOBES). Tags without a prefix are read the way seqeval reads them.
    """
    chunks: list[tuple[str, int, int]] = []
    prev_tag, prev_type, begin = "O", "", 0
    for i, raw in enumerate([*tags, "O"]):
        if not isinstance(raw, str) or not raw:
            raise InputError(f"tag {i} is {raw!r}; expected a non-empty string such as 'O', 'B-PER', 'I-PER'")
        tag, type_ = _split_tag(raw)
        if _chunk_ends(prev_tag, tag, prev_type, type_):
            chunks.append((prev_type, begin, i))
        if _chunk_starts(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return chunks


def _check_pairs(true: Sequence, pred: Sequence, what: str) -> None:
    if len(true) != len(pred):
        raise InputError(f"true has {len(true)} {what} but pred has {len(pred)}; expected the same number")


def _micro_and_per_label(
    true_items: Iterable[tuple], pred_items: Iterable[tuple], key: int
) -> tuple[dict, dict]:
    """Exact-match counts over hashable items; `key` is the index of the label inside each item."""
    true_set, pred_set = set(true_items), set(pred_items)
    hits = true_set & pred_set
    n_true = Counter(item[key] for item in true_set)
    n_pred = Counter(item[key] for item in pred_set)
    n_hit = Counter(item[key] for item in hits)
    names = sorted(set(n_true) | set(n_pred))
    per = {name: _prf(n_hit[name], n_pred[name], n_true[name]) for name in names}
    return _prf(len(hits), len(pred_set), len(true_set)), per


def entity_report(true: list[list[str]], pred: list[list[str]]) -> dict:
    """Entity-level micro precision/recall/F1 and per-type scores, equal to seqeval's default mode."""
    _check_pairs(true, pred, "sentences")
    true_items: list[tuple] = []
    pred_items: list[tuple] = []
    for s, (t_tags, p_tags) in enumerate(zip(true, pred, strict=True)):
        if len(t_tags) != len(p_tags):
            raise InputError(
                f"sentence {s}: true has {len(t_tags)} tags but pred has {len(p_tags)}; "
                "expected the same number"
            )
        true_items += [(s, start, end, type_) for type_, start, end in entity_spans(t_tags)]
        pred_items += [(s, start, end, type_) for type_, start, end in entity_spans(p_tags)]
    micro, per_type = _micro_and_per_label(true_items, pred_items, key=3)
    return {**micro, "per_type": per_type}


def span_report(true: list[set[tuple[int, int, str]]], pred: list[set[tuple[int, int, str]]]) -> dict:
    """Exact-match micro precision/recall/F1 and per-label scores over (start, end, label) spans per example.

    Spans may nest or overlap; a predicted span counts only if start, end and label all match.
    """
    _check_pairs(true, pred, "examples")
    items: tuple[list[tuple], list[tuple]] = ([], [])
    for s, pair in enumerate(zip(true, pred, strict=True)):
        for side, spans in zip(items, pair, strict=True):
            for span in spans:
                if not (isinstance(span, tuple) and len(span) == 3):
                    raise InputError(f"example {s}: span {span!r} is not a (start, end, label) tuple")
                side.append((s, *span))
    micro, per_label = _micro_and_per_label(items[0], items[1], key=3)
    return {**micro, "per_label": per_label}


# ---------------------------------------------------------------------------------------------------------
# per-character labels (seqtag)


def label_runs(ids: np.ndarray, skip: int | None = None) -> set[tuple[int, int, int]]:
    """Maximal runs (start, end_exclusive, label id) of equal ids, leaving out runs of `skip`."""
    ids = np.asarray(ids)
    if ids.size == 0:
        return set()
    cuts = np.flatnonzero(np.diff(ids)) + 1
    starts = np.concatenate([[0], cuts])
    ends = np.concatenate([cuts, [ids.size]])
    return {(int(s), int(e), int(ids[s])) for s, e in zip(starts, ends, strict=True) if ids[s] != skip}


def sequence_report(true: Sequence[Sequence[int]], pred: Sequence[Sequence[int]], labels: list[str],
                    background: int = 0) -> dict:
    """Per-character scores of labeled sequences: `classification_report` over every character (accuracy,
    per-class precision/recall/F1, confusion), plus segment scores: a segment is a maximal run of one label other
    than `background`, and counts as right only with the exact start, end and label (per class in
    "per_segment_label")."""
    _check_pairs(true, pred, "sequences")
    for i, (t, p) in enumerate(zip(true, pred, strict=True)):
        if len(t) != len(p):
            raise InputError(f"sequence {i}: {len(t)} true labels but {len(p)} predicted; expected the same number")
    flat_t = np.concatenate([np.asarray(t, dtype=np.int64) for t in true]) if true else np.zeros(0, np.int64)
    flat_p = np.concatenate([np.asarray(p, dtype=np.int64) for p in pred]) if pred else np.zeros(0, np.int64)
    report = classification_report(flat_t, flat_p, labels)
    tp: Counter = Counter()
    n_true: Counter = Counter()
    n_pred: Counter = Counter()
    for t, p in zip(true, pred, strict=True):
        gold, guess = label_runs(t, background), label_runs(p, background)
        tp.update(lab for _, _, lab in gold & guess)
        n_true.update(lab for _, _, lab in gold)
        n_pred.update(lab for _, _, lab in guess)
    total = _prf(sum(tp.values()), sum(n_pred.values()), sum(n_true.values()))
    report.update(segment_precision=total["precision"], segment_recall=total["recall"], segment_f1=total["f1"],
                  segment_support=total["support"], background=labels[background],
                  per_segment_label={labels[k]: _prf(tp[k], n_pred[k], n_true[k])
                                     for k in range(len(labels)) if k != background})
    return report


# ---------------------------------------------------------------------------------------------------------
# terminal table


def _score_table(rows: dict[str, dict], total: tuple[str, dict] | None) -> list[str]:
    names = [*rows, total[0]] if total else list(rows)
    width = max([len(n) for n in names] + [9])
    header = f"{'':<{width}}  {'precision':>9}  {'recall':>9}  {'f1':>9}  {'support':>9}"

    def line(name: str, m: dict) -> str:
        return (
            f"{name:<{width}}  {m['precision']:>9.4f}  {m['recall']:>9.4f}  {m['f1']:>9.4f}  "
            f"{int(m['support']):>9d}"
        )

    out = [header] + [line(name, m) for name, m in rows.items()]
    if total:
        out += ["", line(*total)]
    return out


def _confusion_table(labels: list[str], confusion: list[list[int]]) -> list[str]:
    """Rows: true label, columns: predicted. Long label names head the rows only; the columns then carry the row
    numbers, so 26 classes still fit a terminal."""
    numbered = max(len(n) for n in labels) > 6
    heads = [str(i) for i in range(1, len(labels) + 1)] if numbered else labels
    names = [f"{i:>2} {n}" for i, n in enumerate(labels, 1)] if numbered else labels
    cell = max([len(str(v)) for row in confusion for v in row] + [len(h) for h in heads] + [3])
    corner = "true \\ pred"
    name_w = max([len(n) for n in names] + [len(corner)])
    out = [f"{corner:<{name_w}}  " + " ".join(f"{h:>{cell}}" for h in heads)]
    for name, row in zip(names, confusion, strict=True):
        out.append(f"{name:<{name_w}}  " + " ".join(f"{v:>{cell}d}" for v in row))
    return out


def format_report(report: dict) -> str:
    """A fixed-width table of any report made by this module (classification, entity or span)."""
    if "per_class" in report:
        lines = _score_table(report["per_class"], None)
        lines += [
            "",
            f"accuracy  {report['accuracy']:.4f}   macro-f1  {report['macro_f1']:.4f}   "
            f"micro-f1  {report['micro_f1']:.4f}",
            "",
        ]
        lines += _confusion_table(report["labels"], report["confusion"])
        if "per_segment_label" in report:
            lines += ["", f"segments (runs of one label other than {report['background']!r}, exact boundaries):"]
            lines += _score_table(report["per_segment_label"], ("all", {
                k: report[f"segment_{k}"] for k in ("precision", "recall", "f1", "support")}))
        return "\n".join(lines)
    for key in ("per_type", "per_label"):
        if key in report:
            return "\n".join(_score_table(report[key], ("micro avg", report)))
    raise ValueError("format_report expects a dict from classification_report, entity_report or span_report")


def headline_metrics(report: dict) -> dict[str, float]:
    """The scalar scores of a test report, in a fixed order (classification: accuracy, macro-F1, ...)."""
    return {k: float(report[k]) for k in HEADLINE_KEYS if isinstance(report.get(k), (int, float))}
