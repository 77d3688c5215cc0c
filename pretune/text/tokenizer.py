"""Train, load and save tokenizers: WordPiece, BPE, byte-level BPE, Unigram and per-character vocabularies.

`PretuneTokenizer` is a thin wrapper over a `tokenizers.Tokenizer` that knows where its special tokens are.
It never adds special tokens itself: callers put [CLS]/[SEP] around the ids. Offsets of encodings are
character offsets into the original text (for `encode_words`: into each word).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

from tokenizers import (
    AddedToken,
    Encoding,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from pretune.errors import InputError
from pretune.files import input_file, write_text
from pretune.text.hf_tokenizer import is_hf_folder, read_hf_tokenizer, read_text, read_tokenizer_json
from pretune.text.kmers import OVERLAP_KINDS, OverlapEncoder, overlap_k, train_overlap

SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0..4 when trained
KMER_KINDS = ("kmer3", "kmer4", "kmer5", "kmer6")  # non-overlapping k-mers of whitespace-free text such as DNA
KINDS = ("wordpiece", "bpe", "bytelevel-bpe", "unigram", "char")  # for any text
ALL_KINDS = (*KINDS, *KMER_KINDS, *OVERLAP_KINDS)  # OVERLAP_KINDS: one k-mer per character (pretune.text.kmers)

CONTINUING_PREFIX = "##"  # WordPiece: marks a piece that continues a word
END_OF_WORD = "</w>"  # BPE: glued to the last character of every word
GPT2_EOS = "<|endoftext|>"

# Accepted spellings of each special token, first match wins.
_ALTERNATIVES: dict[str, tuple[str, ...]] = {
    "pad": ("[PAD]", "<pad>"),
    "unk": ("[UNK]", "<unk>"),
    "cls": ("[CLS]", "<s>"),
    "sep": ("[SEP]", "</s>"),
    "mask": ("[MASK]", "<mask>"),
}
_REQUIRED = ("pad", "unk", "cls", "sep")
_SPECIAL_LIKE = re.compile(r"^(\[[^\[\]]+\]|<[^<>]+>)$")  # [unused0], [PAD], <s>, ...


@dataclass(frozen=True)
class SpecialIds:
    """Ids of the special tokens; `mask` is None only for vocabularies without a mask token (GPT-2)."""

    pad: int
    unk: int
    cls: int
    sep: int
    mask: int | None


class PretuneTokenizer:
    """Thin wrapper over tokenizers.Tokenizer. Never adds special tokens itself (callers add [CLS]/[SEP])."""

    def __init__(self, inner: Tokenizer, source: str | Path | None = None):
        self.inner = inner
        self.specials = _find_specials(inner, source)
        _register_specials(inner, self.specials)
        self.special_ids = self._collect_special_ids()
        self.kmer_overlap = overlap_k(inner)  # k of an overlapping k-mer tokenizer, else 0
        self._overlap = OverlapEncoder(inner, self.kmer_overlap) if self.kmer_overlap else None

    def _collect_special_ids(self) -> frozenset[int]:
        s = self.specials
        ids = {i for i in (s.pad, s.unk, s.cls, s.sep, s.mask) if i is not None}
        ids.update(i for i, tok in self.inner.get_added_tokens_decoder().items() if tok.special)
        return frozenset(ids)

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (the embedding size a model needs)."""
        return self.inner.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> Encoding:
        """Encode one text, no special tokens; `.offsets` index `text`, `.word_ids` its pre-split words."""
        if self._overlap is not None:
            return self._overlap.encode(text)
        return self.inner.encode(text, add_special_tokens=False)

    def encode_batch(self, texts: list[str]) -> list[Encoding]:
        """Encode many texts in parallel (Rust batch encoder), without special tokens."""
        if self._overlap is not None:
            return [self._overlap.encode(t) for t in texts]
        return self.inner.encode_batch(list(texts), add_special_tokens=False)

    def encode_words(self, words: list[str]) -> Encoding:
        """Encode a pre-split text; `.word_ids` index `words`, `.offsets` are offsets within each word."""
        if self._overlap is not None:
            return self._overlap.encode_words(list(words))
        return self.inner.encode(list(words), is_pretokenized=True, add_special_tokens=False)

    def encode_words_batch(self, batch: list[list[str]]) -> list[Encoding]:
        """`encode_words` for many word lists, in parallel."""
        if self._overlap is not None:
            return [self._overlap.encode_words(list(w)) for w in batch]
        return self.inner.encode_batch(
            [list(w) for w in batch], is_pretokenized=True, add_special_tokens=False
        )

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        if self._overlap is not None:
            return self._overlap.decode(self.inner, list(ids), skip_special_tokens)
        return self.inner.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.inner.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self.inner.id_to_token(i)

    def add_tokens(self, words: list[str]) -> list[int]:
        """Add regular (non-special) tokens, e.g. domain words; return their ids, in order.

        Each word is first passed through the tokenizer's normalizer (so "COVID" becomes "covid" for a
        lowercasing tokenizer) and the id returned is that of the normalized form. Words already in the
        vocabulary keep their id and are not added again (adding them would change how other words split).
        """
        if self.kmer_overlap:
            raise InputError("tokens cannot be added to an overlapping k-mer tokenizer (every token is a k-mer)")
        ids: list[int] = []
        for word in words:
            if not isinstance(word, str) or not word.strip():
                raise InputError(f"tokens to add must be non-empty strings, got {word!r}")
            content = self.inner.normalizer.normalize_str(word) if self.inner.normalizer else word
            existing = self.inner.token_to_id(content)
            if existing is None:
                self.inner.add_tokens([AddedToken(content, special=False, normalized=True)])
                existing = self.inner.token_to_id(content)
            if existing is None:  # pragma: no cover - the library refused the token
                raise InputError(f"could not add token {word!r} to the vocabulary")
            ids.append(existing)
        return ids

    def save(self, path: str | Path) -> None:
        """Write tokenizer.json to `path` (or `path`/tokenizer.json for a directory), atomically.

        An existing file at the target is replaced; callers that must not overwrite check first.
        """
        target = Path(path)
        if target.is_dir():
            target = target / "tokenizer.json"
        write_text(target, self.inner.to_str(pretty=True))

    @classmethod
    def load(cls, path: str | Path, lowercase: bool | None = None) -> PretuneTokenizer:
        """Load a tokenizer.json, a BERT vocab.txt, or a directory holding one (tokenizer.json preferred).

        `lowercase` applies to vocab.txt only (a tokenizer.json carries its own normalizer); None guesses it
        from the vocabulary: lowercase when no non-special token has an ASCII capital letter.
        """
        p = Path(path)
        hf_dir = p if p.is_dir() else p.parent
        if (p.is_dir() or p.name in ("tokenizer.json", "vocab.txt")) and is_hf_folder(hf_dir):
            return load_hf_tokenizer(hf_dir)
        if p.is_dir():
            if (p / "tokenizer.json").is_file():
                p = p / "tokenizer.json"
            elif (p / "vocab.txt").is_file():
                p = p / "vocab.txt"
            else:
                raise InputError(
                    "directory holds no tokenizer: expected tokenizer.json or vocab.txt in it", path=p
                )
        elif p.exists():
            input_file(p, "tokenizer file")  # a FIFO or a device: refused, never read
        else:
            raise InputError(
                "tokenizer file not found: expected a tokenizer.json, a vocab.txt or a directory", path=p
            )
        inner = read_tokenizer_json(p) if p.suffix.lower() == ".json" else _read_vocab_txt(p, lowercase)
        return cls(inner, source=p)


