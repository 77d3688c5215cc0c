"""Raw text corpora: read the documents of text files (txt, jsonl, csv, tsv, optionally gzip-compressed) and of
parquet files (`pretune.text.parquet`).

Reading streams line by line, so corpus size is bounded by disk, not memory. Bad input raises `InputError` naming
the file and 1-based line. `pretrain.shards` turns the documents into token shards.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pretune.errors import InputError
from pretune.files import input_lines
from pretune.text.parquet import iter_texts

FORMATS = ("txt", "jsonl", "csv", "tsv", "parquet")
DOC_SPLITS = ("line", "blank")

_CSV_FIELD_LIMIT = 2**31 - 1  # documents in a csv cell may be far longer than the 128 KiB default


def detect_format(path: str | os.PathLike) -> str:
    """The corpus format from the file suffix (a trailing ``.gz`` is ignored)."""
    name = Path(path).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    suffix = Path(name).suffix.lstrip(".")
    if suffix not in FORMATS:
        raise InputError(
            f"cannot tell the corpus format from the suffix {('.' + suffix) if suffix else '(none)'!r}; "
            f"expected one of {', '.join('.' + f for f in FORMATS)} (optionally followed by .gz)",
            path=path,
        )
    return suffix


def _decoded_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) for each line, line terminators kept; invalid UTF-8 -> InputError. Through
    `files.input_lines`: a regular file only, each line and the whole file bounded."""
    for lineno, raw in input_lines(path, "corpus file"):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(
                f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                "expected a UTF-8 encoded text file",
                path=path,
                line=lineno,
            ) from None
        if lineno == 1 and text.startswith("\ufeff"):
            text = text[1:]  # byte-order mark
        yield lineno, text


def _txt_documents(path: Path, doc_split: str) -> Iterator[str]:
    if doc_split == "line":
        for _, text in _decoded_lines(path):
            doc = text.rstrip("\r\n")
            if doc.strip():
                yield doc
        return
    block: list[str] = []
    for _, text in _decoded_lines(path):
        line = text.rstrip("\r\n")
        if line.strip():
            block.append(line)
        elif block:
            yield "\n".join(block)
            block = []
    if block:
        yield "\n".join(block)


def _jsonl_documents(path: Path, field: str) -> Iterator[str]:
    for lineno, text in _decoded_lines(path):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"invalid JSON: {e.msg} (column {e.colno}); expected one JSON object per line",
                             path=path, line=lineno) from None
        if not isinstance(obj, dict):
            raise InputError(f"expected a JSON object per line, got {type(obj).__name__}", path=path, line=lineno)
        if field not in obj:
            keys = ", ".join(repr(k) for k in list(obj)[:20]) or "none"
            raise InputError(f"missing field {field!r}; keys present: {keys}", path=path, line=lineno)
        doc = obj[field]
        if not isinstance(doc, str):
            raise InputError(f"field {field!r} must be a string, got {type(doc).__name__}", path=path, line=lineno)
        if doc.strip():
            yield doc


def _delimited_documents(path: Path, field: str, delimiter: str) -> Iterator[str]:
    csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))
    lines = (text for _, text in _decoded_lines(path))
    if delimiter == "\t":  # TSV: no quoting, one record per line (as the labeled reader): a stray quote in a text
        reader = csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)  # must not swallow the rows after it
    else:  # strict: an unclosed quote is an error
        reader = csv.reader(lines, delimiter=delimiter, strict=True)
    kind = "tsv" if delimiter == "\t" else "csv"
    start = 1  # line on which the current record starts
    try:
        header = next(reader, None)
        if header is None:
            raise InputError(f"empty file; expected a {kind} header row naming a {field!r} column", path=path, line=1)
        if field not in header:
            raise InputError(f"missing column {field!r}; header has columns: {', '.join(map(repr, header))}",
                             path=path, line=reader.line_num)
        col = header.index(field)
        start = reader.line_num + 1
        for row in reader:
            if row and any(cell.strip() for cell in row):
                if col >= len(row):
                    raise InputError(f"row has {len(row)} columns but the header has {len(header)}; "
                                     f"no value for column {field!r}", path=path, line=start)
                if row[col].strip():
                    yield row[col]
            start = reader.line_num + 1
    except csv.Error as e:
        raise InputError(f"malformed {kind}: {e}", path=path, line=start) from None


def iter_documents(path: str | os.PathLike, *, fmt: str | None = None, field: str = "text",
                   doc_split: str = "line") -> Iterator[str]:
    """Stream the non-empty documents of one corpus file.

    txt: one document per non-empty line (``doc_split="line"``) or blocks separated by blank lines (``"blank"``,
    lines joined by "\\n"). jsonl: ``obj[field]`` of one JSON object per line. csv/tsv: column ``field`` of a file
    with a header row; parquet: column ``field``. ``doc_split`` only applies to txt. Any but parquet may be
    gzip-compressed (``.gz``).
    """
    path = Path(path)
    fmt = detect_format(path) if fmt is None else fmt
    if fmt not in FORMATS:
        raise InputError(f"unknown corpus format {fmt!r}; expected one of {', '.join(FORMATS)}", path=path)
    if doc_split not in DOC_SPLITS:
        raise InputError(f"doc_split must be one of {', '.join(DOC_SPLITS)}, got {doc_split!r}")
    if fmt == "txt":
        yield from _txt_documents(path, doc_split)
    elif fmt == "jsonl":
        yield from _jsonl_documents(path, field)
    elif fmt == "parquet":
        yield from iter_texts(path, field)
    else:
        yield from _delimited_documents(path, field, "," if fmt == "csv" else "\t")


def path_list(paths: Sequence[str | os.PathLike] | str | os.PathLike) -> list[Path]:
    """One path or several, as a list of Paths."""
    if isinstance(paths, (str, os.PathLike)):
        return [Path(paths)]
    return [Path(p) for p in paths]


class Corpus:
    """The documents of corpus files, re-iterable: every iteration reads the files again (`iter_corpus`)."""

    def __init__(self, paths: Sequence[str | os.PathLike], **kw: Any):
        self.paths, self.kw = paths, kw

    def __iter__(self) -> Iterator[str]:
        return iter_corpus(self.paths, **self.kw)


def iter_corpus(paths: Sequence[str | os.PathLike], **kw: Any) -> Iterator[str]:
    """Documents of several files in order (keyword arguments as for `iter_documents`)."""
    files = path_list(paths)
    if not files:
        raise InputError("no corpus files given; expected at least one file")
    n = 0
    for p in files:
        for doc in iter_documents(p, **kw):
            n += 1
            yield doc
    if n == 0:
        if len(files) == 1:
            raise InputError("the corpus contains no documents (all empty or blank)", path=files[0])
        raise InputError(f"the corpus contains no documents (all empty or blank): {', '.join(map(str, files))}")
