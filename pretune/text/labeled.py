"""Stage-2 data: read labeled sets, build label maps, batch by length. The encoding for models (subword
alignment, windows, collate) is `pretune.finetune.encode`.

Four tasks share one `Example` type:

- ``classify``: one text and a label (CSV / TSV with a header, or JSONL).
- ``pair``: two texts (``text_a``, ``text_b``) and a label (same formats).
- ``tag``: words with one BIO tag each (CoNLL or JSONL ``{"tokens": [...], "tags": [...]}``).
- ``span``: words with labeled spans, nested or overlapping allowed
  (JSONL ``{"tokens": [...], "spans": [{"start": i, "end": j, "label": "ORG"}]}``, ``end`` exclusive).
- ``seqtag``: a sequence and one label character per character of it (CSV / TSV / JSONL columns ``sequence``
  and ``labels``), e.g. a DNA sequence labeled per nucleotide; ``label_map`` names the characters.

Every problem with a file is reported as `InputError` naming the file and the line. A ``.parquet`` file of any
task holds the fields JSONL would, one row per object (`pretune.text.parquet`; its "line" is the row number).
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pretune.errors import InputError
from pretune.files import input_file, read_input
from pretune.text.parquet import is_parquet, iter_records
from pretune.text.sequences import label_names, parse_label_map

TASKS = ("classify", "pair", "tag", "span", "seqtag")
NULL_LABEL = "NULL"  # span label of a candidate that is not an entity

_TAG_RE = re.compile(r"^(O|[BI]-\S+)$")  # no whitespace in a type: "B-PER\xa0" is no new type
_CONLL_SPLIT = re.compile(r"[ \t]+")


@dataclass
class Example:
    """One labeled (or, for prediction, unlabeled) example."""

    line: int  # 1-based line in the source file (CoNLL: line of the sentence's first token)
    text: str | None = None  # classify / pair (text_a); seqtag: the sequence
    text_b: str | None = None  # pair
    tokens: list[str] | None = None  # tag / span (words)
    tags: list[str] | None = None  # tag (per word); seqtag (per character)
    spans: list[tuple[int, int, str]] | None = None  # span: (start, end_exclusive, label) over words
    label: str | None = None  # classify / pair


# ---------------------------------------------------------------------------------------------- reading


def check_task(task: str) -> None:
    if task not in TASKS:
        raise InputError(f"unknown task '{task}' (expected one of: {', '.join(TASKS)})")


def _read_text(path: Path) -> tuple[str, str]:
    """Decode `path` as UTF-8 (a .gz file is decompressed); returns (text, suffix without .gz)."""
    input_file(path, "labeled file")
    if is_parquet(path):  # read row by row in _iter_jsonl
        return "", ".parquet"
    data = read_input(path, "labeled file")  # bounded, gunzipped when .gz
    suffix = path.suffix.lower()
    if suffix == ".gz":
        suffix = Path(path.stem).suffix.lower()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise InputError(f"expected UTF-8 text, found byte 0x{data[e.start]:02x}", path, line) from None
    if not text.strip():
        raise InputError("file is empty", path)
    return text, suffix


def _lines(text: str) -> list[str]:
    """Split on newlines only (so line numbers match what an editor shows)."""
    return [ln.rstrip("\r") for ln in text.split("\n")]


def _first_json_object(text: str) -> bool:
    for ln in _lines(text):
        if ln.strip():
            try:
                return isinstance(json.loads(ln), dict)
            except ValueError:
                return False
    return False


def _table_format(text: str, suffix: str) -> str:
    if suffix in (".jsonl", ".json", ".ndjson", ".parquet"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    if suffix in (".tsv", ".tab"):
        return "tsv"
    if _first_json_object(text):
        return "jsonl"
    first = next(ln for ln in _lines(text) if ln.strip())
    return "tsv" if "\t" in first else "csv"


def _iter_jsonl(text: str, path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    if is_parquet(path):  # a parquet file's rows are its records
        yield from iter_records(path)
        return
    for lineno, ln in enumerate(_lines(text), start=1):
        if not ln.strip():
            continue
        try:
            obj = json.loads(ln)
        except ValueError as e:
            raise InputError(f"invalid JSON ({e}); expected one JSON object per line", path, lineno) from None
        if not isinstance(obj, dict):
            raise InputError(f"expected a JSON object per line, found {type(obj).__name__}", path, lineno)
        yield lineno, obj


def _table_rows(text: str, path: Path, delimiter: str) -> tuple[int, list[str], list[tuple[int, dict[str, str]]]]:
    """(header line, header, rows) of a CSV/TSV file; each row as {column: value} with the line it starts on."""
    if delimiter == "\t":  # TSV: no quoting, one row per line (texts often hold stray quotes)
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] = []
    header_line = 0
    rows: list[tuple[int, dict[str, str]]] = []
    prev_end = 0
    try:
        for row in reader:
            start, prev_end = prev_end + 1, reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if not header:
                header, header_line = [cell.strip() for cell in row], start
                for j, name in enumerate(header):
                    if name in header[:j]:
                        raise InputError(f"duplicate column '{name}' in the header", path, start)
                continue
            if len(row) != len(header):
                raise InputError(f"expected {len(header)} columns as in the header, found {len(row)}", path, start)
            rows.append((start, dict(zip(header, row, strict=True))))
    except csv.Error as e:
        kind = "TSV" if delimiter == "\t" else "CSV"
        raise InputError(f"malformed {kind} ({e})", path, prev_end + 1) from None
    return header_line, header, rows


def _need_columns(path: Path, line: int, record: dict[str, Any], names: Sequence[str], what: str = "field") -> None:
    for name in names:
        if name not in record:
            known = ", ".join(str(k) for k in record)
            raise InputError(f"missing {what} '{name}' (found: {known})", path, line)


def _label_value(value: Any, name: str, path: Path, line: int) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value.strip()
    raise InputError(f"expected a string or integer in '{name}', found {type(value).__name__}", path, line)


def _read_text_task(
    text: str,
    suffix: str,
    path: Path,
    task: str,
    text_fields: tuple[str, ...],
    label_field: str,
    require_labels: bool,
) -> list[Example]:
    fmt = _table_format(text, suffix)
    needed = [*text_fields, label_field] if require_labels else list(text_fields)
    if fmt == "jsonl":
        rows: Iterator[tuple[int, dict[str, Any]]] | list[tuple[int, dict[str, str]]] = _iter_jsonl(text, path)
    else:
        header_line, header, rows = _table_rows(text, path, "\t" if fmt == "tsv" else ",")
        _need_columns(path, header_line, dict.fromkeys(header), needed, "column")
    examples: list[Example] = []
    for line, row in rows:
        if fmt == "jsonl":
            _need_columns(path, line, row, needed)
        texts = []
        for name in text_fields:
            value = row[name]
            if not isinstance(value, str):
                raise InputError(f"expected a string in '{name}', found {type(value).__name__}", path, line)
            if not value.strip():
                raise InputError(f"empty or whitespace-only '{name}'; expected a text", path, line)
            texts.append(value)
        value = row.get(label_field)
        label = None
        if value is None or (isinstance(value, str) and not value.strip()):
            if require_labels:
                raise InputError(f"empty '{label_field}'", path, line)
        else:
            label = _label_value(value, label_field, path, line)
        if task == "pair":
            examples.append(Example(line=line, text=texts[0], text_b=texts[1], label=label))
        else:
            examples.append(Example(line=line, text=texts[0], label=label))
    return examples


def iob1_to_iob2(tags: list[str]) -> list[str]:
    """IOB1 -> IOB2: an ``I-X`` that starts an entity (after ``O`` or another type) becomes ``B-X``."""
    out: list[str] = []
    prev = "O"
    for tag in tags:
        if tag.startswith("I-") and (prev == "O" or prev[2:] != tag[2:]):
            tag = "B-" + tag[2:]
        out.append(tag)
        prev = tag
    return out


def _check_tag(tag: str, path: Path, line: int) -> None:
    if not _TAG_RE.match(tag):
        raise InputError(f"invalid tag '{tag}' (expected O, B-TYPE or I-TYPE)", path, line)


def _read_conll(text: str, path: Path, require_labels: bool) -> list[Example]:
    examples: list[Example] = []
    tokens: list[str] = []
    tags: list[str] = []
    start = 0
    n_cols = 0
    first_token_line = 0

    def flush() -> None:
        if tokens:
            ex_tags = iob1_to_iob2(tags) if n_cols >= 2 else None
            examples.append(Example(line=start, tokens=list(tokens), tags=ex_tags))
        tokens.clear()
        tags.clear()

    for lineno, ln in enumerate(_lines(text), start=1):
        stripped = ln.strip(" \t")
        if not stripped:
            flush()
            continue
        cols = _CONLL_SPLIT.split(stripped)
        if cols[0] == "-DOCSTART-":
            flush()
            continue
        if n_cols == 0 and [c.lower() for c in cols] == ["sequence", "labels"]:
            raise InputError("a 'sequence labels' header: a label per character is task seqtag", path, lineno)
        if n_cols == 0:
            n_cols, first_token_line = len(cols), lineno
            if n_cols < 2 and require_labels:
                raise InputError("expected a token and its tag separated by whitespace", path, lineno)
        elif len(cols) != n_cols:
            raise InputError(
                f"expected {n_cols} columns as on line {first_token_line}, found {len(cols)}", path, lineno
            )
        if not tokens:
            start = lineno
        tokens.append(cols[0])
        if n_cols >= 2:
            tag = cols[-1].strip()  # Unicode whitespace (a no-break space) is no part of a tag
            _check_tag(tag, path, lineno)
            tags.append(tag)
    flush()
    return examples


def _word_list(obj: dict[str, Any], name: str, path: Path, line: int) -> list[str]:
    value = obj[name]
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise InputError(f"expected a list of strings in '{name}'", path, line)
    return value


def _tokens(obj: dict[str, Any], path: Path, line: int) -> list[str]:
    _need_columns(path, line, obj, ["tokens"])
    tokens = _word_list(obj, "tokens", path, line)
    if not tokens:
        raise InputError("expected at least one token in 'tokens'", path, line)
    for i, tok in enumerate(tokens):
        if not tok.strip():
            raise InputError(f"token {i} is empty or whitespace", path, line)
    return tokens


def _read_word_jsonl(text: str, path: Path, require_labels: bool, key: str, parse) -> list[Example]:
    """JSONL of {"tokens": [...], key: ...}: `parse(value, tokens, line)` checks and converts the labels
    (the key may be absent or null unless labels are required)."""
    examples = []
    for line, obj in _iter_jsonl(text, path):
        tokens = _tokens(obj, path, line)
        if require_labels:
            _need_columns(path, line, obj, [key])
        labels = parse(obj, tokens, line) if obj.get(key) is not None else None
        examples.append(Example(line=line, tokens=tokens, **{key: labels}))
    return examples


def _read_tag_jsonl(text: str, path: Path, require_labels: bool) -> list[Example]:
    def parse(obj: dict, tokens: list[str], line: int) -> list[str]:
        tags = _word_list(obj, "tags", path, line)
        if len(tags) != len(tokens):
            raise InputError(f"{len(tokens)} tokens but {len(tags)} tags", path, line)
        for tag in tags:
            _check_tag(tag, path, line)
        return iob1_to_iob2(tags)

    return _read_word_jsonl(text, path, require_labels, "tags", parse)


def _one_span(item: Any, n: int, path: Path, line: int) -> tuple[int, int, str]:
    if isinstance(item, dict):
        _need_columns(path, line, item, ["start", "end", "label"])
        start, end, label = item["start"], item["end"], item["label"]
    elif isinstance(item, list) and len(item) == 3:
        start, end, label = item
    else:
        raise InputError('expected each span as {"start": i, "end": j, "label": "X"}', path, line)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end)):
        raise InputError("expected integer span 'start' and 'end'", path, line)
    if not isinstance(label, str) or not label.strip():
        raise InputError("expected a non-empty string span 'label'", path, line)
    if not 0 <= start < end <= n:
        raise InputError(
            f"span ({start}, {end}) out of range: expected 0 <= start < end <= {n} (end exclusive)", path, line
        )
    if label.strip() == NULL_LABEL:
        raise InputError(f"span label '{NULL_LABEL}' is reserved for non-entities", path, line)
    return start, end, label.strip()


def _read_span_jsonl(text: str, path: Path, require_labels: bool) -> list[Example]:
    def parse(obj: dict, tokens: list[str], line: int) -> list[tuple[int, int, str]]:
        if not isinstance(obj["spans"], list):
            raise InputError("expected a list in 'spans'", path, line)
        by_bounds: dict[tuple[int, int], str] = {}
        for item in obj["spans"]:
            start, end, label = _one_span(item, len(tokens), path, line)
            if by_bounds.setdefault((start, end), label) != label:
                raise InputError(f"span ({start}, {end}) has two labels '{by_bounds[(start, end)]}' and '{label}'",
                                 path, line)
        return [(s, e, lab) for (s, e), lab in by_bounds.items()]

    return _read_word_jsonl(text, path, require_labels, "spans", parse)


def read_examples(
    path: str | Path,
    task: str,
    *,
    text_field: str | None = None,
    text_b_field: str = "text_b",
    label_field: str | None = None,
    require_labels: bool = True,
    label_map: str | dict | None = None,
) -> list[Example]:
    """Read a labeled file for `task`.

    classify: CSV/TSV (header) or JSONL with `text_field` (default "text") and `label_field`.
    pair: same with `text_field` (default "text_a") and `text_b_field`.
    tag: CoNLL (token first, tag in the last column) or JSONL tokens/tags; IOB1 is converted to IOB2.
    span: JSONL tokens/spans. seqtag: CSV/TSV/JSONL with `text_field` (default "sequence") and `label_field`
    (default "labels": one label character per character; `label_map` "0=non-coding,1=cds+" names them).
    `label_field` defaults to "label" for classify/pair.
    With ``require_labels=False`` labels, tags or spans may be absent (None).
    The format comes from the suffix (.csv .tsv .jsonl .json .conll ...; .gz allowed) or, failing that, the content.
    """
    check_task(task)
    path = Path(path)
    text, suffix = _read_text(path)
    if task in ("classify", "pair"):
        default = "text" if task == "classify" else "text_a"
        fields = (text_field or default,) if task == "classify" else (text_field or default, text_b_field)
        examples = _read_text_task(text, suffix, path, task, fields, label_field or "label", require_labels)
    elif task == "seqtag":
        examples = _read_text_task(text, suffix, path, task, (text_field or "sequence",), label_field or "labels",
                                   require_labels)
        names = parse_label_map(label_map)
        for ex in examples:
            ex.text = (ex.text or "").strip()
            if not ex.text:
                raise InputError("empty sequence", path, ex.line)
            if ex.label is not None:
                ex.tags, ex.label = label_names(ex.text, ex.label, names, path, ex.line), None
    elif task == "tag":
        is_jsonl = suffix in (".jsonl", ".json", ".ndjson", ".parquet") or _first_json_object(text)
        examples = (_read_tag_jsonl if is_jsonl else _read_conll)(text, path, require_labels)
    else:
        examples = _read_span_jsonl(text, path, require_labels)
    if not examples:
        raise InputError("no examples found", path)
    return examples


# ---------------------------------------------------------------------------------------------- labels


@dataclass
class LabelMap:
    """Label names in index order; the index of a name is what the model predicts."""

    names: list[str]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._index = {}
        for i, name in enumerate(self.names):
            if not isinstance(name, str):
                raise InputError(f"label names must be strings, found {type(name).__name__}")
            if name in self._index:
                raise InputError(f"duplicate label name '{name}'")
            self._index[name] = i

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def from_examples(cls, examples: list[Example], task: str, path: str | Path | None = None,
                      order: list[str] | None = None) -> LabelMap:
        """classify/pair: sorted names; tag: "O", then B-X, I-X per type X (sorted by type); span: "NULL" + sorted;
        seqtag: `order` when given (the names of a label map), else the most frequent label first (the background,
        left out of segment scores), then sorted. A training set with one class (or no entity type) is refused: the
        model would learn nothing, and score 1.0."""
        check_task(task)
        if task == "seqtag" and order:
            names = list(order)
        elif task == "seqtag":
            count = Counter(t for ex in examples for t in ex.tags or [])
            background = min(count, key=lambda t: (-count[t], t)) if count else None
            names = [background, *sorted(set(count) - {background})] if count else []
        elif task in ("classify", "pair"):
            names = sorted({ex.label for ex in examples if ex.label is not None})
        elif task == "tag":
            types = sorted({t[2:] for ex in examples for t in ex.tags or [] if t != "O"})
            names = ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]
        else:
            names = [NULL_LABEL] + sorted({lab for ex in examples for _, _, lab in ex.spans or []})
        if not names:
            raise InputError("no labels found in the training examples", path)
        if task in ("classify", "pair") and len(names) < 2:
            raise InputError(f"the training set has one label ({names[0]!r}); expected at least two classes", path)
        if task in ("tag", "span") and len(names) < 2:
            what = "every tag is O" if task == "tag" else "no example has a span"
            raise InputError(f"the training set has no entity type ({what}); expected at least one", path)
        return cls(names)

    def index(self, name: str, path: str | Path | None = None, line: int | None = None) -> int:
        try:
            return self._index[name]
        except KeyError:
            known = ", ".join(self.names[:20]) + (", ..." if len(self.names) > 20 else "")
            raise InputError(f"label '{name}' never appears in the training set (known: {known})", path, line) from None

    def to_json(self) -> list[str]:
        return list(self.names)

    @classmethod
    def from_json(cls, names: list[str]) -> LabelMap:
        if not isinstance(names, list):
            raise InputError(f"expected a list of label names, found {type(names).__name__}")
        return cls(list(names))


# ---------------------------------------------------------------------------------------------- batching


def length_grouped_batches(lengths: list[int], batch_size: int, shuffle: bool, seed: int) -> list[list[int]]:
    """Batches of indices with similar lengths, to cut padding.

    shuffle: indices are shuffled, sorted by length within chunks of 50 batches, cut into batches, and the
    batch order is shuffled (all from `seed`). Without shuffle: all indices sorted by length (longest first,
    stable), then cut into batches.
    """
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    order = list(range(len(lengths)))
    if not shuffle:
        order.sort(key=lambda i: -lengths[i])
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng = random.Random(seed)
    rng.shuffle(order)
    chunk = 50 * batch_size
    batches = []
    for c in range(0, len(order), chunk):
        part = sorted(order[c : c + chunk], key=lambda i: -lengths[i])
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches
