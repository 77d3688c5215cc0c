"""The comparison stage's alternatives (pretune.compare): classic baselines, the linear probe, the winner table."""

from __future__ import annotations

import json
from collections import Counter
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from pretune.compare import classic, probe
from pretune.compare.table import best_per_column, format_table, table_from_results, winner_sentence
from pretune.text.labeled import Example, read_examples

WORDNET = Path(__file__).resolve().parent.parent / "pretune" / "resources" / "wordnet"
FILES = {"classify": "supersense_{}.csv", "pair": "pairs_{}.csv", "tag": "tagging_{}.conll", "span": "spans_{}.jsonl"}
SIZES = {"classify": (200, 100, 150), "pair": (300, 100, 150), "tag": (150, 50, 100), "span": (150, 50, 100)}
SMALL_CRF = ((0.1, 0.05),)  # one (c1, c2): the CRF fits take most of a test's time


def bundled(task: str, sizes: tuple[int, int, int] | None = None) -> list[list[Example]]:
    """The first examples of the bundled train / validation / test files of `task`."""
    sizes = sizes or SIZES[task]
    return [read_examples(WORDNET / FILES[task].format(split), task)[:n]
            for split, n in zip(("train", "validation", "test"), sizes, strict=True)]


def majority_accuracy(train: list[Example], test: list[Example]) -> float:
    top = Counter(ex.label for ex in train).most_common(1)[0][0]
    return float(np.mean([ex.label == top for ex in test]))


# ---- classic baselines -----------------------------------------------------------------------------------------------
@cache
def tfidf_lr(task: str) -> tuple[list[Example], list[Example], list[Example], dict]:
    """(train, validation, test, result) of the TF-IDF + LR baseline on the first bundled examples (fit once)."""
    train, val, test = bundled(task)
    return train, val, test, classic.fit_classic(task, train, val, test, seed=0)


@pytest.mark.parametrize("task", ["classify", "pair"])
def test_tfidf_lr_beats_the_majority_class(task):
    train, _, test, result = tfidf_lr(task)
    assert result["method"] == "TF-IDF + LR" and result["metric"] == "accuracy"
    assert result["score"] == result["report"]["accuracy"] > majority_accuracy(train, test) + 0.05
    assert set(result["report"]) >= {"accuracy", "macro_f1", "micro_f1", "per_class", "confusion"}
    assert len(result["predictions"]) == len(test) and set(result["predictions"]) <= set(result["report"]["labels"])
    assert result["params"]["C"] in classic.C_GRID and result["fit_seconds"] > 0


def test_c_is_the_argmax_of_validation_scores_recomputed_here():
    train, val, _, result = tfidf_lr("classify")
    labels = result["report"]["labels"]
    vec = classic.tfidf_vectorizer().fit([ex.text for ex in train])
    y_train, y_val = (classic.label_ids(exs, labels) for exs in (train, val))
    x_train, x_val = vec.transform([ex.text for ex in train]), vec.transform([ex.text for ex in val])
    with threadpool_limits(1, user_api="blas"):
        scores = [np.mean(LogisticRegression(C=c, solver=classic.SOLVER, max_iter=2000).fit(x_train, y_train)
                          .predict(x_val) == y_val) for c in classic.C_GRID]
    assert result["params"]["C"] == classic.C_GRID[int(np.argmax(scores))]
    assert list(result["val_scores"].values()) == pytest.approx(scores)
    assert result["val_score"] == pytest.approx(max(scores))


def test_selection_ignores_everything_but_validation():
    fits = []
    best, scores, model = classic.select_on_validation([1, 2, 3], lambda v: fits.append(v) or v * 10,
                                                       lambda m: {10: 0.5, 20: 0.7, 30: 0.7}[m])
    assert (best, model, fits) == (2, 20, [1, 2, 3])  # the first of two equal scores wins
    assert scores == {"1": 0.5, "2": 0.7, "3": 0.7}


