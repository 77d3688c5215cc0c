"""The Python API: the README's snippet runs as written, on a tiny `pretune run` whose corpus and labeled files are
parquet; the run writes TensorBoard event files, one folder per stage."""

from __future__ import annotations

import csv
import gzip
import re
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_pipeline import CLASSES, TINY, make_tiny

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_snippet() -> str:
    """The first ```python block of the README's "Python API" section."""
    section = README.read_text(encoding="utf-8").split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


def parquet_tiny(root: Path) -> int:
    """my.toml: the tiny run config with its corpus and labeled files as parquet (row groups of 200 rows, so the
    corpus streams in several); returns the corpus's document count."""
    make_tiny(root)
    with gzip.open(root / "corpus.txt.gz", "rt", encoding="utf-8") as f:
        docs = [line.rstrip("\n") for line in f if line.strip()]
    pq.write_table(pa.table({"id": list(range(len(docs))), "text": docs}), root / "corpus.parquet",
                   row_group_size=200)
    for split in ("train", "validation", "test"):
        with open(root / f"{split}.csv", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        pq.write_table(pa.Table.from_pylist(rows), root / f"{split}.parquet")
    config = TINY.replace("corpus.txt.gz", "corpus.parquet").replace(".csv", ".parquet")
    assert config.count(".parquet") == 4
    (root / "my.toml").write_text(config, encoding="utf-8")
    return len(docs)


def test_readme_python_example_runs_on_a_parquet_run(tmp_path, monkeypatch, capsys):
    n_docs = parquet_tiny(tmp_path)
    for name in ("corpus.txt.gz", "train.csv", "validation.csv", "test.csv"):
        (tmp_path / name).unlink()  # only the parquet files are there to read
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(readme_snippet(), str(README), "exec"), scope)
    assert "pretune.api" in sys.modules

    summary, model = scope["summary"], scope["model"]
    splits = summary["corpus"]["splits"]
    assert splits["train"]["documents"] + splits["validation"]["documents"] == n_docs
    assert summary["test_size"] == 60 and summary["models"]["pretrained"]["n_train"] == 120
    (pred,) = model.predict(["a small songbird of open country"])
    assert pred["label"] in CLASSES and sum(pred["probs"].values()) == pytest.approx(1.0, abs=1e-4)
    assert scope["vectors"].shape == (2, model._task_parts()[0].config.hidden_size)
    assert scope["why"].label in CLASSES and scope["why"].items
    printed = capsys.readouterr().out
    assert f"{summary['models']['pretrained']['test']['accuracy']}" in printed

    for stage in ("pretrain", "finetune", "baseline"):  # `tensorboard --logdir runs/demo`: one run per stage
        pytest.importorskip("tensorboard", reason="the tensorboard package is not installed")
        assert list((tmp_path / "runs" / "demo" / stage).glob("events.out.tfevents.*")), stage


def test_run_pipeline_takes_a_dict_and_overrides(tmp_path, monkeypatch):
    """A dict config is checked like a TOML file: an unknown table names where it came from."""
    import tomllib

    import pretune
    from pretune.errors import InputError

    monkeypatch.chdir(tmp_path)
    tables = tomllib.loads(TINY)
    with pytest.raises(InputError, match="the config dict: unknown table or key 'pretrian'"):
        pretune.run_pipeline({**tables, "pretrian": {}})
    with pytest.raises(InputError, match=r"corpus\.txt\.gz"):  # a relative path resolved from the working directory
        pretune.run_pipeline(tables, overrides={"run.out": "x"})
