"""Shared fixtures: small checkpoints made once per test session."""

from __future__ import annotations

import gzip
import itertools
from pathlib import Path

import pytest

WORDNET = Path(__file__).resolve().parent.parent / "pretune" / "resources" / "wordnet"


@pytest.fixture(scope="session")
def pretrained_ckpt(tmp_path_factory) -> Path:
    """A really pretrained checkpoint, made through the CLI: WordPiece tokenizer (3000) and `tiny` model (MLM, 100
    steps of 32 x 64 tokens) on the first 20,000 lines of the bundled WordNet corpus. Returns run/model."""
    import torch

    from pretune.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is as fast, and far faster when other work shares the cores
    try:
        return _pretrain(tmp_path_factory.mktemp("pretrained"), main)
    finally:
        torch.set_num_threads(threads)


def _pretrain(root: Path, main) -> Path:
    corpus = root / "corpus.txt"
    with gzip.open(WORDNET / "corpus.txt.gz", "rt", encoding="utf-8") as f:
        corpus.write_text("".join(itertools.islice(f, 20000)), encoding="utf-8")
    assert main(["tokenizer", "train", str(corpus), "--vocab-size", "3000", "--lowercase",
                 "--out", str(root / "tok.json")]) == 0
    assert main(["prepare", str(corpus), "--tokenizer", str(root / "tok.json"), "--out", str(root / "shards")]) == 0
    assert main(["pretrain", "--shards", str(root / "shards"), "--out", str(root / "run"), "--model-size", "tiny",
                 "--max-len", "64", "--max-steps", "100", "--batch-size", "32", "--lr", "2e-3", "--eval-every", "100",
                 "--eval-batches", "2", "--log-every", "50", "--no-progress"]) == 0
    return root / "run" / "model"


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A randomly initialised `tiny` checkpoint (body.* weights, config.json, tokenizer.json) in about a second: for
    tests of plumbing that need a checkpoint but not a trained one. Its WordPiece vocabulary (1000, lowercase) is
    trained on the bundled supersense glosses."""
    import csv

    import torch

    from pretune.checkpoint import save_checkpoint
    from pretune.model.transformer import PRESETS, ModelConfig, Transformer
    from pretune.tokenizer import train_tokenizer

    with open(WORDNET / "supersense_train.csv", encoding="utf-8") as f:
        texts = [row["text"] for row in csv.DictReader(f)]
    tok = train_tokenizer(texts, vocab_size=1000, lowercase=True)
    torch.manual_seed(1234)  # not a seed fine-tuning uses by default: a from-scratch body must differ from this one
    cfg = ModelConfig(**{**PRESETS["tiny"], "vocab_size": tok.vocab_size, "pad_token_id": tok.specials.pad})
    holder = torch.nn.Module()
    holder.body = Transformer(cfg)
    out = tmp_path_factory.mktemp("tiny_ckpt") / "model"
    save_checkpoint(out, holder, {"model": cfg.to_dict(), "objective": "mlm", "heads": []}, tok)
    return out
