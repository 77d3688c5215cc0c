import random
import warnings

import pytest
from seqeval.metrics import classification_report as seqeval_report
from seqeval.metrics import f1_score, precision_score, recall_score
from seqeval.metrics.sequence_labeling import get_entities

from pretune.errors import InputError
from pretune.evaluate.metrics import classification_report, entity_report, entity_spans, format_report, span_report

approx = pytest.approx


# ------------------------------------------------------------------------------------------ classification


def test_classification_report_hand_computed():
    # confusion (rows true a,b,c,d; cols pred): a [1,1,0,0]  b [0,2,0,0]  c [1,0,2,0]  d [0,0,0,0]
    r = classification_report([0, 0, 1, 1, 2, 2, 2], [0, 1, 1, 1, 2, 0, 2], ["a", "b", "c", "d"])
    assert r["confusion"] == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]]
    assert r["accuracy"] == approx(5 / 7)
    assert r["micro_f1"] == approx(5 / 7)
    assert r["per_class"]["a"] == approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert r["per_class"]["b"] == approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert r["per_class"]["c"] == approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert r["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert r["macro_f1"] == approx((0.5 + 0.8 + 0.8) / 3)  # "d" occurs nowhere: left out of the mean
    assert r["labels"] == ["a", "b", "c", "d"]


def test_macro_f1_counts_classes_seen_only_in_predictions():
    r = classification_report([0, 0], [0, 1], ["a", "b", "c"])
    assert r["per_class"]["a"]["f1"] == approx(2 / 3)
    assert r["macro_f1"] == approx((2 / 3 + 0.0) / 2)
    assert r["accuracy"] == approx(0.5)


def test_classification_report_matches_sklearn_if_available():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = random.Random(0)
    y_true = [rng.randrange(5) for _ in range(200)]
    y_pred = [t if rng.random() < 0.6 else rng.randrange(4) for t in y_true]
    r = classification_report(y_true, y_pred, list("abcde"))
    assert r["macro_f1"] == approx(metrics.f1_score(y_true, y_pred, average="macro"))
    assert r["micro_f1"] == approx(metrics.f1_score(y_true, y_pred, average="micro"))
    assert r["confusion"] == metrics.confusion_matrix(y_true, y_pred, labels=range(5)).tolist()


def test_classification_report_rejects_bad_input():
    with pytest.raises(InputError, match="expected 0..1"):
        classification_report([0, 2], [0, 1], ["a", "b"])
    with pytest.raises(InputError, match="same number"):
        classification_report([0, 1], [0], ["a", "b"])


# ------------------------------------------------------------------------------------------ entities

TRICKY = [
    (["I-PER", "I-PER", "O"], ["B-PER", "I-PER", "O"]),  # I- without B-
    (["B-PER", "B-PER", "O"], ["B-PER", "I-PER", "O"]),  # adjacent entities of one type
    (["B-PER", "I-LOC", "I-LOC"], ["B-PER", "I-PER", "I-LOC"]),  # type change inside
    (["O", "I-PER", "O", "I-LOC"], ["O", "B-PER", "O", "B-LOC"]),  # I- after O
    (["O", "O", "B-LOC"], ["O", "O", "B-LOC"]),  # entity at the end
    (["O", "B-MISC", "I-MISC"], ["O", "B-MISC", "O"]),  # entity at the end, truncated prediction
    ([], []),  # empty sequence
    (["O", "O", "O"], ["O", "O", "O"]),  # all O
    (["O", "O"], ["B-ORG", "I-ORG"]),  # spurious prediction
    (["B-LOC", "I-LOC", "I-PER", "B-PER"], ["I-LOC", "I-LOC", "B-PER", "I-PER"]),
    (["I-PER"], ["I-LOC"]),
]


@pytest.mark.parametrize(
    "tags,expected",
    [
        (["I-PER", "I-PER", "O"], [("PER", 0, 2)]),
        (["B-PER", "B-PER"], [("PER", 0, 1), ("PER", 1, 2)]),
        (["B-PER", "I-LOC"], [("PER", 0, 1), ("LOC", 1, 2)]),
        (["O", "I-PER", "I-PER"], [("PER", 1, 3)]),
        (["B-PER", "O", "I-PER"], [("PER", 0, 1), ("PER", 2, 3)]),
        (["O", "O"], []),
        ([], []),
    ],
)
def test_entity_spans_examples(tags, expected):
    assert entity_spans(tags) == expected


def test_entity_spans_match_seqeval_chunking_on_random_sequences():
    alphabet = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "E-PER", "S-LOC", "I-MISC", "B", "I", "PER", ".-PER"]
    rng = random.Random(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns on tags without a prefix
        for _ in range(3000):
            seq = [rng.choice(alphabet) for _ in range(rng.randint(0, 8))]
            want = [(type_, start, end + 1) for type_, start, end in get_entities(seq)]
            assert entity_spans(seq) == want, seq


def _assert_same_as_seqeval(true, pred):
    r = entity_report(true, pred)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns on zero division
        assert r["precision"] == approx(precision_score(true, pred))
        assert r["recall"] == approx(recall_score(true, pred))
        assert r["f1"] == approx(f1_score(true, pred))
        if not r["per_type"]:
            return r
        want = seqeval_report(true, pred, output_dict=True)
    types = {k for k in want if not k.endswith(" avg")}
    assert set(r["per_type"]) == types
    for type_ in types:
        got, ref = r["per_type"][type_], want[type_]
        assert (got["precision"], got["recall"], got["f1"]) == approx(
            (ref["precision"], ref["recall"], ref["f1-score"])
        )
        assert got["support"] == ref["support"]
    return r


@pytest.mark.parametrize("true,pred", TRICKY)
def test_entity_report_equals_seqeval_per_sentence(true, pred):
    _assert_same_as_seqeval([true], [pred])


def test_entity_report_equals_seqeval_on_the_whole_tricky_set():
    true = [t for t, _ in TRICKY]
    pred = [p for _, p in TRICKY]
    r = _assert_same_as_seqeval(true, pred)
    assert 0 < r["f1"] < 1
    assert set(r["per_type"]) == {"PER", "LOC", "MISC", "ORG"}


def test_entity_report_equals_seqeval_on_random_corpora():
    alphabet = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-MISC"]
    rng = random.Random(2)
    for _ in range(100):
        true = [[rng.choice(alphabet) for _ in range(rng.randint(0, 7))] for _ in range(rng.randint(1, 5))]
        pred = [[tag if rng.random() < 0.7 else rng.choice(alphabet) for tag in sent] for sent in true]
        _assert_same_as_seqeval(true, pred)


def test_entity_report_empty_and_all_o_is_zero():
    r = entity_report([[], ["O", "O"]], [[], ["O", "O"]])
    assert (r["precision"], r["recall"], r["f1"], r["per_type"]) == (0.0, 0.0, 0.0, {})


def test_entities_do_not_cross_sentence_boundaries():
    # "B-PER" at the end of one sentence and "I-PER" at the start of the next are two entities
    r = entity_report([["O", "B-PER"], ["I-PER", "O"]], [["O", "B-PER"], ["B-PER", "O"]])
    assert r["f1"] == approx(1.0) and r["per_type"]["PER"]["support"] == 2


def test_entity_report_rejects_mismatched_lengths():
    with pytest.raises(InputError, match="sentence 1"):
        entity_report([["O"], ["O", "B-PER"]], [["O"], ["O"]])
    with pytest.raises(InputError, match="same number"):
        entity_report([["O"]], [])


# ------------------------------------------------------------------------------------------ spans


def test_span_report_nested_spans():
    true = [{(0, 5, "ORG"), (0, 2, "PER"), (3, 5, "LOC")}, {(1, 2, "PER")}]
    pred = [{(0, 5, "ORG"), (0, 2, "PER"), (3, 4, "LOC")}, {(1, 2, "PER"), (0, 2, "PER")}]
    r = span_report(true, pred)
    # 3 hits out of 5 predicted and 4 true
    assert (r["precision"], r["recall"]) == approx((3 / 5, 3 / 4))
    assert r["f1"] == approx(2 * 0.6 * 0.75 / 1.35)
    assert r["per_label"]["ORG"] == approx({"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1})
    assert r["per_label"]["PER"] == approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert r["per_label"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_span_report_matches_within_the_same_example_only():
    r = span_report([{(0, 1, "A")}, set()], [set(), {(0, 1, "A")}])
    assert (r["precision"], r["recall"], r["f1"]) == (0.0, 0.0, 0.0)
    with pytest.raises(InputError, match="start, end, label"):
        span_report([{(0, 1)}], [set()])


# ------------------------------------------------------------------------------------------ formatting


def test_format_report_names_every_label():
    reports = [
        (
            classification_report([0, 1, 2], [0, 2, 2], ["negative", "neutral", "positive"]),
            ["negative", "neutral", "positive"],
        ),
        (entity_report([["B-PER", "O", "B-LOC"]], [["B-PER", "O", "B-ORG"]]), ["PER", "LOC", "ORG"]),
        (span_report([{(0, 2, "DISEASE")}], [{(0, 2, "CHEMICAL")}]), ["DISEASE", "CHEMICAL"]),
    ]
    for report, names in reports:
        text = format_report(report)
        assert isinstance(text, str)
        for name in names:
            assert name in text
        assert f"{report.get('f1', report.get('micro_f1')):.4f}" in text
    assert "0.6667" in format_report(reports[0][0])  # accuracy 2/3
    with pytest.raises(ValueError):
        format_report({"accuracy": 1.0})


def test_confusion_table_numbers_long_label_columns():
    labels = [f"noun.class_{i:02d}" for i in range(26)]
    y_true = [i % 26 for i in range(300)]
    y_pred = [(i * 7) % 26 for i in range(300)]
    report = classification_report(y_true, y_pred, labels)
    table = format_report(report).split("\n\n")[-1].splitlines()
    assert len(table) == 27 and max(len(line) for line in table) < 160  # 26 columns still fit a wide terminal
    assert table[0].split()[-26:] == [str(i) for i in range(1, 27)]
    for i, line in enumerate(table[1:]):
        assert line.split()[:2] == [str(i + 1), labels[i]]
        assert [int(v) for v in line.split()[2:]] == report["confusion"][i]
