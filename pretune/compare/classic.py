"""Classic baselines to compare pretune with, on the same label subsets and test set.

classify / pair: TF-IDF (word 1-2-grams + char_wb 2-5-grams, sublinear tf) + logistic regression. A pair is
[a, b, a * b, |a - b|] over the two texts' TF-IDF vectors: on the bundled pairs data the product and difference
(which n-grams the texts share) beat one "a [SEP] b" text (validation 0.613 vs 0.580, test 0.610 vs 0.582).
tag: a linear-chain CRF (sklearn-crfsuite, L-BFGS) over word features of the word and its neighbours.
span: the same CRF over the outermost spans written as BIO tags; spans inside another span (and spans that cross
an outermost one) can never be predicted, and the result says how many of the gold spans that is.
seqtag: codon-frame counts + logistic regression per nucleotide (`pretune.compare.seqclassic`).

Every hyperparameter (C; c1/c2) is chosen on the validation set only: each grid value is fit on train, and the
model of the value with the best validation score is the one evaluated on test.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion
from threadpoolctl import threadpool_limits

from pretune.compare.seqclassic import METHOD as SEQ_METHOD
from pretune.compare.seqclassic import fit_codon_lr
from pretune.errors import InputError
from pretune.evaluate.metrics import classification_report, entity_report, entity_spans, span_report
from pretune.text.labeled import Example

C_GRID = (1.0, 10.0, 100.0, 1000.0)  # TF-IDF: 100 won at 10/30/100% of the supersense labels in (0.1 ... 100)
SOLVER = "newton-cg"  # TF-IDF: same scores as lbfgs, 3-7x faster (2,000 supersense labels)
CRF_GRID = ((0.05, 0.01), (0.05, 0.1), (0.25, 0.01), (0.25, 0.1))  # (c1, c2)
METRIC = {"classify": "accuracy", "pair": "accuracy", "tag": "f1", "span": "f1",
          "seqtag": "accuracy"}  # what validation maximises
METHOD = {"classify": "TF-IDF + LR", "pair": "TF-IDF + LR", "tag": "CRF", "span": "CRF", "seqtag": SEQ_METHOD}


# ---- choosing a hyperparameter on validation ---------------------------------------------------------------------
def select_on_validation(grid: Sequence, fit: Callable, score: Callable) -> tuple[object, dict, object]:
    """Fit each grid value on train, score it on validation; (best value, {str(value): score}, its model).

    The first value wins ties, so the choice never depends on anything but the validation scores."""
    scores, best, best_model = {}, None, None
    for value in grid:
        model = fit(value)
        scores[str(value)] = s = score(model)
        if best is None or s > scores[str(best)]:
            best, best_model = value, model
    return best, scores, best_model


def fit_logreg(x_train, y_train: np.ndarray, x_val, val_score: Callable[[np.ndarray], float], seed: int,
               grid: Sequence[float] = C_GRID, solver: str = SOLVER) -> tuple[LogisticRegression, float, dict]:
    """Logistic regression with C chosen by `val_score(predictions on x_val)`: (model fit on train, chosen C,
    validation score per C)."""

    def fit(c: float) -> LogisticRegression:
        with threadpool_limits(torch.get_num_threads(), user_api="blas"):  # more BLAS threads than torch's stall
            return LogisticRegression(C=c, solver=solver, max_iter=2000, random_state=seed).fit(x_train, y_train)

    c, scores, model = select_on_validation(grid, fit, lambda m: val_score(m.predict(x_val)))
    return model, float(c), scores


def accuracy(y_true: np.ndarray) -> Callable[[np.ndarray], float]:
    return lambda pred: float(np.mean(pred == y_true))


# ---- spans as BIO tags ---------------------------------------------------------------------------------------------
def outermost(spans: Sequence[tuple[int, int, str]]) -> tuple[list[tuple[int, int, str]], int, int]:
    """The spans a BIO tagger can represent: (kept spans, how many lie inside another span, how many cross a kept
    one). Longer spans win: kept spans are chosen by start, longest first, skipping any that overlaps one kept."""
    spans = sorted(set(spans), key=lambda s: (s[0], -(s[1] - s[0]), s[2]))
    nested = sum(any(o != s and o[0] <= s[0] and s[1] <= o[1] for o in spans) for s in spans)
    kept: list[tuple[int, int, str]] = []
    for s in spans:
        if not kept or s[0] >= kept[-1][1]:
            kept.append(s)
    return kept, nested, len(spans) - len(kept) - nested


def spans_to_bio(n_words: int, spans: Sequence[tuple[int, int, str]]) -> list[str]:
    """BIO tags of non-overlapping (start, end_exclusive, label) spans."""
    tags = ["O"] * n_words
    for start, end, label in spans:
        tags[start:end] = [f"B-{label}"] + [f"I-{label}"] * (end - start - 1)
    return tags


def bio_to_spans(tags: Sequence[str]) -> set[tuple[int, int, str]]:
    """The (start, end_exclusive, label) spans of a tag sequence, chunked as the entity report chunks them."""
    return {(start, end, label) for label, start, end in entity_spans(tags)}


def word_targets(task: str, examples: Sequence[Example]) -> tuple[list[list[str]], int, int]:
    """Per-word BIO targets of tag / span examples, and (span only) the nested and crossing gold-span counts."""
    if task == "tag":
        return [list(ex.tags or []) for ex in examples], 0, 0
    targets, nested, crossing = [], 0, 0
    for ex in examples:
        kept, n, c = outermost(ex.spans or [])
        targets.append(spans_to_bio(len(ex.tokens or []), kept))
        nested, crossing = nested + n, crossing + c
    return targets, nested, crossing


def word_report(task: str, examples: Sequence[Example], pred_tags: list[list[str]]) -> tuple[dict, list]:
    """(test report, predictions) of predicted BIO tags: entity report for tag, span report against all gold spans
    (nested ones included) for span."""
    if task == "tag":
        return entity_report([list(ex.tags or []) for ex in examples], pred_tags), pred_tags
    pred = [bio_to_spans(tags) for tags in pred_tags]
    report = span_report([set(ex.spans or []) for ex in examples], pred)
    return report, [sorted(p) for p in pred]


def label_ids(examples: Sequence[Example], labels: Sequence[str]) -> np.ndarray:
    index = {name: i for i, name in enumerate(labels)}
    missing = sorted({ex.label for ex in examples if ex.label not in index}, key=str)
    if missing:
        raise InputError(f"label(s) {', '.join(map(str, missing))} not in the label list {list(labels)}")
    return np.array([index[ex.label] for ex in examples], dtype=np.int64)


def class_labels(splits: Sequence[Sequence[Example]], labels: Sequence[str] | None) -> list[str]:
    """The report's label order: as given, else the sorted labels of every example (a label missing from a
    small training subset is still scored, and never predicted)."""
    return list(labels) if labels is not None else sorted({str(ex.label) for exs in splits for ex in exs})


# ---- TF-IDF + logistic regression ------------------------------------------------------------------------------------
def tfidf_vectorizer() -> FeatureUnion:
    """Word 1-2-grams and char_wb 2-5-grams, both with sublinear tf."""
    return FeatureUnion([
        ("word", TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True)),
        ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)),
    ])


def _text_features(task: str, vec: FeatureUnion, examples: Sequence[Example]):
    """classify: the TF-IDF row of the text; pair: [a, b, a * b, |a - b|] of the two texts' rows."""
    a = vec.transform([ex.text or "" for ex in examples])
    if task == "classify":
        return a
    b = vec.transform([ex.text_b or "" for ex in examples])
    return sp.hstack([a, b, a.multiply(b), abs(a - b)]).tocsr()


