"""pretune's model averaged with TF-IDF + LR (`pretune.compare.blend`): the weight chosen on validation."""

from __future__ import annotations

import numpy as np
import pytest

from pretune.compare.blend import (
    WEIGHTS,
    choose_weight,
    fit_blend,
    mix,
    probs_matrix,
    read_partner,
    save_partner,
    write_blend_model,
)
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
    r, _ = fit_blend("classify", train, val, test, flat_val, flat_test)
    classic = fit_tfidf_lr("classify", train, val, test)
    assert r["params"]["weight"] < 1.0 and r["params"]["C"] == classic["params"]["C"]
    assert r["predictions"] == classic["predictions"] and r["score"] == classic["score"]
    assert set(r["val_scores"]) == {str(w) for w in WEIGHTS}


def test_a_model_right_on_validation_and_test_wins_the_blend():
    train, val, test = examples(6, 0), examples(20, 1), examples(30, 2)  # 3 labels per class: TF-IDF is weak
    right = lambda exs: preds([[0.9, 0.1] if ex.label == "fish" else [0.1, 0.9] for ex in exs])  # noqa: E731
    r, partner = fit_blend("classify", train, val, test, right(val), right(test))
    assert r["method"] == "pretune pretrained + TF-IDF + LR" and r["score"] == 1.0
    assert r["val_scores"][str(r["params"]["weight"])] == 1.0


def test_blend_refuses_other_tasks_and_predictions_of_other_files():
    train, val, test = examples(10, 0), examples(4, 1), examples(4, 2)
    with pytest.raises(InputError, match="for classify and pair tasks, not tag"):
        fit_blend("tag", train, val, test, [], [])
    with pytest.raises(InputError, match="3 predictions of pretune's model for 4 validation examples"):
        fit_blend("classify", train, val, test, preds([[1, 0]] * 3), preds([[1, 0]] * 4))


def pair_examples(n: int, seed: int) -> list[Example]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        same = i % 2 == 0
        a = str(rng.choice(WORDS["fish"] + WORDS["tree"]))
        b = a if same else str(rng.choice([w for w in WORDS["fish"] + WORDS["tree"] if w != a]))
        out.append(Example(line=i + 2, text=f"the {a} is old", text_b=f"a {b} here", label="same" if same else "other"))
    return out


@pytest.mark.parametrize("task, make, labels", [
    ("classify", examples, ("fish", "tree")),
    ("pair", pair_examples, ("other", "same")),
])
def test_a_saved_partner_gives_the_same_probabilities(tmp_path, task, make, labels):
    train, val, test = make(40, 0), make(20, 1), make(30, 2)
    model_val, model_test = preds([[0.6, 0.4]] * len(val), labels), preds([[0.6, 0.4]] * len(test), labels)
    _, partner = fit_blend(task, train, val, test, model_val, model_test)
    save_partner(tmp_path / "blend", partner)
    loaded = read_partner(tmp_path)
    assert (loaded.task, loaded.labels, loaded.weight, loaded.C) == (task, list(labels), partner.weight, partner.C)
    new = make(25, 3)
    assert np.array_equal(loaded.probs(new), partner.probs(new))
    assert np.allclose(partner.probs(new).sum(1), 1.0) and partner.probs(new).std() > 0


def test_a_three_class_partner_blends_in_the_model_s_label_order(tmp_path):
    words = {**WORDS, "bird": ["crow", "wren", "kite", "owl"]}
    rng = np.random.default_rng(0)
    make = lambda n, s: [Example(line=i, text=" ".join(rng.choice(words[lab], 3)), label=lab)  # noqa: E731
                         for i, lab in enumerate(["fish", "tree", "bird"] * n)]
    train, val, test = make(8, 0), make(4, 1), make(4, 2)
    labels = ("bird", "fish", "tree")
    model_val = preds([[1 / 3] * 3] * len(val), labels)
    _, partner = fit_blend("classify", train, val, test, model_val, preds([[1 / 3] * 3] * len(test), labels))
    save_partner(tmp_path / "blend", partner)
    loaded = read_partner(tmp_path)
    new = [Example(line=1, text="trout salmon cod"), Example(line=2, text="crow owl wren")]
    classic = loaded.probs(new)  # columns in the partner's label order: bird, fish, tree
    assert classic[0].argmax() == 1 and classic[1].argmax() == 0
    # a model whose labels come in another order, and which knows a label the partner never saw
    model_labels = ["tree", "fish", "bird", "rock"]
    merged = [np.array([0.1, 0.1, 0.1, 0.7]), np.array([0.25, 0.25, 0.25, 0.25])]
    out = loaded.blend(new, merged, model_labels)
    w = loaded.weight
    for row, m, c in zip(out, merged, classic, strict=True):
        expected = w * m + (1 - w) * np.array([c[2], c[1], c[0], 0.0])
        assert np.allclose(row, expected) and np.isclose(row.sum(), 1.0)


def test_read_partner_is_none_without_a_blend_folder_and_names_a_damaged_file(tmp_path):
    assert read_partner(tmp_path) is None
    train, val, test = examples(20, 0), examples(10, 1), examples(10, 2)
    _, partner = fit_blend("classify", train, val, test, preds([[0.5, 0.5]] * 10), preds([[0.5, 0.5]] * 10))
    save_partner(tmp_path / "blend", partner)
    meta = tmp_path / "blend" / "classic.json"
    good = meta.read_text()
    meta.write_text(good.replace('"weight": ', '"weight": 7 + '))
    with pytest.raises(InputError, match="classic.json"):
        read_partner(tmp_path)
    data = __import__("json").loads(good)
    data["weight"] = 1.5
    meta.write_text(__import__("json").dumps(data))
    with pytest.raises(InputError, match="weight"):
        read_partner(tmp_path)
    data["weight"], data["vocabulary"]["word"] = 0.5, data["vocabulary"]["word"][:-1]
    meta.write_text(__import__("json").dumps(data))
    with pytest.raises(InputError, match="word vocabulary and idf.word must be as long"):
        read_partner(tmp_path)
    meta.write_text(good)
    (tmp_path / "blend" / "classic.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(InputError, match="classic.safetensors"):
        read_partner(tmp_path)


def test_write_blend_model_copies_the_checkpoint_beside_the_partner(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text('{"task": "classify"}')
    (model_dir / "tokenizer").mkdir()
    (model_dir / "tokenizer" / "vocab.txt").write_text("a\n")
    train, val, test = examples(20, 0), examples(10, 1), examples(10, 2)
    _, partner = fit_blend("classify", train, val, test, preds([[0.5, 0.5]] * 10), preds([[0.5, 0.5]] * 10))
    write_blend_model(tmp_path / "served", model_dir, partner)
    assert (tmp_path / "served" / "config.json").read_text() == '{"task": "classify"}'
    assert (tmp_path / "served" / "tokenizer" / "vocab.txt").read_text() == "a\n"
    assert read_partner(tmp_path / "served").weight == partner.weight
