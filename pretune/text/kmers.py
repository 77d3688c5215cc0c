"""Overlapping k-mer tokens (DNABERT-1 style, kinds ``kmer3-overlap`` ... ``kmer6-overlap``): one token per
character of each whitespace-separated word, the k characters starting there (stride 1), so a word of n characters
gives n tokens and per-character labels map 1:1 to tokens (a token carries the label of its FIRST character, the
k-mer's start). The last k - 1 tokens of a word are shorter (its tail: ``CGT``, ``GT``, ``T`` for k = 3), so every
character starts a token and the text can be rebuilt from the tokens' first characters.

`tokenizers` has no model for overlapping pieces, so the encoding is done here, in Python; the tokenizer.json holds
a word-level vocabulary of the k-mers and tails plus a marker special token ``[KMERk-OVERLAP]`` by which
`pretune.text.tokenizer.PretuneTokenizer` recognises the kind when it loads the file (its own pre-tokenizer cuts
non-overlapping k-mers and is not used for encoding).

Masked LM over such tokens must hide runs of k neighbouring tokens: a single masked k-mer is given away by its
neighbours, which share k - 1 of its characters (`pretune.pretrain.objectives.mlm`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

OVERLAP_KINDS = ("kmer3-overlap", "kmer4-overlap", "kmer5-overlap", "kmer6-overlap")
_MARKER = re.compile(r"^\[KMER(\d+)-OVERLAP\]$")
_WORD = re.compile(r"\S+")


def marker(k: int) -> str:
    """The special token that marks a tokenizer.json as overlapping k-mers."""
    return f"[KMER{k}-OVERLAP]"


def overlap_k(inner: Tokenizer) -> int:
    """k of an overlapping k-mer tokenizer (found by its marker token), 0 for any other tokenizer."""
    for tok in inner.get_added_tokens_decoder().values():
        m = _MARKER.match(tok.content)
        if m:
            return int(m.group(1))
    return 0


@dataclass
class KmerEncoding:
    """What pretune reads of a `tokenizers.Encoding`: ids, tokens, offsets (characters, end exclusive) and
    word_ids."""

    ids: list[int] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    offsets: list[tuple[int, int]] = field(default_factory=list)
    word_ids: list[int | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


def _lower_same_length(text: str) -> str:
    """Lowercase every character whose lowercase is one character (offsets stay valid)."""
    low = text.lower()
    return low if len(low) == len(text) else "".join(c.lower() if len(c.lower()) == 1 else c for c in text)


class OverlapEncoder:
    """Encodes text into overlapping k-mers with the vocabulary of an overlapping k-mer tokenizer."""

    def __init__(self, inner: Tokenizer, k: int):
        self.k = k
        self.vocab = inner.get_vocab(with_added_tokens=False)
        self.unk = self.vocab.get("[UNK]", inner.token_to_id("[UNK]"))
        self.lowercase = _lowercases(inner)

    def _word(self, word: str, base: int, w: int, out: KmerEncoding) -> None:
        k, vocab, unk = self.k, self.vocab, self.unk
        pieces = [word[i:i + k] for i in range(len(word))]
        out.tokens.extend(pieces)
        out.ids.extend(vocab.get(p, unk) for p in pieces)
        out.offsets.extend((base + i, base + i + len(p)) for i, p in enumerate(pieces))
        out.word_ids.extend([w] * len(pieces))

    def encode(self, text: str) -> KmerEncoding:
        """Tokens of every whitespace-separated word; offsets index `text`."""
        norm = _lower_same_length(text) if self.lowercase else text
        out = KmerEncoding()
        for w, m in enumerate(_WORD.finditer(norm)):
            self._word(m.group(), m.start(), w, out)
        return out

    def encode_words(self, words: list[str]) -> KmerEncoding:
        """Tokens of pre-split words; offsets are within each word, word_ids index `words`."""
        out = KmerEncoding()
        for w, word in enumerate(words):
            self._word(_lower_same_length(word) if self.lowercase else word, 0, w, out)
        return out

    def decode(self, inner: Tokenizer, ids: list[int], skip_special_tokens: bool = True) -> str:
        """The first character of every token (so a whole word decodes to itself); specials skipped or kept
        whole."""
        special = {i for i, t in inner.get_added_tokens_decoder().items() if t.special}
        parts = []
        for i in ids:
            if i in special:
                if not skip_special_tokens:
                    parts.append(inner.id_to_token(i) or "")
                continue
            tok = inner.id_to_token(int(i))
            parts.append(tok[:1] if tok else "")
        return "".join(parts)


def _lowercases(inner: Tokenizer) -> bool:
    return isinstance(inner.normalizer, normalizers.Lowercase)


def train_overlap(texts: Iterator[str], k: int, lowercase: bool, specials: tuple[str, ...]) -> Tokenizer:
    """Vocabulary = `specials` (ids 0..), the marker, then every k-mer of the corpus and every prefix of one (so
    the tail of any word is known), sorted; a word-level model (see the module docstring)."""
    pieces: set[str] = set()
    for text in texts:
        for m in _WORD.finditer(_lower_same_length(text) if lowercase else text):
            word = m.group()
            pieces.update(word[i:i + k] for i in range(len(word)))
    pieces.update({p[:j] for p in pieces for j in range(1, len(p))})  # every shorter piece: any word's tail
    vocab = {t: i for i, t in enumerate((*specials, marker(k)))}
    for piece in sorted(pieces - set(vocab)):
        vocab[piece] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Split(Regex(f".{{1,{k}}}"), behavior="isolated")])
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (*specials, marker(k))])
    return tok
