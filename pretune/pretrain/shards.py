"""Token shards: a corpus tokenized once into memory-mapped files, and the training sequences packed from them.

`prepare_corpus` writes, per split (train, validation): {split}.tokens.bin (token ids, uint16 or uint32),
{split}.words.bin (uint8: 1 where a token starts a word), {split}.docs.npy (n_docs + 1 int64 token offsets), plus
meta.json (format, dtype, counts, specials, tokenizer hash, settings). `TokenShards` maps one split read-only;
`PackedSequences` cuts fixed-length sequences from it. Memory stays bounded while writing and reading.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm  # a widget in a notebook, a text bar elsewhere

from pretune.errors import InputError
from pretune.files import input_file, write_json
from pretune.text.corpus import iter_corpus, path_list

FORMAT_VERSION = 1
SPLITS = ("train", "validation")

_COPY_CHUNK = 1 << 20  # elements per chunk when copying offsets (bounded memory)


# --------------------------------------------------------------------------------------------------- writing


@dataclass
class PrepareStats:
    """What `prepare_corpus` wrote."""

    n_docs: dict[str, int]
    n_tokens: dict[str, int]
    seconds: float
    tokens_per_second: float
    dtype: str


def _specials_dict(specials: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(specials) and not isinstance(specials, type):
        return dataclasses.asdict(specials)
    if hasattr(specials, "_asdict"):
        return dict(specials._asdict())
    return {name: getattr(specials, name) for name in ("pad", "unk", "cls", "sep", "mask")}


class _SplitWriter:
    """Appends documents of one split to {split}.tokens.bin / .words.bin and raw end offsets (bounded memory)."""

    def __init__(self, directory: Path, split: str, dtype: np.dtype):
        self.directory, self.split, self.dtype = directory, split, dtype
        self.tokens = open(directory / f"{split}.tokens.bin", "w+b")
        self.words = open(directory / f"{split}.words.bin", "w+b")
        self.ends_path = directory / f"{split}.docs.raw"
        self.ends = open(self.ends_path, "w+b")
        self.n_docs = 0
        self.n_tokens = 0

    def write(self, ids: np.ndarray, words: np.ndarray, lengths: np.ndarray) -> None:
        """Append documents given as concatenated ids/word starts and per-document lengths."""
        if len(lengths) == 0:
            return
        self.tokens.write(ids.astype(self.dtype, copy=False).tobytes())
        self.words.write(words.astype(np.uint8, copy=False).tobytes())
        ends = self.n_tokens + np.cumsum(lengths, dtype=np.int64)
        self.ends.write(ends.tobytes())
        self.n_docs += len(lengths)
        self.n_tokens = int(ends[-1])

    def _end_of(self, doc: int) -> int:
        """End offset of document `doc` (-1 -> 0)."""
        if doc < 0:
            return 0
        self.ends.flush()
        self.ends.seek(doc * 8)
        return int(np.frombuffer(self.ends.read(8), dtype=np.int64)[0])

    def pop_last(self) -> tuple[np.ndarray, np.ndarray]:
        """Remove the last document and return its (ids, word starts)."""
        start = self._end_of(self.n_docs - 2)
        itemsize = self.dtype.itemsize
        out = []
        for f, dtype, size in ((self.tokens, self.dtype, itemsize), (self.words, np.dtype(np.uint8), 1)):
            f.flush()
            f.seek(start * size)
            out.append(np.frombuffer(f.read((self.n_tokens - start) * size), dtype=dtype).copy())
            f.seek(start * size)
            f.truncate()
        self.ends.seek((self.n_docs - 1) * 8)
        self.ends.truncate()
        self.n_docs -= 1
        self.n_tokens = start
        return out[0], out[1]

    def finish(self) -> None:
        """Flush the binaries and turn the raw end offsets into {split}.docs.npy (n_docs + 1 offsets)."""
        for f in (self.tokens, self.words, self.ends):
            f.flush()
            os.fsync(f.fileno())
            f.close()
        offsets = np.lib.format.open_memmap(self.directory / f"{self.split}.docs.npy", mode="w+",
                                            dtype=np.int64, shape=(self.n_docs + 1,))
        offsets[0] = 0
        if self.n_docs:
            ends = np.memmap(self.ends_path, dtype=np.int64, mode="r", shape=(self.n_docs,))
            for lo in range(0, self.n_docs, _COPY_CHUNK):
                offsets[1 + lo:1 + lo + _COPY_CHUNK] = ends[lo:lo + _COPY_CHUNK]
            del ends
        offsets.flush()
        del offsets
        self.ends_path.unlink()

    def close(self) -> None:
        for f in (self.tokens, self.words, self.ends):
            f.close()


def _encode(tokenizer: Any, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tokenize a batch: concatenated ids (int64), word-start flags (uint8) and per-document lengths."""
    encodings = tokenizer.encode_batch(texts)
    lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
    total = int(lengths.sum())
    ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), dtype=np.int64, count=total)
    word_ids = np.fromiter((-1 if w is None else w for e in encodings for w in e.word_ids),
                           dtype=np.int64, count=total)
    starts = np.ones(total, dtype=np.uint8)
    if total > 1:
        starts[1:] = word_ids[1:] != word_ids[:-1]
    starts[word_ids < 0] = 1  # tokens without a word count as their own word
    doc_starts = np.cumsum(lengths) - lengths
    starts[doc_starts[lengths > 0]] = 1  # a document always begins a word
    return ids, starts, lengths


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists():
        if not out_dir.is_dir():
            raise InputError("exists and is not a directory; choose another --out", path=out_dir)
        if any(out_dir.iterdir()) and not overwrite:
            raise InputError("output directory already exists; pass --overwrite or choose another --out",
                             path=out_dir)


