"""pretune's model averaged with TF-IDF + LR (`pretune.compare.blend`): the weight chosen on validation."""

from __future__ import annotations

import numpy as np
import pytest

from pretune.compare.blend import WEIGHTS, choose_weight, fit_blend, mix, probs_matrix
from pretune.compare.classic import fit_tfidf_lr
from pretune.errors import InputError
from pretune.text.labeled import Example

WORDS = {"fish": ["trout", "salmon", "cod", "eel"], "tree": ["oak", "pine", "elm", "ash"]}


def examples(n: int, seed: int) -> list[Example]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label = ("fish", "tree")[i % 2]
        words = list(rng.choice(WORDS[label], 2)) + list(rng.choice(["the", "a", "big", "old", "green"], 3))
        out.append(Example(line=i + 2, text=" ".join(rng.permutation(words)), label=label))
    return out


def preds(rows: list[list[float]], labels=("fish", "tree")) -> list[dict]:
    return [{"label": labels[int(np.argmax(r))], "probs": dict(zip(labels, r))} for r in rows]


def test_probs_matrix_orders_by_the_label_list_and_fills_unknown_labels_with_zero():
    m = probs_matrix([{"label": "b", "probs": {"a": 0.2, "b": 0.8}}], ["b", "c", "a"])
    assert m.tolist() == [[0.8, 0.0, 0.2]]
    with pytest.raises(InputError, match="prediction 2 has no class probabilities"):
        probs_matrix([{"label": "a", "probs": {"a": 1.0}}, {"label": "a"}], ["a"], "val.csv")


def test_choose_weight_takes_the_best_validation_mix():
    y = np.array([0, 0, 1, 1])
    # the model is sure and right on the first two, unsure and wrong on the last two; the classic model is the
    # reverse: only a mix gets all four right
    model = np.array([[0.9, 0.1], [0.9, 0.1], [0.55, 0.45], [0.55, 0.45]])
    classic = np.array([[0.45, 0.55], [0.45, 0.55], [0.1, 0.9], [0.1, 0.9]])
    w, scores = choose_weight(model, classic, y)
    assert scores == {"0.5": 1.0, "0.25": 1.0, "0.75": 1.0, "0.0": 0.5, "1.0": 0.5}
    assert w == 0.5  # equal scores: the first in WEIGHTS' order
    assert mix(model, classic, 0.25)[2].argmax() == 1
    # a model that is always right and a classic model that is always wrong: only weights that trust the model
    w, scores = choose_weight(np.eye(2)[y] * 0.2 + 0.4, np.eye(2)[1 - y], y)  # model: 0.6 on the right class
    assert w == 1.0 and scores["1.0"] == 1.0 and scores["0.75"] == 0.0


def test_an_uninformative_model_leaves_tfidf_lr_s_predictions():
    train, val, test = examples(40, 0), examples(20, 1), examples(30, 2)
    flat_val, flat_test = preds([[0.5, 0.5]] * len(val)), preds([[0.5, 0.5]] * len(test))
    r = fit_blend("classify", train, val, test, flat_val, flat_test)
    classic = fit_tfidf_lr("classify", train, val, test)
    assert r["params"]["weight"] < 1.0 and r["params"]["C"] == classic["params"]["C"]
    assert r["predictions"] == classic["predictions"] and r["score"] == classic["score"]
    assert set(r["val_scores"]) == {str(w) for w in WEIGHTS}


def test_a_model_right_on_validation_and_test_wins_the_blend():
    train, val, test = examples(6, 0), examples(20, 1), examples(30, 2)  # 3 labels per class: TF-IDF is weak
    right = lambda exs: preds([[0.9, 0.1] if ex.label == "fish" else [0.1, 0.9] for ex in exs])  # noqa: E731
    r = fit_blend("classify", train, val, test, right(val), right(test))
    assert r["method"] == "pretune pretrained + TF-IDF + LR" and r["score"] == 1.0
    assert r["val_scores"][str(r["params"]["weight"])] == 1.0


def test_blend_refuses_other_tasks_and_predictions_of_other_files():
    train, val, test = examples(10, 0), examples(4, 1), examples(4, 2)
    with pytest.raises(InputError, match="for classify and pair tasks, not tag"):
        fit_blend("tag", train, val, test, [], [])
    with pytest.raises(InputError, match="3 predictions of pretune's model for 4 validation examples"):
        fit_blend("classify", train, val, test, preds([[1, 0]] * 3), preds([[1, 0]] * 4))
