"""The bad-input suite: every case of tests/bad_inputs/cases.toml through the CLI (in process).

Contract: exit code 2; exactly one line on stderr (besides `prepare`'s progress bar),
`pretune: error: <path>[:<line>]: <message>`, with the file's name (and line where the case gives one) and the
expected fragment; no traceback; the working directory (inputs and the would-be output) byte for byte as before
(no lock file left in a refused output directory either). A flag case (no `file`) names no path.

A case's file is a file or folder of tests/bad_inputs/, or made in the working directory:
  content / content_hex   the file's text / bytes (gzip = true compresses them)
  base = "run" | "ckpt" | "shards" | "tokenizer"   a copy of a good input, then `edit` (below) breaks it
  edit                    a name in EDITS: a function that breaks the copy
  env                     environment variables for the run (e.g. a lower PRETUNE_MAX_LINE_BYTES)
  no_path = true          the message names no file (a flag's error), though the case has one to keep intact
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import os
import pickle
import shutil
import signal
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from pretune.cli import main

HERE = Path(__file__).resolve().parent / "bad_inputs"
CASES = tomllib.loads((HERE / "cases.toml").read_text(encoding="utf-8"))["case"]
WORDNET = Path(__file__).resolve().parent.parent / "pretune" / "resources" / "wordnet"
HANG_SECONDS = 120
RUN_ARGS = ["--model-size", "tiny", "--max-len", "32", "--batch-size", "4", "--max-steps", "2", "--save-every", "2",
            "--eval-every", "2", "--eval-batches", "1", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def good(tmp_path_factory, tiny_ckpt) -> dict[str, str]:
    """Good inputs the cases combine with their one bad file."""
    d = tmp_path_factory.mktemp("good")
    corpus = d / "corpus.txt"
    with gzip.open(WORDNET / "corpus.txt.gz", "rt", encoding="utf-8") as f:
        corpus.write_text("".join(itertools.islice(f, 300)), encoding="utf-8")
    assert main(["tokenizer", "train", str(corpus), "--vocab-size", "300", "--out", str(d / "tok.json")]) == 0
    assert main(["prepare", str(corpus), "--tokenizer", str(d / "tok.json"), "--out", str(d / "shards")]) == 0
    assert main(["pretrain", "--shards", str(d / "shards"), "--out", str(d / "run"), *RUN_ARGS]) == 0
    return {"corpus": str(corpus), "tokenizer": str(d / "tok.json"), "shards": str(d / "shards"),
            "ckpt": str(tiny_ckpt), "run": str(d / "run"), "valid_classify": str(WORDNET / "supersense_validation.csv"),
            "valid_pair": str(WORDNET / "pairs_validation.csv"), "valid_tag": str(WORDNET / "tagging_validation.conll"),
            "valid_span": str(WORDNET / "spans_validation.jsonl")}


def tree_hash(root: Path) -> dict[str, str]:
    """Every path under root with the hash of its bytes ('dir' for directories; a refused output directory gets no
    lock file either)."""
    out = {}
    for p in sorted(root.rglob("*")):
        kind = "dir" if p.is_dir() else None if p.is_file() else "special"  # never read a FIFO: it would block
        out[str(p.relative_to(root))] = kind or hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# ---- edits: each breaks a copy of a good input in one way ---------------------------------------------------------
def _weights(d: Path, change) -> None:
    state = load_file(str(d / "model.safetensors"))
    save_file(change(state), str(d / "model.safetensors"))


def _json(path: Path, change) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps(change(data)), encoding="utf-8")


def _set_model_key(key, value):
    return lambda d, g: _json(d / "config.json", lambda c: {**c, "model": {**c["model"], key: value}})


def _tokens(d: Path, split: str, value: int) -> None:
    meta = json.loads((d / "meta.json").read_text())
    arr = np.fromfile(d / f"{split}.tokens.bin", dtype=meta["dtype"])
    arr[len(arr) // 2] = value
    arr.tofile(d / f"{split}.tokens.bin")


def _bigger_tokenizer(d: Path) -> None:
    """A tokenizer.json with 20 more tokens than the checkpoint's vocabulary (and no record of its own size)."""
    from pretune.text.tokenizer import PretuneTokenizer

    tok = PretuneTokenizer.load(d / "tokenizer.json")
    tok.add_tokens([f"extra{i}" for i in range(20)])
    tok.save(d / "tokenizer.json")
    _json(d / "config.json", lambda c: {k: v for k, v in c.items() if k != "tokenizer_vocab_size"})