def _install(tmp: Path, out_dir: Path) -> None:
    """Move the finished temporary directory into place (replacing out_dir if it exists)."""
    if out_dir.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, trash / "old")
        os.replace(tmp, out_dir)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)


def prepare_corpus(paths: Sequence[str | os.PathLike] | str | os.PathLike, tokenizer: Any,
                   out_dir: str | os.PathLike, *, fmt: str | None = None, field: str = "text",
                   doc_split: str = "line", validation_fraction: float = 0.05, seed: int = 0,
                   batch_size: int = 1000, overwrite: bool = False, progress: bool = True) -> PrepareStats:
    """Tokenize a corpus into train/validation token shards under `out_dir` (the layout is in the module docs).

    Documents go to validation with probability `validation_fraction` (seeded, so reproducible); with at least
    two documents and a positive fraction, each split gets at least one. Documents that encode to no tokens are
    dropped. Output is written to a temporary sibling directory and renamed into place at the end.
    """
    files = path_list(paths)
    out_dir = Path(out_dir)
    if not 0.0 <= validation_fraction < 1.0:
        raise InputError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    _check_out_dir(out_dir, overwrite)
    for p in files:
        input_file(p, "corpus file")  # before any progress bar or temporary directory: a FIFO, a device, a typo
    vocab_size = int(tokenizer.vocab_size)
    dtype = np.dtype(np.uint16 if vocab_size < 65536 else np.uint32)
    max_id = np.iinfo(dtype).max

    t0 = time.perf_counter()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    writers: dict[str, _SplitWriter] = {}
    try:
        writers = {s: _SplitWriter(tmp, s, dtype) for s in SPLITS}
        rng = np.random.default_rng(seed)
        docs = iter_corpus(files, fmt=fmt, field=field, doc_split=doc_split)
        with tqdm(desc="tokenizing", unit="doc", disable=not progress, file=sys.stderr) as bar:
            for batch in _batched(docs, batch_size):
                to_val = rng.random(len(batch)) < validation_fraction
                ids, words, lengths = _encode(tokenizer, batch)
                if len(ids) and (ids.min() < 0 or ids.max() > max_id):
                    raise InputError(f"tokenizer produced id {int(ids.max())} outside {dtype.name} "
                                     f"for vocab_size {vocab_size}; the tokenizer's vocab_size is wrong")
                doc_of_token = np.repeat(to_val, lengths)
                keep = lengths > 0
                for split, doc_mask, tok_mask in (("train", ~to_val, ~doc_of_token),
                                                  ("validation", to_val, doc_of_token)):
                    writers[split].write(ids[tok_mask], words[tok_mask], lengths[doc_mask & keep])
                bar.update(len(batch))
                bar.set_postfix(tokens=writers["train"].n_tokens + writers["validation"].n_tokens, refresh=False)
        _balance(writers, validation_fraction)
        for w in writers.values():
            w.finish()
        n_docs = {s: w.n_docs for s, w in writers.items()}
        n_tokens = {s: w.n_tokens for s, w in writers.items()}
        meta = {
            "format_version": FORMAT_VERSION,
            "dtype": dtype.name,
            "vocab_size": vocab_size,
            "specials": _specials_dict(tokenizer.specials),
            "splits": {s: {"n_docs": n_docs[s], "n_tokens": n_tokens[s]} for s in SPLITS},
            "sources": [str(p) for p in files],
            "tokenizer_sha256": tokenizer_hash(tokenizer),
            "settings": {"fmt": fmt, "field": field, "doc_split": doc_split,
                         "validation_fraction": validation_fraction, "seed": seed},
        }
        write_json(tmp / "meta.json", meta)
        _check_out_dir(out_dir, overwrite)  # someone may have created it meanwhile
        _install(tmp, out_dir)
    except BaseException:
        for w in writers.values():
            w.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.perf_counter() - t0
    total = sum(n_tokens.values())
    return PrepareStats(n_docs=n_docs, n_tokens=n_tokens, seconds=seconds,
                        tokens_per_second=total / seconds if seconds > 0 else 0.0, dtype=dtype.name)