def test_crf_tags_better_than_all_o():
    train, val, test = bundled("tag")
    result = classic.fit_crf("tag", train, val, test, grid=SMALL_CRF, max_iterations=30)
    assert result["method"] == "CRF" and result["metric"] == "f1"
    assert result["score"] == result["report"]["f1"] > 0  # predicting "O" everywhere scores 0
    assert "per_type" in result["report"] and result["params"] == {"c1": 0.1, "c2": 0.05}
    assert [len(p) for p in result["predictions"]] == [len(ex.tokens) for ex in test]


def test_crf_spans_on_bundled_data():
    train, val, test = bundled("span")
    result = classic.fit_crf("span", train, val, test, grid=SMALL_CRF, max_iterations=30)
    assert result["score"] == result["report"]["f1"] > 0 and "per_label" in result["report"]
    assert result["nested"] == sum(classic.outermost(ex.spans)[1] for ex in test)


def test_outermost_counts_nested_and_crossing_spans():
    spans = [(0, 3, "A"), (1, 2, "B"), (0, 1, "C"), (4, 6, "D"), (5, 7, "E"), (8, 9, "F")]
    kept, nested, crossing = classic.outermost(spans)
    assert kept == [(0, 3, "A"), (4, 6, "D"), (8, 9, "F")]
    assert (nested, crossing) == (2, 1)
    tags = classic.spans_to_bio(10, kept)
    assert tags == ["B-A", "I-A", "I-A", "O", "B-D", "I-D", "O", "O", "B-F", "O"]
    assert classic.bio_to_spans(tags) == set(kept)


def test_span_crf_reports_the_nested_spans_it_cannot_predict():
    """Every test sentence holds an organisation with a place inside it: the CRF can find the outer span only."""
    def sentence(i: int, nested: bool) -> Example:
        tokens = ["the", "bank", "of", ["Paris", "Rome", "Oslo"][i % 3], "opened", "today"]
        spans = [(1, 4, "ORG"), (3, 4, "LOC")] if nested else [(1, 4, "ORG")]
        return Example(line=i + 1, tokens=tokens, spans=spans)

    train = [sentence(i, nested=i % 2 == 0) for i in range(30)]
    val = [sentence(i, nested=True) for i in range(6)]
    test = [sentence(i, nested=True) for i in range(9)]
    result = classic.fit_crf("span", train, val, test, grid=SMALL_CRF, max_iterations=30)
    assert (result["nested"], result["crossing"]) == (9, 0)
    assert result["report"]["per_label"]["ORG"]["f1"] == 1.0
    assert result["report"]["recall"] == pytest.approx(0.5)  # the 9 LOC spans inside ORG are never predicted


def test_word_features_see_neighbours_and_sentence_edges():
    f = classic.word_features(["In", "Paris", "1948"], 1)
    assert f["word"] == "Paris" and f["shape"] == "Xx" and f["is_title"] and f["suffix3"] == "ris"
    assert f["-1:lower"] == "in" and f["+1:shape"] == "d" and f["+1:is_digit"] and "-2:lower" not in f
    assert not f["BOS"] and not f["EOS"] and classic.word_features(["In", "Paris"], 0)["BOS"]


# ---- linear probe ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["classify", "pair", "tag", "span"])
def test_probe_runs_on_a_pretune_checkpoint(tiny_ckpt, task):
    train, val, test = bundled(task, (120, 40, 60))
    result = probe.fit_probe(tiny_ckpt, task, train, val, test, grid=(0.01, 0.1))
    assert result["method"] == "linear probe" and result["params"]["C"] in (0.01, 0.1)
    assert result["score"] == result["report"][result["metric"]] and len(result["predictions"]) == len(test)
    if task == "span":
        assert result["nested"] == sum(classic.outermost(ex.spans)[1] for ex in test)


def test_probe_of_a_pretrained_checkpoint_beats_the_majority_class(pretrained_ckpt):
    train, val, test = bundled("classify")
    result = probe.fit_probe(pretrained_ckpt, "classify", train, val, test)
    assert result["score"] > majority_accuracy(train, test)


