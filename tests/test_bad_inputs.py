"""The bad-input suite: every case of tests/bad_inputs/cases.toml through the CLI (in process).

Contract: exit code 2; exactly one line on stderr (besides `prepare`'s progress bar),
`pretune: error: <path>[:<line>]: <message>`, with the file's name (and line where the case gives one) and the
expected fragment; no traceback; the working directory (inputs and the would-be output) byte for byte as before.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import shutil
import tomllib
from pathlib import Path

import pytest

from pretune.cli import main

HERE = Path(__file__).resolve().parent / "bad_inputs"
CASES = tomllib.loads((HERE / "cases.toml").read_text(encoding="utf-8"))["case"]
WORDNET = Path(__file__).resolve().parent.parent / "pretune" / "resources" / "wordnet"


@pytest.fixture(scope="module")
def good(tmp_path_factory, tiny_ckpt) -> dict[str, str]:
    """Good inputs the cases combine with their one bad file."""
    d = tmp_path_factory.mktemp("good")
    corpus = d / "corpus.txt"
    with gzip.open(WORDNET / "corpus.txt.gz", "rt", encoding="utf-8") as f:
        corpus.write_text("".join(itertools.islice(f, 300)), encoding="utf-8")
    assert main(["tokenizer", "train", str(corpus), "--vocab-size", "300", "--out", str(d / "tok.json")]) == 0
    assert main(["prepare", str(corpus), "--tokenizer", str(d / "tok.json"), "--out", str(d / "shards")]) == 0
    return {"corpus": str(corpus), "tokenizer": str(d / "tok.json"), "shards": str(d / "shards"),
            "ckpt": str(tiny_ckpt), "valid_classify": str(WORDNET / "supersense_validation.csv"),
            "valid_pair": str(WORDNET / "pairs_validation.csv"), "valid_tag": str(WORDNET / "tagging_validation.conll"),
            "valid_span": str(WORDNET / "spans_validation.jsonl")}


def tree_hash(root: Path) -> dict[str, str]:
    """Every path under root with the hash of its bytes ('dir' for directories)."""
    out = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def test_the_suite_is_large_and_covers_every_reader():
    files = {c["file"] for c in CASES}
    assert len(files) >= 25
    assert all((HERE / f).exists() for f in files)
    commands = {" ".join(a for a in c["args"][:2] if not a.startswith("-")) for c in CASES}
    assert {"prepare {file}", "tokenizer train", "pretrain", "finetune"} <= commands
    prefixes = {f.split("_")[0].split(".")[0] for f in files}
    assert {"corpus", "tok", "vocab", "config", "shards", "classify", "pair", "tag", "span", "ckpt"} <= prefixes


@pytest.mark.parametrize("case", CASES, ids=[f"{c['file']}-{c['args'][0]}" for c in CASES])
def test_bad_input_gives_one_clear_line(case, good, tmp_path, capsys):
    work = tmp_path / "work"
    work.mkdir()
    src, dst = HERE / case["file"], work / case["file"]
    if src.is_dir():
        shutil.copytree(src, dst)
        if case.get("tokenizer"):
            shutil.copy(good["tokenizer"], dst / "tokenizer.json")
    else:
        shutil.copy(src, dst)
    out = work / "out"
    args = [a.format(file=dst, out=out, **good) for a in case["args"]]
    before = tree_hash(work)
    capsys.readouterr()

    code = main(args)

    captured = capsys.readouterr()
    # the error line, besides the progress bar `prepare` draws while it reads (tqdm: "tokenizing: 0doc [...]")
    lines = [x for x in captured.err.strip().splitlines() if not x.startswith("tokenizing: ")]
    assert code == 2, captured.err
    assert len(lines) == 1, captured.err
    line = lines[0]
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    assert line.startswith("pretune: error: ")
    where = str(work / case.get("path_in_message", case["file"]))
    where += f":{case['line']}: " if "line" in case else ":"
    assert where in line, (where, line)
    assert case["expect"] in line, line
    assert case.get("also", "") in line, line
    assert tree_hash(work) == before  # nothing written, nothing removed
    assert not out.exists()
