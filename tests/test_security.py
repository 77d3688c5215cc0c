"""Security: weights only from safetensors, torch.load only with weights_only=True, no eval of config values, and
no file name taken from data (labels) that could leave the run directory."""

from __future__ import annotations

import ast
import csv
import json
import pickle
from pathlib import Path

import pytest

from pretune import files
from pretune.cli import main
from pretune.errors import InputError
from pretune.training import checkpoint as ck

PACKAGE = Path(__file__).resolve().parent.parent / "pretune"
SOURCES = sorted(PACKAGE.rglob("*.py"))
WORDNET = PACKAGE / "resources" / "wordnet"


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else "non-constant"
    return None


def test_the_scan_sees_the_whole_package():
    names = {p.name for p in SOURCES}
    assert {"checkpoint.py", "trainer.py", "config.py", "cli.py", "corpus.py", "labeled.py"} <= names


def test_no_eval_exec_or_pickle_in_the_package():
    problems = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for m in mods:
                    if m.split(".")[0] in ("pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve", "yaml"):
                        problems.append(f"{path.name}:{node.lineno}: imports {m}")
                if isinstance(node, ast.ImportFrom) and node.module == "torch" and any(a.name == "load"
                                                                                       for a in node.names):
                    problems.append(f"{path.name}:{node.lineno}: from torch import load (unchecked alias)")
        for call in _calls(tree):
            name = _dotted(call.func)
            if name in ("eval", "exec", "compile", "__import__", "builtins.eval", "builtins.exec"):
                problems.append(f"{path.name}:{call.lineno}: {name}()")
    assert problems == []


def test_every_torch_load_is_weights_only_and_no_numpy_pickles():
    seen, problems = 0, []
    for path in SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for call in _calls(tree):
            name = _dotted(call.func)
            if name == "torch.load":
                seen += 1
                if _keyword(call, "weights_only") is not True:
                    problems.append(f"{path.name}:{call.lineno}: torch.load without weights_only=True")
            if name in ("np.load", "numpy.load") and _keyword(call, "allow_pickle") not in (None, False):
                problems.append(f"{path.name}:{call.lineno}: np.load(allow_pickle=...)")
    assert problems == []
    assert seen >= 1  # the optimizer state is read this way: the scan did find it


def test_a_checkpoint_with_pickled_weights_only_is_refused(tmp_path):
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model": {}}))
    (d / "pytorch_model.bin").write_bytes(pickle.dumps({"w": [1.0]}))
    with pytest.raises(InputError, match="checkpoint has no model.safetensors"):
        ck.load_checkpoint(d)


class _Payload:
    """Unpickling this (unsafely) creates a file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, list[str]]:
    """A 2-step pretraining run to tamper with."""
    import gzip
    import itertools

    d = tmp_path_factory.mktemp("secure")
    with gzip.open(WORDNET / "corpus.txt.gz", "rt", encoding="utf-8") as f:
        (d / "corpus.txt").write_text("".join(itertools.islice(f, 300)), encoding="utf-8")
    assert main(["tokenizer", "train", str(d / "corpus.txt"), "--vocab-size", "300", "--out", str(d / "tok.json")]) == 0
    assert main(["prepare", str(d / "corpus.txt"), "--tokenizer", str(d / "tok.json"), "--out", str(d / "shards")]) == 0
    args = ["pretrain", "--shards", str(d / "shards"), "--out", str(d / "run"), "--model-size", "tiny", "--max-len",
            "32", "--batch-size", "4", "--max-steps", "3", "--stop-after", "2", "--no-progress", "--eval-batches", "1"]
    assert main(args) == 0
    return d / "run", args


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_pickle_payload_in_the_optimizer_state_never_runs(tiny_run, tmp_path, capsys):
    run, args = tiny_run
    marker = tmp_path / "code-ran"
    (run / "last" / "optimizer.pt").write_bytes(pickle.dumps({"optimizer": _Payload(marker)}))
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot read optimizer state" in err[0] and "optimizer.pt" in err[0]
    assert not marker.exists()


@pytest.mark.parametrize("toml", [
    'lr = "__import__(\'pathlib\').Path(\'{marker}\').touch() or 1e-3"',
    'max_steps = "__import__(\'pathlib\').Path(\'{marker}\').touch() or 5"',
    'schedule = "__import__(\'pathlib\').Path(\'{marker}\').touch()"',
])
def test_config_values_are_never_evaluated(toml, tmp_path, capsys):
    marker = tmp_path / "code-ran"
    config = tmp_path / "c.toml"
    config.write_text("[train]\n" + toml.format(marker=marker) + "\n")
    code = main(["pretrain", "--config", str(config), "--shards", str(tmp_path / "none"), "--out",
                 str(tmp_path / "out")])
    assert code == 2 and "c.toml" in capsys.readouterr().err
    assert not marker.exists()


def test_safe_filename_and_child_path_keep_data_names_inside(tmp_path):
    for name in ("../../etc/passwd", "/abs/path", "a/b", "a\\b", "..", ".", "", ".hidden", "x" * 500, "é/ü"):
        safe = files.safe_filename(name)
        assert "/" not in safe and "\\" not in safe and not safe.startswith(".") and 0 < len(safe) <= 89
        assert files.child_path(tmp_path, safe).resolve().parent == tmp_path.resolve()
    assert files.safe_filename("a/b") != files.safe_filename("a_b")  # distinct names stay distinct
    assert files.safe_filename("noun.artifact") == "noun.artifact"  # ordinary names are untouched
    for bad in ("../x", "/etc/passwd", "a/b", "..", ".", ""):
        with pytest.raises(InputError, match="would leave the output directory"):
            files.child_path(tmp_path, bad)


def test_labels_with_slashes_stay_data(tiny_ckpt, tmp_path, capsys):
    """Fine-tuning on labels shaped like paths writes only under --out, and the labels survive as data."""
    labels = ["../../escaped", "/tmp/absolute", "a/b", "..", "x\\y"]
    with open(WORDNET / "supersense_train.csv", encoding="utf-8") as f:
        texts = [row["text"] for row in csv.DictReader(f)][:40]
    work = tmp_path / "work"
    (work / "deep" / "deeper").mkdir(parents=True)
    data = work / "deep" / "deeper" / "train.csv"
    with open(data, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i, t in enumerate(texts):
            w.writerow([t, labels[i % len(labels)]])
    out = work / "deep" / "deeper" / "run"
    before = {p for p in tmp_path.rglob("*")}
    assert main(["finetune", "--from", str(tiny_ckpt), "--task", "classify", "--train", str(data), "--validation",
                 str(data), "--test", str(data), "--out", str(out), "--max-steps", "2", "--batch-size", "8",
                 "--no-progress"]) == 0
    created = {p for p in tmp_path.rglob("*")} - before
    assert created and all(out in p.parents or p == out for p in created), sorted(map(str, created))
    for p in created:
        assert not p.is_symlink()
    config = json.loads((out / "model" / "config.json").read_text())
    assert sorted(labels) == sorted(config["labels"])
