"""The training loop: schedules, overfitting a tiny structured corpus, exact resume."""

import json
import math

import numpy as np
import pytest

from pretune.cli import main
from pretune.training.config import TrainConfig
from pretune.training.optim import lr_lambda


def test_schedules_warm_up_then_decay():
    for schedule in ("linear", "cosine"):
        f = lr_lambda(TrainConfig(max_steps=100, warmup_steps=10, schedule=schedule))
        assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
        values = [f(s) for s in range(10, 100)]
        assert all(a >= b for a, b in zip(values, values[1:]))
        assert values[-1] < 0.05
    assert lr_lambda(TrainConfig(max_steps=10, warmup_steps=0, schedule="constant"))(7) == 1.0
    wsd = lr_lambda(TrainConfig(max_steps=100, warmup_steps=10, schedule="wsd"))  # stable to step 80, then decay
    assert wsd(0) == pytest.approx(0.1) and wsd(10) == wsd(80) == 1.0
    assert wsd(90) == pytest.approx(0.5) and wsd(99) == pytest.approx(0.05)


def _letter_corpus(path, n_docs=400, seed=0):
    """Each document repeats one random letter ('kkkk...'): unigram entropy ln 26, but context gives the answer."""
    rng = np.random.default_rng(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    with open(path, "w") as f:
        for start in rng.integers(26, size=n_docs):
            f.write(letters[int(start)] * 40 + "\n")


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_tiny_model_learns_far_below_unigram_entropy(tmp_path):
    corpus = tmp_path / "letters.txt"
    _letter_corpus(corpus)
    assert main(["tokenizer", "train", str(corpus), "--kind", "char", "--out", str(tmp_path / "tok.json")]) == 0
    assert main(["prepare", str(corpus), "--tokenizer", str(tmp_path / "tok.json"), "--out", str(tmp_path / "shards"),
                 "--validation-fraction", "0.1"]) == 0
    tokens = np.fromfile(tmp_path / "shards" / "train.tokens.bin", dtype=np.uint16)
    p = np.bincount(tokens) / len(tokens)
    unigram_entropy = float(-(p[p > 0] * np.log(p[p > 0])).sum())  # nats, ~ln 26
    run = tmp_path / "run"
    assert main(["pretrain", "--shards", str(tmp_path / "shards"), "--out", str(run), "--model-size", "tiny",
                 "--max-len", "32", "--max-steps", "150", "--batch-size", "32", "--lr", "3e-3", "--eval-every", "150",
                 "--eval-batches", "4", "--no-progress", "--warmup-steps", "10"]) == 0
    val = [m for m in _metrics(run) if m["split"] == "validation"][-1]
    assert unigram_entropy > 3.0
    assert val["mlm_loss"] < 0.3 * unigram_entropy, (val, unigram_entropy)
    assert val["mlm_accuracy"] > 0.8


@pytest.fixture(scope="module")
def wordnet_shards(tmp_path_factory):
    """A small real corpus: 3000 WordNet glosses, a trained WordPiece vocabulary and its shards."""
    import gzip
    from importlib.resources import files

    d = tmp_path_factory.mktemp("wordnet")
    src = files("pretune") / "resources" / "wordnet" / "corpus.txt.gz"
    with gzip.open(src, "rt", encoding="utf-8") as f:
        lines = [next(f) for _ in range(3000)]
    (d / "corpus.txt").write_text("".join(lines), encoding="utf-8")
    assert main(["tokenizer", "train", str(d / "corpus.txt"), "--vocab-size", "2000", "--lowercase",
                 "--out", str(d / "tok.json")]) == 0
    assert main(["prepare", str(d / "corpus.txt"), "--tokenizer", str(d / "tok.json"), "--out", str(d / "shards")]) == 0
    return d


PRETRAIN = ["--model-size", "tiny", "--max-len", "64", "--batch-size", "8", "--lr", "2e-3", "--max-steps", "40",
            "--eval-every", "10", "--eval-batches", "3", "--log-every", "1", "--save-every", "15", "--no-progress",
            "--seed", "5", "--warmup-steps", "4", "--embed-init", "random"]  # resume with PPMI vectors: test_crash.py


def test_resume_equals_uninterrupted_run(wordnet_shards):
    d = wordnet_shards
    straight, split = d / "straight", d / "split"
    assert main(["pretrain", "--shards", str(d / "shards"), "--out", str(straight), *PRETRAIN]) == 0
    assert main(["pretrain", "--shards", str(d / "shards"), "--out", str(split), *PRETRAIN, "--stop-after", "20"]) == 0
    assert json.loads((split / "last" / "trainer_state.json").read_text())["step"] == 20
    assert main(["pretrain", "--shards", str(d / "shards"), "--out", str(split), *PRETRAIN, "--resume"]) == 0
    a, b = _metrics(straight), _metrics(split)
    assert [(m["step"], m["split"]) for m in a] == [(m["step"], m["split"]) for m in b]  # no duplicated steps
    for x, y in zip(a, b):
        key = "loss" if x["split"] == "train" else "mlm_loss"
        assert abs(x[key] - y[key]) < 1e-6, (x, y)
    from safetensors.torch import load_file

    wa, wb = load_file(straight / "model" / "model.safetensors"), load_file(split / "model" / "model.safetensors")
    assert all(float((wa[k] - wb[k]).abs().max()) < 1e-6 for k in wa)
    # and the validation loss fell on real text
    val = [m["mlm_loss"] for m in a if m["split"] == "validation"]
    assert val[-1] < val[0] - 0.5 and math.isfinite(val[-1])


def test_output_dir_with_a_run_is_never_overwritten_silently(wordnet_shards, capsys):
    d = wordnet_shards
    run = d / "guarded"
    args = ["pretrain", "--shards", str(d / "shards"), "--out", str(run), *PRETRAIN, "--max-steps", "2"]
    assert main(args) == 0
    before = (run / "model" / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(args) == 2
    assert "already holds files" in capsys.readouterr().err
    assert main([*args, "--resume", "--lr", "1e-3"]) == 2  # a different config is a different run
    assert "different config" in capsys.readouterr().err
    assert (run / "model" / "model.safetensors").read_bytes() == before


def test_max_len_beyond_positions_is_an_input_error(wordnet_shards, capsys):
    d = wordnet_shards
    code = main(["pretrain", "--shards", str(d / "shards"), "--out", str(d / "toolong"), *PRETRAIN, "--max-len", "512"])
    err = capsys.readouterr().err
    assert code == 2 and "max_len 512 is beyond the model's 128 positions" in err
    assert len(err.strip().splitlines()) == 1
    assert not (d / "toolong").exists()
