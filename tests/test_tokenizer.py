"""Tests for pretune.text.tokenizer: training every kind, offsets, word ids, save/load, vocab.txt, errors."""

from __future__ import annotations

import json
import random
from dataclasses import astuple
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from pretune.errors import InputError
from pretune.text.tokenizer import KINDS, SPECIAL_TOKENS, PretuneTokenizer, train_tokenizer

STEMS = "play walk talk jump read work help call look turn open start learn paint clean".split()
SUFFIXES = ["", "s", "ed", "ing", "er", "ers"]
FUNCTION = "the a of and to in is was it that for on with as by at The A".split()
EXTRA = "Café naïve résumé Über, again! (test) it's 3.14 don't e-mail".split()


def make_corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = [s + x for s in STEMS for x in SUFFIXES] + FUNCTION * 3 + EXTRA
    return [" ".join(rng.choice(words) for _ in range(12)) for _ in range(n)]


CORPUS = make_corpus()
# texts made only of characters (and mostly words) of the corpus
TEXTS = [
    "The players talked, again! (test) Café  résumé Über 3.14",
    "it's a cleaning of the walkers",
    "don't e-mail the painters",
    "  leading and trailing walkers  ",
]
_TRAINED: dict[str, PretuneTokenizer] = {}


def trained(kind: str) -> PretuneTokenizer:
    if kind not in _TRAINED:
        _TRAINED[kind] = train_tokenizer(CORPUS, kind=kind, vocab_size=300)
    return _TRAINED[kind]


def squash(text: str) -> str:
    return "".join(text.split())


def surface(kind: str, token: str) -> str | None:
    """The text a token stands for, without markers; None when it is part of a multi-byte character."""
    if kind == "wordpiece":
        return token.removeprefix("##")
    if kind == "bpe":
        return token.removesuffix("</w>")
    if kind == "unigram":
        return token.removeprefix("▁")
    if kind == "bytelevel-bpe":
        text = decoders.ByteLevel().decode([token])
        return None if "\ufffd" in text else text.lstrip(" ")
    return token


# ------------------------------------------------------------------------------------ every kind


@pytest.mark.parametrize("kind", KINDS)
def test_specials_get_first_ids(kind):
    tok = trained(kind)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert astuple(tok.specials) == (0, 1, 2, 3, 4)
    assert tok.special_ids == frozenset(range(5))
    assert tok.vocab_size > len(SPECIAL_TOKENS)
    assert max(tok.inner.get_vocab(with_added_tokens=True).values()) == tok.vocab_size - 1
    # the specials are registered: a literal [MASK] in text is one token, never split
    ids = tok.encode("the [MASK] walks").ids
    assert ids.count(4) == 1
    assert tok.decode(ids) == tok.decode([i for i in ids if i != 4])


@pytest.mark.parametrize("kind", KINDS)
def test_decode_round_trips_up_to_whitespace(kind):
    tok = trained(kind)
    for text in TEXTS:
        ids = tok.encode(text).ids
        assert tok.specials.unk not in ids, (kind, text, tok.encode(text).tokens)
        assert squash(tok.decode(ids)) == squash(text)


def test_wordpiece_and_bytelevel_keep_word_boundaries_on_decode():
    text = "The players talked, again! Café résumé"
    assert tok_decode(trained("wordpiece"), text).split() == text.split()
    assert tok_decode(trained("bytelevel-bpe"), text) == text


def tok_decode(tok: PretuneTokenizer, text: str) -> str:
    return tok.decode(tok.encode(text).ids)


def test_bytelevel_never_unknown_and_exact_round_trip():
    tok = trained("bytelevel-bpe")
    text = "Zürich  日本語 🙂 tabs\tand\nnewlines"
    enc = tok.encode(text)
    assert tok.specials.unk not in enc.ids
    assert tok.decode(enc.ids) == text
    assert tok.vocab_size >= 256 + len(SPECIAL_TOKENS)