def _smaller_tokenizer(d: Path, good: dict) -> None:
    shutil.copy(good["tokenizer"], d / "tokenizer.json")  # 300 tokens; the checkpoint was written with 1000


class Evil:  # unpickling it would run code: torch.load(weights_only=True) must refuse it
    def __reduce__(self):
        return (print, ("pwned",))


def _hf_folder(d: Path, weights: bytes) -> None:
    for f in list(d.iterdir()):
        f.unlink() if f.is_file() else shutil.rmtree(f)
    (d / "config.json").write_text(json.dumps({
        "model_type": "bert", "vocab_size": 30, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 16, "max_position_embeddings": 32, "type_vocab_size": 2}), encoding="utf-8")
    (d / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]) + "\n")
    (d / "pytorch_model.bin").write_bytes(weights)


def _pickled(obj) -> bytes:
    return pickle.dumps(obj)


def _fifo(d: Path) -> None:
    d.unlink()
    os.mkfifo(d)


def _empty_vocab(d: Path) -> None:
    _json(d, lambda t: {**t, "model": {**t["model"], "vocab": {}}})


def _empty_dir(d: Path) -> None:
    shutil.rmtree(d)
    d.mkdir()


EDITS = {
    "noop": lambda d, g: None,
    "fifo": lambda d, g: _fifo(d),
    "empty_vocab": lambda d, g: _empty_vocab(d),
    "empty_dir": lambda d, g: _empty_dir(d),
    "int64_weights": lambda d, g: _weights(d, lambda s: {k: v.long() if "word" in k else v for k, v in s.items()}),
    "bool_weights": lambda d, g: _weights(d, lambda s: {k: (v > 0) if "norm" in k else v for k, v in s.items()}),
    "empty_weights_file": lambda d, g: (d / "model.safetensors").write_bytes(b""),
    "weights_dir": lambda d, g: ((d / "model.safetensors").unlink(), (d / "model.safetensors").mkdir()),
    "bigger_tokenizer": lambda d, g: _bigger_tokenizer(d),
    "smaller_tokenizer": _smaller_tokenizer,
    "tokenizer_garbage": lambda d, g: (d / "tokenizer.json").write_text("{\"model\": 3}"),
    "no_tokenizer": lambda d, g: (d / "tokenizer.json").unlink(),
    "heads_zero": _set_model_key("num_heads", 0),
    "dropout_nan": _set_model_key("dropout", float("nan")),
    "vocab_negative": _set_model_key("vocab_size", -5),
    "activation_bad": _set_model_key("activation", "swish"),
    "hidden_not_divisible": _set_model_key("hidden_size", 63),
    "hidden_string": _set_model_key("hidden_size", "64"),
    "config_list": lambda d, g: (d / "config.json").write_text("[1, 2]"),
    "hf_pickle": lambda d, g: _hf_folder(d, _pickled({"bert.embeddings.word_embeddings.weight": Evil()})),
    "hf_garbage_bin": lambda d, g: _hf_folder(d, b"not a torch file at all"),
    "hf_bin_not_tensors": lambda d, g: _hf_folder(d, _torch_bytes({"a": 1, "b": "x"})),
    "shard_id_beyond_vocab": lambda d, g: _tokens(d, "train", 299 + 7),
    "shard_validation_id_beyond_vocab": lambda d, g: _tokens(d, "validation", 65000),
    "shard_bin_truncated": lambda d, g: (d / "train.tokens.bin").write_bytes(b"\x01"),
    "shard_bin_missing": lambda d, g: (d / "train.tokens.bin").unlink(),
    "meta_dtype": lambda d, g: _json(d / "meta.json", lambda m: {**m, "dtype": "float64"}),
    "meta_no_split": lambda d, g: _json(d / "meta.json", lambda m: {**m, "splits": {}}),
    "meta_version": lambda d, g: _json(d / "meta.json", lambda m: {**m, "format_version": 99}),
    "meta_counts": lambda d, g: _json(d / "meta.json", lambda m: {**m, "splits": {"train": {}, "validation": {}}}),
    "state_invalid_json": lambda d, g: (d / "last" / "trainer_state.json").write_text("{\"step\": "),
    "state_step_string": lambda d, g: _json(d / "last" / "trainer_state.json", lambda s: {**s, "step": "two"}),
    "state_step_negative": lambda d, g: _json(d / "last" / "trainer_state.json", lambda s: {**s, "step": -3}),
    "state_no_batches": lambda d, g: _json(d / "last" / "trainer_state.json",
                                           lambda s: {k: v for k, v in s.items() if k != "batches"}),
    "state_list": lambda d, g: (d / "last" / "trainer_state.json").write_text("[]"),
    "state_bad_batches": lambda d, g: _json(d / "last" / "trainer_state.json",
                                            lambda s: {**s, "batches": {"epoch": "x", "position": None}}),
    "optimizer_garbage": lambda d, g: (d / "last" / "optimizer.pt").write_bytes(b"garbage"),
    "optimizer_pickle": lambda d, g: (d / "last" / "optimizer.pt").write_bytes(_pickled(Evil())),
    "optimizer_wrong_dict": lambda d, g: (d / "last" / "optimizer.pt").write_bytes(_torch_bytes({"x": 1})),
    "last_weights_int": lambda d, g: _weights(d / "last", lambda s: {k: v.long() for k, v in s.items()}),
    "run_json_invalid": lambda d, g: (d / "run.json").write_text("{"),
    "no_last": lambda d, g: shutil.rmtree(d / "last"),
}


