"""Tests for pretune.text.labeled (readers, label maps, batching) and pretune.finetune.encode (subword alignment,
windows, collate)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pretune.errors import InputError
from pretune.finetune.encode import (
    EncodeStats,
    align_word_labels,
    collate,
    encode_examples,
    enumerate_spans,
    first_subword_positions,
    truncated,
)
from pretune.text.labeled import TASKS, Example, LabelMap, iob1_to_iob2, length_grouped_batches, read_examples
from pretune.text.tokenizer import PretuneTokenizer

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Words split on purpose: Mt. -> Mt + .   Sanitas -> San ##itas   Sunshine -> Sun ##shine
VOCAB = SPECIALS + [
    "Mt", ".", "San", "##itas", "is", "in", "Sun", "##shine", "Canyon",
    "the", "movie", "was", "good", "bad", "very", "a", "b", "c", "x", "##x", "##y", "IBM", "in", "New", "York",
]  # fmt: skip


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    vocab = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    vocab.write_text("\n".join(dict.fromkeys(VOCAB)) + "\n", encoding="utf-8")
    return PretuneTokenizer.load(vocab)  # cased: the vocabulary has capitals


def _ids(tok, *pieces: str) -> list[int]:
    return [tok.token_to_id(p) for p in pieces]


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return p


# ---------------------------------------------------------------------------------------------- readers


def test_tasks_constant():
    assert TASKS == ("classify", "pair", "tag", "span", "seqtag")


def test_classify_csv_with_quoted_multiline_field(tmp_path):
    p = write(tmp_path, "train.csv", 'text,label\n"good, very\ngood",pos\n\nbad movie,neg\n')
    exs = read_examples(p, "classify")
    assert [(e.line, e.text, e.label) for e in exs] == [(2, "good, very\ngood", "pos"), (5, "bad movie", "neg")]


def test_classify_tsv_keeps_quotes_and_custom_fields(tmp_path):
    p = write(tmp_path, "train.tsv", 'id\tsentence\ty\n1\tsay "hi\tyes\n2\tno way\tno\n')
    exs = read_examples(p, "classify", text_field="sentence", label_field="y")
    assert [(e.line, e.text, e.label) for e in exs] == [(2, 'say "hi', "yes"), (3, "no way", "no")]


def test_classify_jsonl_int_labels_and_blank_lines(tmp_path):
    p = write(tmp_path, "train.jsonl", '{"text": "a", "label": 1}\n\n{"text": "b", "label": "0"}\n')
    exs = read_examples(p, "classify")
    assert [(e.line, e.text, e.label) for e in exs] == [(1, "a", "1"), (3, "b", "0")]


def test_pair_csv_and_jsonl(tmp_path):
    p = write(tmp_path, "p.csv", "text_a,text_b,label\nthe movie,was good,entail\n")
    (e,) = read_examples(p, "pair")
    assert (e.line, e.text, e.text_b, e.label) == (2, "the movie", "was good", "entail")
    p = write(tmp_path, "p.jsonl", json.dumps({"q": "x", "text_b": "y", "label": "c"}) + "\n")
    (e,) = read_examples(p, "pair", text_field="q")
    assert (e.text, e.text_b, e.label) == ("x", "y", "c")


def test_conll_reader_docstart_columns_lines(tmp_path):
    conll = (
        "-DOCSTART- -X- -X- O\n"
        "\n"
        "Mt. NNP B-NP B-LOC\n"
        "Sanitas NNP I-NP I-LOC\n"
        "is VBZ B-VP O\n"
        "\n"
        "\n"
        "IBM NNP B-NP B-ORG\n"
        "-DOCSTART- -X- -X- O\n"
        "New NNP B-NP B-LOC\n"
        "York NNP I-NP I-LOC\n"
    )
    exs = read_examples(write(tmp_path, "train.conll", conll), "tag")
    assert [e.line for e in exs] == [3, 8, 10]
    assert exs[0].tokens == ["Mt.", "Sanitas", "is"] and exs[0].tags == ["B-LOC", "I-LOC", "O"]
    assert exs[1].tokens == ["IBM"] and exs[2].tags == ["B-LOC", "I-LOC"]


def test_iob1_converted_to_iob2(tmp_path):
    assert iob1_to_iob2(["I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-ORG"]) == [
        "B-PER", "I-PER", "B-PER", "O", "B-LOC", "B-ORG",
    ]  # fmt: skip
    conll = "a I-ORG\nb I-ORG\nc O\nx I-PER\n"
    (e,) = read_examples(write(tmp_path, "iob1.txt", conll), "tag")
    assert e.tags == ["B-ORG", "I-ORG", "O", "B-PER"]
    p = write(tmp_path, "iob1.jsonl", json.dumps({"tokens": ["a", "b"], "tags": ["I-X", "B-X"]}) + "\n")
    assert read_examples(p, "tag")[0].tags == ["B-X", "B-X"]


def test_tag_jsonl_and_prediction_input(tmp_path):
    p = write(tmp_path, "t.jsonl", json.dumps({"tokens": ["a", "b"], "tags": ["B-X", "I-X"]}) + "\n")
    (e,) = read_examples(p, "tag")
    assert (e.tokens, e.tags, e.line) == (["a", "b"], ["B-X", "I-X"], 1)
    p = write(tmp_path, "u.jsonl", json.dumps({"tokens": ["a", "b"]}) + "\n")
    assert read_examples(p, "tag", require_labels=False)[0].tags is None
    p = write(tmp_path, "u.conll", "a\nb\n\nc\n")
    exs = read_examples(p, "tag", require_labels=False)
    assert [(e.tokens, e.tags, e.line) for e in exs] == [(["a", "b"], None, 1), (["c"], None, 4)]


def test_span_jsonl_nested(tmp_path):
    rec = {"tokens": ["a", "b", "c"], "spans": [{"start": 0, "end": 3, "label": "ORG"}, [1, 2, "LOC"]]}
    (e,) = read_examples(write(tmp_path, "s.jsonl", json.dumps(rec) + "\n"), "span")
    assert sorted(e.spans) == [(0, 3, "ORG"), (1, 2, "LOC")]


def test_classify_prediction_input_without_label_column(tmp_path):
    exs = read_examples(write(tmp_path, "x.csv", "text\nhello\n"), "classify", require_labels=False)
    assert [(e.text, e.label) for e in exs] == [("hello", None)]


BAD_INPUTS = [
    # (name, task, content, line, expected words in the message)
    ("empty.csv", "classify", "", None, "empty"),
    ("blank.jsonl", "classify", "\n  \n", None, "empty"),
    ("latin1.csv", "classify", b"text,label\nok,a\ncaf\xe9,b\n", 3, "UTF-8"),
    ("bad.jsonl", "classify", '{"text": "a", "label": "x"}\n{"text": "b", "label": }\n', 2, "invalid JSON"),
    ("nofield.jsonl", "classify", '{"text": "a", "label": "x"}\n{"txt": "b", "label": "y"}\n', 2, "'text'"),
    ("nolabel.jsonl", "classify", '{"text": "a"}\n', 1, "'label'"),
    ("nocol.csv", "classify", "\ntext,lab\nhi,x\n", 2, "missing column 'label'"),
    ("dup.csv", "classify", "text,label,text\na,b,c\n", 1, "duplicate column 'text'"),
    ("short.csv", "classify", "text,label\na,b\nc\n", 3, "expected 2 columns"),
    ("emptylabel.tsv", "classify", "text\tlabel\na\tb\nc\t \n", 3, "empty 'label'"),
    ("pair.csv", "pair", "text_a,label\na,b\n", 1, "'text_b'"),
    ("ragged.conll", "tag", "a NN O\nb NN O\n\nc O\n", 4, "expected 3 columns"),
    ("badtag.conll", "tag", "a O\nb X-LOC\n", 2, "invalid tag 'X-LOC'"),
    ("badtag2.conll", "tag", "a O\nb B-\n", 2, "invalid tag 'B-'"),
    ("notag.conll", "tag", "a\nb\n", 1, "tag"),
    ("len.jsonl", "tag", '{"tokens": ["a"], "tags": ["O"]}\n{"tokens": ["a", "b"], "tags": ["O"]}\n', 2, "2 tokens"),
    ("tagjs.jsonl", "tag", '{"tokens": ["a"], "tags": ["PER"]}\n', 1, "invalid tag 'PER'"),
    ("range.jsonl", "span", '{"tokens": ["a", "b"], "spans": [{"start": 1, "end": 3, "label": "X"}]}\n', 1, "range"),
    ("order.jsonl", "span", '\n{"tokens": ["a", "b"], "spans": [{"start": 1, "end": 1, "label": "X"}]}\n', 2, "end"),
    ("neg.jsonl", "span", '{"tokens": ["a", "b"], "spans": [[-1, 1, "X"]]}\n', 1, "range"),
    ("nospans.jsonl", "span", '{"tokens": ["a"]}\n', 1, "'spans'"),
    ("clash.jsonl", "span", '{"tokens": ["a"], "spans": [[0, 1, "X"], [0, 1, "Y"]]}\n', 1, "two labels"),
]


@pytest.mark.parametrize(("name", "task", "content", "line", "words"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_names_path_and_line(tmp_path, name, task, content, line, words):
    p = write(tmp_path, name, content)
    with pytest.raises(InputError) as info:
        read_examples(p, task)
    msg = str(info.value)
    where = f"{p}:{line}: " if line is not None else f"{p}: "
    assert msg.startswith(where), msg
    assert words in msg, msg


def test_missing_file_and_unknown_task(tmp_path):
    with pytest.raises(InputError, match="not found") as info:
        read_examples(tmp_path / "nope.csv", "classify")
    assert str(tmp_path / "nope.csv") in str(info.value)
    p = write(tmp_path, "ok.csv", "text,label\na,b\n")
    with pytest.raises(InputError, match="unknown task"):
        read_examples(p, "regress")


# ---------------------------------------------------------------------------------------------- label maps


def test_label_map_orders_per_task():
    cls = LabelMap.from_examples([Example(1, text="a", label="pos"), Example(2, text="b", label="neg")], "classify")
    assert cls.names == ["neg", "pos"]
    tag = LabelMap.from_examples([Example(1, tokens=["a", "b"], tags=["B-PER", "O"]), Example(2, tokens=["c"],
                                 tags=["I-LOC"])], "tag")  # fmt: skip
    assert tag.names == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    span = LabelMap.from_examples([Example(1, tokens=["a", "b"], spans=[(0, 2, "ORG"), (1, 2, "LOC")])], "span")
    assert span.names == ["NULL", "LOC", "ORG"] and span.index("NULL") == 0
    assert LabelMap.from_json(span.to_json()) == span and span.to_json() == ["NULL", "LOC", "ORG"]


def test_label_map_unseen_label_error():
    lm = LabelMap(["neg", "pos"])
    assert lm.index("pos") == 1
    with pytest.raises(InputError) as info:
        lm.index("meh", path="dev.csv", line=7)
    assert str(info.value) == "dev.csv:7: label 'meh' never appears in the training set (known: neg, pos)"


def test_encode_unseen_label_names_source_and_line(tok):
    with pytest.raises(InputError, match=r"^dev\.jsonl:4: label 'maybe' never appears"):
        encode_examples([Example(4, text="a", label="maybe")], "classify", tok, LabelMap(["a", "b"]), 16,
                        source="dev.jsonl")  # fmt: skip


# ---------------------------------------------------------------------------------------------- alignment


def test_align_word_labels_and_first_positions():
    word_ids = [None, 0, 0, 1, 2, 2, 2, None]
    assert align_word_labels(word_ids, [5, 6, 7]) == [-100, 5, -100, 6, 7, -100, -100, -100]
    assert align_word_labels(word_ids, [5, 6, 7], all_subwords=True) == [-100, 5, 5, 6, 7, 7, 7, -100]
    assert align_word_labels(word_ids, [5, 6, 7], ignore=-1) == [-1, 5, -1, 6, 7, -1, -1, -1]
    assert first_subword_positions(word_ids) == [1, 3, 4]


def test_sanitas_alignment_through_wordpiece(tok):
    words = "Mt. Sanitas is in Sunshine Canyon .".split()
    tags = ["B-LOC", "I-LOC", "O", "O", "B-LOC", "I-LOC", "O"]
    ex = Example(1, tokens=words, tags=tags)
    lm = LabelMap.from_examples([ex], "tag")  # O, B-LOC, I-LOC
    (f,), stats = encode_examples([ex], "tag", tok, lm, max_len=32)
    pieces = ["[CLS]", "Mt", ".", "San", "##itas", "is", "in", "Sun", "##shine", "Canyon", ".", "[SEP]"]
    assert f["input_ids"] == _ids(tok, *pieces)
    O, B, I, X = 0, 1, 2, -100
    assert f["labels"] == [X, B, X, I, X, O, O, B, X, I, O, X]
    assert f["word_positions"] == [1, 3, 5, 6, 7, 9, 10]
    assert f["token_type_ids"] == [0] * 12 and f["word_offset"] == 0 and f["example"] == 0
    assert stats == EncodeStats(n_examples=1, n_truncated=0, n_split=0)
    (g,), _ = encode_examples([ex], "tag", tok, lm, max_len=32, all_subwords=True)
    assert g["labels"] == [X, B, B, I, I, O, O, B, B, I, O, X]
    (h,), _ = encode_examples([Example(1, tokens=words)], "tag", tok, lm, max_len=32)
    assert "labels" not in h and h["word_positions"] == f["word_positions"]


def test_tag_window_split_keeps_every_word_once(tok):
    words = ["Sanitas", "is", "in", "Sunshine", "Canyon", "."] * 5  # 45 subwords
    tags = ["B-LOC", "O", "O", "B-LOC", "I-LOC", "O"] * 5
    exs = [Example(1, tokens=words, tags=tags), Example(9, tokens=["is"], tags=["O"])]
    lm = LabelMap.from_examples(exs, "tag")
    feats, stats = encode_examples(exs, "tag", tok, lm, max_len=10)
    assert stats.n_split == 1 and stats.n_truncated == 0 and stats.n_examples == 2
    first = [f for f in feats if f["example"] == 0]
    assert len(first) > 1 and all(len(f["input_ids"]) <= 10 for f in feats)
    seen, got = [], []
    for f in first:
        for j, pos in enumerate(f["word_positions"]):
            seen.append(f["word_offset"] + j)
            got.append(lm.names[f["labels"][pos]])
        assert sum(lab != -100 for lab in f["labels"]) == len(f["word_positions"])
    assert seen == list(range(len(words))) and got == tags


def test_word_longer_than_window_is_truncated_not_lost(tok):
    ex = Example(1, tokens=["Sanitas", "Sunshine"], tags=["B-LOC", "O"])
    feats, stats = encode_examples([ex], "tag", tok, LabelMap(["O", "B-LOC", "I-LOC"]), max_len=3)
    assert stats.n_truncated == 1 and stats.n_split == 1
    assert [f["input_ids"] for f in feats] == [_ids(tok, "[CLS]", "San", "[SEP]"), _ids(tok, "[CLS]", "Sun", "[SEP]")]
    assert [f["labels"] for f in feats] == [[-100, 1, -100], [-100, 0, -100]]


# ---------------------------------------------------------------------------------------------- spans


def test_enumerate_spans_count_and_bounds():
    spans = enumerate_spans(7, 3)
    assert len(spans) == sum(7 - w + 1 for w in range(1, 4)) == 18
    assert len(set(spans)) == 18 and all(1 <= e - s <= 3 and 0 <= s and e <= 7 for s, e in spans)
    assert enumerate_spans(2, 8) == [(0, 1), (0, 2), (1, 2)]


def test_span_encoding_labels_nested_gold(tok):
    words = "Mt. Sanitas is in Sunshine Canyon .".split()
    gold = [(0, 2, "LOC"), (1, 2, "PER"), (4, 6, "LOC"), (0, 7, "ALL")]  # nested; (0, 7) wider than 3
    ex = Example(1, tokens=words, spans=gold)
    lm = LabelMap.from_examples([ex], "span")
    assert lm.names == ["NULL", "ALL", "LOC", "PER"]
    (f,), stats = encode_examples([ex], "span", tok, lm, max_len=32, max_span_width=3)
    assert f["spans"] == enumerate_spans(7, 3)
    labeled = {sp: lm.names[lab] for sp, lab in zip(f["spans"], f["span_labels"], strict=True) if lab != 0}
    assert labeled == {(0, 2): "LOC", (1, 2): "PER", (4, 6): "LOC"}
    assert stats.n_spans_lost == 1  # (0, 7) is wider than max_span_width
    assert f["word_starts"] == [1, 3, 5, 6, 7, 9, 10] and f["word_ends"] == [2, 4, 5, 6, 8, 9, 10]
    batch = collate([f], pad_id=tok.specials.pad)
    k = f["spans"].index((0, 2))
    assert batch["span_index"][0, k].tolist() == [1, 4]  # Mt ... ##itas


def test_span_split_avoids_cutting_gold_spans(tok):
    words = ["a", "b", "c", "x", "a", "b", "c", "x"]
    ex = Example(1, tokens=words, spans=[(2, 4, "E"), (6, 8, "E")])
    lm = LabelMap.from_examples([ex], "span")
    feats, stats = encode_examples([ex], "span", tok, lm, max_len=5, max_span_width=2)  # 3 words per window
    assert stats.n_split == 1 and stats.n_spans_lost == 0
    assert [f["word_offset"] for f in feats] == [0, 2, 5]  # the first window stops before (2, 4)
    found = [
        (f["word_offset"] + s, f["word_offset"] + e)
        for f in feats
        for (s, e), lab in zip(f["spans"], f["span_labels"], strict=True)
        if lab
    ]
    assert found == [(2, 4), (6, 8)]


# ---------------------------------------------------------------------------------------------- classify / pair


def test_classify_and_pair_encoding_with_truncation(tok):
    lm = LabelMap(["bad", "good"])
    exs = [Example(1, text="the movie was good", label="good"), Example(2, text="bad " * 20, label="bad")]
    feats, stats = encode_examples(exs, "classify", tok, lm, max_len=6)
    assert feats[0]["input_ids"] == _ids(tok, "[CLS]", "the", "movie", "was", "good", "[SEP]")
    assert feats[0]["label"] == 1 and feats[1]["label"] == 0 and feats[1]["example"] == 1
    assert len(feats[1]["input_ids"]) == 6 and stats.n_truncated == 1
    pair = Example(1, text="a a a a a", text_b="b b", label="good")
    (f,), stats = encode_examples([pair], "pair", tok, lm, max_len=8)  # 5 pieces left: longest-first -> 3 + 2
    assert f["input_ids"] == _ids(tok, "[CLS]", "a", "a", "a", "[SEP]", "b", "b", "[SEP]")
    assert f["token_type_ids"] == [0, 0, 0, 0, 0, 1, 1, 1] and stats.n_truncated == 1
    (f,), _ = encode_examples([Example(1, text="a", text_b="b")], "pair", tok, None, max_len=8)
    assert f["label"] is None and f["token_type_ids"] == [0, 0, 0, 1, 1]


def test_head_tail_truncation_keeps_a_quarter_of_the_room_from_the_start():
    ids = list(range(20))
    assert truncated(ids, 8, "head") == list(range(8))
    assert truncated(ids, 8, "head+tail") == [0, 1] + list(range(14, 20))  # 8 // 4 = 2 from the head, 6 from the tail
    assert truncated(ids, 3, "head+tail") == [17, 18, 19]  # 3 // 4 = 0: the tail only
    assert truncated(ids, 20, "head+tail") == ids and truncated(ids, 25, "head") == ids  # short enough: as it is


def test_classify_head_tail_truncation_counts_and_keeps_the_end(tok):
    ex = Example(1, text="the movie " + "very " * 12 + "good", label="good")
    (f,), stats = encode_examples([ex], "classify", tok, LabelMap(["bad", "good"]), max_len=10, truncate="head+tail")
    assert f["input_ids"] == _ids(tok, "[CLS]", "the", "movie", *["very"] * 5, "good", "[SEP]")
    assert stats.n_truncated == 1


# ---------------------------------------------------------------------------------------------- batching


def test_collate_classify_and_tag_shapes(tok):
    feats = [
        {"input_ids": [2, 9, 3], "token_type_ids": [0, 0, 0], "label": 1, "example": 0},
        {"input_ids": [2, 9, 9, 9, 3], "token_type_ids": [0, 0, 0, 1, 1], "label": None, "example": 1},
    ]
    b = collate(feats, pad_id=0)
    assert b["input_ids"].tolist() == [[2, 9, 3, 0, 0], [2, 9, 9, 9, 3]]
    assert b["attention_mask"].dtype == torch.bool
    assert b["attention_mask"].tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    assert b["token_type_ids"].tolist() == [[0, 0, 0, 0, 0], [0, 0, 0, 1, 1]]
    assert b["labels"].tolist() == [1, -100]
    assert "labels" not in collate([{**feats[0], "label": None}], pad_id=0)

    exs = [Example(1, tokens=["Sanitas", "is"], tags=["B-LOC", "O"]), Example(2, tokens=["in"], tags=["O"])]
    tf, _ = encode_examples(exs, "tag", tok, LabelMap(["O", "B-LOC", "I-LOC"]), max_len=16)
    b = collate(tf, pad_id=tok.specials.pad)
    assert b["input_ids"].shape == b["labels"].shape == (2, 5)
    assert b["labels"].tolist() == [[-100, 1, -100, 0, -100], [-100, 0, -100, -100, -100]]
    assert b["input_ids"][1, 3:].tolist() == [tok.specials.pad] * 2


def test_collate_span_padding(tok):
    exs = [Example(1, tokens=["a", "b", "c"], spans=[(0, 2, "E")]), Example(2, tokens=["x"], spans=[])]
    feats, _ = encode_examples(exs, "span", tok, LabelMap(["NULL", "E"]), max_len=16, max_span_width=2)
    b = collate(feats, pad_id=tok.specials.pad)
    assert b["span_index"].shape == (2, 5, 2) and b["span_mask"].shape == b["span_labels"].shape == (2, 5)
    assert b["span_mask"].tolist() == [[True] * 5, [True] + [False] * 4]
    assert b["span_labels"].tolist() == [[0, 1, 0, 0, 0], [0, -100, -100, -100, -100]]
    assert b["span_index"][0].tolist() == [[1, 1], [1, 2], [2, 2], [2, 3], [3, 3]]
    unlabeled, _ = encode_examples([Example(1, tokens=["a"])], "span", tok, None, max_len=16)
    assert "span_labels" not in collate(unlabeled, pad_id=0)


@pytest.mark.parametrize("shuffle", [True, False])
def test_length_grouped_batches_cover_every_index_once(shuffle):
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 200, (1037,), generator=g).tolist()
    batches = length_grouped_batches(lengths, batch_size=16, shuffle=shuffle, seed=3)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert all(1 <= len(b) <= 16 for b in batches)
    assert len(batches) <= len(lengths) // 16 + 2  # full batches (at most one short batch per chunk)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    naive = sum(16 * max(lengths[i : i + 16]) for i in range(0, len(lengths), 16))
    assert padded < 0.8 * naive  # grouping by length actually cuts padding
    assert batches == length_grouped_batches(lengths, batch_size=16, shuffle=shuffle, seed=3)
    if shuffle:
        assert batches != length_grouped_batches(lengths, batch_size=16, shuffle=True, seed=4)


def test_word_without_subwords_gets_unk_so_it_keeps_a_position(tok):
    ex = Example(1, tokens=["is", "\u200b", "in"], tags=["O", "B-X", "O"])  # the normalizer drops U+200B
    assert len(tok.encode_words(ex.tokens).ids) == 2
    (f,), _ = encode_examples([ex], "tag", tok, LabelMap(["O", "B-X", "I-X"]), max_len=16)
    assert f["input_ids"] == _ids(tok, "[CLS]", "is", "[UNK]", "in", "[SEP]")
    assert f["word_positions"] == [1, 2, 3] and f["labels"] == [-100, 0, 1, 0, -100]
