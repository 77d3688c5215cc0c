"""Self-training and consistency training (UDA): pseudo-label selection, the pool, the KL term, the round loop
(a round that hurts validation is discarded), config and CLI errors, the pipeline's rounds table."""

from __future__ import annotations

import csv
import gzip
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pretune.cli import main
from pretune.errors import InputError
from pretune.finetune import stage as ft
from pretune.finetune.config import FinetuneSection, FinetuneTrainConfig
from pretune.finetune.data import encode_split
from pretune.finetune.model import TaskModel
from pretune.finetune.tasks import sentence_confidence
from pretune.semisup import selftrain as st
from pretune.semisup.consistency import Consistency, consistency_loss, from_section, mask_tokens
from pretune.semisup.pool import read_pool
from pretune.text.labeled import Example

WORDNET = Path(__file__).resolve().parent.parent / "pretune" / "resources" / "wordnet"
CLASSES = ("noun.animal", "noun.artifact", "noun.person", "noun.plant")


def run_cli(args: list, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def supersense_rows(split: str, labels=CLASSES) -> list[dict]:
    with open(WORDNET / f"supersense_{split}.csv", encoding="utf-8") as f:
        return [r for r in csv.DictReader(f) if labels is None or r["label"] in labels]


def write_csv(path: Path, rows: list[dict], columns=("text", "label")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, list(columns), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def four_class_task(root: Path, n_train: int, n_val: int, n_test: int, n_pool: int) -> dict[str, Path]:
    """A 4-class slice of the supersense task and a pool of other supersense texts of those classes (one per line)."""
    rows = supersense_rows("train")
    files = {"train": write_csv(root / "train.csv", rows[:n_train]),
             "validation": write_csv(root / "validation.csv", supersense_rows("validation")[:n_val]),
             "test": write_csv(root / "test.csv", supersense_rows("test")[:n_test])}
    pool = root / "pool.txt"
    pool.write_text("".join(r["text"] + "\n" for r in rows[n_train : n_train + n_pool]), encoding="utf-8")
    files["pool"] = pool
    return files


# ---- choosing pseudo labels ------------------------------------------------------------------------------------------
PROBS = np.array([
    [0.95, 0.03, 0.02],  # 0: class 0, 0.95
    [0.10, 0.85, 0.05],  # 1: class 1, 0.85
    [0.40, 0.35, 0.25],  # 2: class 0, 0.40
    [0.05, 0.05, 0.90],  # 3: class 2, 0.90
    [0.97, 0.02, 0.01],  # 4: class 0, 0.97
    [0.90, 0.05, 0.05],  # 5: class 0, 0.90
])


def test_threshold_keeps_the_confident_items_most_confident_first():
    assert st.select_pseudo_labels(PROBS, threshold=0.9) == [(4, 0, 0.97), (0, 0, 0.95), (3, 2, 0.9), (5, 0, 0.9)]
    assert [i for i, _, _ in st.select_pseudo_labels(PROBS, threshold=0.86)] == [4, 0, 3, 5]
    assert len(st.select_pseudo_labels(PROBS, threshold=None)) == len(PROBS)  # no threshold: everything
    assert st.select_pseudo_labels(PROBS, threshold=0.99) == []
    assert st.select_pseudo_labels(np.zeros((0, 3))) == []


def test_top_k_per_class_keeps_classes_balanced():
    picked = st.select_pseudo_labels(PROBS, top_k=2)
    assert Counter(c for _, c, _ in picked) == {0: 2, 1: 1, 2: 1}  # class 0 (4 items) capped at its best 2
    assert [i for i, c, _ in picked if c == 0] == [4, 0]
    both = st.select_pseudo_labels(PROBS, threshold=0.88, top_k=1)  # threshold first, then the cap
    assert both == [(4, 0, 0.97), (3, 2, 0.9)]


def test_ties_go_to_the_earlier_item():
    probs = np.array([[0.2, 0.8], [0.8, 0.2], [0.2, 0.8], [0.2, 0.8]])
    assert [i for i, _, _ in st.select_pseudo_labels(probs, top_k=2)] == [0, 1, 2]  # item 3 is cut by the cap
    assert [i for i, _, _ in st.select_confident([0.5, 0.7, 0.7, 0.5], [0, 0, 0, 0])] == [1, 2, 0, 3]


def test_sentence_confidence_for_tagging():
    assert sentence_confidence([0.9, 0.5, 1.0], "mean") == pytest.approx(0.8)
    assert sentence_confidence([0.9, 0.5, 1.0], "min") == 0.5
    assert sentence_confidence([], "mean") == 0.0
    pool = [Example(line=i + 1, tokens=["w"] * 3) for i in range(3)]
    merged = [(["O", "B-X", "I-X"], [0.9, 0.6, 1.0]), (["O", "O", "O"], [0.8, 0.8, 0.8]),
              (["B-X", "O", "O"], [0.99, 0.99, 0.6])]
    by_mean = st.pseudo_label("tag", ["O", "B-X", "I-X"], pool, merged, 0.75, None, "mean")
    assert [(ex.line, ex.tags, round(p, 2)) for ex, p in by_mean] == [
        (3, ["B-X", "O", "O"], 0.86), (1, ["O", "B-X", "I-X"], 0.83), (2, ["O", "O", "O"], 0.8)]
    assert pool[0].tags is None  # the pool is not modified
    by_min = st.pseudo_label("tag", ["O", "B-X", "I-X"], pool, merged, 0.75, None, "min")
    assert [ex.line for ex, _ in by_min] == [2]  # one doubtful word (0.6) rejects the others
    assert [ex.line for ex, _ in st.pseudo_label("tag", [], pool, merged, None, 1, "mean")] == [3]  # top-1 sentence


# ---- the pool ----------------------------------------------------------------------------------------------------
def test_pool_reads_lines_and_tables_drops_labeled_texts_and_samples(tmp_path):
    with gzip.open(tmp_path / "a.txt.gz", "wt", encoding="utf-8") as f:
        f.write("one text\n\nthe  validation text\nanother text\none text\n")
    (tmp_path / "b.jsonl").write_text('{"text": "json text", "label": "x"}\n{"text": "training text"}\n')
    write_csv(tmp_path / "c.csv", [{"text": "csv text"}], columns=("text",))
    exclude = [Example(line=1, text="training text", label="x"), Example(line=1, text="the validation text")]
    pool, info = read_pool([tmp_path / "a.txt.gz", tmp_path / "b.jsonl", tmp_path / "c.csv"], "classify",
                              {"text_field": None}, exclude)
    assert [ex.text for ex in pool] == ["one text", "another text", "json text", "csv text"]
    assert all(ex.label is None for ex in pool)  # a label column in the pool is ignored
    assert info == {"files": [str(tmp_path / n) for n in ("a.txt.gz", "b.jsonl", "c.csv")], "read": 7,
                    "dropped_duplicates": 3, "used": 4}
    small, info = read_pool([tmp_path / "a.txt.gz", tmp_path / "b.jsonl"], "classify", {}, size=2, seed=1)
    again, _ = read_pool([tmp_path / "a.txt.gz", tmp_path / "b.jsonl"], "classify", {}, size=2, seed=1)
    assert len(small) == 2 and [e.text for e in small] == [e.text for e in again] and info["used"] == 2
    words, _ = read_pool([tmp_path / "a.txt.gz"], "tag", {})
    assert words[0].tokens == ["one", "text"]
    write_csv(tmp_path / "p.csv", [{"text_a": "a", "text_b": "b"}, {"text_a": "a", "text_b": "c"}],
              columns=("text_a", "text_b"))
    pairs, _ = read_pool([tmp_path / "p.csv"], "pair", {"text_b_field": "text_b"},
                            [Example(line=1, text="a", text_b="c", label="y")])
    assert [(e.text, e.text_b) for e in pairs] == [("a", "b")]


def test_pool_bad_input_names_the_file_and_line(tmp_path):
    write_csv(tmp_path / "nocol.csv", [{"sentence": "x"}], columns=("sentence",))
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"words": "no text"}\n')
    (tmp_path / "one.txt").write_text("only line\n")
    cases = [
        ([tmp_path / "missing.txt"], "classify", "missing.txt: file not found"),
        ([tmp_path / "nocol.csv"], "classify", "nocol.csv:1: missing column 'text'"),
        ([tmp_path / "bad.jsonl"], "classify", "bad.jsonl:2: missing field 'text'"),
        ([tmp_path / "one.txt"], "pair", "one.txt: a pool for a pair task needs two texts"),
        ([tmp_path / "one.txt"], "span", "not 'span'"),
        ([], "classify", "no unlabeled files given"),
    ]
    for paths, task, expected in cases:
        with pytest.raises(InputError) as e:
            read_pool(paths, task, {})
        assert expected in str(e.value), (paths, task, str(e.value))
    with pytest.raises(InputError, match="holds no text that is not already in the labeled"):
        read_pool([tmp_path / "one.txt"], "classify", {}, [Example(line=1, text="only line")])


# ---- consistency (UDA) -------------------------------------------------------------------------------------------
def test_consistency_loss_is_zero_without_noise_and_pulls_otherwise():
    torch.manual_seed(0)
    clean = torch.randn(6, 4) * 3
    loss, kept = consistency_loss(clean, clean.clone().requires_grad_(), temperature=1.0, threshold=0.0)
    assert kept == 6 and abs(float(loss.detach())) < 1e-6
    noisy = torch.randn(6, 4, requires_grad=True)
    loss, _ = consistency_loss(clean, noisy, temperature=1.0, threshold=0.0)
    assert float(loss.detach()) > 0.01
    loss.backward()
    assert noisy.grad is not None and noisy.grad.abs().sum() > 0
    # the target is fixed: no gradient into the clean logits
    clean_param = clean.clone().requires_grad_()
    loss2, _ = consistency_loss(clean_param, noisy.detach().requires_grad_(), 0.4, 0.0)
    loss2.backward()
    assert clean_param.grad is None
    # sharpening: with T < 1 the target is more peaked than the clean prediction, so clean == noisy is no longer 0
    sharp, _ = consistency_loss(clean, clean.clone(), temperature=0.4, threshold=0.0)
    assert float(sharp) > 0


def test_confidence_mask_drops_doubtful_items():
    clean = torch.tensor([[4.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.0, 5.0, 0.0]])  # item 1 is near uniform
    noisy = torch.zeros(3, 3)
    loss, kept = consistency_loss(clean, noisy, temperature=1.0, threshold=0.8)
    assert kept == 2
    p = clean.softmax(-1)
    kl = (p * (p.log() - noisy.log_softmax(-1))).sum(-1)
    assert float(loss) == pytest.approx(float((kl[0] + kl[2]) / 3), rel=1e-5)  # mean over all 3, item 1 adds 0
    nothing, kept = consistency_loss(clean, noisy, temperature=1.0, threshold=0.999)
    assert kept == 0 and float(nothing) == 0.0


def test_token_masking_spares_special_tokens_and_padding():
    ids = torch.tensor([[2, 10, 11, 12, 13, 3, 0, 0]] * 200)
    attention = ids != 0
    noisy = mask_tokens(ids, attention, mask_id=4, prob=0.5, keep_ids=[2, 3, 0],
                        generator=torch.Generator().manual_seed(0))
    changed = noisy != ids
    assert not changed[:, [0, 5, 6, 7]].any()  # [CLS], [SEP], padding
    assert 0.4 < changed[:, 1:5].float().mean() < 0.6 and (noisy[changed] == 4).all()
    assert torch.equal(mask_tokens(ids, attention, 4, 0.0, [2, 3, 0]), ids)


def _tiny_task_model(task: str, labels) -> TaskModel:
    from pretune.model.transformer import PRESETS, ModelConfig

    torch.manual_seed(0)
    return TaskModel(ModelConfig(**{**PRESETS["tiny"], "vocab_size": 1000}), task, list(labels))


@pytest.mark.parametrize("task", ["classify", "tag"])
def test_consistency_term_carries_gradient_into_the_model(task, tiny_ckpt):
    from pretune.training.checkpoint import load_checkpoint

    tok = load_checkpoint(tiny_ckpt).tokenizer()
    texts = ["a small fish of warm seas", "a tool for cutting wood", "a person who writes books"] * 3
    pool = [Example(line=i, text=t) if task == "classify" else Example(line=i, tokens=t.split())
            for i, t in enumerate(texts)]
    data = encode_split(None, pool, task, tok, None, 32, {})
    term = Consistency(data.features, tok, batch_size=4, weight=2.0, temperature=0.4, threshold=0.0, mask_prob=0.3)
    rows = term.batch(torch.Generator().manual_seed(0))
    labeled, unlabeled = Consistency.split({"input_ids": torch.zeros(1), **rows})
    assert list(labeled) == ["input_ids"] and unlabeled["input_ids"].shape[0] == 4
    assert (unlabeled["noisy_ids"] != unlabeled["input_ids"]).any()
    model = _tiny_task_model(task, ["a", "b", "c"] if task == "classify" else ["O", "B-X", "I-X"])
    model.train()
    loss, stats = term.loss(model, unlabeled)
    assert model.training  # the clean pass ran in eval mode and gave the mode back
    n_items = 4 if task == "classify" else int(unlabeled["word_mask"].sum())
    assert float(stats["uda_loss"][1]) == n_items and float(loss.detach()) > 0
    loss.backward()
    assert model.body.embeddings.word.weight.grad.abs().sum() > 0


# ---- config and CLI errors ---------------------------------------------------------------------------------------
def test_config_validation_of_the_new_keys():
    base = dict(task="classify", checkpoint="c", train="t", validation="v", out="o")
    FinetuneSection(**base, self_training_rounds=2, unlabeled=["p.txt"]).validate()
    bad = [
        (dict(self_training_rounds=1), "unlabeled is required"),
        (dict(uda_weight=1.0), "unlabeled is required"),
        (dict(self_training_rounds=-1), "self_training_rounds must be >= 0"),
        (dict(pseudo_threshold=1.5), "pseudo_threshold must be in [0, 1]"),
        (dict(pseudo_top_k=-2), "pseudo_top_k must be >= 0"),
        (dict(pool_size=-1), "pool_size must be >= 0"),
        (dict(tag_confidence="max"), "tag_confidence must be mean or min"),
        (dict(uda_weight=-1.0), "uda_weight must be >= 0"),
        (dict(uda_temperature=0.0), "uda_temperature must be > 0"),
        (dict(uda_mask_prob=1.0), "uda_mask_prob must be in [0, 1)"),
        (dict(uda_threshold=-0.1), "uda_threshold must be in [0, 1]"),
        (dict(task="span", uda_weight=1.0, unlabeled=["p"]), "support the tasks classify, pair and tag, not span"),
    ]
    for extra, expected in bad:
        with pytest.raises(InputError) as e:
            FinetuneSection(**{**base, **extra}).validate("cfg.toml")
        assert expected in str(e.value) and str(e.value).startswith("cfg.toml: [finetune]"), (extra, str(e.value))


def test_cli_bad_input_fails_in_one_line_before_touching_out(tiny_ckpt, tmp_path, capsys):
    files = four_class_task(tmp_path, 24, 12, 12, 30)
    out = tmp_path / "run"
    common = ["finetune", "--task", "classify", "--from", tiny_ckpt, "--train", files["train"], "--validation",
              files["validation"], "--out", out, "--epochs", "1", "--no-progress"]
    cases = [
        (["--self-training-rounds", "1"], "unlabeled is required"),
        (["--self-training-rounds", "1", "--unlabeled", tmp_path / "nope.txt"], "nope.txt: file not found"),
        (["--uda-weight", "1", "--unlabeled", tmp_path / "nope.txt"], "nope.txt: file not found"),
        (["--self-training-rounds", "1", "--unlabeled", files["pool"], "--pseudo-threshold", "2"],
         "pseudo_threshold must be in [0, 1]"),
        (["--uda-weight", "x", "--unlabeled", files["pool"]], "uda_weight must be of type float"),
    ]
    for extra, expected in cases:
        code, _, err = run_cli([*common, *extra], capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and expected in lines[0], (extra, err)
        assert not out.exists(), extra


# ---- the rounds --------------------------------------------------------------------------------------------------
def test_cli_self_training_writes_every_round(tiny_ckpt, tmp_path, capsys):
    files = four_class_task(tmp_path, 40, 20, 20, 60)
    out = tmp_path / "run"
    args = ["finetune", "--task", "classify", "--from", tiny_ckpt, "--train", files["train"], "--validation",
            files["validation"], "--test", files["test"], "--out", out, "--epochs", "2", "--max-len", "32",
            "--batch-size", "8", "--lr", "1e-3", "--no-progress", "--self-training-rounds", "1",
            "--unlabeled", f"{files['pool']},{files['train']}", "--pseudo-threshold", "0", "--pseudo-top-k", "5"]
    resume_args = [*args, "--resume"]
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    record = json.loads((out / "self_training.json").read_text())
    assert record["metric"] == "accuracy" and record["n_gold"] == 40 and record["top_k"] == 5
    assert record["pool"]["used"] == 60 and record["pool"]["dropped_duplicates"] == 40  # the training texts
    r0, r1 = record["rounds"]
    assert (r0["round"], r0["n_pseudo"], r0["teacher"], r0["kept"]) == (0, 0, None, True)
    assert r1["teacher"] == 0 and 0 < r1["n_pseudo"] <= 4 * 5 and max(r1["pseudo_per_label"].values()) <= 5
    pseudo = [json.loads(x) for x in (out / "pseudo-round-1.jsonl").read_text().splitlines()]
    assert len(pseudo) == r1["n_pseudo"] and all(p["label"] in CLASSES and 0 < p["confidence"] <= 1 for p in pseudo)
    pool_texts = set(files["pool"].read_text().splitlines())
    assert all(p["text"] in pool_texts for p in pseudo)
    for r in (r0, r1):
        assert set(r["test"]) >= {"accuracy", "macro_f1"} and isinstance(r["validation"], float)
        assert (out / f"round-{r['round']}" / "model" / "model.safetensors").is_file()
        assert not (out / f"round-{r['round']}" / "last").exists()
    kept = record["kept_round"]
    assert kept == (1 if r1["kept"] else 0) and r1["kept"] == (r1["validation"] > r0["validation"])
    report = json.loads((out / "test_report.json").read_text())
    assert report["accuracy"] == record["rounds"][kept]["test"]["accuracy"]
    assert (out / "model" / "model.safetensors").read_bytes() == \
        (out / f"round-{kept}" / "model" / "model.safetensors").read_bytes()
    assert "round   pseudo  validation" in stdout and f"model: {out / 'model'}" in stdout
    # the round-1 student saw the gold subset and the pseudo labels
    run1 = json.loads((out / "round-1" / "run.json").read_text())["finetune"]
    assert run1["pseudo_labels"] == str(out / "pseudo-round-1.jsonl") and run1["self_training_rounds"] == 0
    # a finished run resumed: every round is reused, nothing trains again
    code, stdout, err = run_cli(resume_args, capsys)
    assert code == 0, err
    assert "self-training round" not in stdout and json.loads((out / "self_training.json").read_text()) == record
    # stopped after round 0: --resume trains round 1 only, exactly as the uninterrupted run did
    (out / "self_training.json").write_text(json.dumps({**record, "rounds": record["rounds"][:1]}))
    shutil.rmtree(out / "round-1")
    code, stdout, err = run_cli(resume_args, capsys)
    assert code == 0, err
    assert "self-training round 1" in stdout and "self-training round 0" not in stdout
    assert json.loads((out / "self_training.json").read_text()) == record


def _conll_sentences(path: Path) -> list[str]:
    return [b.strip() + "\n" for b in path.read_text(encoding="utf-8").split("\n\n") if b.strip()]


@pytest.mark.parametrize("task", ["pair", "tag"])
def test_pair_and_tag_rounds_read_their_own_pseudo_labels(task, tiny_ckpt, tmp_path, capsys):
    """The pseudo-label file of a pair / tag round is written in a format the student's fine-tune reads back."""
    if task == "pair":
        with open(WORDNET / "pairs_train.csv", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        cols = ("text_a", "text_b", "label")
        train = write_csv(tmp_path / "train.csv", rows[:40], cols)
        val = write_csv(tmp_path / "val.csv", rows[40:60], cols)
        pool = write_csv(tmp_path / "pool.csv", rows[60:120], ("text_a", "text_b"))
    else:
        sents = _conll_sentences(WORDNET / "tagging_train.conll")
        train, val = tmp_path / "train.conll", tmp_path / "val.conll"
        train.write_text("\n".join(sents[:40]), encoding="utf-8")
        val.write_text("\n".join(sents[:20]), encoding="utf-8")  # tags seen in training only
        pool = tmp_path / "pool.txt"
        pool.write_text("".join(" ".join(ln.split()[0] for ln in b.splitlines()) + "\n" for b in sents[40:100]))
    out = tmp_path / "run"
    code, stdout, err = run_cli(
        ["finetune", "--task", task, "--from", tiny_ckpt, "--train", train, "--validation", val, "--out", out,
         "--epochs", "1", "--max-len", "48", "--batch-size", "8", "--no-progress", "--self-training-rounds", "1",
         "--unlabeled", pool, "--pseudo-threshold", "0", "--pseudo-top-k", "7", "--tag-confidence", "min"], capsys)
    assert code == 0, err
    record = json.loads((out / "self_training.json").read_text())
    r1 = record["rounds"][1]
    pseudo = [json.loads(x) for x in (out / "pseudo-round-1.jsonl").read_text().splitlines()]
    assert len(pseudo) == r1["n_pseudo"] > 0
    if task == "pair":
        assert set(pseudo[0]) == {"text_a", "text_b", "label", "confidence"}
        assert max(r1["pseudo_per_label"].values()) <= 7
    else:
        assert len(pseudo) == 7 and all(len(p["tokens"]) == len(p["tags"]) for p in pseudo)
        assert record["tag_confidence"] == "min"
    assert f"{40 + len(pseudo)} training examples" in stdout  # the student trained on gold + pseudo labels


def test_a_round_that_hurts_validation_is_discarded(pretrained_ckpt, tmp_path, monkeypatch):
    """The teacher is made to label the whole pool as the class rarest in validation (with confidence 1): the
    student trained on those labels (real training) must lose on validation, be discarded, and end the rounds."""
    files = four_class_task(tmp_path, 120, 60, 60, 480)
    val_counts = Counter(r["label"] for r in supersense_rows("validation")[:60])
    wrong = min(CLASSES, key=lambda c: (val_counts[c], c))
    real_predict = st.predict_pool
    calls = []

    def garbage_teacher(model_dir, pool, batch_size, device):
        calls.append(Path(model_dir))
        labels, merged = real_predict(model_dir, pool, batch_size, device)  # the real teacher runs, then is ignored
        forced = np.zeros(len(labels))
        forced[labels.index(wrong)] = 1.0
        return labels, [forced.copy() for _ in merged]

    monkeypatch.setattr(st, "predict_pool", garbage_teacher)
    sec = FinetuneSection(task="classify", checkpoint=str(pretrained_ckpt), train=str(files["train"]),
                             validation=str(files["validation"]), test=str(files["test"]), out=str(tmp_path / "run"),
                             max_len=48, epochs=10, patience=0, head_lr=1e-2, unlabeled=[str(files["pool"])],
                             self_training_rounds=2, pseudo_threshold=0.5)
    result = st.self_train({"finetune": sec, "train": FinetuneTrainConfig(batch_size=16, lr=3e-3,
                                                                             progress=False)})
    record = result["self_training"]
    r0, r1 = record["rounds"]  # round 2 never ran: round 1 was discarded
    print(f"validation accuracy: round 0 {r0['validation']:.3f}, round 1 (all {wrong}) {r1['validation']:.3f}")
    assert calls == [tmp_path / "run" / "round-0" / "model"]
    assert r1["n_pseudo"] == 480 and r1["pseudo_per_label"] == {wrong: 480}
    assert r1["validation"] < r0["validation"] and not r1["kept"] and r0["kept"]
    assert record["kept_round"] == 0 and result["best"] == r0["validation"] and result["n_train"] == 120
    a = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "run" / "round-0" / "model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the final model is round 0's
    assert result["test"]["accuracy"] == r0["test"]["accuracy"]


def test_uda_trains_and_logs_its_term(tiny_ckpt, tmp_path):
    files = four_class_task(tmp_path, 24, 12, 12, 40)

    def sections(out: str, **kw):
        sec = FinetuneSection(task="classify", checkpoint=str(tiny_ckpt), train=str(files["train"]),
                                 validation=str(files["validation"]), out=str(tmp_path / out), max_len=32, epochs=2,
                                 patience=0, unlabeled=[str(files["pool"])], **kw)
        return {"finetune": sec, "train": FinetuneTrainConfig(batch_size=8, lr=1e-3, progress=False,
                                                                 log_every=1)}

    ft.finetune(sections("plain"))
    ft.finetune(sections("uda", uda_weight=1.0, uda_threshold=0.0, uda_batch_size=6), consistency=from_section)
    logs = {name: [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
            for name in ("plain", "uda")}
    train = [r for r in logs["uda"] if r["split"] == "train"]
    assert train and all(r["uda_loss"] > 0 and r["uda_confident"] == 1.0 for r in train)
    assert all("uda_loss" not in r for r in logs["plain"])
    a = load_file(str(tmp_path / "plain" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "uda" / "model" / "model.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the term changed the training
    # a threshold no prediction reaches: the term is idle and the run says so
    result = ft.finetune(sections("idle", uda_weight=1.0, uda_threshold=1.0, uda_batch_size=6),
                         consistency=from_section)
    assert any("consistency training had no effect" in w and "uda_threshold 1" in w for w in result["warnings"])
    assert not any("no effect" in w for w in ft.finetune(sections("uda2", uda_weight=1.0, uda_threshold=0.0,
                                                                  uda_batch_size=6),
                                                         consistency=from_section)["warnings"])


# ---- the pipeline ------------------------------------------------------------------------------------------------
PIPELINE = """
[run]
progress = false
examples = 2
skip_pretraining = true

[corpus]
files = ["pool.txt"]

[pretrain]
init_from = "{ckpt}"

[finetune]
task = "classify"
train = "train.csv"
validation = "validation.csv"
test = "test.csv"
max_len = 32
epochs = 2
self_training_rounds = 1
pseudo_threshold = 0.0
pseudo_top_k = 5

[finetune.trainer]
batch_size = 8
lr = 1e-3
"""


def test_pipeline_reports_the_rounds(tiny_ckpt, tmp_path, capsys):
    files = four_class_task(tmp_path, 40, 20, 20, 60)
    config = tmp_path / "st.toml"
    config.write_text(PIPELINE.format(ckpt=tiny_ckpt), encoding="utf-8")
    out = tmp_path / "run"
    code, stdout, err = run_cli(["run", config, "--out", out], capsys)
    assert code == 0, err
    record = json.loads((out / "finetune" / "self_training.json").read_text())
    assert record["pool"]["files"] == [str(files["pool"])]  # the pool defaults to [corpus] files
    assert not (out / "baseline" / "self_training.json").exists()  # the baseline stays the plain fine-tune
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert summary["self_training"]["rounds"] == record["rounds"]
    kept = record["rounds"][record["kept_round"]]
    assert summary["models"]["pretrained"]["test"]["accuracy"] == pytest.approx(kept["test"]["accuracy"])
    html = (out / "report" / "report.html").read_text()
    section = html[html.index('<section id="self-training">'):]
    section = section[: section.index("</section>")]
    assert "Self-training rounds" in section and section.count("<tr>") == 1 + len(record["rounds"])
    assert f"{record['rounds'][1]['n_pseudo']}</td>" in section
    # a self-training key changes the pretrained fine-tune only
    code, stdout, err = run_cli(["run", config, "--out", out, "--set", "finetune.pseudo_top_k=3", "--overwrite"],
                                capsys)
    assert code == 0, err
    assert "[finetune] running" in stdout and "[baseline] up to date, skipped" in stdout
    assert json.loads((out / "finetune" / "self_training.json").read_text())["top_k"] == 3
    shutil.rmtree(out)


def test_pipeline_continues_an_interrupted_self_training_stage(tiny_ckpt, tmp_path, capsys, monkeypatch):
    """Ctrl-C in round 1 of the pretrained fine-tune: the re-run keeps round 0 (not trained again) and continues
    round 1 from its checkpoint."""
    from pretune.training.trainer import Trainer

    four_class_task(tmp_path, 40, 20, 20, 60)
    config = tmp_path / "st.toml"
    config.write_text(PIPELINE.format(ckpt=tiny_ckpt), encoding="utf-8")
    out = tmp_path / "run"
    real_save = Trainer.save

    def save_then_stop(self, name, with_optimizer):
        real_save(self, name, with_optimizer)
        if name == "last" and self.out.name == "round-1" and self.step >= 5:
            raise KeyboardInterrupt("simulated Ctrl-C")

    monkeypatch.setattr(Trainer, "save", save_then_stop)
    code, _, _ = run_cli(["run", config, "--out", out], capsys)
    assert code == 130 and (out / "finetune" / "round-1" / "last").is_dir()
    round0 = (out / "finetune" / "round-0" / "model" / "model.safetensors").stat().st_mtime_ns
    monkeypatch.setattr(Trainer, "save", real_save)
    code, stdout, err = run_cli(["run", config, "--out", out], capsys)
    assert code == 0, err
    assert "[finetune] continuing from its last checkpoint" in stdout
    assert "the plain fine-tune (first teacher)" not in stdout and "self-training round 1:" in stdout
    assert (out / "finetune" / "round-0" / "model" / "model.safetensors").stat().st_mtime_ns == round0
    steps = [json.loads(x)["step"] for x in (out / "finetune" / "round-1" / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["split"] == "train"]
    assert steps == sorted(set(steps))  # continued: no step logged twice
    record = json.loads((out / "finetune" / "self_training.json").read_text())
    assert [r["round"] for r in record["rounds"]] == [0, 1]


# ---- does it pay? ------------------------------------------------------------------------------------------------
def test_self_training_does_not_lose_to_the_plain_fine_tune(pretrained_ckpt, tmp_path):
    """Four supersense classes (924 training glosses), 10% of them labeled (92), the other training glosses as the
    unlabeled pool; three seeds. Round 0 is exactly the plain fine-tune. Measured on CPU (the fixture is the same in
    every session now that tokenizer training is reproducible), seeds 0-2: plain test accuracy 0.428 0.428 0.461,
    self-trained 0.428 0.428 0.507 (round 1 kept for seed 2 only); with an earlier, differently numbered vocabulary
    six seeds gave plain 0.394 vs self-trained 0.424 on average, never lower. A kept round is chosen on 231
    validation glosses, so its test accuracy (925 glosses, standard error
    ~1.6 points) could still come out a little lower: the tolerance is 3 points per seed and 1 point on the mean."""
    rows = {s: supersense_rows(s) for s in ("train", "validation", "test")}
    files = {s: write_csv(tmp_path / f"{s}.csv", r) for s, r in rows.items()}
    plain, self_trained = [], []
    for seed in (0, 1, 2):
        sec = FinetuneSection(task="classify", checkpoint=str(pretrained_ckpt), train=str(files["train"]),
                                 validation=str(files["validation"]), test=str(files["test"]),
                                 out=str(tmp_path / f"run-{seed}"), max_len=48, epochs=10, patience=0, head_lr=1e-2,
                                 label_fraction=0.1, label_seed=seed, unlabeled=[str(files["train"])],
                                 self_training_rounds=2, pseudo_threshold=0.0, pseudo_top_k=50)
        result = st.self_train({"finetune": sec, "train": FinetuneTrainConfig(batch_size=16, lr=3e-3, seed=seed,
                                                                                 progress=False)})
        rounds = result["self_training"]["rounds"]
        assert result["n_train"] == 92 and result["self_training"]["pool"]["used"] == 924 - 92
        plain.append(rounds[0]["test"]["accuracy"])
        self_trained.append(result["test"]["accuracy"])
        print(f"seed {seed}: plain {plain[-1]:.4f}, self-trained {self_trained[-1]:.4f} "
              f"(kept round {result['self_training']['kept_round']}, "
              f"pseudo labels {[r['n_pseudo'] for r in rounds[1:]]})")
    assert all(s >= p - 0.03 for s, p in zip(self_trained, plain, strict=True))
    assert np.mean(self_trained) >= np.mean(plain) - 0.01