def tokenizer_hash(tokenizer: Any) -> str:
    """SHA-256 of the tokenizer's JSON: meta.json records it, so a run can tell shards made with another tokenizer."""
    return hashlib.sha256(tokenizer.inner.to_str().encode("utf-8")).hexdigest()


def _batched(items: Iterable[str], n: int) -> Iterator[list[str]]:
    it = iter(items)
    while batch := list(itertools.islice(it, n)):
        yield batch


def _balance(writers: dict[str, _SplitWriter], validation_fraction: float) -> None:
    """With >= 2 documents and a positive fraction, make sure neither split is empty."""
    train, val = writers["train"], writers["validation"]
    if validation_fraction <= 0 or train.n_docs + val.n_docs < 2:
        return
    for src, dst in ((train, val), (val, train)):
        if dst.n_docs == 0:
            ids, words = src.pop_last()
            dst.write(ids, words, np.array([len(ids)], dtype=np.int64))


# --------------------------------------------------------------------------------------------------- reading shards


class TokenShards:
    """One split of a prepared corpus, memory-mapped read-only."""

    tokens: np.ndarray  # [n_tokens] uint16/uint32
    word_starts: np.ndarray  # [n_tokens] uint8
    doc_offsets: np.ndarray  # [n_docs + 1] int64
    meta: dict

    def __init__(self, directory: str | os.PathLike, split: str = "train"):
        directory = Path(directory)
        self.directory, self.split = directory, split
        meta_path = directory / "meta.json"
        if not meta_path.is_file():
            raise InputError("not a prepared corpus directory (no meta.json); run prepare first", path=directory)
        try:
            self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"corrupt meta.json ({e})", path=meta_path) from None
        if not isinstance(self.meta, dict) or self.meta.get("format_version") != FORMAT_VERSION:
            raise InputError(f"unsupported or missing format_version; expected {FORMAT_VERSION}", path=meta_path)
        splits = self.meta.get("splits", {})
        if split not in splits:
            raise InputError(f"no split {split!r}; available: {', '.join(splits) or 'none'}", path=meta_path)
        if self.meta.get("dtype") not in ("uint16", "uint32"):
            raise InputError(f"dtype must be uint16 or uint32, got {self.meta.get('dtype')!r}", path=meta_path)
        dtype = np.dtype(self.meta["dtype"])
        try:
            self.n_tokens = int(splits[split]["n_tokens"])
            self.n_docs = int(splits[split]["n_docs"])
        except (KeyError, TypeError, ValueError):
            raise InputError(f"split {split!r} lacks n_tokens/n_docs", path=meta_path) from None
        self.tokens = self._map(directory / f"{split}.tokens.bin", dtype)
        self.word_starts = self._map(directory / f"{split}.words.bin", np.dtype(np.uint8))
        self.doc_offsets = self._load_offsets(directory / f"{split}.docs.npy")

    def _map(self, path: Path, dtype: np.dtype) -> np.ndarray:
        if not path.is_file():
            raise InputError("missing shard file; the corpus directory is incomplete", path=path)
        expected = self.n_tokens * dtype.itemsize
        if path.stat().st_size != expected:
            raise InputError(f"corrupt shard: {path.stat().st_size} bytes, expected {expected} "
                             f"({self.n_tokens} tokens of {dtype.name})", path=path)
        if self.n_tokens == 0:
            return np.zeros(0, dtype=dtype)
        return np.memmap(path, dtype=dtype, mode="r", shape=(self.n_tokens,))

    def _load_offsets(self, path: Path) -> np.ndarray:
        if not path.is_file():
            raise InputError("missing document index; the corpus directory is incomplete", path=path)
        try:
            offsets = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise InputError(f"corrupt document index ({e})", path=path) from None
        if (offsets.dtype != np.int64 or offsets.shape != (self.n_docs + 1,) or offsets[0] != 0
                or offsets[-1] != self.n_tokens):
            raise InputError(f"corrupt document index: expected {self.n_docs + 1} int64 offsets from 0 to "
                             f"{self.n_tokens}", path=path)
        return offsets

    def document(self, i: int) -> np.ndarray:
        """Token ids of document i (a read-only view)."""
        if not -self.n_docs <= i < self.n_docs:
            raise IndexError(f"document {i} out of range for {self.n_docs} documents")
        i %= self.n_docs
        return self.tokens[int(self.doc_offsets[i]):int(self.doc_offsets[i + 1])]

    def __repr__(self) -> str:
        return f"TokenShards({str(self.directory)!r}, split={self.split!r}, docs={self.n_docs}, tokens={self.n_tokens})"


