"""The classic baseline of task seqtag (a label per character of a DNA sequence): codon-frame counts + logistic
regression.

Each nucleotide i is described by the counts of the 64 trinucleotides starting at positions j within `half` of i,
kept apart by frame ((j - i) mod 3): 192 numbers, scaled by the window's size. Protein-coding DNA has a codon
usage and a three-periodicity that these counts show on either strand (a reverse-strand codon is another
trinucleotide), the old signal of gene finders (GeneMark-style, without its Markov chains). A multinomial
logistic regression is fit on at most `max_positions` training nucleotides (sampled, seeded); C is chosen on
validation accuracy. Each nucleotide is classified on its own: no smoothing, no gene model, so segments come out
ragged.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from pretune.errors import InputError
from pretune.evaluate.metrics import sequence_report
from pretune.text.labeled import Example, LabelMap

NUCLEOTIDE = np.full(256, -1, dtype=np.int64)
for _i, _c in enumerate("ACGT"):
    NUCLEOTIDE[ord(_c)] = NUCLEOTIDE[ord(_c.lower())] = _i
SEQ_C_GRID = (0.1, 1.0, 10.0)
METHOD = "codon-frame LR"


def codon_frame_features(sequence: str, half: int = 48) -> np.ndarray:
    """[n, 192] float32: per nucleotide, the trinucleotide counts in each of the 3 frames of the window
    [i - half, i + half], divided by the number of codon positions per frame in a full window."""
    n = len(sequence)
    nuc = NUCLEOTIDE[np.frombuffer(sequence.encode("ascii", "replace"), dtype=np.uint8)]
    code = np.full(n, -1, dtype=np.int64)
    if n >= 3:
        a, b, c = nuc[:-2], nuc[1:-1], nuc[2:]
        ok = (a >= 0) & (b >= 0) & (c >= 0)
        code[: n - 2] = np.where(ok, 16 * a + 4 * b + c, -1)
    onehot = np.zeros((n, 64), dtype=np.float32)
    valid = code >= 0
    onehot[np.flatnonzero(valid), code[valid]] = 1.0
    pos = np.arange(n)
    lo, hi = np.maximum(pos - half, 0), np.minimum(pos + half + 1, n)
    sums = []
    for r in range(3):
        cum = np.zeros((n + 1, 64), dtype=np.float32)
        np.cumsum(onehot * (pos % 3 == r)[:, None], axis=0, out=cum[1:])
        sums.append(cum[hi] - cum[lo])  # [n, 64] counts at positions = r (mod 3) within the window
    stacked = np.stack(sums)  # [3, n, 64]
    frame = (pos[:, None] + np.arange(3)[None, :]) % 3  # [n, 3]: the residue of frame f at position i
    feats = stacked[frame, pos[:, None]]  # [n, 3, 64]
    return (feats / ((2 * half + 1) / 3)).reshape(n, 192)


def _ids(ex: Example, labels: LabelMap) -> np.ndarray:
    index = {name: labels.index(name, None, ex.line) for name in set(ex.tags or [])}
    return np.asarray([index[t] for t in ex.tags or []], dtype=np.int64)


def fit_codon_lr(train: Sequence[Example], val: Sequence[Example], test: Sequence[Example],
                 labels: Sequence[str] | None = None, seed: int = 0, max_positions: int = 100_000,
                 half: int = 48) -> dict:
    """The seqtag baseline: fit on `train`, choose C on `val`, report on `test` (`sequence_report`, background
    labels[0]). `labels`: the label order (default: the training labels, the most frequent first)."""
    start = time.perf_counter()
    names = LabelMap(list(labels)) if labels else LabelMap.from_examples(list(train), "seqtag")
    if any(ex.tags is None for ex in [*train, *val, *test]):
        raise InputError("the seqtag baseline needs labels in every example")
    rng = np.random.default_rng(seed)
    lengths = np.asarray([len(ex.text or "") for ex in train])
    take = min(max_positions, int(lengths.sum()))
    chosen = np.sort(rng.choice(int(lengths.sum()), size=take, replace=False))
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    xs, ys = [], []
    for k, ex in enumerate(train):
        here = chosen[(chosen >= bounds[k]) & (chosen < bounds[k + 1])] - bounds[k]
        if len(here):
            xs.append(codon_frame_features(ex.text or "", half)[here])
            ys.append(_ids(ex, names)[here])
    x_train, y_train = np.concatenate(xs), np.concatenate(ys)
    if len(np.unique(y_train)) < 2:
        raise InputError("the seqtag baseline needs at least two labels among the training nucleotides")

    def predict(model: LogisticRegression, examples: Sequence[Example]) -> list[np.ndarray]:
        return [model.classes_[model.predict_proba(codon_frame_features(ex.text or "", half)).argmax(1)]
                for ex in examples]

    val_true = [_ids(ex, names) for ex in val]
    scores, best, best_model = {}, None, None
    for c in SEQ_C_GRID:
        with threadpool_limits(torch.get_num_threads(), user_api="blas"):
            model = LogisticRegression(C=c, max_iter=500, random_state=seed).fit(x_train, y_train)
        pred = predict(model, val)
        scores[str(c)] = float(np.mean(np.concatenate(pred) == np.concatenate(val_true)))
        if best is None or scores[str(c)] > scores[str(best)]:
            best, best_model = c, model
    test_pred = predict(best_model, test)
    report = sequence_report([_ids(ex, names) for ex in test], test_pred, names.names, background=0)
    single = all(len(n) == 1 for n in names.names)
    predictions = [{"labels": "".join(names.names[i] for i in p) if single else [names.names[i] for i in p]}
                   for p in test_pred]
    return {"method": METHOD, "task": "seqtag", "metric": "accuracy", "score": report["accuracy"],
            "report": report, "predictions": predictions, "params": {"C": best, "half_window": half,
                                                                     "positions": int(len(y_train))},
            "val_score": scores[str(best)], "val_scores": scores, "fit_seconds": time.perf_counter() - start}