# ---------------------------------------------------------------------------------------------- loading


def load_hf_tokenizer(path: str | Path) -> PretuneTokenizer:
    """The tokenizer of a Hugging Face model folder, built the way `transformers`' AutoTokenizer builds it."""
    return PretuneTokenizer(read_hf_tokenizer(path), source=Path(path))


def _read_vocab_txt(path: Path, lowercase: bool | None) -> Tokenizer:
    """A BERT WordPiece vocabulary: one token per line, the line number (from 0) is the id."""
    lines = read_text(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline
    vocab: dict[str, int] = {}
    for i, raw in enumerate(lines):
        token = raw.rstrip("\r")
        if not token.strip():
            raise InputError("empty token; expected one vocabulary token per line", path=path, line=i + 1)
        if token in vocab:
            first = vocab[token] + 1
            raise InputError(f"duplicate token {token!r} (first on line {first})", path=path, line=i + 1)
        vocab[token] = i
    if not vocab:
        raise InputError("empty vocabulary; expected one token per line", path=path)
    unk = next((t for t in _ALTERNATIVES["unk"] if t in vocab), None)
    if unk is None:
        raise InputError(
            f"vocabulary has no unknown token; expected one of {', '.join(_ALTERNATIVES['unk'])}", path=path
        )
    if lowercase is None:
        lowercase = not any(
            c.isascii() and c.isupper() for t in vocab if not _SPECIAL_LIKE.match(t) for c in t
        )
    tok = Tokenizer(
        models.WordPiece(
            vocab, unk_token=unk, continuing_subword_prefix=CONTINUING_PREFIX, max_input_chars_per_word=100
        )
    )
    tok.normalizer = _bert_normalizer(lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix=CONTINUING_PREFIX, cleanup=True)
    return tok


def _find_specials(inner: Tokenizer, source: str | Path | None) -> SpecialIds:
    vocab = inner.get_vocab(with_added_tokens=True)
    found: dict[str, int | None] = {
        role: next((vocab[t] for t in names if t in vocab), None) for role, names in _ALTERNATIVES.items()
    }
    if GPT2_EOS in vocab:  # GPT-2 style: one token serves as pad, unk, cls and sep
        for role in _REQUIRED:
            if found[role] is None:
                found[role] = vocab[GPT2_EOS]
    missing = [role for role in _REQUIRED if found[role] is None]
    if missing:
        wanted = "; ".join(f"{role}: {' or '.join(_ALTERNATIVES[role])}" for role in missing)
        raise InputError(f"vocabulary lacks required special tokens ({wanted})", path=source)
    pad, unk, cls, sep = (int(found[role]) for role in _REQUIRED)  # type: ignore[arg-type]
    return SpecialIds(pad=pad, unk=unk, cls=cls, sep=sep, mask=found["mask"])


def _register_specials(inner: Tokenizer, specials: SpecialIds) -> None:
    """Mark the special tokens as special added tokens, so text never splits them and decode can skip them."""
    registered = {tok.content for tok in inner.get_added_tokens_decoder().values()}
    ids = [specials.pad, specials.unk, specials.cls, specials.sep, specials.mask]
    tokens = {inner.id_to_token(i) for i in ids if i is not None}
    new = sorted(t for t in tokens if t is not None and t not in registered)
    if new:
        inner.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in new])


