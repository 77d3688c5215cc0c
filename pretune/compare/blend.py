"""pretune's fine-tuned classifier blended with TF-IDF + logistic regression: an extra row of the comparison.

The blend averages the two models' class probabilities, w * pretune + (1 - w) * TF-IDF + LR, with the weight w
chosen on the validation set from WEIGHTS (ties go to the first in WEIGHTS' order, which starts with the even mix).
w = 1 is pretune's model alone and w = 0 TF-IDF + LR alone, so on validation the blend is never worse than either.
The two make different mistakes: the fine-tuned network reads words in context, TF-IDF + LR gives every word and
character n-gram of the training texts its own weight, however rare.

classify and pair only; pretune's model enters through its predictions ({"label", "probs"} per example, as
`pretune predict` and the evaluation write them), so nothing here loads a network.

A blend can be served: `write_blend_model` copies the fine-tuned checkpoint and adds its TF-IDF + LR `Partner` in
a `blend/` folder; `pretune.finetune.model.load_task_model` finds it, and `pretune predict` / `evaluate` (and the
Python API) then answer with the blend. Nothing is pickled:

    blend/classic.json          {"format", "method", "task", "labels", "weight", "C",
                                 "vocabulary": {"word": [term, ...], "char": [...]}}   (term i is feature i)
    blend/classic.safetensors   idf.word, idf.char [terms]; coef [1 or classes, features]; intercept; classes
                                (label ids, indexes of "labels")
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save
from sklearn.linear_model import LogisticRegression

from pretune import files
from pretune.compare.classic import (
    SOLVER,
    TfidfFeatures,
    class_labels,
    class_probs,
    label_ids,
    result_dict,
    tfidf_lr,
    tfidf_vectorizer,
)
from pretune.errors import InputError
from pretune.evaluate.metrics import classification_report
from pretune.text.labeled import Example

WEIGHTS = (0.5, 0.25, 0.75, 0.0, 1.0)  # pretune's share of the average; the first of equal validation scores wins
METHOD = "pretune pretrained + TF-IDF + LR"
TASKS = ("classify", "pair")
FORMAT = 1  # of a saved partner
PARTNER_DIR, PARTNER_JSON, PARTNER_WEIGHTS = "blend", "classic.json", "classic.safetensors"


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


@dataclass
class Partner:
    """TF-IDF + LR trained on the labels a model was fine-tuned on, and the model's share `weight` of the average.
    Class j of `model` is labels[model.classes_[j]]."""

    task: str
    labels: list[str]
    weight: float
    C: float
    features: TfidfFeatures
    model: LogisticRegression

    def probs(self, examples: Sequence[Example]) -> np.ndarray:
        """float [N, len(labels)]: TF-IDF + LR's class probabilities."""
        return class_probs(self.model, self.features(examples), len(self.labels))

    def blend(self, examples: Sequence[Example], merged: Sequence, model_labels: Sequence[str]) -> list[np.ndarray]:
        """A fine-tuned model's probabilities over `model_labels` for each example (`merged`, as its task merges
        them), averaged with the partner's: w * model + (1 - w) * TF-IDF + LR (a label the partner lacks: 0)."""
        classic = self.probs(examples)  # [N, K_partner]
        column = {name: i for i, name in enumerate(self.labels)}
        aligned = np.zeros((len(examples), len(model_labels)))  # [N, K_model]
        for j, name in enumerate(model_labels):
            if name in column:
                aligned[:, j] = classic[:, column[name]]
        return [mix(np.asarray(m, dtype=np.float64), aligned[i], self.weight) for i, m in enumerate(merged)]


def fit_partner(task: str, train: Sequence[Example], val: Sequence[Example], model_val: Sequence[dict],
                labels: Sequence[str], seed: int = 0) -> tuple[Partner, dict[str, float]]:
    """TF-IDF + LR on `train` (C chosen on `val`, as the classic row) and the weight of pretune's validation
    predictions `model_val` chosen on `val`: (the partner, validation accuracy per weight)."""
    featurize, model, c, _ = tfidf_lr(task, train, val, labels, seed)
    weight, scores = choose_weight(probs_matrix(model_val, labels, "validation"),
                                   class_probs(model, featurize(val), len(labels)), label_ids(val, labels))
    return Partner(task, list(labels), weight, c, featurize, model), scores


def fit_blend(task: str, train: Sequence[Example], val: Sequence[Example], test: Sequence[Example],
              model_val: Sequence[dict], model_test: Sequence[dict], labels: Sequence[str] | None = None,
              seed: int = 0) -> tuple[dict, Partner]:
    """TF-IDF + LR trained on `train` (C chosen on `val`, as the classic row), blended with pretune's predictions on
    `val` and `test` (`model_val`, `model_test`, in the files' order); the weight chosen on `val`. Returns the
    classic rows' result dict with method METHOD and params {"weight", "C"}, and the partner (to serve the blend)."""
    if task not in TASKS:
        raise InputError(f"the blend with TF-IDF + LR is for {' and '.join(TASKS)} tasks, not {task}")
    for name, exs, preds in (("validation", val, model_val), ("test", test, model_test)):
        if len(exs) != len(preds):
            raise InputError(f"{len(preds)} predictions of pretune's model for {len(exs)} {name} examples")
    start = time.perf_counter()
    labels = class_labels((train, val, test), labels)
    partner, scores = fit_partner(task, train, val, model_val, labels, seed)
    pred = mix(probs_matrix(model_test, labels, "test"), partner.probs(test), partner.weight).argmax(1)
    report = classification_report(label_ids(test, labels).tolist(), pred.tolist(), labels)
    params = {"weight": partner.weight, "C": partner.C}
    return result_dict(METHOD, task, report, [labels[i] for i in pred], params, scores, start), partner


