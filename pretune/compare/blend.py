"""pretune's fine-tuned classifier blended with TF-IDF + logistic regression: an extra row of the comparison.

The blend averages the two models' class probabilities, w * pretune + (1 - w) * TF-IDF + LR, with the weight w
chosen on the validation set from WEIGHTS (ties go to the first in WEIGHTS' order, which starts with the even mix).
w = 1 is pretune's model alone and w = 0 TF-IDF + LR alone, so on validation the blend is never worse than either.
The two make different mistakes: the fine-tuned network reads words in context, TF-IDF + LR gives every word and
character n-gram of the training texts its own weight, however rare.

classify and pair only; pretune's model enters through its predictions ({"label", "probs"} per example, as
`pretune predict` and the evaluation write them), so nothing here loads a network.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from pretune.compare.classic import class_labels, class_probs, label_ids, result_dict, tfidf_lr
from pretune.errors import InputError
from pretune.evaluate.metrics import classification_report
from pretune.text.labeled import Example

WEIGHTS = (0.5, 0.25, 0.75, 0.0, 1.0)  # pretune's share of the average; the first of equal validation scores wins
METHOD = "pretune pretrained + TF-IDF + LR"
TASKS = ("classify", "pair")


def probs_matrix(predictions: Sequence[dict], labels: Sequence[str], source: str = "predictions") -> np.ndarray:
    """float [N, len(labels)] from per-example {"label", "probs": {label: p}} (a label the model does not know: 0)."""
    rows = []
    for i, p in enumerate(predictions):
        if not isinstance(p, dict) or not isinstance(p.get("probs"), dict):
            raise InputError(f"prediction {i + 1} has no class probabilities (expected {{'label', 'probs'}})",
                             path=source)
        rows.append([float(p["probs"].get(name, 0.0)) for name in labels])
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), len(labels))


def mix(model_probs: np.ndarray, classic_probs: np.ndarray, weight: float) -> np.ndarray:
    """w * model + (1 - w) * classic, both [N, K] probabilities."""
    return weight * model_probs + (1.0 - weight) * classic_probs


def choose_weight(model_val: np.ndarray, classic_val: np.ndarray, y_val: np.ndarray,
                  weights: Sequence[float] = WEIGHTS) -> tuple[float, dict[str, float]]:
    """(the weight of the best validation accuracy, {str(weight): accuracy}); the first of equal scores wins."""
    scores = {str(w): float(np.mean(mix(model_val, classic_val, w).argmax(1) == y_val)) for w in weights}
    best = max(weights, key=lambda w: (scores[str(w)], -weights.index(w)))
    return float(best), scores


def fit_blend(task: str, train: Sequence[Example], val: Sequence[Example], test: Sequence[Example],
              model_val: Sequence[dict], model_test: Sequence[dict], labels: Sequence[str] | None = None,
              seed: int = 0) -> dict:
    """TF-IDF + LR trained on `train` (C chosen on `val`, as the classic row), blended with pretune's predictions on
    `val` and `test` (`model_val`, `model_test`, in the files' order); the weight chosen on `val`. Returns the
    classic rows' result dict with method METHOD and params {"weight", "C"}."""
    if task not in TASKS:
        raise InputError(f"the blend with TF-IDF + LR is for {' and '.join(TASKS)} tasks, not {task}")
    for name, exs, preds in (("validation", val, model_val), ("test", test, model_test)):
        if len(exs) != len(preds):
            raise InputError(f"{len(preds)} predictions of pretune's model for {len(exs)} {name} examples")
    start = time.perf_counter()
    labels = class_labels((train, val, test), labels)
    featurize, model, c, _ = tfidf_lr(task, train, val, labels, seed)
    k = len(labels)
    weight, scores = choose_weight(probs_matrix(model_val, labels, "validation"),
                                   class_probs(model, featurize(val), k), label_ids(val, labels))
    pred = mix(probs_matrix(model_test, labels, "test"), class_probs(model, featurize(test), k), weight).argmax(1)
    report = classification_report(label_ids(test, labels).tolist(), pred.tolist(), labels)
    return result_dict(METHOD, task, report, [labels[i] for i in pred], {"weight": weight, "C": c}, scores, start)
