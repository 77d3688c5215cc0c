"""Tests for pretune.text.corpus (reading raw corpora) and pretune.pretrain.shards (token shards, packed sequences)."""

from __future__ import annotations

import csv
import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pretune.errors import InputError
from pretune.pretrain.shards import PackedSequences, TokenShards, prepare_corpus
from pretune.text.corpus import FORMATS, detect_format, iter_corpus, iter_documents

# ----------------------------------------------------------------------------------------------- helpers

SYLLABLES = ["ka", "lo", "mi", "nu", "pe", "ri", "so", "ta", "ve", "zu", "bra", "ch", "ent", "ion", "x"]


def make_docs(n: int, seed: int = 0) -> list[str]:
    """n distinct documents of pseudo-words (so WordPiece splits words into several pieces)."""
    rng = np.random.default_rng(seed)
    docs = []
    for k in range(n):
        words = ["".join(rng.choice(SYLLABLES, size=rng.integers(1, 5))) for _ in range(rng.integers(1, 12))]
        docs.append(f"doc{k} " + " ".join(words) + ("." if k % 3 == 0 else ""))
    return docs


@dataclass
class _Specials:
    pad: int
    unk: int
    cls: int
    sep: int
    mask: int


class _StandInTokenizer:
    """Minimal object with the PretuneTokenizer members corpus.py relies on (used until tokenizer.py exists)."""

    def __init__(self, inner):
        self.inner = inner
        ids = {t: inner.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")}
        self.specials = _Specials(ids["[PAD]"], ids["[UNK]"], ids["[CLS]"], ids["[SEP]"], ids["[MASK]"])
        self.vocab_size = inner.get_vocab_size()

    def encode_batch(self, texts):
        return self.inner.encode_batch(texts, add_special_tokens=False)


def _train_stand_in(texts: list[str]):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordPieceTrainer(vocab_size=150, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tok.train_from_iterator(texts, trainer)
    return _StandInTokenizer(tok)


@pytest.fixture(scope="module")
def tokenizer():
    texts = make_docs(300, seed=1)
    try:
        from pretune.text.tokenizer import train_tokenizer
    except ImportError:
        return _train_stand_in(texts)
    return train_tokenizer(texts, kind="wordpiece", vocab_size=150)


class _BigVocab:
    """Delegates to a tokenizer but claims a vocabulary too large for uint16."""

    def __init__(self, base):
        self.base = base
        self.inner = base.inner
        self.specials = base.specials
        self.vocab_size = 70_000

    def encode_batch(self, texts):
        return self.base.encode_batch(texts)


def write_jsonl(path: Path, docs: list[str]) -> Path:
    path.write_text("".join(json.dumps({"id": i, "text": d}) + "\n" for i, d in enumerate(docs)), encoding="utf-8")
    return path


def encode_ids(tokenizer, docs: list[str]) -> list[tuple[int, ...]]:
    return [tuple(e.ids) for e in tokenizer.encode_batch(docs)]


def word_starts_of(encoding) -> list[int]:
    w = encoding.word_ids
    return [1 if j == 0 or w[j] is None or w[j] != w[j - 1] else 0 for j in range(len(w))]


def _write(path: Path, data: bytes) -> Path:
    if path.name.endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


# ----------------------------------------------------------------------------------------------- reading


def test_detect_format():
    assert detect_format("a/b.txt") == "txt"
    assert detect_format("x.JSONL") == "jsonl"
    assert detect_format("x.csv.gz") == "csv"
    assert detect_format(Path("x.data.tsv")) == "tsv"
    assert detect_format("train-00000-of-00002.parquet") == "parquet"
    with pytest.raises(InputError) as e:
        detect_format("corpus.xlsx")
    for f in FORMATS:
        assert f in str(e.value)
    assert "corpus.xlsx" in str(e.value)
    with pytest.raises(InputError):
        detect_format("corpus.gz")


@pytest.mark.parametrize("gz", [False, True])
def test_txt_line_and_blank(tmp_path, gz):
    data = b"first doc\n\n  \nsecond line\r\nthird line\n\n\nfourth\n"
    p = _write(tmp_path / ("c.txt.gz" if gz else "c.txt"), data)
    assert list(iter_documents(p)) == ["first doc", "second line", "third line", "fourth"]
    assert list(iter_documents(p, doc_split="blank")) == ["first doc", "second line\nthird line", "fourth"]


@pytest.mark.parametrize("gz", [False, True])
def test_jsonl(tmp_path, gz):
    lines = [{"text": "alpha"}, {"text": "  "}, {"body": "x", "text": "beta\ngamma"}, {"text": "delta", "n": 1}]
    data = ("\n".join(json.dumps(o) for o in lines) + "\n\n").encode()
    p = _write(tmp_path / ("c.jsonl.gz" if gz else "c.jsonl"), data)
    assert list(iter_documents(p)) == ["alpha", "beta\ngamma", "delta"]
    p2 = _write(tmp_path / "other.data", b'{"body": "b1"}\n{"body": "b2"}\n')
    assert list(iter_documents(p2, fmt="jsonl", field="body")) == ["b1", "b2"]


@pytest.mark.parametrize("gz", [False, True])
def test_csv(tmp_path, gz):
    rows = [["id", "text"], ["1", "plain"], ["2", 'has, comma and "quotes"'], ["3", ""], ["4", "multi\nline"]]
    path = tmp_path / ("c.csv.gz" if gz else "c.csv")
    text_path = tmp_path / "raw.csv"
    with open(text_path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    _write(path, text_path.read_bytes())
    assert list(iter_documents(path)) == ["plain", 'has, comma and "quotes"', "multi\nline"]


@pytest.mark.parametrize("gz", [False, True])
def test_tsv_is_one_record_per_line_and_quotes_are_text(tmp_path, gz):
    """TSV as the labeled reader reads it (no quoting): a stray quote must not merge the rows after it."""
    path = _write(tmp_path / ("c.tsv.gz" if gz else "c.tsv"),
                  b'id\ttext\n1\t"an open quote\n2\tsecond\n3\t\n4\tthird "quoted" word\n5\tlast\n')
    assert list(iter_documents(path)) == ['"an open quote', "second", 'third "quoted" word', "last"]


def test_iter_corpus_chains_files(tmp_path):
    a = _write(tmp_path / "a.txt", b"one\ntwo\n")
    b = write_jsonl(tmp_path / "b.jsonl", ["three"])
    assert list(iter_corpus([a, b])) == ["one", "two", "three"]
    assert list(iter_corpus(a)) == ["one", "two"]


def test_iter_corpus_empty_names_files(tmp_path):
    a = _write(tmp_path / "empty1.txt", b"\n  \n")
    b = _write(tmp_path / "empty2.txt", b"")
    with pytest.raises(InputError) as e:
        list(iter_corpus([a, b]))
    assert "empty1.txt" in str(e.value) and "empty2.txt" in str(e.value)


def _error(gen) -> str:
    with pytest.raises(InputError) as e:
        list(gen)
    return str(e.value)


@pytest.mark.parametrize("name", ["bad.txt", "bad.txt.gz", "bad.jsonl", "bad.csv"])
def test_non_utf8_reports_line(tmp_path, name):
    head = b"text\n" if name.endswith(".csv") else b""
    body = [b"ok line", b"fine", b"caf\xe9 au lait", b"after"]
    if name.startswith("bad.jsonl"):
        body = [b'{"text": "%s"}' % line for line in body]
    p = _write(tmp_path / name, head + b"\n".join(body) + b"\n")
    msg = _error(iter_documents(p))
    line = 4 if head else 3
    assert f"{p}:{line}:" in msg
    assert "UTF-8" in msg


def test_jsonl_errors(tmp_path):
    p = _write(tmp_path / "a.jsonl", b'{"text": "ok"}\n{"txt": "oops"}\n')
    msg = _error(iter_documents(p))
    assert msg.startswith(f"{p}:2:") and "'text'" in msg and "'txt'" in msg

    p = _write(tmp_path / "b.jsonl", b'{"text": "ok"}\n{"text": "ok"}\n{"text": "unterminated}\n')
    msg = _error(iter_documents(p))
    assert msg.startswith(f"{p}:3:") and "invalid JSON" in msg

    p = _write(tmp_path / "c.jsonl", b'{"text": 5}\n')
    msg = _error(iter_documents(p))
    assert msg.startswith(f"{p}:1:") and "string" in msg

    p = _write(tmp_path / "d.jsonl", b'["text"]\n')
    assert _error(iter_documents(p)).startswith(f"{p}:1:")


def test_csv_missing_column(tmp_path):
    p = _write(tmp_path / "a.csv", b"id,body,label\n1,hello,x\n")
    msg = _error(iter_documents(p))
    assert msg.startswith(f"{p}:1:")
    assert "'text'" in msg and "'id'" in msg and "'body'" in msg and "'label'" in msg


def test_csv_short_row_and_empty_file(tmp_path):
    p = _write(tmp_path / "a.csv", b"id,text\n1,hello\n2\n")
    assert _error(iter_documents(p)).startswith(f"{p}:3:")
    p = _write(tmp_path / "e.tsv", b"")
    assert "header" in _error(iter_documents(p))


def test_missing_file_and_bad_options(tmp_path):
    p = tmp_path / "nope.txt"
    msg = _error(iter_documents(p))
    assert str(p) in msg and "not found" in msg
    assert "directory" in _error(iter_documents(tmp_path, fmt="txt"))
    ok = _write(tmp_path / "ok.txt", b"x\n")
    assert "doc_split" in _error(iter_documents(ok, doc_split="para"))
    assert "parquet" in _error(iter_documents(ok, fmt="parquet"))


def test_corrupt_gzip(tmp_path):
    p = tmp_path / "a.txt.gz"
    p.write_bytes(b"not gzip at all\n")
    assert "gzip" in _error(iter_documents(p))
    good = gzip.compress(b"line one\nline two\nline three\n" * 50)
    p.write_bytes(good[: len(good) // 2])  # truncated
    assert "gzip" in _error(iter_documents(p))


# ----------------------------------------------------------------------------------------------- prepare


def _split_docs(out: Path, split: str) -> list[tuple[int, ...]]:
    sh = TokenShards(out, split)
    return [tuple(int(t) for t in sh.document(i)) for i in range(sh.n_docs)]


def _is_subsequence(sub: list, seq: list) -> bool:
    it = iter(seq)
    return all(any(x == y for y in it) for x in sub)


def test_prepare_round_trip(tmp_path, tokenizer, capsys):
    docs = make_docs(1000)
    src = write_jsonl(tmp_path / "c.jsonl", docs)
    out = tmp_path / "shards"
    stats = prepare_corpus([src], tokenizer, out, validation_fraction=0.1, seed=3, batch_size=64, progress=False)
    assert capsys.readouterr() == ("", "")

    expected = encode_ids(tokenizer, docs)
    assert len(set(expected)) == len(expected)  # documents are distinguishable by their ids
    train, val = _split_docs(out, "train"), _split_docs(out, "validation")
    assert len(train) + len(val) == 1000
    assert set(train).isdisjoint(val)
    assert set(train) | set(val) == set(expected)
    assert _is_subsequence(train, expected) and _is_subsequence(val, expected)  # order preserved
    assert 60 <= len(val) <= 140  # ~Binomial(1000, 0.1): mean 100, sd 9.5

    meta = json.loads((out / "meta.json").read_text())
    assert meta["format_version"] == 1 and meta["dtype"] == "uint16" == stats.dtype
    assert meta["vocab_size"] == tokenizer.vocab_size
    assert meta["specials"]["cls"] == tokenizer.specials.cls and meta["specials"]["sep"] == tokenizer.specials.sep
    assert meta["splits"]["validation"] == {"n_docs": len(val), "n_tokens": sum(map(len, val))}
    assert stats.n_docs == {"train": len(train), "validation": len(val)}
    assert stats.n_tokens["train"] == sum(map(len, train))
    assert stats.tokens_per_second > 0
    assert meta["sources"] == [str(src)]
    assert len(meta["tokenizer_sha256"]) == 64
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["meta.json"] + [f"{s}.{k}" for s in ("train", "validation") for k in ("tokens.bin", "words.bin", "docs.npy")]
    )
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp dirs left

    # word starts match Encoding.word_ids, document by document
    by_ids = {tuple(e.ids): word_starts_of(e) for e in tokenizer.encode_batch(docs)}
    sh = TokenShards(out, "train")
    assert sh.tokens.dtype == np.uint16 and sh.word_starts.dtype == np.uint8
    assert any(0 in v for v in by_ids.values())  # the test tokenizer does split words
    for i in range(sh.n_docs):
        a, b = sh.doc_offsets[i], sh.doc_offsets[i + 1]
        assert sh.word_starts[a:b].tolist() == by_ids[tuple(sh.tokens[a:b].tolist())]


def test_prepare_deterministic(tmp_path, tokenizer):
    src = write_jsonl(tmp_path / "c.jsonl", make_docs(300))
    kw = dict(validation_fraction=0.2, progress=False)
    prepare_corpus(src, tokenizer, tmp_path / "a", seed=7, batch_size=1000, **kw)
    prepare_corpus(src, tokenizer, tmp_path / "b", seed=7, batch_size=17, **kw)
    prepare_corpus(src, tokenizer, tmp_path / "c", seed=8, batch_size=17, **kw)
    for name in ("train.tokens.bin", "validation.words.bin", "train.docs.npy"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert _split_docs(tmp_path / "a", "validation") != _split_docs(tmp_path / "c", "validation")


def test_prepare_uint32(tmp_path, tokenizer):
    docs = make_docs(50)
    src = write_jsonl(tmp_path / "c.jsonl", docs)
    stats = prepare_corpus(src, _BigVocab(tokenizer), tmp_path / "o", validation_fraction=0.0, progress=False)
    assert stats.dtype == "uint32"
    sh = TokenShards(tmp_path / "o", "train")
    assert sh.tokens.dtype == np.uint32
    assert (tmp_path / "o" / "train.tokens.bin").stat().st_size == 4 * sh.n_tokens
    assert _split_docs(tmp_path / "o", "train") == encode_ids(tokenizer, docs)
    assert TokenShards(tmp_path / "o", "validation").n_docs == 0


def test_prepare_min_one_validation_doc(tmp_path, tokenizer):
    src = _write(tmp_path / "c.txt", b"first tiny document\nsecond tiny document\n")
    stats = prepare_corpus(src, tokenizer, tmp_path / "o", validation_fraction=0.001, progress=False)
    assert stats.n_docs == {"train": 1, "validation": 1}
    both = _split_docs(tmp_path / "o", "train") + _split_docs(tmp_path / "o", "validation")
    assert sorted(both) == sorted(encode_ids(tokenizer, ["first tiny document", "second tiny document"]))


def test_prepare_refuses_non_empty_out_dir(tmp_path, tokenizer):
    src = write_jsonl(tmp_path / "c.jsonl", make_docs(20))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(InputError) as e:
        prepare_corpus(src, tokenizer, out, progress=False)
    assert "--overwrite" in str(e.value) and str(out) in str(e.value)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl", "out"]

    prepare_corpus(src, tokenizer, out, overwrite=True, progress=False)
    assert not (out / "keep.txt").exists() and (out / "meta.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl", "out"]

    empty = tmp_path / "empty"
    empty.mkdir()
    prepare_corpus(src, tokenizer, empty, progress=False)  # an existing empty directory is fine
    assert (empty / "meta.json").is_file()


def test_prepare_failure_leaves_nothing(tmp_path, tokenizer):
    src = write_jsonl(tmp_path / "c.jsonl", make_docs(100))
    with open(src, "a") as f:
        f.write("{broken\n")
    with pytest.raises(InputError) as e:
        prepare_corpus(src, tokenizer, tmp_path / "out", batch_size=10, progress=False)
    assert f"{src}:101:" in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl"]
    empty = _write(tmp_path / "e.txt", b"\n\n")
    with pytest.raises(InputError, match="e.txt"):
        prepare_corpus(empty, tokenizer, tmp_path / "out", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl", "e.txt"]


def test_token_shards_errors(tmp_path, tokenizer):
    with pytest.raises(InputError, match="meta.json"):
        TokenShards(tmp_path / "missing")
    src = write_jsonl(tmp_path / "c.jsonl", make_docs(30))
    out = tmp_path / "o"
    prepare_corpus(src, tokenizer, out, progress=False)
    with pytest.raises(InputError, match="'test'"):
        TokenShards(out, "test")
    sh = TokenShards(out, "train")
    with pytest.raises(IndexError):
        sh.document(sh.n_docs)
    assert sh.document(-1).tolist() == sh.tokens[sh.doc_offsets[-2]:].tolist()
    del sh
    data = (out / "train.tokens.bin").read_bytes()
    (out / "train.tokens.bin").write_bytes(data[:-2])
    with pytest.raises(InputError, match="train.tokens.bin"):
        TokenShards(out, "train")
    (out / "train.tokens.bin").write_bytes(data)
    (out / "train.docs.npy").write_bytes(b"garbage")
    with pytest.raises(InputError, match="train.docs.npy"):
        TokenShards(out, "train")
    (out / "meta.json").write_text("{not json")
    with pytest.raises(InputError, match="meta.json"):
        TokenShards(out, "train")


# ----------------------------------------------------------------------------------------------- packing


def _reference_stream(sh: TokenShards, sep: int) -> tuple[list[int], list[bool]]:
    ids: list[int] = []
    words: list[bool] = []
    for i in range(sh.n_docs):
        a, b = sh.doc_offsets[i], sh.doc_offsets[i + 1]
        ids += sh.tokens[a:b].tolist() + [sep]
        words += [bool(w) for w in sh.word_starts[a:b]] + [True]
    return ids, words


@pytest.mark.parametrize("max_len", [3, 8, 33])
def test_packed_sequences(tmp_path, tokenizer, max_len):
    src = write_jsonl(tmp_path / "c.jsonl", make_docs(120))
    prepare_corpus(src, tokenizer, tmp_path / "o", validation_fraction=0.0, progress=False)
    sh = TokenShards(tmp_path / "o")
    cls, sep = tokenizer.specials.cls, tokenizer.specials.sep
    packed = PackedSequences(sh, max_len, cls, sep)
    stream, stream_words = _reference_stream(sh, sep)
    chunk = max_len - 2
    assert len(packed) == len(stream) // chunk > 1

    body: list[int] = []
    body_words: list[bool] = []
    for i in range(len(packed)):
        ids, words = packed[i]
        assert ids.dtype == np.int64 and words.dtype == np.bool_
        assert ids.shape == words.shape == (max_len,)
        assert ids[0] == cls and ids[-1] == sep and words[0] and words[-1]
        body += ids[1:-1].tolist()
        body_words += words[1:-1].tolist()
    assert body == stream[: len(packed) * chunk]
    assert body_words == stream_words[: len(packed) * chunk]

    # separators sit exactly at document ends
    ends = (sh.doc_offsets[1:] + np.arange(sh.n_docs)).tolist()
    sep_positions = [j for j, t in enumerate(body) if t == sep]
    assert sep_positions == [e for e in ends if e < len(body)]

    last_ids, _ = packed[-1]
    assert last_ids.tolist() == packed[len(packed) - 1][0].tolist()
    with pytest.raises(IndexError):
        packed[len(packed)]


def test_packed_tiny_corpus(tmp_path, tokenizer):
    src = _write(tmp_path / "c.txt", b"tiny\nka lo\n")
    prepare_corpus(src, tokenizer, tmp_path / "o", validation_fraction=0.0, progress=False)
    sh = TokenShards(tmp_path / "o")
    cls, sep = tokenizer.specials.cls, tokenizer.specials.sep
    stream, stream_words = _reference_stream(sh, sep)
    packed = PackedSequences(sh, 512, cls, sep)
    assert len(packed) == 1
    ids, words = packed[0]
    assert ids.tolist() == [cls] + stream + [sep]
    assert words.tolist() == [True] + stream_words + [True]
    assert len(ids) == sh.n_tokens + sh.n_docs + 2 < 512
    with pytest.raises(InputError):
        PackedSequences(sh, 2, cls, sep)


def test_packed_empty_split(tmp_path, tokenizer):
    src = _write(tmp_path / "c.txt", b"only one document here\n")
    prepare_corpus(src, tokenizer, tmp_path / "o", validation_fraction=0.5, progress=False)
    sizes = {s: TokenShards(tmp_path / "o", s).n_docs for s in ("train", "validation")}
    assert sorted(sizes.values()) == [0, 1]
    empty = next(s for s, n in sizes.items() if n == 0)
    assert len(PackedSequences(TokenShards(tmp_path / "o", empty), 16, 2, 3)) == 0


def test_progress_bar_goes_to_stderr(tmp_path, tokenizer, capsys):
    src = write_jsonl(tmp_path / "c.jsonl", make_docs(10))
    prepare_corpus(src, tokenizer, tmp_path / "o", progress=True)
    captured = capsys.readouterr()
    assert captured.out == "" and "doc" in captured.err

