"""Shared fixtures: small checkpoints made once per test session."""

from __future__ import annotations

import gzip
import itertools
from pathlib import Path

import pytest

WORDNET = Path(__file__).resolve().parent.parent / "pretune" / "resources" / "wordnet"
DNA = WORDNET.parent / "dna"  # the six-locus Kaptive slice


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Every test module runs torch on one thread: tiny models are as fast on one, far faster when other work shares
    the cores, and in-process runs compared with one-thread subprocesses need the same split of float reductions
    (the last bits of every loss depend on it)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def dna_rows(path: Path) -> list[dict]:
    """The rows of a bundled DNA .tsv.gz as {column: value} dicts."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        return [dict(zip(header, ln.rstrip("\n").split("\t"), strict=True)) for ln in f]


def pretrain_dna(root: Path, kind: str, max_steps: int, *tokenizer_args: str) -> Path:
    """Through the CLI on the DNA slice's corpus: a `kind` tokenizer (root/tok.json), shards and a `tiny` MLM
    pretrained for `max_steps` steps of 8 x 64 tokens. Returns the checkpoint folder root/pre/model."""
    from pretune.cli import main

    corpus = str(DNA / "corpus.txt.gz")
    assert main(["tokenizer", "train", corpus, "--kind", kind, *tokenizer_args, "--out", str(root / "tok.json")]) == 0
    assert main(["prepare", corpus, "--tokenizer", str(root / "tok.json"), "--out", str(root / "shards")]) == 0
    assert main(["pretrain", "--shards", str(root / "shards"), "--out", str(root / "pre"), "--model-size", "tiny",
                 "--max-len", "64", "--max-steps", str(max_steps), "--batch-size", "8", "--eval-every",
                 str(max_steps), "--eval-batches", "1", "--no-progress"]) == 0
    return root / "pre" / "model"


def wordnet_corpus(root: Path, lines: int) -> tuple[Path, list[str]]:
    """The first `lines` lines of the bundled WordNet corpus, written to root/corpus.txt; returns (path, lines)."""
    with gzip.open(WORDNET / "corpus.txt.gz", "rt", encoding="utf-8") as f:
        head = list(itertools.islice(f, lines))
    path = root / "corpus.txt"
    path.write_text("".join(head), encoding="utf-8")
    return path, head


def wordnet_shards(root: Path, lines: int, vocab_size: int):
    """root/corpus.txt (the first `lines` WordNet lines), a lowercase WordPiece tokenizer trained on them and
    root/shards (10% validation, tokenizer.json inside). Returns (tokenizer, lines, corpus path)."""
    from pretune.pretrain.shards import prepare_corpus
    from pretune.text.tokenizer import train_tokenizer

    corpus, head = wordnet_corpus(root, lines)
    tok = train_tokenizer(head, vocab_size=vocab_size, lowercase=True)
    prepare_corpus([corpus], tok, root / "shards", validation_fraction=0.1, progress=False)
    tok.save(root / "shards" / "tokenizer.json")
    return tok, head, corpus


@pytest.fixture(scope="session")
def small_shards(tmp_path_factory) -> Path:
    """1000 WordNet glosses, a 600-token lowercase WordPiece vocabulary, shards: made through the CLI."""
    from pretune.cli import main

    d = tmp_path_factory.mktemp("small_shards")
    corpus, _ = wordnet_corpus(d, 1000)
    assert main(["tokenizer", "train", str(corpus), "--vocab-size", "600", "--lowercase",
                 "--out", str(d / "tok.json")]) == 0
    assert main(["prepare", str(corpus), "--tokenizer", str(d / "tok.json"), "--out", str(d / "shards")]) == 0
    return d / "shards"


@pytest.fixture(scope="session")
def pretrained_ckpt(tmp_path_factory) -> Path:
    """A really pretrained checkpoint, made through the CLI: WordPiece tokenizer (3000) and `tiny` model (MLM, 100
    steps of 32 x 64 tokens) on the first 20,000 lines of the bundled WordNet corpus. Returns run/model."""
    import torch

    from pretune.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # session-scoped: made before the module's one_thread fixture may have run
    try:
        return _pretrain(tmp_path_factory.mktemp("pretrained"), main)
    finally:
        torch.set_num_threads(threads)


def _pretrain(root: Path, main) -> Path:
    corpus, _ = wordnet_corpus(root, 20000)
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

    from pretune.model.transformer import PRESETS, ModelConfig, Transformer
    from pretune.text.tokenizer import train_tokenizer
    from pretune.training.checkpoint import save_checkpoint

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
