"""The bundled WordNet data (pretune/resources/wordnet/): format, sizes, labels, no test leakage."""

from __future__ import annotations

import csv
import gzip
import json
import re
from collections import Counter
from functools import cache
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "pretune" / "resources" / "wordnet"
SPLITS = ("train", "validation", "test")
NOUN_SUPERSENSES = {
    f"noun.{n}"
    for n in (
        "Tops act animal artifact attribute body cognition communication event feeling food group "
        "location motive object person phenomenon plant possession process quantity relation shape "
        "state substance time"
    ).split()
}
VERB_SUPERSENSES = {
    f"verb.{n}"
    for n in (
        "body change cognition communication competition consumption contact creation emotion motion "
        "perception possession social stative weather"
    ).split()
}
TAG_LABELS = {name.split(".", 1)[1] for name in NOUN_SUPERSENSES | VERB_SUPERSENSES}
SIZES = {
    "supersense": {"train": 2000, "validation": 500, "test": 2000},
    "pairs": {"train": 1000, "validation": 300, "test": 500},
    # held-out sentences whose label never occurs in train are dropped (2 in validation)
    "tagging": {"train": 2000, "validation": 498, "test": 1000},
}
TOKEN_RE = re.compile(r"\w+(?:-\w+)*|'\w*|[^\w\s]")  # the script's tokenizer


