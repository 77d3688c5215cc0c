"""A linear probe of any checkpoint: frozen features + logistic regression, on the same labels as pretune's models.

The checkpoint is a pretune checkpoint or a Hugging Face folder (opened like every --from). classify: the mean of
the last layer over each text's real tokens ([CLS]/[SEP] included, padding excluded), as `pretune embed --pool
mean` computes it; pair: [a, b, a * b, |a - b|] of the two texts' vectors, as the TF-IDF baseline builds its pair
features. tag: the last layer at each word's first subword, one logistic regression over words; span: the same on
the outermost spans written as BIO tags (like the CRF baseline). Features are standardised on train; C is chosen
on validation only. The body runs in length-grouped batches under torch.inference_mode on torch's current threads.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.preprocessing import StandardScaler

from pretune.compare.classic import (
    accuracy,
    class_labels,
    fit_logreg,
    label_ids,
    result_dict,
    span_limits,
    word_report,
    word_targets,
)
from pretune.errors import InputError
from pretune.evaluate.metrics import classification_report
from pretune.finetune.encode import collate, encode_examples
from pretune.text.labeled import Example, length_grouped_batches
from pretune.use.embed import embed, load_body

METHOD = "linear probe"
C_GRID = (0.01, 0.1, 1.0, 10.0)  # standardised dense features want stronger regularisation than TF-IDF
SOLVER = "lbfgs"  # on dense features far faster than the newton-cg that suits TF-IDF


def _max_len(body, conf: dict, max_len: int | None) -> int:
    """As `embed` chooses it: given, else the checkpoint's max_len, else the model's positions (at most 512)."""
    return max_len or conf.get("max_len") or min(body.config.max_positions, 512)


def text_vectors(loaded: tuple, task: str, examples: Sequence[Example], batch_size: int = 32,
                 max_len: int | None = None) -> np.ndarray:
    """classify: mean-pooled last layer [N, H]; pair: [a, b, a * b, |a - b|] -> [N, 4H]."""
    a = embed(loaded, [ex.text or "" for ex in examples], pool="mean", batch_size=batch_size, max_len=max_len)
    if task == "classify":
        return a
    b = embed(loaded, [ex.text_b or "" for ex in examples], pool="mean", batch_size=batch_size, max_len=max_len)
    return np.concatenate([a, b, a * b, np.abs(a - b)], axis=1)


def word_vectors(loaded: tuple, examples: Sequence[Example], batch_size: int = 32,
                 max_len: int | None = None) -> list[np.ndarray]:
    """The last layer at each word's first subword: one float32 [n_words, H] array per example. Sentences longer
    than max_len subwords are encoded in windows, as fine-tuning encodes them."""
    body, tok, conf = loaded
    words = [Example(line=ex.line, tokens=ex.tokens) for ex in examples]
    features, _ = encode_examples(words, "tag", tok, None, _max_len(body, conf, max_len))
    H = body.config.hidden_size
    out = [np.zeros((len(ex.tokens or []), H), np.float32) for ex in examples]
    device = next(body.parameters()).device
    lengths = [len(f["input_ids"]) for f in features]
    with torch.inference_mode():
        for idx in length_grouped_batches(lengths, batch_size, shuffle=False, seed=0):
            batch = {k: v.to(device) for k, v in collate([features[i] for i in idx], tok.specials.pad).items()}
            h = body(**batch).last_hidden_state.float()  # [B, T, H]
            for r, i in enumerate(idx):
                f = features[i]
                a = f["word_offset"]
                out[f["example"]][a : a + len(f["word_positions"])] = h[r, f["word_positions"]].cpu().numpy()
    return out


def _standardised(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    scaler = StandardScaler().fit(train)
    return [scaler.transform(x) for x in (train, *others)]


def _probe_texts(loaded, task, train, val, test, labels, seed, grid, batch_size, max_len) -> tuple:
    labels = class_labels((train, val, test), labels)
    x_train, x_val, x_test = _standardised(*(text_vectors(loaded, task, exs, batch_size, max_len)
                                             for exs in (train, val, test)))
    y_train, y_val, y_test = (label_ids(exs, labels) for exs in (train, val, test))
    model, c, val_scores = fit_logreg(x_train, y_train, x_val, accuracy(y_val), seed, grid, SOLVER)
    pred = model.predict(x_test)
    report = classification_report(y_test.tolist(), pred.tolist(), labels)
    return report, [labels[i] for i in pred], c, val_scores, {}


def _split(flat: np.ndarray, examples: Sequence[Example]) -> list[list[str]]:
    """Per-word predictions back into one list per sentence."""
    ends = np.cumsum([len(ex.tokens or []) for ex in examples])
    return [part.tolist() for part in np.split(flat, ends[:-1])]


def _probe_words(loaded, task, train, val, test, seed, grid, batch_size, max_len) -> tuple:
    x_train, x_val, x_test = _standardised(*(np.concatenate(word_vectors(loaded, exs, batch_size, max_len))
                                             for exs in (train, val, test)))
    y_train = np.array([tag for tags in word_targets(task, train)[0] for tag in tags])

    def val_f1(pred: np.ndarray) -> float:
        return word_report(task, val, _split(pred, val))[0]["f1"]

    model, c, val_scores = fit_logreg(x_train, y_train, x_val, val_f1, seed, grid, SOLVER)
    report, pred = word_report(task, test, _split(model.predict(x_test), test))
    return report, pred, c, val_scores, span_limits(task, test)


def fit_probe(checkpoint, task: str, train: Sequence[Example], val: Sequence[Example], test: Sequence[Example],
              labels: Sequence[str] | None = None, seed: int = 0, *, grid: Sequence[float] = C_GRID,
              batch_size: int = 32, max_len: int | None = None, device: str | None = None) -> dict:
    """Probe `checkpoint` (a path: pretune checkpoint or Hugging Face folder; or a loaded (body, tokenizer, config)
    tuple) on `task`: the same result dict as `fit_classic` with method "linear probe" and params {"C": ...};
    "fit_seconds" includes encoding the three sets."""
    if task not in ("classify", "pair", "tag", "span"):
        raise InputError(f"a linear probe supports the tasks classify, pair, tag and span, not '{task}' (set "
                         "[compare] probe = false)")
    start = time.perf_counter()
    loaded = checkpoint if isinstance(checkpoint, tuple) else load_body(checkpoint, device)
    if task in ("classify", "pair"):
        report, pred, c, val_scores, extra = _probe_texts(loaded, task, train, val, test, labels, seed, grid,
                                                          batch_size, max_len)
    else:
        report, pred, c, val_scores, extra = _probe_words(loaded, task, train, val, test, seed, grid, batch_size,
                                                          max_len)
    return {**result_dict(METHOD, task, report, pred, {"C": c}, val_scores, start), **extra}
