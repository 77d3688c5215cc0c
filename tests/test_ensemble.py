"""Fine-tuning ensembles ([finetune] ensemble = K): K seeds fine-tuned, their probabilities averaged, one checkpoint
that predict / evaluate load like any other."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pretune.cli import main
from pretune.errors import InputError
from pretune.finetune.model import EnsembleTaskModel, TaskModel, load_task_model
from pretune.use.predict import predict

WORDNET = Path(__file__).resolve().parent.parent / "pretune" / "resources" / "wordnet"


def _small(root: Path, name: str, n: int) -> Path:
    with open(WORDNET / name, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    path = root / name
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows(rows[:n])
    return path


def _args(ckpt, d: Path, out: Path, *extra) -> list[str]:
    return ["finetune", "--from", str(ckpt), "--task", "classify", "--train", str(WORDNET / "supersense_train.csv"),
            "--validation", str(d / "supersense_validation.csv"), "--test", str(d / "supersense_test.csv"),
            "--out", str(out), "--max-len", "32", "--epochs", "1", "--max-steps", "6", "--batch-size", "16",
            "--label-fraction", "0.05",
            "--no-progress", "--seed", "3", *extra]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("ens_data")
    _small(d, "supersense_validation.csv", 60)
    _small(d, "supersense_test.csv", 60)
    return d


def test_ensemble_averages_its_members(tiny_ckpt, data, tmp_path, capsys):
    out = tmp_path / "ens"
    assert main(_args(tiny_ckpt, data, out, "--ensemble", "3")) == 0, capsys.readouterr().err
    model, _, conf = load_task_model(out / "model")
    assert isinstance(model, EnsembleTaskModel) and conf["ensemble"] == 3 and conf["member_seeds"] == [3, 4, 5]
    members = [load_task_model(out / "members" / f"member-{k}" / "model")[0] for k in range(3)]
    assert all(type(m) is TaskModel for m in members)
    # the members differ (seeds), and the ensemble's probabilities are exactly their mean
    w = [m.head.classifier.weight for m in members]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])
    texts = ["a person who works with wood", "a small domestic animal", "the act of running"]
    ens = predict(str(out / "model"), texts)
    single = [predict(str(out / "members" / f"member-{k}" / "model"), texts) for k in range(3)]
    for i, p in enumerate(ens):
        for label, prob in p["probs"].items():
            assert prob == pytest.approx(np.mean([s[i]["probs"][label] for s in single]), abs=1e-5)
    # the test report is the ensemble's, and matches its own predictions
    report = json.loads((out / "test_report.json").read_text())
    gold = [r["label"] for r in csv.DictReader(open(data / "supersense_test.csv", encoding="utf-8"))]
    preds = [p["label"] for p in predict(str(out / "model"), [r["text"] for r in csv.DictReader(
        open(data / "supersense_test.csv", encoding="utf-8"))])]
    assert report["accuracy"] == pytest.approx(np.mean([a == b for a, b in zip(preds, gold)]))
    # metrics.jsonl: member 0's curve, then the ensemble's validation record
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["ensemble"] == 3 and 0 <= last["accuracy"] <= 1

    # what has no meaning for K bodies is refused in one line, naming a member to use instead
    texts_file = tmp_path / "t.txt"
    texts_file.write_text("a small dog\n", encoding="utf-8")
    capsys.readouterr()
    embed = ["embed", "--from", str(out / "model"), "--input", str(texts_file), "--output", str(tmp_path / "X.npy")]
    for args in (embed, ["export", str(out / "model"), "--out", str(tmp_path / "hf")],
                 _args(out / "model", data, tmp_path / "again")):
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "ensemble of 3" in err and "member-0" in err, err
    assert not (tmp_path / "X.npy").exists() and not (tmp_path / "hf").exists()

    # --resume on a finished ensemble trains nothing again and gives the same model
    before = (out / "model" / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(_args(tiny_ckpt, data, out, "--ensemble", "3", "--resume")) == 0
    assert "ensemble member" not in capsys.readouterr().out
    assert (out / "model" / "model.safetensors").read_bytes() == before


def test_ensemble_is_refused_where_probabilities_cannot_be_averaged(tiny_ckpt, data, tmp_path, capsys):
    code = main(["finetune", "--from", str(tiny_ckpt), "--task", "tag", "--train", str(WORDNET /
                 "tagging_validation.conll"), "--validation", str(WORDNET / "tagging_validation.conll"),
                 "--out", str(tmp_path / "t"), "--ensemble", "2", "--no-progress"])
    assert code == 2
    assert "ensemble averages class probabilities" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()
    with pytest.raises(InputError, match="class probabilities"):
        EnsembleTaskModel([TaskModel(load_task_model.__globals__["open_checkpoint"](tiny_ckpt).model_config(), "tag",
                                     ["O", "B-X", "I-X"])])


def test_explaining_an_ensemble_follows_every_member(tiny_ckpt, data, tmp_path, capsys):
    """Integrated gradients through every member's embeddings: the scores add up to the ensemble's change (with one
    member's path only they would not)."""
    from pretune.use.explain import explain_full

    out = tmp_path / "ens"
    assert main(_args(tiny_ckpt, data, out, "--ensemble", "2")) == 0
    model, tok, _ = load_task_model(out / "model")
    with torch.no_grad():  # sharpen the classifiers so that the text moves the probability far from the baseline
        for m in model.members:
            m.head.classifier.weight.mul_(40.0)
    ex = explain_full(model, tok, "a person who carves wood for a living", steps=64)
    assert abs(ex.prob - ex.baseline_prob) > 0.015
    total = sum(score for *_, score in ex.items)
    assert total == pytest.approx(ex.prob - ex.baseline_prob, abs=2e-3)
    # two identical members explain exactly as one (a path through one member's embeddings only would give half)
    model.members[1].load_state_dict(model.members[0].state_dict())
    pair = explain_full(model, tok, "a person who carves wood for a living", steps=16)
    one = explain_full(model.members[0], tok, "a person who carves wood for a living", steps=16)
    assert [s for *_, s in pair.items] == pytest.approx([s for *_, s in one.items], abs=1e-5)