class PackedSequences:
    """Fixed-length training sequences packed from the token stream: no padding is ever needed.

    The virtual stream is doc0 [SEP] doc1 [SEP] doc2 [SEP] ...; sequence i is [CLS] + stream[i*(L-2):(i+1)*(L-2)]
    + [SEP] where L = max_len. The trailing remainder shorter than L-2 is dropped, except when the stream holds
    less than one full sequence: then there is one shorter sequence. Random access, vectorised numpy on the memmap.
    """

    def __init__(self, shards: TokenShards, max_len: int, cls_id: int, sep_id: int):
        if max_len < 3:
            raise InputError(f"max_len must be at least 3 ([CLS] x [SEP]), got {max_len}")
        self.shards, self.max_len, self.cls_id, self.sep_id = shards, int(max_len), int(cls_id), int(sep_id)
        self.chunk = self.max_len - 2
        self.stream_len = shards.n_tokens + shards.n_docs
        # stream position where document d starts: its token offset plus the d separators before it
        self._doc_starts = np.asarray(shards.doc_offsets[:-1], dtype=np.int64) + np.arange(shards.n_docs)
        if self.stream_len >= self.chunk:
            self._len = self.stream_len // self.chunk
        else:
            self._len = 1 if self.stream_len > 0 else 0

    def __len__(self) -> int:
        return self._len

    def _stream(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Stream positions [a, b) as (ids int64, word starts bool)."""
        d0, d1 = np.searchsorted(self._doc_starts, [a, b - 1], side="right") - 1  # docs holding a and b-1
        # separators after docs d0..d1 sit at doc_offsets[d + 1] + d
        seps = np.asarray(self.shards.doc_offsets[d0 + 1:d1 + 2], dtype=np.int64) + np.arange(d0, d1 + 1)
        seps = seps[seps < b] - a
        is_sep = np.zeros(b - a, dtype=bool)
        is_sep[seps] = True
        t0 = a - int(d0)  # index of the first real token at or after stream position a
        n = (b - a) - len(seps)
        ids = np.full(b - a, self.sep_id, dtype=np.int64)
        ids[~is_sep] = self.shards.tokens[t0:t0 + n]
        words = is_sep.copy()
        words[~is_sep] = self.shards.word_starts[t0:t0 + n] != 0
        return ids, words

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 [L], word_starts bool [L]); [CLS] and [SEP] count as word starts."""
        if not -self._len <= i < self._len:
            raise IndexError(f"sequence {i} out of range for {self._len} sequences")
        i %= self._len
        a = i * self.chunk
        b = min(a + self.chunk, self.stream_len)
        body, body_words = self._stream(a, b)
        ids = np.concatenate(([self.cls_id], body, [self.sep_id])).astype(np.int64, copy=False)
        words = np.concatenate(([True], body_words, [True]))
        return ids, words


class Documents:
    """One training item per document (a corpus line by default): [CLS] + its first max_len - 2 tokens + [SEP].

    For objectives that learn a vector per text (`simcse`): unlike PackedSequences, an item never spans two
    documents, so items differ in length and batches are padded."""

    def __init__(self, shards: TokenShards, max_len: int, cls_id: int, sep_id: int):
        if max_len < 3:
            raise InputError(f"max_len must be at least 3 ([CLS] x [SEP]), got {max_len}")
        self.shards, self.chunk, self.cls_id, self.sep_id = shards, int(max_len) - 2, int(cls_id), int(sep_id)

    def __len__(self) -> int:
        return self.shards.n_docs

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 [<= max_len], word_starts bool); [CLS] and [SEP] count as word starts."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"document {i} out of range for {len(self)} documents")
        i %= len(self)
        a = int(self.shards.doc_offsets[i])
        b = min(int(self.shards.doc_offsets[i + 1]), a + self.chunk)
        ids = np.concatenate(([self.cls_id], self.shards.tokens[a:b], [self.sep_id])).astype(np.int64)
        words = np.concatenate(([True], self.shards.word_starts[a:b] != 0, [True]))
        return ids, words