# ---- a served blend: the partner saved beside a copy of the fine-tuned checkpoint ---------------------------------
def save_partner(directory: Path, partner: Partner) -> None:
    """Write `partner` into `directory` (classic.json + classic.safetensors)."""
    vocabulary, tensors = {}, {}
    for name, vec in partner.features.vectorizer.transformer_list:
        terms = [""] * len(vec.vocabulary_)
        for term, i in vec.vocabulary_.items():
            terms[i] = term
        vocabulary[name] = terms
        tensors[f"idf.{name}"] = np.asarray(vec.idf_, dtype=np.float64)
    tensors["coef"] = np.ascontiguousarray(partner.model.coef_, dtype=np.float64)
    tensors["intercept"] = np.asarray(partner.model.intercept_, dtype=np.float64)
    tensors["classes"] = np.asarray(partner.model.classes_, dtype=np.int64)
    directory.mkdir(parents=True, exist_ok=True)
    files.write_atomic(directory / PARTNER_WEIGHTS, lambda f: f.write(save(tensors)), binary=True)
    files.write_json(directory / PARTNER_JSON, {
        "format": FORMAT, "method": METHOD, "task": partner.task, "labels": partner.labels,
        "weight": partner.weight, "C": partner.C, "vocabulary": vocabulary})


def _check(ok: bool, path: Path, what: str) -> None:
    if not ok:
        raise InputError(f"not a blend partner pretune wrote: {what}", path=path)


def read_partner(model_dir: str | Path) -> Partner | None:
    """The partner saved in `model_dir`/blend/, or None when there is no such folder."""
    directory = Path(model_dir) / PARTNER_DIR
    if not directory.is_dir():
        return None
    meta_path, weights_path = directory / PARTNER_JSON, directory / PARTNER_WEIGHTS
    meta = files.read_json(meta_path)
    _check(meta.get("format") == FORMAT, meta_path, f"expected \"format\": {FORMAT}, found {meta.get('format')!r}")
    _check(meta.get("task") in TASKS, meta_path, f"\"task\" must be one of {', '.join(TASKS)}")
    labels, weight = meta.get("labels"), meta.get("weight")
    _check(isinstance(labels, list) and bool(labels) and all(isinstance(x, str) for x in labels), meta_path,
           "\"labels\" must be a non-empty list of strings")
    _check(isinstance(weight, (int, float)) and 0.0 <= weight <= 1.0, meta_path, "\"weight\" must be in [0, 1]")
    vocabulary = meta.get("vocabulary")
    union = tfidf_vectorizer()
    names = [name for name, _ in union.transformer_list]
    _check(isinstance(vocabulary, dict) and sorted(vocabulary) == sorted(names), meta_path,
           f"\"vocabulary\" must hold the term lists {', '.join(names)}")
    try:
        tensors = load_file(files.input_file(weights_path))
    except (SafetensorError, OSError) as e:
        raise InputError(f"cannot read the blend's TF-IDF + LR weights: {e}", path=weights_path) from None
    expected = {f"idf.{n}" for n in names} | {"coef", "intercept", "classes"}
    _check(set(tensors) == expected, weights_path, f"expected the tensors {', '.join(sorted(expected))}")
    width = 0
    for name, vec in union.transformer_list:
        terms, idf = vocabulary[name], tensors[f"idf.{name}"]
        _check(isinstance(terms, list) and len(terms) == len(idf) == len(set(terms)) and idf.ndim == 1, meta_path,
               f"the {name} vocabulary and idf.{name} must be as long, without repeated terms")
        vec.set_params(vocabulary=terms)
        vec.idf_ = idf
        width += len(terms)
    task, coef, classes = meta["task"], tensors["coef"], tensors["classes"]
    width *= 4 if task == "pair" else 1  # pair: [a, b, a * b, |a - b|]
    rows = 1 if len(classes) == 2 else len(classes)
    _check(coef.shape == (rows, width) and tensors["intercept"].shape == (rows,), weights_path,
           f"coef must be [{rows}, {width}] and intercept [{rows}]")
    _check(len(classes) >= 2 and bool(np.all((classes >= 0) & (classes < len(labels)))), weights_path,
           "classes must be at least two label ids")
    model = LogisticRegression(solver=SOLVER)
    model.classes_, model.coef_, model.intercept_, model.n_features_in_ = classes, coef, tensors["intercept"], width
    return Partner(task, labels, float(weight), float(meta.get("C", 0.0)), TfidfFeatures(task, union), model)


def write_blend_model(target: Path, model_dir: Path, partner: Partner) -> None:
    """`target`: a copy of the fine-tuned checkpoint `model_dir` with `partner` in blend/ (atomic)."""

    def fill(tmp: Path) -> None:
        shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
        save_partner(tmp / PARTNER_DIR, partner)

    files.write_dir_atomic(Path(target), fill)
