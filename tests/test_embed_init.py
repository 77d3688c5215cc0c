"""Initial token embeddings from co-occurrence counts (pretrain/embed_init.py) and `[pretrain] embed_init`."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from conftest import wordnet_shards

from pretune.cli import main
from pretune.pretrain import embed_init
from pretune.pretrain.embed_init import cooccurrence_counts, ppmi, ppmi_embeddings
from pretune.pretrain.shards import TokenShards
from pretune.text.tokenizer import PretuneTokenizer
from pretune.training.checkpoint import load_checkpoint


def test_counts_weight_by_distance_and_stay_inside_documents():
    tokens = np.array([5, 6, 7, 5, 6], dtype=np.uint16)  # documents [5 6 7] and [5 6]
    offsets = np.array([0, 3, 5])
    c = cooccurrence_counts(tokens, offsets, vocab_size=8, window=2, max_tokens=100).toarray()
    assert c[5, 6] == pytest.approx(2.0)  # adjacent in both documents
    assert c[5, 7] == pytest.approx(0.5)  # two apart, once
    assert c[6, 7] == pytest.approx(1.0)
    assert c[7, 5] == pytest.approx(0.5)  # 7 and the next document's 5 are not neighbours
    assert np.allclose(c, c.T)
    assert c.sum() == pytest.approx(2 * (2 + 0.5 + 1))


def test_chunked_counting_equals_one_pass(monkeypatch):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 30, size=500).astype(np.uint16)
    offsets = np.array([0, 37, 38, 200, 333, 500])
    whole = cooccurrence_counts(tokens, offsets, 30, window=3, max_tokens=10_000).toarray()
    monkeypatch.setattr(embed_init, "CHUNK_TOKENS", 7)  # pairs that straddle a chunk border are counted once
    assert np.allclose(cooccurrence_counts(tokens, offsets, 30, window=3, max_tokens=10_000).toarray(), whole)
    part = cooccurrence_counts(tokens, offsets, 30, window=3, max_tokens=100).toarray()
    assert part.sum() < whole.sum()


def test_ppmi_keeps_only_positive_association():
    counts = np.array([[0, 10, 1, 0], [10, 0, 0, 0], [1, 0, 0, 10], [0, 0, 10, 0]], dtype=float)
    p = ppmi(sp.csr_matrix(counts), alpha=1.0).toarray()
    total, row = counts.sum(), counts.sum(1)
    expected = np.log(counts[0, 1] * total / (row[0] * row[1]))
    assert p[0, 1] == pytest.approx(expected) and expected > 0
    assert p[0, 2] == 0 and p[2, 2] == 0  # negative PMI and no count are both dropped
    assert (p >= 0).all()


def synthetic_corpus(n_docs: int = 400, seed: int = 0):
    """Tokens 10/11 share contexts (ids 20-24), 12/13 share others (ids 30-34); 2 is a special, 40 never occurs."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n_docs):
        group = rng.integers(2)
        word = rng.choice([10, 11] if group == 0 else [12, 13])
        context = rng.choice(np.arange(20, 25) if group == 0 else np.arange(30, 35), size=4)
        docs.append([2, *context[:2], word, *context[2:]])
    tokens = np.array([t for d in docs for t in d], dtype=np.uint16)
    offsets = np.cumsum([0] + [len(d) for d in docs])
    return tokens, offsets


def test_tokens_in_the_same_contexts_get_similar_vectors():
    tokens, offsets = synthetic_corpus()
    keep = np.zeros(48, dtype=bool)
    keep[2] = True
    vectors = ppmi_embeddings(tokens, offsets, vocab_size=48, dim=4, std=0.02, window=3, keep=keep)

    def cos(a, b):
        return float(vectors[a] @ vectors[b] / np.linalg.norm(vectors[a]) / np.linalg.norm(vectors[b]))

    assert cos(10, 11) > 0.9 and cos(12, 13) > 0.9
    assert cos(10, 12) < 0.5 and cos(11, 13) < 0.5
    assert np.isnan(vectors[2]).all() and np.isnan(vectors[40]).all()  # special and unseen: left to the caller
    seen = ~np.isnan(vectors[:, 0])
    assert vectors[seen].std() == pytest.approx(0.02, rel=1e-4)
    assert ppmi_embeddings(tokens, offsets, vocab_size=48, dim=40, std=0.02) is None  # more dims than tokens seen


COMMON = ["--model-size", "tiny", "--max-len", "64", "--batch-size", "8", "--no-progress", "--eval-batches", "2",
          "--max-steps", "1", "--lr", "1e-9", "--warmup-steps", "0", "--eval-every", "1"]


def test_pretraining_from_scratch_starts_from_the_vectors(tmp_path, capsys):
    wordnet_shards(tmp_path, 1500, 800)
    shards = tmp_path / "shards"
    assert main(["pretrain", "--shards", str(shards), "--out", str(tmp_path / "rand"), "--embed-init", "random",
                 *COMMON]) == 0
    assert main(["pretrain", "--shards", str(shards), "--out", str(tmp_path / "ppmi"), *COMMON]) == 0  # auto: ppmi
    assert "token embeddings from co-occurrence counts" in capsys.readouterr().out
    rand = load_checkpoint(tmp_path / "rand" / "model").state_dict["body.embeddings.word.weight"]
    got = load_checkpoint(tmp_path / "ppmi" / "model").state_dict["body.embeddings.word.weight"]
    tok = PretuneTokenizer.load(shards / "tokenizer.json")
    train = TokenShards(shards, "train")
    keep = np.zeros(rand.shape[0], dtype=bool)
    keep[list(tok.special_ids)] = True
    expected = ppmi_embeddings(train.tokens, train.doc_offsets, rand.shape[0], rand.shape[1], std=float(rand.std()),
                               keep=keep)
    rows = ~np.isnan(expected[:, 0])
    specials = torch.from_numpy(keep)
    assert rows.sum() > 0.5 * len(rows)
    # lr 1e-9: one step moves nothing visible, so the saved rows are the vectors (std rescaled to the random init's)
    assert torch.allclose(got[torch.from_numpy(rows)], torch.from_numpy(expected[rows]), atol=1e-5)
    assert torch.allclose(got[specials], rand[specials])  # specials keep the same random draws
    assert not torch.allclose(got[torch.from_numpy(rows)], rand[torch.from_numpy(rows)])


def test_embed_init_is_validated(tmp_path, capsys):
    wordnet_shards(tmp_path, 300, 300)
    shards = tmp_path / "shards"
    capsys.readouterr()
    assert main(["pretrain", "--shards", str(shards), "--out", str(tmp_path / "a"), "--embed-init", "glove",
                 *COMMON]) == 2
    assert "embed_init must be one of" in capsys.readouterr().err
    assert main(["pretrain", "--shards", str(shards), "--out", str(tmp_path / "b"), "--embed-init", "ppmi",
                 "--init-from", str(tmp_path / "nowhere"), *COMMON]) == 2
    assert "init_from" in capsys.readouterr().err
