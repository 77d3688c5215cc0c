"""Parquet corpora and labeled files: the rows of every task, streamed; errors name the file, row and column."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pretune.errors import InputError
from pretune.text.corpus import iter_corpus
from pretune.text.labeled import read_examples


def write(path, columns: dict, **kw):
    pq.write_table(pa.table(columns), path, **kw)
    return path


def test_a_corpus_streams_its_column_by_row_group(tmp_path):
    docs = [f"document {i}" if i % 7 else None for i in range(2500)] + ["  ", "last"]
    path = write(tmp_path / "c.parquet", {"id": list(range(2502)), "body": docs}, row_group_size=300)
    assert pq.ParquetFile(path).num_row_groups == 9
    assert list(iter_corpus([path], field="body")) == [d for d in docs if d and d.strip()]  # nulls, blanks skipped


@pytest.mark.parametrize("field, message", [
    ("text", "c.parquet:1: missing column 'text'; the file has columns: 'id', 'body'"),
    ("id", "c.parquet:1: column 'id' must hold strings, got int"),
])
def test_corpus_errors_name_the_file_row_and_column(tmp_path, field, message):
    path = write(tmp_path / "c.parquet", {"id": [1, 2], "body": ["a", "b"]})
    with pytest.raises(InputError) as e:
        list(iter_corpus([path], field=field))
    assert str(e.value).endswith(message)


def test_not_a_parquet_file(tmp_path):
    (tmp_path / "x.parquet").write_text("id,text\n1,a\n")
    with pytest.raises(InputError, match=r"x\.parquet: not a readable parquet file"):
        list(iter_corpus([tmp_path / "x.parquet"]))


def test_labeled_rows_of_every_task(tmp_path):
    classify = write(tmp_path / "c.parquet", {"sentence": ["good", "bad"], "label": [1, 0]})
    assert [(ex.text, ex.label) for ex in read_examples(classify, "classify", text_field="sentence")] == [
        ("good", "1"), ("bad", "0")]
    pair = write(tmp_path / "p.parquet", {"text_a": ["a"], "text_b": ["b"], "label": ["same"]})
    assert [(ex.text, ex.text_b, ex.label) for ex in read_examples(pair, "pair")] == [("a", "b", "same")]
    tag = write(tmp_path / "t.parquet", {"tokens": [["New", "York"], ["hi"]], "tags": [["I-LOC", "I-LOC"], ["O"]]})
    assert [ex.tags for ex in read_examples(tag, "tag")] == [["B-LOC", "I-LOC"], ["O"]]  # IOB1 converted
    span = write(tmp_path / "s.parquet", {"tokens": [["a", "b", "c"]],
                                          "spans": [[{"start": 0, "end": 2, "label": "X"}]]})
    assert read_examples(span, "span")[0].spans == [(0, 2, "X")]
    with pytest.raises(InputError, match=r"t\.parquet:2: 1 tokens but 2 tags"):
        read_examples(write(tmp_path / "t.parquet", {"tokens": [["a"], ["b"]], "tags": [["O"], ["O", "O"]]}), "tag")
    with pytest.raises(InputError, match=r"c\.parquet:2: empty 'label'"):
        read_examples(write(tmp_path / "c.parquet", {"text": ["a", "b"], "label": ["x", None]}), "classify")
