"""`pretune run` continuing the pretraining of a published causal model: the published checkpoint against the
continued one (validation perplexity, generations side by side) in the summary, the terminal table and the report."""

from __future__ import annotations

import gzip
import json
import math
import random
from pathlib import Path

import pytest
from conftest import wordnet_shards
from test_pipeline import make_tiny

from pretune.cli import main
from pretune.run.causal import wants_causal
from pretune.run.config import default_config_path, load_config

PROMPTS = ["soft cotton shirt with", "the linen dress"]
COLOURS = ["navy", "ivory", "black", "olive", "sand", "red"]
ITEMS = ["shirt", "dress", "jacket", "skirt", "sweater", "coat"]
FABRICS = ["cotton", "linen", "wool", "silk", "denim"]


def product_texts(n: int, seed: int = 0) -> list[str]:
    """A fashion retailer's product texts: a narrow, repetitive domain unlike the WordNet glosses."""
    rng = random.Random(seed)
    return [f"soft {rng.choice(FABRICS)} {rng.choice(ITEMS)} in {rng.choice(COLOURS)} with a relaxed fit , "
            f"machine washable and made to last\n" for _ in range(n)]


@pytest.fixture(scope="module")
def causal_run(tmp_path_factory):
    """A tiny clm checkpoint pretrained on WordNet glosses, then `pretune run` continuing it on product texts."""
    root = tmp_path_factory.mktemp("causal")
    (root / "base").mkdir()
    wordnet_shards(root / "base", 1500, 1000)
    base = root / "base" / "run"
    assert main(["pretrain", "--shards", str(root / "base" / "shards"), "--out", str(base), "--objective", "clm",
                 "--model-size", "tiny", "--max-len", "32", "--max-steps", "20", "--batch-size", "16",
                 "--lr", "3e-3", "--no-progress", "--eval-every", "20", "--eval-batches", "2"]) == 0
    config = make_tiny(root / "data")
    with gzip.open(config.parent / "corpus.txt.gz", "wt", encoding="utf-8") as f:
        f.writelines(product_texts(600))
    text = config.read_text().replace("[sweep]\nlabel_fractions = [0.25, 1.0]\n", "")
    text = text.replace('model_size = "tiny"\n', f'objective = "clm"\ninit_from = "{base / "model"}"\n')
    text += f"\n[compare]\nprompts = {json.dumps(PROMPTS)}\n"
    config.write_text(text)
    out = root / "run"
    assert main(["run", str(config), "--out", str(out)]) == 0
    return out


def test_published_and_continued_compared(causal_run, capsys):
    summary = json.loads((causal_run / "report" / "summary.json").read_text())
    causal = summary["causal"]
    published, continued = causal["published"]["perplexity"], causal["continued"]["perplexity"]
    assert all(math.isfinite(p) and p > 1 for p in (published, continued))
    # 20 steps on a narrow, repetitive domain: robustly far below the WordNet-only model's perplexity on it
    assert continued < published / 2
    assert [g["prompt"] for g in causal["generations"]] == PROMPTS
    for g in causal["generations"]:
        assert g["published"].startswith(g["prompt"]) and g["continued"].startswith(g["prompt"])
    html = (causal_run / "report" / "report.html").read_text()
    assert 'id="causal"' in html and "Continued pretraining of a causal model" in html
    assert (causal_run / "causal" / "result.json").is_file()


def test_summary_prints_both_perplexities(causal_run, capsys):
    assert main(["run", str(causal_run / "config.toml"), "--out", str(causal_run)]) == 0
    out = capsys.readouterr().out
    assert "[causal] up to date, skipped" in out
    assert "checkpoint as published:" in out and "continued pretraining:" in out


def test_only_causal_runs_with_a_checkpoint_compare(tmp_path):
    cfg = load_config(default_config_path())
    assert not wants_causal(cfg)
    assert "prompts" not in cfg.to_toml()  # a run without prompts records the config it always did
    config = make_tiny(Path(tmp_path))
    assert not wants_causal(load_config(config))
