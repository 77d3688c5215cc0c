"""ELECTRA's replaced-token detection: the generator's draws, the corruption, the discriminator's targets, and that
the body it trains fine-tunes like any other."""

from __future__ import annotations

import gzip
from importlib import resources

import pytest
import torch

from pretune.model.transformer import PRESETS, ModelConfig
from pretune.pretrain.objectives import IGNORE, PretrainModel, Specials, build_objective
from pretune.pretrain.objectives.rtd import RTD_WEIGHT, sample_rows
from pretune.pretrain.shards import PackedSequences, TokenShards, prepare_corpus
from pretune.text.tokenizer import PretuneTokenizer, train_tokenizer


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("rtd")
    path = resources.files("pretune") / "resources" / "wordnet" / "corpus.txt.gz"
    with gzip.open(str(path), "rt", encoding="utf-8") as f:
        lines = [next(f) for _ in range(800)]
    corpus = root / "corpus.txt"
    corpus.write_text("".join(lines), encoding="utf-8")
    tok = train_tokenizer([x.rstrip("\n") for x in lines], vocab_size=600, lowercase=True)
    prepare_corpus([corpus], tok, root / "shards", validation_fraction=0.1, progress=False)
    tok.save(root / "shards" / "tokenizer.json")
    tok = PretuneTokenizer.load(root / "shards" / "tokenizer.json")
    specials = Specials.from_tokenizer(tok)
    ds = PackedSequences(TokenShards(root / "shards"), 32, specials.cls, specials.sep)
    return {"tok": tok, "specials": specials, "items": [ds[i] for i in range(64)]}


def test_sample_rows_follows_the_softmax():
    logits = torch.tensor([[0.0, 0.0, 0.0, 10.0], [0.0, 1.0, 2.0, 3.0]])
    u = torch.tensor([0.5, 0.0])
    assert sample_rows(logits, u).tolist() == [3, 0]
    assert sample_rows(logits, torch.tensor([0.999999, 0.999999])).tolist() == [3, 3]
    # many draws of one row reproduce its probabilities
    row = torch.tensor([[0.0, 1.0, 2.0, 3.0]]).expand(20000, 4)
    u = torch.rand(20000, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(sample_rows(row, u), minlength=4).float() / 20000
    assert torch.allclose(counts, row[0].softmax(-1), atol=0.015), counts


def test_collate_masks_only_regular_tokens_at_the_rate(data):
    obj = build_objective("rtd", data["specials"], mask_prob=0.3)
    batch = obj.collate(data["items"], torch.Generator().manual_seed(0))
    ids, masked, labels = batch["input_ids"], batch["masked_ids"], batch["labels"]
    selected = labels != IGNORE
    assert torch.equal(labels[selected], ids[selected])
    assert bool((masked[selected] == data["specials"].mask).all())  # every selected token is [MASK]ed
    assert torch.equal(masked[~selected], ids[~selected])
    assert not bool((selected & ~batch["candidates"]).any())  # specials are never selected
    rate = selected.sum().item() / batch["candidates"].sum().item()
    assert 0.27 < rate < 0.33, rate
    again = obj.collate(data["items"], torch.Generator().manual_seed(0))
    assert all(torch.equal(batch[k], again[k]) for k in batch)  # a function of the batch seed


def test_loss_targets_are_the_replaced_tokens_and_every_part_learns(data):
    torch.manual_seed(0)
    specials = data["specials"]
    cfg = ModelConfig(**{**PRESETS["tiny"], "vocab_size": data["tok"].vocab_size, "pad_token_id": specials.pad})
    obj = build_objective("rtd", specials, mask_prob=0.25)
    model = PretrainModel(cfg, obj.heads(cfg))
    batch = obj.collate(data["items"][:16], torch.Generator().manual_seed(1))
    loss, stats = obj.loss(model, batch)
    selected = batch["labels"] != IGNORE
    n = batch["candidates"].sum().item()
    assert stats["rtd_loss"][1].item() == n
    # an untrained generator almost never draws the original token: nearly every selected token is replaced
    replaced = stats["replaced"][0].item()
    assert 0.9 * selected.sum().item() <= replaced <= selected.sum().item()
    expected = stats["mlm_loss"][0] / stats["mlm_loss"][1] + RTD_WEIGHT * stats["rtd_loss"][0] / n
    assert torch.allclose(loss.detach(), expected, rtol=1e-5)
    loss.backward()
    for name in ("body.blocks.0.attn.qkv.weight", "body.embeddings.word.weight", "heads.rtd.out.weight",
                 "heads.generator.blocks.0.ffn.fc1.weight", "heads.generator.mlm.bias"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    # the generator is half the body's depth and FFN width
    gen = model.heads["generator"]
    assert len(gen.blocks) == 1 and gen.blocks[0].ffn.fc1.out_features == cfg.ffn_size // 2


def test_a_perfect_generator_replaces_nothing(data, monkeypatch):
    """When the generator's draw is the original token, the discriminator's target is 'original' (ELECTRA)."""
    specials = data["specials"]
    cfg = ModelConfig(**{**PRESETS["tiny"], "vocab_size": data["tok"].vocab_size, "pad_token_id": specials.pad})
    obj = build_objective("rtd", specials)
    model = PretrainModel(cfg, obj.heads(cfg))
    batch = obj.collate(data["items"][:8], torch.Generator().manual_seed(2))
    labels = batch["labels"]
    monkeypatch.setattr("pretune.pretrain.objectives.rtd.sample_rows", lambda logits, u: labels[labels != IGNORE])
    _, stats = obj.loss(model, batch)
    assert stats["replaced"][0].item() == 0