@dataclass
class TfidfFeatures:
    """The TF-IDF features of a task's examples (`_text_features`), from a fitted `tfidf_vectorizer()`."""

    task: str
    vectorizer: FeatureUnion

    def __call__(self, examples: Sequence[Example]):
        return _text_features(self.task, self.vectorizer, examples)


def tfidf_lr(task: str, train: Sequence[Example], val: Sequence[Example], labels: Sequence[str], seed: int = 0,
             grid: Sequence[float] = C_GRID) -> tuple[TfidfFeatures, LogisticRegression, float, dict]:
    """TF-IDF fit on `train`'s texts + logistic regression with C chosen on `val`: (featurizer of a list of
    examples, the fitted model, the chosen C, validation accuracy per C). Class i of the model is labels[i]."""
    texts = [ex.text or "" for ex in train] + ([ex.text_b or "" for ex in train] if task == "pair" else [])
    featurize = TfidfFeatures(task, tfidf_vectorizer().fit(texts))
    y_train, y_val = label_ids(train, labels), label_ids(val, labels)
    model, c, val_scores = fit_logreg(featurize(train), y_train, featurize(val), accuracy(y_val), seed, grid)
    return featurize, model, c, val_scores


def class_probs(model: LogisticRegression, x, n_labels: int) -> np.ndarray:
    """float [N, n_labels] probabilities of a model whose classes are label ids (classes it never saw in training
    get probability 0)."""
    probs = np.zeros((x.shape[0], n_labels))
    probs[:, model.classes_] = model.predict_proba(x)
    return probs


def fit_tfidf_lr(task: str, train: Sequence[Example], val: Sequence[Example], test: Sequence[Example],
                 labels: Sequence[str] | None = None, seed: int = 0, grid: Sequence[float] = C_GRID) -> dict:
    """TF-IDF + logistic regression for classify / pair; see `fit_classic`."""
    start = time.perf_counter()
    labels = class_labels((train, val, test), labels)
    featurize, model, c, val_scores = tfidf_lr(task, train, val, labels, seed, grid)
    pred = model.predict(featurize(test))
    report = classification_report(label_ids(test, labels).tolist(), pred.tolist(), labels)
    return result_dict(METHOD[task], task, report, [labels[i] for i in pred], {"C": c}, val_scores, start)