# ---------------------------------------------------------------------------------------------- training


def train_tokenizer(
    texts: Iterable[str],
    kind: str = "wordpiece",
    vocab_size: int = 8000,
    min_frequency: int = 2,
    lowercase: bool = False,
    limit_alphabet: int | None = 1000,
) -> PretuneTokenizer:
    """Train a tokenizer of `kind` (see ALL_KINDS) on `texts`; SPECIAL_TOKENS get ids 0..4.

    wordpiece: BERT normalizer and pre-tokenizer, '##' continuation pieces. bpe: Whitespace pre-tokenizer,
    "</w>" glued to the last character of each word. bytelevel-bpe: GPT-2/RoBERTa style bytes (a space is
    put before the text and before each pre-split word), never [UNK]. unigram: SentencePiece-style '▁' word
    starts (whitespace runs count as one space). char: one token per non-whitespace character of the corpus
    (vocab_size, min_frequency and limit_alphabet ignored); decode joins the characters without spaces.
    kmer3 ... kmer6: each whitespace-separated word cut into non-overlapping k-mers from its start (the last one
    shorter), one token each: every piece of the corpus is in the vocabulary (vocab_size, min_frequency and
    limit_alphabet ignored); offsets map each token back to its k characters. kmer3-overlap ... kmer6-overlap: one
    k-mer per character, stride 1, DNABERT-1 style (`pretune.text.kmers`).
    min_frequency is ignored by unigram; limit_alphabet applies to wordpiece and bpe only.
    wordpiece / bpe: when `texts` can be iterated twice (a list, a `pretune.text.corpus.Corpus`) a first pass
    fixes the ids the trainer would otherwise give in hash order, and the vocabulary is the same in every run; a
    one-shot iterator is read once, with the library's small run-to-run differences.
    """
    if kind not in ALL_KINDS:
        raise InputError(f"unknown tokenizer kind {kind!r}; expected one of {', '.join(ALL_KINDS)}")
    n = len(SPECIAL_TOKENS)
    if not isinstance(vocab_size, int) or vocab_size < n + 1:
        raise InputError(
            f"vocab_size {vocab_size} is too small: the {n} special tokens need at least {n + 1} entries "
            "(the specials plus one regular token)"
        )
    if not isinstance(min_frequency, int) or min_frequency < 0:
        raise InputError(f"min_frequency {min_frequency} is invalid: expected an integer >= 0")
    if limit_alphabet is not None and (not isinstance(limit_alphabet, int) or limit_alphabet < 1):
        raise InputError(f"limit_alphabet {limit_alphabet} is invalid: expected None or an integer >= 1")
    stream = _non_empty_stream(texts)
    if kind == "char":
        tok = _train_char(stream, lowercase)
    elif kind in KMER_KINDS:
        tok = _train_kmer(stream, int(kind[4:]), lowercase)
    elif kind in OVERLAP_KINDS:
        tok = train_overlap(stream, int(kind[4]), lowercase, SPECIAL_TOKENS)
    else:
        tok = _untrained(kind, lowercase)
        trainer = _trainer(kind, vocab_size, min_frequency, limit_alphabet)
        pinned = []
        if kind in ("wordpiece", "bpe") and not isinstance(texts, Iterator):  # re-iterable: reproducible ids
            pinned = _pinned_pieces(kind, tok, texts, limit_alphabet)
            trainer.special_tokens = [*SPECIAL_TOKENS, *pinned]
        try:
            tok.train_from_iterator(stream, trainer)
        except Exception as e:
            if "not large enough" in str(e):  # unigram must keep every character
                raise InputError(
                    f"vocab_size {vocab_size} is too small for a {kind} model: it must hold the special "
                    f"tokens and every character of the corpus ({e})"
                ) from e
            raise
        if pinned:  # they were special only to fix their ids: make them ordinary vocabulary entries again
            data = json.loads(tok.to_str())
            data["added_tokens"] = [a for a in data["added_tokens"] if a["content"] in SPECIAL_TOKENS]
            tok = Tokenizer.from_str(json.dumps(data))
    if [tok.token_to_id(t) for t in SPECIAL_TOKENS] != list(range(n)):  # pragma: no cover - library change
        raise RuntimeError(f"special tokens did not get ids 0..{n - 1}")
    return PretuneTokenizer(tok)