@pytest.mark.parametrize("kind", KINDS)
def test_offsets_point_at_the_token_text(kind):
    tok = trained(kind)
    for text in TEXTS + ["Zürich 日本 walkers"]:
        enc = tok.encode(text)
        covered = set()
        for token, token_id, (start, end) in zip(enc.tokens, enc.ids, enc.offsets, strict=True):
            assert 0 <= start <= end <= len(text)
            covered.update(range(start, end))
            if token_id == tok.specials.unk:
                assert end > start and not text[start:end].isspace()
                continue
            expected = surface(kind, token)
            if expected is None:  # one byte of a multi-byte character: the offsets cover that character
                assert end - start == 1 and len(text[start:end].encode()) > 1
            elif expected == "" and kind == "unigram":  # a lone word-start mark sits on the word's 1st char
                assert start == 0 or text[start - 1].isspace()
            else:
                assert text[start:end] == expected, (kind, token, text[start:end])
        # every non-whitespace character belongs to some token
        assert covered >= {i for i, c in enumerate(text) if not c.isspace()}
        starts = [s for s, _ in enc.offsets]
        assert starts == sorted(starts)


@pytest.mark.parametrize("kind", KINDS)
def test_word_ids_group_the_pieces_of_a_word(kind):
    tok = trained(kind)
    words = ["the", "repainting", "walkers", "Café", "jumped", "cleaners"]
    text = " ".join(words)
    spans, pos = [], 0
    for w in words:
        spans.append((pos, pos + len(w)))
        pos += len(w) + 1
    enc = tok.encode(text)
    assert sorted(set(enc.word_ids)) == list(range(len(words)))
    assert enc.word_ids == sorted(enc.word_ids)
    assert len(enc.ids) > len(words)  # some words really are split into several pieces
    for word_id, (start, end) in zip(enc.word_ids, enc.offsets, strict=True):
        w_start, w_end = spans[word_id]
        assert w_start <= start <= end <= w_end
    # pre-split words encode to the same ids, word_ids index the list, offsets are within each word
    by_words = tok.encode_words(words)
    assert by_words.ids == enc.ids
    assert by_words.word_ids == enc.word_ids
    for word_id, (start, end) in zip(by_words.word_ids, by_words.offsets, strict=True):
        assert 0 <= start <= end <= len(words[word_id])


@pytest.mark.parametrize("kind", KINDS)
def test_save_and_load_give_identical_ids(kind, tmp_path):
    tok = trained(kind)
    tok.save(tmp_path / "tok.json")
    tok.save(tmp_path)  # a directory: writes tmp_path/tokenizer.json
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok.json", "tokenizer.json"]  # no temp files left
    for path in (tmp_path / "tok.json", tmp_path, tmp_path / "tokenizer.json"):
        loaded = PretuneTokenizer.load(path)
        assert loaded.specials == tok.specials
        assert loaded.special_ids == tok.special_ids
        assert loaded.vocab_size == tok.vocab_size
        for text in TEXTS + ["Zürich 日本"]:
            a, b = tok.encode(text), loaded.encode(text)
            assert (a.ids, a.offsets, a.word_ids) == (b.ids, b.offsets, b.word_ids)
            assert loaded.decode(b.ids) == tok.decode(a.ids)
    batch = tok.encode_batch(TEXTS)
    assert [e.ids for e in batch] == [tok.encode(t).ids for t in TEXTS]
    words = [t.split() for t in TEXTS]
    assert [e.ids for e in tok.encode_words_batch(words)] == [tok.encode_words(w).ids for w in words]


def test_save_replaces_atomically_and_creates_parents(tmp_path):
    tok = trained("wordpiece")
    target = tmp_path / "a" / "b" / "tokenizer.json"
    tok.save(str(target))
    target.write_text("old")
    tok.save(target)
    assert json.loads(target.read_text())["model"]["type"] == "WordPiece"
    assert [p.name for p in target.parent.iterdir()] == ["tokenizer.json"]


def test_lowercase_training_folds_case_but_keeps_original_offsets():
    tok = train_tokenizer(CORPUS, kind="wordpiece", vocab_size=300, lowercase=True)
    text = "THE WALKERS Talked"
    enc = tok.encode(text)
    assert enc.ids == tok.encode(text.lower()).ids
    assert tok.specials.unk not in enc.ids
    assert [text[s:e] for s, e in enc.offsets][0] == "THE"
    assert tok.id_to_token(enc.ids[0]) == "the"


