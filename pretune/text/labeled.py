"""Stage-2 data: read labeled sets, build label maps, align word labels and spans to subwords, batch.

Four tasks share one `Example` type:

- ``classify``: one text and a label (CSV / TSV with a header, or JSONL).
- ``pair``: two texts (``text_a``, ``text_b``) and a label (same formats).
- ``tag``: words with one BIO tag each (CoNLL or JSONL ``{"tokens": [...], "tags": [...]}``).
- ``span``: words with labeled spans, nested or overlapping allowed
  (JSONL ``{"tokens": [...], "spans": [{"start": i, "end": j, "label": "ORG"}]}``, ``end`` exclusive).

Every problem with a file is reported as `InputError` naming the file and the line.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pretune.errors import InputError

TASKS = ("classify", "pair", "tag", "span")
IGNORE = -100  # label value the losses skip
NULL_LABEL = "NULL"  # span label of a candidate that is not an entity

_TAG_RE = re.compile(r"^(O|[BI]-.+)$")
_CONLL_SPLIT = re.compile(r"[ \t]+")


@dataclass
class Example:
    """One labeled (or, for prediction, unlabeled) example."""

    line: int  # 1-based line in the source file (CoNLL: line of the sentence's first token)
    text: str | None = None  # classify / pair (text_a)
    text_b: str | None = None  # pair
    tokens: list[str] | None = None  # tag / span (words)
    tags: list[str] | None = None  # tag
    spans: list[tuple[int, int, str]] | None = None  # span: (start, end_exclusive, label) over words
    label: str | None = None  # classify / pair


# ---------------------------------------------------------------------------------------------- reading


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise InputError(f"unknown task '{task}' (expected one of: {', '.join(TASKS)})")


def _read_text(path: Path) -> tuple[str, str]:
    """Decode `path` as UTF-8 (a .gz file is decompressed); returns (text, suffix without .gz)."""
    if not path.exists():
        raise InputError("file not found", path)
    if path.is_dir():
        raise InputError("expected a file, found a directory", path)
    data = path.read_bytes()
    suffix = path.suffix.lower()
    if suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise InputError(f"not a valid gzip file ({e})", path) from None
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
    if suffix in (".jsonl", ".json", ".ndjson"):
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
            _check_tag(cols[-1], path, lineno)
            tags.append(cols[-1])
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
    label_field: str = "label",
    require_labels: bool = True,
) -> list[Example]:
    """Read a labeled file for `task`.

    classify: CSV/TSV (header) or JSONL with `text_field` (default "text") and `label_field`.
    pair: same with `text_field` (default "text_a") and `text_b_field`.
    tag: CoNLL (token first, tag in the last column) or JSONL tokens/tags; IOB1 is converted to IOB2.
    span: JSONL tokens/spans. With ``require_labels=False`` labels, tags or spans may be absent (None).
    The format comes from the suffix (.csv .tsv .jsonl .json .conll ...; .gz allowed) or, failing that, the content.
    """
    _check_task(task)
    path = Path(path)
    text, suffix = _read_text(path)
    if task in ("classify", "pair"):
        default = "text" if task == "classify" else "text_a"
        fields = (text_field or default,) if task == "classify" else (text_field or default, text_b_field)
        examples = _read_text_task(text, suffix, path, task, fields, label_field, require_labels)
    elif task == "tag":
        is_jsonl = suffix in (".jsonl", ".json", ".ndjson") or _first_json_object(text)
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
    def from_examples(cls, examples: list[Example], task: str) -> LabelMap:
        """classify/pair: sorted names; tag: "O", then B-X, I-X per type X (sorted by type); span: "NULL" + sorted."""
        _check_task(task)
        if task in ("classify", "pair"):
            names = sorted({ex.label for ex in examples if ex.label is not None})
        elif task == "tag":
            types = sorted({t[2:] for ex in examples for t in ex.tags or [] if t != "O"})
            names = ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]
        else:
            names = [NULL_LABEL] + sorted({lab for ex in examples for _, _, lab in ex.spans or []})
        if not names:
            raise InputError("no labels found in the training examples")
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


# ---------------------------------------------------------------------------------------------- alignment


def align_word_labels(
    word_ids: list[int | None], word_labels: list[int], all_subwords: bool = False, ignore: int = IGNORE
) -> list[int]:
    """Per-subword labels: each word's first subword gets its label, later subwords `ignore`
    (or the word's label too when `all_subwords`); positions without a word (specials) get `ignore`."""
    out: list[int] = []
    seen: set[int] = set()
    for w in word_ids:
        if w is None:
            out.append(ignore)
        elif w not in seen:
            seen.add(w)
            out.append(word_labels[w])
        else:
            out.append(word_labels[w] if all_subwords else ignore)
    return out


def first_subword_positions(word_ids: list[int | None]) -> list[int]:
    """Position of each word's first subword, in word order (words without subwords are absent)."""
    first: dict[int, int] = {}
    for pos, w in enumerate(word_ids):
        if w is not None and w not in first:
            first[w] = pos
    return [first[w] for w in sorted(first)]


def enumerate_spans(n_words: int, max_width: int) -> list[tuple[int, int]]:
    """All (start, end_exclusive) word spans with 1 <= width <= max_width, ordered by start then width."""
    if max_width < 1:
        raise InputError(f"max span width must be at least 1, got {max_width}")
    return [(s, e) for s in range(n_words) for e in range(s + 1, min(n_words, s + max_width) + 1)]


# ---------------------------------------------------------------------------------------------- encoding


@dataclass
class EncodeStats:
    n_examples: int
    n_truncated: int  # examples cut to fit max_len (classify/pair; tag/span: a single over-long word)
    n_split: int  # tag/span examples spread over several windows
    n_spans_lost: int = 0  # gold spans no candidate can hit (crossing a window split or wider than max width)


def _special_id(tokenizer: Any, name: str) -> int:
    """Id of special token `name` ("cls", "sep", "unk", ...) from `tokenizer.specials`."""
    return int(getattr(tokenizer.specials, name))


def _word_pieces(tokenizer: Any, word_lists: list[list[str]], unk_id: int) -> list[list[list[int]]]:
    """Subword ids per word per example; a word the tokenizer drops entirely becomes [unk]."""
    out = []
    for words, enc in zip(word_lists, tokenizer.encode_words_batch(word_lists), strict=True):
        pieces: list[list[int]] = [[] for _ in words]
        for tok_id, w in zip(enc.ids, enc.word_ids, strict=True):
            if w is not None:
                pieces[w].append(tok_id)
        out.append([p if p else [unk_id] for p in pieces])
    return out


def _windows(counts: list[int], cap: int, avoid: list[bool] | None = None) -> list[tuple[int, int]]:
    """Greedy word windows [a, b) whose piece counts sum to <= cap (each count <= cap).
    ``avoid[b]`` marks boundaries inside a gold span: a window ends before them when it can."""
    windows = []
    a, n = 0, len(counts)
    while a < n:
        k, total = a, 0
        while k < n and total + counts[k] <= cap:
            total += counts[k]
            k += 1
        k = max(k, a + 1)
        if k < n and avoid is not None:
            b = k
            while b > a and avoid[b]:
                b -= 1
            k = b if b > a else k
        windows.append((a, k))
        a = k
    return windows


def _encode_texts(
    examples: list[Example], task: str, tokenizer: Any, label_map: LabelMap | None, max_len: int, source: Any
) -> tuple[list[dict], int]:
    cls_id, sep_id = _special_id(tokenizer, "cls"), _special_id(tokenizer, "sep")
    ids_a = [e.ids for e in tokenizer.encode_batch([ex.text or "" for ex in examples])]
    ids_b = [e.ids for e in tokenizer.encode_batch([ex.text_b or "" for ex in examples])] if task == "pair" else []
    features, n_truncated = [], 0
    for i, ex in enumerate(examples):
        a = list(ids_a[i])
        if task == "pair":
            b = list(ids_b[i])
            room = max_len - 3
            if len(a) + len(b) > room:  # longest-first: trim the longer side (b on ties) one piece at a time
                n_truncated += 1
                while len(a) + len(b) > room:
                    if len(a) > len(b):
                        a.pop()
                    else:
                        b.pop()
            input_ids = [cls_id, *a, sep_id, *b, sep_id]
            type_ids = [0] * (len(a) + 2) + [1] * (len(b) + 1)
        else:
            if len(a) > max_len - 2:
                n_truncated += 1
                a = a[: max_len - 2]
            input_ids = [cls_id, *a, sep_id]
            type_ids = [0] * len(input_ids)
        label = None
        if label_map is not None and ex.label is not None:
            label = label_map.index(ex.label, source, ex.line)
        features.append({"input_ids": input_ids, "token_type_ids": type_ids, "label": label, "example": i})
    return features, n_truncated


def _encode_words(
    examples: list[Example],
    task: str,
    tokenizer: Any,
    label_map: LabelMap | None,
    max_len: int,
    all_subwords: bool,
    max_span_width: int,
    source: Any,
) -> tuple[list[dict], EncodeStats]:
    cls_id, sep_id = _special_id(tokenizer, "cls"), _special_id(tokenizer, "sep")
    unk_id = _special_id(tokenizer, "unk")
    cap = max_len - 2
    all_pieces = _word_pieces(tokenizer, [list(ex.tokens or []) for ex in examples], unk_id)
    features: list[dict] = []
    stats = EncodeStats(n_examples=len(examples), n_truncated=0, n_split=0)
    for i, (ex, pieces) in enumerate(zip(examples, all_pieces, strict=True)):
        if any(len(p) > cap for p in pieces):
            stats.n_truncated += 1
            pieces = [p[:cap] for p in pieces]
        word_labels = None
        if task == "tag" and label_map is not None and ex.tags is not None:
            word_labels = [label_map.index(t, source, ex.line) for t in ex.tags]
        gold: dict[tuple[int, int], int] = {}
        avoid = None
        if task == "span" and label_map is not None and ex.spans is not None:
            gold = {(s, e): label_map.index(lab, source, ex.line) for s, e, lab in ex.spans}
            avoid = [False] * (len(pieces) + 1)
            for s, e in gold:
                for b in range(s + 1, e):
                    avoid[b] = True
        windows = _windows([len(p) for p in pieces], cap, avoid)
        stats.n_split += len(windows) > 1
        hit = 0
        for a, b in windows:
            input_ids, word_ids = [cls_id], [None]
            for w in range(a, b):
                input_ids += pieces[w]
                word_ids += [w - a] * len(pieces[w])
            input_ids.append(sep_id)
            word_ids.append(None)
            feat: dict[str, Any] = {"input_ids": input_ids, "token_type_ids": [0] * len(input_ids)}
            starts = first_subword_positions(word_ids)
            if task == "tag":
                feat["word_positions"] = starts
                if word_labels is not None:
                    feat["labels"] = align_word_labels(word_ids, word_labels[a:b], all_subwords)
            else:
                feat["word_starts"] = starts
                feat["word_ends"] = [p + len(pieces[w]) - 1 for w, p in zip(range(a, b), starts, strict=True)]
                cands = enumerate_spans(b - a, max_span_width)
                feat["spans"] = cands
                if avoid is not None:
                    feat["span_labels"] = [gold.get((s + a, e + a), 0) for s, e in cands]
                    hit += sum(1 for s, e in gold if a <= s and e <= b and e - s <= max_span_width)
            feat["word_offset"] = a
            feat["example"] = i
            features.append(feat)
        stats.n_spans_lost += len(gold) - hit
    return features, stats


def encode_examples(
    examples: list[Example],
    task: str,
    tokenizer: Any,
    label_map: LabelMap | None,
    max_len: int,
    *,
    all_subwords: bool = False,
    max_span_width: int = 8,
    source: str | Path | None = None,
) -> tuple[list[dict], EncodeStats]:
    """One feature dict (plain lists / ints) per model input.

    classify: [CLS] text [SEP]; pair: [CLS] a [SEP] b [SEP] (type ids 0 then 1), longest-first truncation;
    both carry "label" (int or None). tag: "labels" (first subword, -100 elsewhere; absent without labels),
    "word_positions", "word_offset". span: "word_starts", "word_ends", "spans" (window-local word spans),
    "span_labels" (0 = NULL; absent without labels), "word_offset". Tag/span sentences longer than
    max_len - 2 subwords are split into windows at word boundaries (never truncated); a split avoids cutting
    through a gold span when it can, and gold spans that no window holds are counted in ``n_spans_lost``.
    `source` (the file the examples came from) is only used in error messages.
    """
    _check_task(task)
    if max_len < (4 if task == "pair" else 3):
        raise InputError(f"max_len {max_len} is too small for task '{task}'")
    if task in ("classify", "pair"):
        features, n_truncated = _encode_texts(examples, task, tokenizer, label_map, max_len, source)
        return features, EncodeStats(n_examples=len(examples), n_truncated=n_truncated, n_split=0)
    for ex in examples:
        if not ex.tokens:
            raise InputError(f"task '{task}' needs tokens in every example", source, ex.line)
    return _encode_words(examples, task, tokenizer, label_map, max_len, all_subwords, max_span_width, source)


# ---------------------------------------------------------------------------------------------- batching


def collate(features: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad a list of features to the longest in the batch.

    Always: input_ids [B,T] (pad_id), attention_mask [B,T] bool, token_type_ids [B,T].
    classify/pair: labels [B] (-100 where unknown). tag: labels [B,T] (-100 pad).
    span: span_index [B,S,2] (first/last subword position of each candidate), span_mask [B,S] bool,
    span_labels [B,S] (-100 pad). Label tensors are left out when no feature in the batch has labels.
    """
    if not features:
        raise ValueError("collate needs at least one feature")
    B = len(features)
    T = max(len(f["input_ids"]) for f in features)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, T), dtype=torch.bool)
    token_type_ids = torch.zeros((B, T), dtype=torch.long)
    for r, f in enumerate(features):
        n = len(f["input_ids"])
        input_ids[r, :n] = torch.tensor(f["input_ids"], dtype=torch.long)
        token_type_ids[r, :n] = torch.tensor(f["token_type_ids"], dtype=torch.long)
        attention_mask[r, :n] = True
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
    first = features[0]
    if "spans" in first:
        S = max(len(f["spans"]) for f in features)
        span_index = torch.zeros((B, S, 2), dtype=torch.long)
        span_mask = torch.zeros((B, S), dtype=torch.bool)
        span_labels = torch.full((B, S), IGNORE, dtype=torch.long)
        for r, f in enumerate(features):
            k = len(f["spans"])
            if k:
                starts, ends = f["word_starts"], f["word_ends"]
                span_index[r, :k] = torch.tensor([[starts[s], ends[e - 1]] for s, e in f["spans"]])
                span_mask[r, :k] = True
            if "span_labels" in f:
                span_labels[r, :k] = torch.tensor(f["span_labels"], dtype=torch.long)
        batch.update(span_index=span_index, span_mask=span_mask)
        if any("span_labels" in f for f in features):
            batch["span_labels"] = span_labels
    elif "word_positions" in first:
        if any("labels" in f for f in features):
            labels = torch.full((B, T), IGNORE, dtype=torch.long)
            for r, f in enumerate(features):
                if "labels" in f:
                    labels[r, : len(f["labels"])] = torch.tensor(f["labels"], dtype=torch.long)
            batch["labels"] = labels
    elif any(f.get("label") is not None for f in features):
        batch["labels"] = torch.tensor(
            [IGNORE if f.get("label") is None else f["label"] for f in features], dtype=torch.long
        )
    return batch


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