def _pinned_pieces(kind: str, tok: Tokenizer, texts: Iterable[str], limit_alphabet: int | None) -> list[str]:
    """The pieces the trainer creates in hash-map order for the alphabet (wordpiece: '##c' for a character inside
    a word, bpe: 'c</w>' for one that ends a word), sorted. Given to the trainer as special tokens, they get fixed
    ids, and so the merges that tie on count (broken by piece id) come out the same in every process: without this
    the `tokenizers` trainers give a slightly different vocabulary from run to run (huggingface/tokenizers#1794).
    One extra pass over `texts`."""
    counts: Counter[str] = Counter()  # every character of the pre-tokenized words: the trainer's alphabet
    placed: set[str] = set()  # characters in the position that makes a piece
    for text in texts:
        text = _check_text(text)
        text = tok.normalizer.normalize_str(text) if tok.normalizer else text
        for word, _ in tok.pre_tokenizer.pre_tokenize_str(text):
            counts.update(word)
            placed.update(word[1:] if kind == "wordpiece" else word[-1:])
    ranked = [c for c, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    alphabet = set(ranked[:limit_alphabet] if limit_alphabet else ranked)  # the trainer keeps the most frequent
    return [CONTINUING_PREFIX + c if kind == "wordpiece" else c + END_OF_WORD for c in sorted(placed & alphabet)]


def _non_empty_stream(texts: Iterable[str]) -> Iterator[str]:
    """`texts` as an iterator of strings, or InputError when no text has a non-whitespace character."""
    it = iter(texts)
    for text in it:
        if _check_text(text).strip():
            return chain([text], (_check_text(t) for t in it))
    raise InputError("the corpus is empty: no text with non-whitespace characters to train on")


def _check_text(text: object) -> str:
    if not isinstance(text, str):
        raise InputError(f"expected text strings in the corpus, got {type(text).__name__}")
    return text


def _bert_normalizer(lowercase: bool) -> normalizers.Normalizer:
    # strip_accents=None follows `lowercase`, as in BERT (uncased strips accents, cased keeps them)
    return normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )


