"""Pretraining objectives: masking statistics (wwm, span), NSP pairs, SBO, causal LM, and CLI training of each."""

from __future__ import annotations

import gzip
import json
from importlib import resources

import numpy as np
import pytest
import torch

from pretune.cli import main
from pretune.errors import InputError
from pretune.model.heads import SBOHead
from pretune.model.transformer import PRESETS, ModelConfig
from pretune.pretrain.objectives import (
    IGNORE,
    OBJECTIVES,
    MLMWithNSP,
    PretrainModel,
    SentencePairs,
    SpanMLM,
    Specials,
    WholeWordMLM,
    build_objective,
    sample_spans,
    span_boundary_loss,
    span_length_distribution,
    special_mask,
    word_index,
)
from pretune.pretrain.shards import Documents, PackedSequences, TokenShards, prepare_corpus
from pretune.pretrain.stage import PretrainSection
from pretune.text.tokenizer import PretuneTokenizer, train_tokenizer


def wordnet_lines(n: int) -> list[str]:
    path = resources.files("pretune") / "resources" / "wordnet" / "corpus.txt.gz"
    with gzip.open(str(path), "rt", encoding="utf-8") as f:
        return [next(f).rstrip("\n") for _ in range(n)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A WordPiece tokenizer and shards made from the first 2000 lines (documents) of the bundled corpus."""
    root = tmp_path_factory.mktemp("wordnet")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(wordnet_lines(2000)) + "\n", encoding="utf-8")
    tok = train_tokenizer(corpus.read_text().splitlines(), vocab_size=1500, lowercase=True)
    prepare_corpus([corpus], tok, root / "shards", validation_fraction=0.1, progress=False)
    tok.save(root / "shards" / "tokenizer.json")
    tok = PretuneTokenizer.load(root / "shards" / "tokenizer.json")
    return {"root": root, "tok": tok, "specials": Specials.from_tokenizer(tok), "shards": root / "shards"}


def packed_items(data, n: int, max_len: int = 128):
    ds = PackedSequences(TokenShards(data["shards"]), max_len, data["specials"].cls, data["specials"].sep)
    return [ds[i] for i in range(min(n, len(ds)))]


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each run of True."""
    padded = np.concatenate(([False], mask, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


# ---------------------------------------------------------------------------------------------------- span masking


def test_span_lengths_follow_the_truncated_geometric():
    lengths, probs = span_length_distribution(0.2, 10)
    expected = float((lengths * probs).sum())
    assert abs(expected - 3.797) < 0.01  # SpanBERT's mean span length (Geometric(0.2) truncated at 10 words)
    rng = np.random.default_rng(0)
    drawn, whole = [], []
    for _ in range(150):  # long single documents, so that where spans may go hardly limits their length
        starts = rng.random(512) < 0.75
        regular = np.ones(512, dtype=bool)
        regular[[0, -1]] = False
        spans = sample_spans(starts, regular, 0.15 * regular.sum(), rng, lengths, probs)
        drawn += [s.drawn for s in spans]
        whole += [s.words for s in spans if s.words == s.drawn]
    drawn, whole = np.array(drawn), np.array(whole)
    assert abs(drawn.mean() - expected) < 0.15
    assert abs(whole.mean() - expected) < 0.2  # spans not cut to meet the budget
    hist = np.bincount(drawn, minlength=11)[1:] / len(drawn)
    assert np.abs(hist - probs).max() < 0.02
    assert drawn.max() <= 10


def test_span_budget_and_boundaries_on_wordnet(data):
    sp = data["specials"]
    items = packed_items(data, 200)
    lengths, probs = span_length_distribution(0.2, 10)
    rng = np.random.default_rng(0)
    words, chosen, regular_total = [], 0, 0
    for ids, starts in items:
        regular = ~np.isin(ids, sp.special_ids)
        budget = 0.15 * regular.sum()
        spans = sample_spans(starts, regular, budget, rng, lengths, probs)
        starts = starts | ~regular  # a special token is a word of its own (also cutting a word at a chunk edge)
        starts[1:] |= ~regular[:-1]
        doc = np.cumsum(ids == sp.sep)  # document index of each token
        covered = np.zeros(len(ids), dtype=bool)
        for s in spans:
            assert regular[s.start : s.end].all()  # no specials, so no [SEP] inside a span
            assert len(set(doc[s.start : s.end])) == 1  # never crosses a document boundary
            assert starts[s.start] and (s.end == len(ids) or starts[s.end])  # whole words
            assert not covered[max(s.start - 1, 0) : s.end + 1].any()  # spans neither overlap nor touch
            covered[s.start : s.end] = True
            assert s.words == int(starts[s.start : s.end].sum()) and s.words <= s.drawn
            words.append(s.words)
        assert sum(s.words < s.drawn for s in spans) <= 1  # only the last span is cut
        chosen += int(covered.sum())
        regular_total += int(regular.sum())
    assert abs(chosen / regular_total - 0.15) < 0.01
    words = np.array(words)
    # glosses are short (about a dozen words), so long spans fit less often than in long documents
    assert 2.5 < words.mean() < 3.9 and words.max() >= 8


def test_span_collate_replaces_spans_as_units(data):
    sp = data["specials"]
    obj = SpanMLM(sp)
    items = packed_items(data, 128)
    gen = torch.Generator().manual_seed(1)
    outcomes = {"mask": 0, "random_or_kept": 0}
    selected = regular_total = 0
    for k in range(0, len(items), 32):
        chunk = items[k : k + 32]
        originals = torch.tensor(np.stack([i for i, _ in chunk]))
        batch = obj.collate(chunk, gen)
        sel = batch["labels"] != IGNORE
        assert torch.equal(batch["labels"][sel], originals[sel])
        assert not (sel & special_mask(originals, sp.special_ids)).any()
        assert torch.equal(batch["input_ids"][~sel], originals[~sel])
        selected += int(sel.sum())
        regular_total += int((~special_mask(originals, sp.special_ids)).sum())
        for b in range(len(chunk)):
            for s, e in runs(sel[b].numpy()):
                masked = batch["input_ids"][b, s:e] == sp.mask
                assert masked.all() or not masked.any()  # a span is replaced as a unit
                outcomes["mask" if masked.all() else "random_or_kept"] += 1
                assert (batch["sbo_left"][b, s:e] == s - 1).all() and (batch["sbo_right"][b, s:e] == e).all()
                assert torch.equal(batch["sbo_offset"][b, s:e], torch.arange(e - s))
    assert abs(selected / regular_total - 0.15) < 0.01
    share = outcomes["mask"] / sum(outcomes.values())
    assert 0.74 < share < 0.86


def test_sbo_head_shapes_and_gradient_into_encoder(data):
    sp = data["specials"]
    obj = SpanMLM(sp)
    cfg = ModelConfig(vocab_size=sp.vocab_size, **PRESETS["tiny"])
    model = PretrainModel(cfg, obj.heads(cfg))
    head = model.heads["sbo"]
    assert isinstance(head, SBOHead)
    N, H = 7, cfg.hidden_size
    out = head(torch.randn(N, H), torch.randn(N, H), torch.tensor([0, 1, 2, 3, 31, 40, 100]), model.embedding_weight)
    assert out.shape == (N, cfg.vocab_size)
    batch = obj.collate(packed_items(data, 4, max_len=64), torch.Generator().manual_seed(0))
    hidden = model.body(batch["input_ids"]).last_hidden_state
    loss, stats = span_boundary_loss(model, hidden, batch)
    n = int((batch["labels"] != IGNORE).sum())
    assert n > 0 and float(stats["sbo_loss"][1]) == n
    loss.backward()
    assert model.body.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.body.embeddings.word.weight.grad.abs().sum() > 0
    assert model.heads["mlm"].dense.weight.grad is None  # only the SBO path was used
    total, stats = obj.loss(model, batch)
    assert {"mlm_loss", "mlm_accuracy", "sbo_loss", "sbo_accuracy"} <= set(stats)


# ---------------------------------------------------------------------------------------------------- whole words


def test_whole_word_masking_keeps_words_together(data):
    sp = data["specials"]
    obj = WholeWordMLM(sp)
    items = packed_items(data, 128)
    gen = torch.Generator().manual_seed(2)
    selected = regular_total = split_words_chosen = 0
    for k in range(0, len(items), 32):
        chunk = items[k : k + 32]
        originals = torch.tensor(np.stack([i for i, _ in chunk]))
        starts = torch.tensor(np.stack([w for _, w in chunk]))
        special = special_mask(originals, sp.special_ids)
        wid = word_index(starts, special)
        batch = obj.collate(chunk, gen)
        sel = batch["labels"] != IGNORE
        assert not (sel & special).any()
        selected += int(sel.sum())
        regular_total += int((~special).sum())
        for b in range(len(chunk)):
            for w in torch.unique(wid[b][sel[b]]):
                pieces = wid[b] == w
                assert sel[b][pieces].all()  # every piece of a chosen word is selected
                masked = batch["input_ids"][b][pieces] == sp.mask
                assert masked.all() or not masked.any()  # 80/10/10 decided per word
                split_words_chosen += int(pieces.sum() > 1)
    assert abs(selected / regular_total - 0.15) < 0.01
    assert split_words_chosen > 50  # the test saw multi-piece words


# ---------------------------------------------------------------------------------------------------- NSP


def test_sentence_pairs_balance_segments_and_determinism(data):
    sp = data["specials"]
    shards = TokenShards(data["shards"])
    ds = SentencePairs(shards, 64, sp.cls, sp.sep)
    docs = [np.asarray(shards.document(d)) for d in range(shards.n_docs)]
    labels = []
    for i in range(len(ds)):
        it = ds[i]
        ids, types = it["input_ids"], it["token_type_ids"]
        assert len(ids) <= 64 and ids[0] == sp.cls and ids[-1] == sp.sep
        seps = np.flatnonzero(ids == sp.sep)
        assert len(seps) == 2  # [CLS] A [SEP] B [SEP]
        a, b = ids[1 : seps[0]], ids[seps[0] + 1 : -1]
        assert len(a) and len(b)
        assert (types[: seps[0] + 1] == 0).all() and (types[seps[0] + 1 :] == 1).all()
        labels.append(it["next_label"])
        if i < 300 and it["next_label"] == 0:  # B continues A inside one document
            joined = np.concatenate((a, b))
            assert any(_contains(doc, joined) for doc in docs)
    labels = np.array(labels)
    assert len(labels) > 1000
    assert abs(labels.mean() - 0.5) < 0.04
    for i in (0, 5, len(ds) - 1):
        x, y = ds[i], ds[i]
        assert all(np.array_equal(x[k], y[k]) for k in x)


def test_sentence_pairs_cut_long_documents_into_chunks(tmp_path):
    words = [f"w{i % 37}x{i % 11}" for i in range(900)]
    docs = [" ".join(words[k * 300 : (k + 1) * 300]) for k in range(3)] + ["a short one", "x"]
    tok = train_tokenizer(docs, vocab_size=200)
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(docs) + "\n", encoding="utf-8")
    prepare_corpus([corpus], tok, tmp_path / "shards", validation_fraction=0.0, progress=False)
    shards = TokenShards(tmp_path / "shards")
    sp = Specials.from_tokenizer(tok)
    ds = SentencePairs(shards, 40, sp.cls, sp.sep)
    long_docs = [np.asarray(shards.document(d)) for d in range(shards.n_docs)]
    assert len(ds) > sum(len(d) for d in long_docs) // 37  # several chunks per long document
    for i in range(len(ds)):
        it = ds[i]
        assert len(it["input_ids"]) <= 40
        if it["next_label"] == 0:
            seps = np.flatnonzero(it["input_ids"] == sp.sep)
            joined = np.concatenate((it["input_ids"][1 : seps[0]], it["input_ids"][seps[0] + 1 : -1]))
            assert any(_contains(doc, joined) for doc in long_docs)


def _contains(doc: np.ndarray, part: np.ndarray) -> bool:
    if len(part) > len(doc):
        return False
    windows = np.lib.stride_tricks.sliding_window_view(doc, len(part))
    return bool((windows == part).all(1).any())


def test_nsp_collate_and_loss(data):
    sp = data["specials"]
    obj = MLMWithNSP(sp)
    ds = obj.dataset(TokenShards(data["shards"]), 64)
    batch = obj.collate([ds[i] for i in range(16)], torch.Generator().manual_seed(0))
    assert batch["token_type_ids"].shape == batch["input_ids"].shape
    assert batch["next_label"].shape == (16,)
    assert "attention_mask" in batch  # pairs have different lengths
    assert (batch["token_type_ids"][~batch["attention_mask"]] == 0).all()
    cfg = ModelConfig(vocab_size=sp.vocab_size, **PRESETS["tiny"])
    model = PretrainModel(cfg, obj.heads(cfg))
    loss, stats = obj.loss(model, batch)
    assert {"mlm_loss", "nsp_loss", "nsp_accuracy"} <= set(stats)
    summary = obj.summarize({k: (float(n), float(d)) for k, (n, d) in stats.items()})
    assert summary["loss"] == pytest.approx(summary["mlm_loss"] + summary["nsp_loss"], rel=1e-5)
    assert float(loss.detach()) == pytest.approx(summary["loss"], rel=1e-4)
    with pytest.raises(InputError, match="segment embeddings"):
        obj.check_model(ModelConfig(vocab_size=sp.vocab_size, type_vocab_size=0, **PRESETS["tiny"]))


# ---------------------------------------------------------------------------------------------------- causal LM


def test_causal_model_never_looks_ahead():
    torch.manual_seed(0)
    for causal in (True, False):
        cfg = ModelConfig(vocab_size=50, causal=causal, pre_ln=causal, final_layer_norm=causal, **PRESETS["tiny"])
        obj = build_objective("clm", Specials(50, 0, 2, 3, 4, [0, 1, 2, 3, 4]))
        model = PretrainModel(cfg, obj.heads(cfg)).eval()
        ids = torch.randint(5, 50, (2, 12))
        changed = ids.clone()
        t = 6
        changed[:, t + 1] = (changed[:, t + 1] + 1 - 5) % 45 + 5
        with torch.no_grad():
            a = model.heads["lm"](model.body(ids).last_hidden_state, model.embedding_weight)
            b = model.heads["lm"](model.body(changed).last_hidden_state, model.embedding_weight)
        assert not torch.allclose(a[:, t + 1], b[:, t + 1])
        if causal:
            assert torch.allclose(a[:, : t + 1], b[:, : t + 1], atol=1e-6)
        else:  # the check can fail: a bidirectional model does look ahead
            assert not torch.allclose(a[:, : t + 1], b[:, : t + 1], atol=1e-6)


def test_clm_loss_is_next_token_cross_entropy():
    sp = Specials(40, 0, 2, 3, 4, [0, 1, 2, 3, 4])
    obj = build_objective("clm", sp)
    cfg = ModelConfig(vocab_size=40, causal=True, pre_ln=True, final_layer_norm=True, **PRESETS["tiny"])
    model = PretrainModel(cfg, obj.heads(cfg)).eval()
    items = [(np.array([2, 7, 8, 9, 3]), np.ones(5, bool)), (np.array([2, 10, 3]), np.ones(3, bool))]
    batch = obj.collate(items, torch.Generator())
    loss, stats = obj.loss(model, batch)
    logits = model.body(batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    logits = logits @ model.embedding_weight.T
    manual = torch.cat([
        torch.nn.functional.cross_entropy(logits[0, :4], torch.tensor([7, 8, 9, 3]), reduction="none"),
        torch.nn.functional.cross_entropy(logits[1, :2], torch.tensor([10, 3]), reduction="none"),
    ])
    assert float(stats["lm_loss"][1]) == 6  # padding is never a target
    assert float(loss.detach()) == pytest.approx(float(manual.detach().mean()), rel=1e-5)


# ---------------------------------------------------------------------------------------------------- simcse


def test_documents_are_one_item_per_document_cut_to_max_len(data):
    shards, sp = TokenShards(data["shards"]), data["specials"]
    docs = Documents(shards, 16, sp.cls, sp.sep)
    assert len(docs) == shards.n_docs
    for i in (0, 1, len(docs) - 1):
        ids, words = docs[i]
        body = np.asarray(shards.document(i), dtype=np.int64)
        assert ids[0] == sp.cls and ids[-1] == sp.sep and len(ids) == len(words) == min(len(body), 14) + 2
        assert ids[1:-1].tolist() == body[:14].tolist()
    assert len({len(docs[i][0]) for i in range(50)}) > 1  # not packed: lengths follow the documents
    with pytest.raises(IndexError):
        docs[len(docs)]


def test_simcse_views_are_the_two_parts_of_a_text(data):
    sp = data["specials"]
    docs = Documents(TokenShards(data["shards"]), 64, sp.cls, sp.sep)
    items = [docs[i] for i in range(32)]
    obj = build_objective("simcse", sp)
    batch = obj.collate(items, torch.Generator().manual_seed(0))
    assert set(batch) == {"input_ids", "attention_mask", "input_ids_b", "attention_mask_b"}
    cuts = set()
    for (ids, _), a, ma, b, mb in zip(items, batch["input_ids"], batch["attention_mask"], batch["input_ids_b"],
                                      batch["attention_mask_b"], strict=True):
        left, right, text = a[ma].tolist(), b[mb].tolist(), ids.tolist()
        assert left[0] == right[0] == sp.cls and left[-1] == right[-1] == sp.sep
        if len(text) < 4:  # a single token: itself twice
            assert left == right == text
            continue
        assert left[1:-1] + right[1:-1] == text[1:-1]  # a cut: the parts share no token and lose none
        n = len(text) - 2
        assert 1 <= len(left) - 2 <= n - 1 and 0.25 * n - 1 <= len(left) - 2 <= 0.75 * n + 1  # in the middle half
        cuts.add((len(left) - 2) / n)
    assert len(cuts) > 5  # the cut moves
    again = obj.collate(items, torch.Generator().manual_seed(0))
    assert all(torch.equal(batch[k], again[k]) for k in batch)  # a function of the batch seed
    whole = build_objective("simcse", sp, views="dropout").collate(items, torch.Generator().manual_seed(0))
    assert torch.equal(whole["input_ids"], whole["input_ids_b"])  # the same text, dropout only
    with pytest.raises(InputError, match="views must be one of"):
        build_objective("simcse", sp, views="crop")


def test_simcse_loss_is_in_batch_cross_entropy_and_needs_dropout(data):
    sp = data["specials"]
    docs = Documents(TokenShards(data["shards"]), 64, sp.cls, sp.sep)
    obj = build_objective("simcse", sp, temperature=0.1)
    cfg = ModelConfig(**{**PRESETS["tiny"], "vocab_size": data["tok"].vocab_size, "pad_token_id": sp.pad})
    torch.manual_seed(0)
    model = PretrainModel(cfg, obj.heads(cfg)).eval()
    batch = obj.collate([docs[i] for i in range(8)], torch.Generator().manual_seed(0))
    loss, stats = obj.loss(model, batch)

    def pooled(ids, mask):
        h = model.body(ids, attention_mask=mask).last_hidden_state
        return torch.nn.functional.normalize((h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True), dim=-1)

    a, b = pooled(batch["input_ids"], batch["attention_mask"]), pooled(batch["input_ids_b"], batch["attention_mask_b"])
    expected = torch.nn.functional.cross_entropy(a @ b.T / 0.1, torch.arange(8))
    assert torch.allclose(loss, expected, atol=1e-5)
    assert stats["contrastive_loss"][1].item() == 8
    loss.backward()
    assert model.body.embeddings.word.weight.grad.abs().sum() > 0
    no_dropout = ModelConfig(**{**PRESETS["tiny"], "dropout": 0.0, "attention_dropout": 0.0})
    obj.check_model(no_dropout)  # split views differ by their tokens: no dropout needed
    with pytest.raises(InputError, match="needs dropout"):
        build_objective("simcse", sp, views="dropout").check_model(no_dropout)


# ---------------------------------------------------------------------------------------------------- config


def test_objective_options_are_declared_per_class():
    assert set(OBJECTIVES) == {"mlm", "wwm", "span", "mlm+nsp", "clm", "rtd", "simcse"}
    sec = PretrainSection(shards="s", out="o", objective="span", span_p=0.3, span_max=5)
    assert sec.validate().objective_options(OBJECTIVES["span"]) == {
        "mask_prob": 0.15, "mask_ratio": 0.8, "random_ratio": 0.1, "span_p": 0.3, "span_max": 5}
    assert PretrainSection(shards="s", out="o", objective="clm").objective_options(OBJECTIVES["clm"]) == {}
    with pytest.raises(InputError, match="span_p is an option of objective span"):
        PretrainSection(shards="s", out="o", objective="mlm", span_p=0.3).validate()
    with pytest.raises(InputError, match="nsp_prob"):
        PretrainSection(shards="s", out="o", objective="wwm", nsp_prob=0.3).validate()
    with pytest.raises(InputError, match="span_p"):
        build_objective("span", Specials(40, 0, 2, 3, 4, [0, 1, 2, 3, 4]), span_p=0.0)
    with pytest.raises(InputError, match="views is an option of objective simcse.*its default 'split'"):
        PretrainSection(shards="s", out="o", objective="mlm", views="dropout").validate()
    with pytest.raises(InputError, match="no head to warm up"):
        PretrainSection(shards="s", out="o", objective="simcse", init_from="ck", head_warmup_steps=10).validate()


# ---------------------------------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("objective", ["mlm", "wwm", "span", "mlm+nsp", "clm", "rtd", "simcse"])
def test_every_objective_trains_through_the_cli(data, tmp_path, objective, capsys):
    out = tmp_path / "run"
    code = main(["pretrain", "--shards", str(data["shards"]), "--out", str(out), "--objective", objective,
                 "--model-size", "tiny", "--max-len", "64", "--max-steps", "40", "--batch-size", "16",
                 "--lr", "3e-3", "--warmup-steps", "2", "--eval-every", "10", "--eval-batches", "8",
                 "--no-progress", "--seed", "0"])
    assert code == 0, capsys.readouterr().err
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r["split"] == "validation"]
    assert [r["step"] for r in val] == [10, 20, 30, 40]
    assert val[-1]["loss"] < val[0]["loss"] - 0.05, val
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["objective"] == objective
    expected_heads = {"mlm": ["mlm"], "wwm": ["mlm"], "span": ["mlm", "sbo"], "mlm+nsp": ["mlm", "nsp"],
                      "clm": ["lm"], "rtd": ["generator", "rtd"], "simcse": []}[objective]
    assert config["heads"] == expected_heads
    assert config["model"]["causal"] == (objective == "clm")
    if objective == "mlm+nsp":
        assert "nsp_accuracy" in val[-1]
    if objective == "clm":
        assert "lm_perplexity" in val[-1]
    print(f"{objective}: validation loss {val[0]['loss']:.3f} (step 10) -> {val[-1]['loss']:.3f} (step 40)")