# ---- CRF ----------------------------------------------------------------------------------------------------------
def word_shape(word: str) -> str:
    """Xx-style shape with runs collapsed: "Paris" -> "Xx", "1948" -> "d", "e-mail" -> "x-x"."""
    shape = "".join("X" if c.isupper() else "x" if c.islower() else "d" if c.isdigit() else c for c in word)
    return re.sub(r"(.)\1+", r"\1", shape)


def _word_feats(word: str, prefix: str) -> dict:
    return {
        f"{prefix}word": word, f"{prefix}lower": word.lower(), f"{prefix}shape": word_shape(word),
        f"{prefix}prefix2": word[:2], f"{prefix}prefix3": word[:3],
        f"{prefix}suffix2": word[-2:], f"{prefix}suffix3": word[-3:],
        f"{prefix}is_title": word.istitle(), f"{prefix}is_upper": word.isupper(), f"{prefix}is_digit": word.isdigit(),
    }


def word_features(words: Sequence[str], i: int) -> dict:
    """CRF features of word i: its own, the same for the words at -1/+1, the lowercase word at -2/+2, BOS/EOS."""
    feats = {"bias": 1.0, **_word_feats(words[i], "")}
    for d in (-2, -1, 1, 2):
        j = i + d
        if 0 <= j < len(words):
            feats.update(_word_feats(words[j], f"{d:+d}:") if abs(d) == 1 else {f"{d:+d}:lower": words[j].lower()})
    feats["BOS"], feats["EOS"] = i == 0, i == len(words) - 1
    return feats


def sentence_features(words: Sequence[str]) -> list[dict]:
    return [word_features(words, i) for i in range(len(words))]


def fit_crf(task: str, train: Sequence[Example], val: Sequence[Example], test: Sequence[Example],
            grid: Sequence[tuple[float, float]] = CRF_GRID, max_iterations: int = 100) -> dict:
    """A linear-chain CRF for tag / span; see `fit_classic`."""
    import sklearn_crfsuite  # only the CRF baselines need it

    start = time.perf_counter()
    x_train, x_val, x_test = ([sentence_features(ex.tokens or []) for ex in exs] for exs in (train, val, test))
    y_train, _, _ = word_targets(task, train)

    def fit(c: tuple[float, float]):
        crf = sklearn_crfsuite.CRF(algorithm="lbfgs", c1=c[0], c2=c[1], max_iterations=max_iterations,
                                   all_possible_transitions=True)
        return crf.fit(x_train, y_train)

    def score(crf) -> float:
        return word_report(task, val, crf.predict(x_val))[0]["f1"]

    (c1, c2), val_scores, crf = select_on_validation(grid, fit, score)
    report, pred = word_report(task, test, crf.predict(x_test))
    result = result_dict(METHOD[task], task, report, pred, {"c1": c1, "c2": c2}, val_scores, start)
    return {**result, **span_limits(task, test)}


def span_limits(task: str, test: Sequence[Example]) -> dict:
    """span: how many test gold spans a BIO tagger can never predict ({} for the other tasks)."""
    if task != "span":
        return {}
    _, nested, crossing = word_targets(task, test)
    return {"nested": nested, "crossing": crossing,
            "note": "spans inside another span, or crossing an outermost one, are never predicted"}


def result_dict(method: str, task: str, report: dict, predictions: list, params: dict, val_scores: dict,
                start: float) -> dict:
    """The result of one fitted alternative (see `fit_classic`); `start` is its perf_counter start."""
    metric = METRIC[task]
    return {
        "method": method, "task": task, "metric": metric, "score": report[metric], "report": report,
        "predictions": predictions, "params": params, "val_score": max(val_scores.values()),
        "val_scores": val_scores, "fit_seconds": time.perf_counter() - start,
    }


def fit_classic(task: str, train: Sequence[Example], val: Sequence[Example], test: Sequence[Example],
                labels: Sequence[str] | None = None, seed: int = 0) -> dict:
    """Train the classic baseline of `task` on `train`, choose its hyperparameters on `val`, evaluate on `test`.

    Returns {"method", "task", "metric", "score" (test metric), "report" (the evaluator's report for the task),
    "predictions" (labels / tag lists / sorted span lists), "params" (chosen), "val_score", "val_scores"
    (per grid value), "fit_seconds"}; span adds "nested" and "crossing" (test gold spans it cannot predict).
    `labels` (classify / pair) fixes the report's label order; default: the sorted labels of all three sets."""
    if task in ("classify", "pair"):
        return fit_tfidf_lr(task, train, val, test, labels, seed)
    if task in ("tag", "span"):
        return fit_crf(task, train, val, test)
    if task == "seqtag":
        return fit_codon_lr(train, val, test, labels, seed)
    raise InputError(f"unknown task '{task}' (expected one of: classify, pair, tag, span, seqtag)")