def _normalizer(kind: str, lowercase: bool) -> normalizers.Normalizer | None:
    if kind == "wordpiece":
        return _bert_normalizer(lowercase)
    if kind == "bytelevel-bpe":  # bytes as given, like GPT-2
        return normalizers.Lowercase() if lowercase else None
    return (
        normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()]) if lowercase else normalizers.NFC()
    )


def _untrained(kind: str, lowercase: bool) -> Tokenizer:
    """An empty tokenizer with the normalizer, pre-tokenizer, decoder (and post-processor) of `kind`."""
    if kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix=CONTINUING_PREFIX))
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix=CONTINUING_PREFIX, cleanup=True)
    elif kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token="[UNK]", end_of_word_suffix=END_OF_WORD))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.decoder = decoders.BPEDecoder(suffix=END_OF_WORD)
    elif kind == "bytelevel-bpe":
        tok = Tokenizer(models.BPE())
        # a space before every word, so pieces are the same at the start of a text and in word lists
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
        tok.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Strip(" ", 1, 0)])  # drop that space
        tok.post_processor = processors.ByteLevel(trim_offsets=True)  # offsets without the leading space
    elif kind == "unigram":
        tok = Tokenizer(models.Unigram())
        # split on whitespace first so offsets of "▁word" pieces cover the word, not the space before it
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.WhitespaceSplit(),
                pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always"),
            ]
        )
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    else:  # pragma: no cover - checked by the caller
        raise ValueError(kind)
    norm = _normalizer(kind, lowercase)
    if norm is not None:
        tok.normalizer = norm
    return tok


def _trainer(kind: str, vocab_size: int, min_frequency: int, limit_alphabet: int | None) -> trainers.Trainer:
    common = {"vocab_size": vocab_size, "special_tokens": list(SPECIAL_TOKENS), "show_progress": False}
    alphabet = {} if limit_alphabet is None else {"limit_alphabet": limit_alphabet}
    if kind == "wordpiece":
        return trainers.WordPieceTrainer(
            min_frequency=min_frequency, continuing_subword_prefix=CONTINUING_PREFIX, **alphabet, **common
        )
    if kind == "bpe":
        return trainers.BpeTrainer(
            min_frequency=min_frequency, end_of_word_suffix=END_OF_WORD, **alphabet, **common
        )
    if kind == "bytelevel-bpe":  # all 256 bytes always, so nothing is ever unknown
        return trainers.BpeTrainer(
            min_frequency=min_frequency, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), **common
        )
    return trainers.UnigramTrainer(unk_token="[UNK]", **common)


def _train_char(texts: Iterator[str], lowercase: bool) -> Tokenizer:
    """Vocabulary = specials + every distinct non-whitespace character; a BPE model without merges."""
    norm = _normalizer("char", lowercase)
    chars: set[str] = set()
    for text in texts:
        chars.update(norm.normalize_str(text) if norm is not None else text)
    split = pre_tokenizers.WhitespaceSplit()
    chars = {c for c in chars if split.pre_tokenize_str(c)}  # drop whitespace, as the encoder defines it
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for c in sorted(chars):
        vocab[c] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]", fuse_unk=False))
    if norm is not None:
        tok.normalizer = norm
    tok.pre_tokenizer = split  # word_ids group the characters of one whitespace-separated word
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tok


def _train_kmer(texts: Iterator[str], k: int, lowercase: bool) -> Tokenizer:
    """Vocabulary = specials + every non-overlapping k-mer (and shorter word end) of the corpus; a word-level
    model over a pre-tokenizer that cuts each word into k-mers."""
    norm = _normalizer("char", lowercase)
    split = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                     pre_tokenizers.Split(Regex(f".{{1,{k}}}"), behavior="isolated")])
    pieces: set[str] = set()
    for text in texts:
        pieces.update(p for p, _ in split.pre_tokenize_str(norm.normalize_str(text) if norm is not None else text))
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for piece in sorted(pieces):
        vocab[piece] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    if norm is not None:
        tok.normalizer = norm
    tok.pre_tokenizer = split
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tok