def _torch_bytes(obj) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def make_input(case: dict, work: Path, good: dict) -> None:
    """The case's one bad input, in the working directory."""
    if "file" not in case:
        return
    dst = work / case["file"]
    if "base" in case:
        src = Path(good[case["base"]])
        shutil.copytree(src, dst) if src.is_dir() else shutil.copy(src, dst)
        EDITS[case["edit"]](dst, good)
        return
    if "content" in case or "content_hex" in case:
        data = case["content"].encode("utf-8") if "content" in case else bytes.fromhex(case["content_hex"])
        dst.write_bytes(gzip.compress(data) if case.get("gzip") else data)
        return
    src = HERE / case["file"]
    if src.is_dir():
        shutil.copytree(src, dst)
        if case.get("tokenizer"):
            shutil.copy(good["tokenizer"], dst / "tokenizer.json")
    else:
        shutil.copy(src, dst)


def test_the_suite_is_large_and_covers_every_reader():
    assert len(CASES) >= 150
    files = {c["file"] for c in CASES if "file" in c and "content" not in c and "base" not in c
             and "content_hex" not in c}
    assert len(files) >= 25
    assert all((HERE / f).exists() for f in files)
    assert all(c["edit"] in EDITS for c in CASES if "base" in c)
    commands = {" ".join(a for a in c["args"][:2] if not a.startswith("-")) for c in CASES}
    assert {"prepare {file}", "tokenizer train", "pretrain", "finetune", "run", "vocab extend"} <= commands
    prefixes = {c["file"].split("_")[0].split(".")[0] for c in CASES if "file" in c}
    assert {"corpus", "tok", "vocab", "config", "shards", "classify", "pair", "tag", "span", "ckpt", "run",
            "use"} <= prefixes
    assert sum("file" not in c for c in CASES) >= 50  # flags and --set values: checked with the setting's name
    assert {c["edit"] for c in CASES if "base" in c} >= set(EDITS) - {"noop"}  # every edit is used


@pytest.mark.parametrize("case", CASES, ids=[f"{i:03d}-{c.get('file', 'flag')}-{c['args'][0]}"
                                             for i, c in enumerate(CASES)])
def test_bad_input_gives_one_clear_line(case, good, tmp_path, capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    make_input(case, work, good)
    for key, value in case.get("env", {}).items():
        monkeypatch.setenv(key, value)
    out = work / "out"
    dst = work / case.get("file", "-")
    args = [a.format(file=dst, out=out, work=work, **good) for a in case["args"]]
    before = tree_hash(work)
    capsys.readouterr()

    def hang(signum, frame):
        raise TimeoutError(f"no answer within {HANG_SECONDS} s: a hang")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(HANG_SECONDS)  # a case that blocks (a FIFO read, a lock wait) fails instead of hanging the suite
    try:
        code = main(args)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)

    captured = capsys.readouterr()
    # the error line, besides the progress bar `prepare` draws while it reads (tqdm: "tokenizing: 0doc [...]")
    lines = [x for x in captured.err.strip().splitlines() if not x.startswith("tokenizing: ")]
    assert code == 2, captured.err
    assert len(lines) == 1, captured.err
    line = lines[0]
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    assert line.startswith("pretune: error: ")
    if "file" in case and not case.get("no_path"):
        where = str(work / case.get("path_in_message", case["file"]))
        where += f":{case['line']}: " if "line" in case else ":"
        assert where in line, (where, line)
    assert case["expect"] in line, line
    assert case.get("also", "") in line, line
    assert tree_hash(work) == before  # nothing written, nothing removed
    assert not out.exists()