def test_add_tokens_extends_the_vocabulary(tmp_path):
    tok = train_tokenizer(CORPUS, kind="wordpiece", vocab_size=300, lowercase=True)
    size = tok.vocab_size
    walkers = tok.token_to_id("walkers")
    assert walkers is not None
    ids = tok.add_tokens(["Immunohistochemistry", "walkers"])
    assert ids == [size, walkers]  # the existing word keeps its id and is not added again
    assert tok.vocab_size == size + 1
    assert tok.id_to_token(size) == "immunohistochemistry"  # normalized like the text it will match
    enc = tok.encode("the immunohistochemistry walkers")
    assert enc.ids == [tok.token_to_id("the"), size, walkers]
    assert tok.special_ids == frozenset(range(5))
    tok.save(tmp_path)
    assert PretuneTokenizer.load(tmp_path).encode("IMMUNOHISTOCHEMISTRY").ids == [size]
    with pytest.raises(InputError):
        tok.add_tokens([""])


# ------------------------------------------------------------------------------------ textbook BPE


def test_textbook_bpe_merges(tmp_path):
    """Sennrich et al. 2016 / Jurafsky & Martin ch. 2: low x5, lowest x2, newer x6, wider x3, new x2.

    The textbook adds a separate end-of-word symbol "_" and learns, in order:
        e r, er _, n e, ne w, l o, lo w, new er_, low _
    The `tokenizers` library instead glues the suffix "</w>" to the LAST CHARACTER of each word, so
    "newer" starts as n e w e r</w> and "r</w>" is one initial symbol. Hence:
    1. textbook "e r" + "er _" become the single merge "e r</w>" (count 6 + 3 = 9);
    2. word-final w is the symbol "w</w>", unlike medial "w": "new" is n e w</w>, so the pair "ne w" only
       counts "newer" (6) instead of 6 + 2 = 8, and "l o" (5 + 2 = 7) comes before it;
    3. then "w er</w>" and "ne w" tie at 6; the library breaks ties by the smaller symbol ids and
       "w" (an initial character) is older than "ne", so "w er</w>" wins, then "ne wer</w>" (6);
    4. "lo w</w>" (5) is the textbook's "lo w" + "low _" in one merge; then "d er</w>", "i der</w>" (3).
    """
    corpus = ["low"] * 5 + ["lowest"] * 2 + ["newer"] * 6 + ["wider"] * 3 + ["new"] * 2
    random.Random(0).shuffle(corpus)
    # 5 specials + 10 characters + 3 word-final characters (r</w>, t</w>, w</w>) + 8 merges
    tok = train_tokenizer(corpus, kind="bpe", vocab_size=26, min_frequency=1)
    tok.save(tmp_path)
    merges = json.loads((tmp_path / "tokenizer.json").read_text())["model"]["merges"]
    merges = [" ".join(m) if isinstance(m, list) else m for m in merges]
    assert merges == [
        "e r</w>",
        "n e",
        "l o",
        "w er</w>",
        "ne wer</w>",
        "lo w</w>",
        "d er</w>",
        "i der</w>",
    ]
    expected = ["newer</w>", "lo", "w", "e", "s", "t</w>", "w", "ider</w>"]
    assert tok.encode("newer lowest wider").tokens == expected


# ------------------------------------------------------------------------------------ char