def test_probe_features_exclude_padding(tiny_ckpt):
    """A text's vector is the same alone and batched with longer texts (padding never enters the mean)."""
    loaded = probe.load_body(tiny_ckpt)
    texts = [Example(line=1, text="a cat"), Example(line=2, text="a much longer text about a dog and a cat")]
    alone = probe.text_vectors(loaded, "classify", texts[:1])
    batched = probe.text_vectors(loaded, "classify", texts, batch_size=2)
    np.testing.assert_allclose(alone[0], batched[0], atol=1e-5)
    words = [Example(line=1, tokens=["a", "cat"]), Example(line=2, tokens="the grey cat sat on a mat".split())]
    vecs = probe.word_vectors(loaded, words, batch_size=2)
    assert [v.shape for v in vecs] == [(2, loaded[0].config.hidden_size), (7, loaded[0].config.hidden_size)]
    np.testing.assert_allclose(probe.word_vectors(loaded, words[:1])[0], vecs[0], atol=1e-5)


def hf_bert_folder(d: Path) -> Path:
    """A randomly initialised 2-layer BERT (transformers) whose vocabulary holds the supersense words."""
    transformers = pytest.importorskip("transformers")
    words = Counter(w for ex in read_examples(WORDNET / "supersense_train.csv", "classify")
                    for w in ex.text.lower().split())
    chars = sorted({c for w in words for c in w})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars),
             *(w for w, _ in words.most_common(400) if w not in chars)]
    d.mkdir()
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True}))
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=128)
    import torch

    torch.manual_seed(0)
    transformers.BertModel(cfg).eval().save_pretrained(d)
    return d


@pytest.mark.parametrize("task", ["classify", "tag"])
def test_probe_runs_on_a_hugging_face_folder(tmp_path, task):
    folder = hf_bert_folder(tmp_path / "bert")
    train, val, test = bundled(task, (120, 40, 60))
    result = probe.fit_probe(folder, task, train, val, test, grid=(0.1,))
    assert result["params"] == {"C": 0.1} and 0 <= result["score"] <= 1
    assert len(result["predictions"]) == len(test)


# ---- table and winner sentence --------------------------------------------------------------------------------------
def constructed_table() -> dict:
    results = [
        {"method": "pretune pretrained", "n_labels": 200, "report": {"accuracy": 0.329}},
        {"method": "TF-IDF + LR", "n_labels": 200, "report": {"accuracy": 0.397}},
        {"method": "linear probe", "n_labels": 200, "report": {"accuracy": 0.301}},
        {"method": "pretune pretrained", "n_labels": 600, "report": {"accuracy": 0.5004}},
        {"method": "TF-IDF + LR", "n_labels": 600, "report": {"accuracy": 0.5001}},
        {"method": "linear probe", "n_labels": 600, "report": {"accuracy": 0.45}},
        {"method": "pretune pretrained", "n_labels": 2000, "report": {"accuracy": 0.71}},
        {"method": "TF-IDF + LR", "n_labels": 2000, "report": {"accuracy": 0.623}},
    ]
    return table_from_results(results)


def test_best_per_column_and_ties():
    best = best_per_column(constructed_table(), "accuracy")
    assert best == {200: ["TF-IDF + LR"], 600: ["pretune pretrained", "TF-IDF + LR"], 2000: ["pretune pretrained"]}


def test_winner_sentence_names_the_winner_even_when_pretune_loses():
    sentence = winner_sentence(constructed_table(), "accuracy")
    assert sentence == (
        "With 200 labels TF-IDF + LR is best (0.397, +0.068 over pretune pretrained); "
        "with 600 labels pretune pretrained and TF-IDF + LR tie (0.500, +0.050 over linear probe); "
        "with 2,000 labels pretune pretrained is best (0.710, +0.087 over TF-IDF + LR)."
    )
    assert winner_sentence({"only": {50: {"f1": 0.2}}}, "f1") == "With 50 labels only is the only method (0.200)."
    assert winner_sentence({}, "f1") == "No results to compare."


def test_format_table_stars_the_best_of_each_column():
    lines = format_table(constructed_table(), "accuracy").splitlines()
    assert lines[0].split() == ["accuracy", "200", "600", "2,000"]
    assert lines[2].split() == ["TF-IDF", "+", "LR", "0.397*", "0.500*", "0.623"]
    assert lines[3].split() == ["linear", "probe", "0.301", "0.450", "-"]
