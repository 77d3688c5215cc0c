"""Parquet input (the format Hugging Face datasets publish): corpora and labeled files, read a batch of rows at a
time so a corpus larger than memory streams like a text file.

A parquet "line" is a row: errors name the file and the 1-based row number. Needs `pyarrow`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pretune.errors import InputError
from pretune.files import input_file

SUFFIX = ".parquet"
BATCH_ROWS = 1024  # rows decoded at a time (never more than one row group)


def is_parquet(path: str | os.PathLike) -> bool:
    return Path(path).name.lower().endswith(SUFFIX)


def _open(path: Path):
    """The pyarrow ParquetFile of `path`; a missing, unreadable or non-parquet file -> InputError."""
    import pyarrow  # imported here: only parquet input pays for it
    import pyarrow.parquet as pq

    input_file(path, "parquet file")
    try:
        return pq.ParquetFile(path)
    except (pyarrow.ArrowException, OSError) as e:
        raise InputError(f"not a readable parquet file ({str(e).splitlines()[0]})", path=path) from None


def _batches(path: Path, columns: list[str] | None) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """(row number of the batch's first row, its rows as dicts), streamed by row group."""
    import pyarrow

    pf = _open(path)
    names = pf.schema_arrow.names
    for name in columns or []:
        if name not in names:
            raise InputError(f"missing column {name!r}; the file has columns: {', '.join(map(repr, names))}",
                             path=path, line=1)
    row = 1
    try:
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=columns):
            yield row, batch.to_pylist()
            row += batch.num_rows
    except (pyarrow.ArrowException, OSError) as e:
        raise InputError(f"corrupt parquet data ({str(e).splitlines()[0]})", path=path, line=row) from None


def iter_records(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based row, {column: value}) for every row: what a JSONL file's objects are for labeled data."""
    for first, rows in _batches(Path(path), None):
        yield from enumerate(rows, start=first)


def iter_texts(path: str | os.PathLike, field: str) -> Iterator[str]:
    """The non-empty strings of column `field` (null cells are skipped): the documents of a parquet corpus."""
    path = Path(path)
    for first, rows in _batches(path, [field]):
        for row, record in enumerate(rows, start=first):
            doc = record[field]
            if doc is None:
                continue
            if not isinstance(doc, str):
                raise InputError(f"column {field!r} must hold strings, got {type(doc).__name__}", path=path, line=row)
            if doc.strip():
                yield doc