def test_char_vocabulary_on_dna():
    corpus = ["ACGT ACGGT TTGCA", "GATTACA", "  ", "CCGG AATT"]
    tok = train_tokenizer(corpus, kind="char")
    vocab = sorted(tok.inner.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
    assert [t for t, _ in vocab] == list(SPECIAL_TOKENS) + ["A", "C", "G", "T"]
    assert tok.vocab_size == 9
    enc = tok.encode("ACGTN")
    assert enc.ids == [5, 6, 7, 8, tok.specials.unk]
    assert enc.offsets == [(i, i + 1) for i in range(5)]
    enc = tok.encode("ACG  TTA")
    assert enc.tokens == ["A", "C", "G", "T", "T", "A"]
    assert enc.word_ids == [0, 0, 0, 1, 1, 1]
    assert enc.offsets[3] == (5, 6)
    assert tok.decode(enc.ids) == "ACGTTA"  # whitespace is not in the vocabulary


# ------------------------------------------------------------------------------------ vocab.txt


def write_bert_vocab(path: Path, words: list[str]) -> list[str]:
    """BERT layout: [PAD]=0, [unused0..98], [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103, then words."""
    tokens = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return tokens


BERT_WORDS = [
    "hello", "world", "un", "##aff", "##able", "cafe", "naive", "zurich", "don", "'", "t", "stop", "ever",
    ",", "!", ".", "?", "(", ")", "-", "—", "日", "本", "語", "の", "テ", "##キ", "##スト", "a", "##b", "##c",
]  # fmt: skip


def test_vocab_txt_special_ids_come_from_the_file(tmp_path):
    path = tmp_path / "vocab.txt"
    tokens = write_bert_vocab(path, BERT_WORDS)
    tok = PretuneTokenizer.load(path)
    assert astuple(tok.specials) == (0, 100, 101, 102, 103)
    assert tok.special_ids == frozenset({0, 100, 101, 102, 103})
    assert tok.vocab_size == len(tokens)
    enc = tok.encode("Hello unaffable WORLD xyz")  # guessed lowercase: the words are all lowercase
    assert enc.tokens == ["hello", "un", "##aff", "##able", "world", "[UNK]"]
    assert enc.ids == [tokens.index(t) for t in enc.tokens]
    assert enc.word_ids == [0, 1, 1, 1, 2, 3]
    assert tok.decode(enc.ids) == "hello unaffable world"
    assert tok.decode([101] + enc.ids[:1] + [102], skip_special_tokens=False) == "[CLS] hello [SEP]"
    # an explicit lowercase=False overrides the guess: "Hello" is then unknown
    cased = PretuneTokenizer.load(path, lowercase=False)
    assert cased.encode("Hello hello").ids == [100, tokens.index("hello")]


def test_vocab_txt_with_capitals_is_guessed_cased(tmp_path):
    path = tmp_path / "vocab.txt"
    tokens = write_bert_vocab(path, ["Hello", "hello", "Café", "##s"])
    tok = PretuneTokenizer.load(path)
    assert tok.encode("Hello hello Café").ids == [tokens.index(t) for t in ("Hello", "hello", "Café")]
    assert tok.encode("HELLO").ids == [100]


def test_load_directory_prefers_tokenizer_json(tmp_path):
    write_bert_vocab(tmp_path / "vocab.txt", BERT_WORDS)
    from_vocab = PretuneTokenizer.load(tmp_path)
    assert from_vocab.specials.unk == 100
    trained("bpe").save(tmp_path)
    from_json = PretuneTokenizer.load(tmp_path)
    assert from_json.specials.unk == 1
    assert from_json.encode("walkers").ids == trained("bpe").encode("walkers").ids


def test_transformers_bert_tokenizer_agrees(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_bert_vocab(tmp_path / "vocab.txt", BERT_WORDS)
    hf = transformers.BertTokenizerFast.from_pretrained(str(tmp_path), do_lower_case=True)
    ours = PretuneTokenizer.load(tmp_path / "vocab.txt", lowercase=True)
    tricky = [
        "Héllo, WORLD! Naïve café in Zürich.",
        "日本語のテキスト abc",
        "don't stop—ever... (unaffable?)",
        "\tTabs\u00a0and nbsp\u200b zero-width, Ab-c",
        "a [MASK] hello [SEP] xyz",
        "",
    ]
    for text in tricky:
        ref = hf(text, add_special_tokens=False, return_offsets_mapping=True)
        enc = ours.encode(text)
        assert enc.ids == ref["input_ids"], text
        assert enc.offsets == [tuple(o) for o in ref["offset_mapping"]], text
    assert any(ours.specials.unk not in ours.encode(t).ids for t in tricky[:3])


# ------------------------------------------------------------------------------------ other vocabularies


def test_gpt2_style_vocabulary_has_no_mask(tmp_path):
    vocab = {chr(c): i for i, c in enumerate(range(ord("a"), ord("z") + 1))}
    vocab["<|endoftext|>"] = len(vocab)
    inner = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    inner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    inner.add_special_tokens(["<|endoftext|>"])
    inner.save(str(tmp_path / "tokenizer.json"))
    tok = PretuneTokenizer.load(tmp_path / "tokenizer.json")
    eos = vocab["<|endoftext|>"]
    assert (tok.specials.pad, tok.specials.unk, tok.specials.cls, tok.specials.sep) == (eos, eos, eos, eos)
    assert tok.specials.mask is None
    assert tok.special_ids == frozenset({eos})


def test_roberta_style_names_are_found(tmp_path):
    names = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    vocab = {t: i for i, t in enumerate(names + ["a", "b"])}
    inner = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    inner.pre_tokenizer = pre_tokenizers.Whitespace()
    inner.save(str(tmp_path / "tokenizer.json"))
    tok = PretuneTokenizer.load(tmp_path / "tokenizer.json")
    assert astuple(tok.specials) == (1, 3, 0, 2, 4)  # pad, unk, cls, sep, mask
    assert tok.special_ids == frozenset(range(5))
    assert tok.encode("a <mask> b").ids == [5, 4, 6]  # registered on load: never split


# ------------------------------------------------------------------------------------ errors


def test_missing_file_and_empty_directory(tmp_path):
    with pytest.raises(InputError) as err:
        PretuneTokenizer.load(tmp_path / "nope" / "tokenizer.json")
    assert str(tmp_path / "nope" / "tokenizer.json") in str(err.value)
    with pytest.raises(InputError) as err:
        PretuneTokenizer.load(tmp_path)
    assert str(tmp_path) in str(err.value) and "vocab.txt" in str(err.value)


def test_garbage_json(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text('{"version": "1.0",\n  "model": oops}')
    with pytest.raises(InputError) as err:
        PretuneTokenizer.load(path)
    assert str(err.value).startswith(f"{path}:2: invalid JSON")
    path.write_text('{"not": "a tokenizer"}')
    with pytest.raises(InputError) as err:
        PretuneTokenizer.load(path)
    assert str(path) in str(err.value) and "tokenizer.json" in err.value.message


def test_vocab_txt_problems(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\n[CLS]\n[SEP]\n[MASK]\nhello\n")
    with pytest.raises(InputError) as err:
        PretuneTokenizer.load(path)
    assert str(path) in str(err.value) and "[UNK]" in str(err.value)
    path.write_text("[UNK]\n[PAD]\nhello\n")
    with pytest.raises(InputError) as err:
        PretuneTokenizer.load(path)
    assert str(path) in str(err.value) and "cls" in str(err.value) and "[SEP]" in str(err.value)
    path.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\nworld\nhello\n")
    with pytest.raises(InputError) as err:
        PretuneTokenizer.load(path)
    assert str(err.value).startswith(f"{path}:7: duplicate token 'hello' (first on line 5)")
    path.write_bytes(b"[PAD]\n\xff\xfe\n")
    with pytest.raises(InputError) as err:
        PretuneTokenizer.load(path)
    assert str(path) in str(err.value) and "UTF-8" in str(err.value)


def test_training_input_errors():
    with pytest.raises(InputError) as err:
        train_tokenizer(CORPUS, kind="wordpiece", vocab_size=3)
    assert "vocab_size 3 is too small: the 5 special tokens need" in str(err.value)
    with pytest.raises(InputError) as err:
        train_tokenizer(CORPUS, kind="sentencepiece")
    assert "wordpiece" in str(err.value)
    for kind in KINDS:
        with pytest.raises(InputError, match="empty"):
            train_tokenizer(iter(["", "  \n\t", ""]), kind=kind)
    with pytest.raises(InputError, match="strings"):
        train_tokenizer(["ok text", b"bytes"], kind="bpe")
    with pytest.raises(InputError, match="vocab_size 8 is too small for a unigram"):
        train_tokenizer(CORPUS, kind="unigram", vocab_size=8)


def test_training_accepts_a_generator_and_skips_leading_blank_texts():
    texts = (t for t in ["", "   "] + CORPUS)
    tok = train_tokenizer(texts, kind="wordpiece", vocab_size=300)
    # a one-shot iterator is read once (no pass to pin ids): the same pieces, ids possibly in another order
    assert tok.encode("walkers").tokens == trained("wordpiece").encode("walkers").tokens


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_training_gives_the_same_vocabulary_in_every_process(kind, tmp_path):
    """The `tokenizers` trainers number some pieces in hash-map order, which changes from process to process
    (huggingface/tokenizers#1794); pretune pins those ids, so two processes write the same tokenizer.json."""
    import subprocess
    import sys

    from conftest import WORDNET

    script = (
        "import gzip, itertools, sys\n"
        "from pretune.text.tokenizer import train_tokenizer\n"
        f"lines = list(itertools.islice(gzip.open({str(WORDNET / 'corpus.txt.gz')!r}, 'rt'), 3000))\n"
        f"train_tokenizer(lines, kind={kind!r}, vocab_size=1200, lowercase=True).save(sys.argv[1])\n"
    )
    outs = [tmp_path / f"run{i}.json" for i in range(2)]
    for out in outs:
        subprocess.run([sys.executable, "-c", script, str(out)], check=True, timeout=120)
    assert outs[0].read_text() == outs[1].read_text()