@cache
def read_csv(name: str) -> tuple[list[str], list[list[str]]]:
    with open(DATA / name, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


@cache
def read_conll(split: str) -> list[list[tuple[str, str]]]:
    sentences: list[list[tuple[str, str]]] = [[]]
    for line in (DATA / f"tagging_{split}.conll").read_text(encoding="utf-8").split("\n"):
        if not line:
            sentences.append([])
            continue
        token, tag = line.split(" ")  # exactly two fields
        sentences[-1].append((token, tag))
    return [s for s in sentences if s]


@cache
def read_spans(split: str) -> list[dict]:
    lines = (DATA / f"spans_{split}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


@cache
def corpus_lines() -> list[str]:
    with gzip.open(DATA / "corpus.txt.gz", "rt", encoding="utf-8") as f:
        return f.read().splitlines()


def test_files_present_and_small():
    names = ["LICENSE", "README.md", "corpus.txt.gz"]
    for split in SPLITS:
        names += [
            f"supersense_{split}.csv",
            f"pairs_{split}.csv",
            f"tagging_{split}.conll",
            f"spans_{split}.jsonl",
        ]
    for name in names:
        assert (DATA / name).is_file(), name
    total = sum(p.stat().st_size for p in DATA.iterdir() if p.is_file())
    assert total < 4.2e6, f"bundled data is {total} bytes"


def test_licence_and_readme():
    licence = (DATA / "LICENSE").read_text(encoding="utf-8")
    assert "WordNet 3.0 Copyright 2006 by Princeton University" in licence
    assert "Permission to use, copy, modify and distribute" in licence
    readme = (DATA / "README.md").read_text(encoding="utf-8")
    assert (
        "python scripts/make_wordnet_data.py --wordnet /usr/share/wordnet --out pretune/resources/wordnet"
        in readme
    )
    assert "WordNet 3.0" in readme


@pytest.mark.parametrize("split", SPLITS)
def test_supersense_format_and_sizes(split):
    header, rows = read_csv(f"supersense_{split}.csv")
    assert header == ["text", "label"]
    assert len(rows) == SIZES["supersense"][split]
    assert all(len(r) == 2 and r[0].strip() and r[1] in NOUN_SUPERSENSES for r in rows)
    labels = Counter(r[1] for r in rows)
    assert labels.most_common(1)[0][1] < 0.3 * len(rows)  # natural frequencies, not one class
    if split == "train":
        assert set(labels) == NOUN_SUPERSENSES


def test_supersense_splits_do_not_overlap():
    texts = {split: {r[0] for r in read_csv(f"supersense_{split}.csv")[1]} for split in SPLITS}
    assert len(texts["test"]) == SIZES["supersense"]["test"]  # no duplicates inside a split either
    assert not texts["train"] & texts["test"]
    assert not texts["train"] & texts["validation"]
    assert not texts["validation"] & texts["test"]


@pytest.mark.parametrize("split", SPLITS)
def test_pairs_format_sizes_balance(split):
    header, rows = read_csv(f"pairs_{split}.csv")
    assert header == ["text_a", "text_b", "label"]
    assert len(rows) == SIZES["pairs"][split]
    assert all(len(r) == 3 and r[0].strip() and r[1].strip() and r[0] != r[1] for r in rows)
    labels = Counter(r[2] for r in rows)
    assert labels == {"related": len(rows) // 2, "unrelated": len(rows) // 2}


def test_pairs_held_out_glosses_unseen_in_train():
    train = {t for r in read_csv("pairs_train.csv")[1] for t in r[:2]}
    held = {t for split in ("validation", "test") for r in read_csv(f"pairs_{split}.csv")[1] for t in r[:2]}
    assert not train & held


@pytest.mark.parametrize("split", SPLITS)
def test_tagging_is_valid_bio(split):
    sentences = read_conll(split)
    assert len(sentences) == SIZES["tagging"][split]
    for sent in sentences:
        previous = "O"
        for token, tag in sent:
            assert token and " " not in token
            if tag != "O":
                prefix, label = tag.split("-", 1)
                assert prefix in ("B", "I") and label in TAG_LABELS, tag
                if prefix == "I":
                    assert previous[2:] == label, f"{tag} after {previous}"
            previous = tag
        assert any(tag.startswith("B-") for _, tag in sent)  # every sentence has its target word


def test_held_out_tag_labels_occur_in_train():
    def labels(split):
        return {tag[2:] for sent in read_conll(split) for _, tag in sent if tag != "O"}

    assert labels("validation") <= labels("train") and labels("test") <= labels("train")


@pytest.mark.parametrize("split", SPLITS)
def test_spans_agree_with_tagging(split):
    conll, spans = read_conll(split), read_spans(split)
    assert len(spans) == len(conll)
    for record, sent in zip(spans, conll, strict=True):
        tokens = record["tokens"]
        assert tokens == [t for t, _ in sent]
        pairs = [(s["start"], s["end"]) for s in record["spans"]]
        assert pairs and all(0 <= a < b <= len(tokens) for a, b in pairs)
        assert all(s["label"] in TAG_LABELS for s in record["spans"])
        outer = [p for p in pairs if not any(o != p and o[0] <= p[0] and p[1] <= o[1] for o in pairs)]
        tags = ["O"] * len(tokens)
        for s in record["spans"]:
            if (s["start"], s["end"]) in outer:
                tags[s["start"]] = f"B-{s['label']}"
                for i in range(s["start"] + 1, s["end"]):
                    tags[i] = f"I-{s['label']}"
        assert tags == [t for _, t in sent]


def test_tagging_held_out_sentences_unseen_in_train():
    def keys(split):
        return {" ".join(r["tokens"]).lower() for r in read_spans(split)}

    assert not keys("train") & (keys("validation") | keys("test"))


def test_corpus_size_and_no_leakage():
    lines = corpus_lines()
    size = sum(len(line.encode("utf-8")) + 1 for line in lines)
    assert 4e6 < size < 8e6
    assert len(set(lines)) == len(lines) and all(line.strip() for line in lines)
    corpus = set(lines)
    for split in ("validation", "test"):
        held = {r[0] for r in read_csv(f"supersense_{split}.csv")[1]}
        held |= {t for r in read_csv(f"pairs_{split}.csv")[1] for t in r[:2]}
        assert not held & corpus, f"{split} glosses found in the corpus"
    held_sentences = {
        " ".join(r["tokens"]).lower() for split in ("validation", "test") for r in read_spans(split)
    }
    corpus_examples = {
        " ".join(TOKEN_RE.findall(example)).lower()
        for line in lines
        for example in re.findall(r'"([^"]+)"', line)
    }
    assert not held_sentences & corpus_examples


def test_train_glosses_are_in_corpus():
    """The corpus is the unlabeled side of the same domain: most train glosses appear in it."""
    corpus = set(corpus_lines())
    train = [r[0] for r in read_csv("supersense_train.csv")[1]]
    assert sum(t in corpus for t in train) > 0.5 * len(train)
