"""DNA tokenizers beyond single nucleotides for task seqtag: overlapping k-mers (DNABERT-1: one k-mer per
nucleotide, labels 1:1 at the k-mer's start, masking in runs of k tokens) and BPE (DNABERT-2: labels projected back
to every nucleotide a token covers), each end to end on the bundled Kaptive slice."""

from __future__ import annotations

import gzip
import json
import random

import numpy as np
import pytest
import torch
from conftest import DNA, dna_rows, pretrain_dna

from pretune.cli import main
from pretune.errors import InputError
from pretune.finetune.seqencode import encode_sequences, merge_windows
from pretune.pretrain.objectives import IGNORE, Specials, build_objective, special_mask
from pretune.pretrain.objectives.mlm import kmer_runs
from pretune.pretrain.shards import PackedSequences, TokenShards, prepare_corpus
from pretune.text.labeled import Example, LabelMap
from pretune.text.tokenizer import PretuneTokenizer, train_tokenizer


def corpus_lines() -> list[str]:
    with gzip.open(DNA / "corpus.txt.gz", "rt", encoding="utf-8") as f:
        return f.read().splitlines()


@pytest.fixture(scope="module")
def kmer6():
    return train_tokenizer(corpus_lines()[:2], kind="kmer6-overlap")


# ------------------------------------------------------------------------------------------ overlapping k-mers


def test_overlapping_kmers_one_token_per_nucleotide(kmer6, tmp_path):
    text = "ACGTAGGT  GGA"
    enc = kmer6.encode(text)
    words = [(0, "ACGTAGGT"), (10, "GGA")]
    expect = [(base + i, word[i:i + 6]) for base, word in words for i in range(len(word))]
    assert enc.tokens == [t for _, t in expect]
    assert enc.offsets == [(s, s + len(t)) for s, t in expect]
    assert enc.word_ids == [0] * 8 + [1] * 3
    assert kmer6.specials.unk not in enc.ids
    assert kmer6.decode(enc.ids) == "ACGTAGGTGGA"
    kmer6.save(tmp_path / "tok.json")
    again = PretuneTokenizer.load(tmp_path / "tok.json")
    assert again.kmer_overlap == 6 and again.encode(text).ids == enc.ids
    assert train_tokenizer(["ACGTACGT"], kind="kmer6").kmer_overlap == 0  # the non-overlapping kind
    assert len(train_tokenizer(["ACGTACGT"], kind="kmer6").encode("ACGTACGT").ids) == 2
    with pytest.raises(InputError, match="overlapping"):
        kmer6.add_tokens(["ACG"])
    from pretune.interop.hf_export import _tokenizer_files

    with pytest.raises(InputError, match="cannot be exported"):  # transformers would cut non-overlapping k-mers
        _tokenizer_files(kmer6, None, "bert", tmp_path)


def test_overlapping_kmer_labels_are_one_to_one_through_windows_and_merge(kmer6):
    rng = random.Random(0)
    seq = "".join(rng.choice("ACGT") for _ in range(700))
    tags = [rng.choice("N+-") for _ in range(700)]
    labels = LabelMap(["N", "+", "-"])
    feats, stats = encode_sequences([Example(line=1, text=seq, tags=tags)], kmer6, labels, max_len=66, overlap=16)
    assert stats.n_split == 1 and len(feats) > 10
    ids = np.asarray([labels.index(t) for t in tags])
    for f in feats:  # the label of token j is the label of the nucleotide where its k-mer starts
        a, n = f["token_offset"], len(f["input_ids"]) - 2
        assert f["labels"][1:-1] == ids[a: a + n].tolist()
        assert f["labels"][0] == f["labels"][-1] == IGNORE
    outputs = [np.eye(3, dtype=np.float32)[np.asarray(f["labels"][1:-1])] for f in feats]
    (merged, _), = merge_windows(3, [Example(line=1, text=seq)], feats, outputs)
    assert merged.tolist() == ids.tolist()


def test_kmer_runs_mask_the_rate_in_runs_of_k():
    gen = torch.Generator().manual_seed(0)
    candidates = torch.ones(64, 256, dtype=torch.bool)
    candidates[:, 0] = candidates[:, -1] = False  # [CLS] ... [SEP]
    candidates[:, 100] = False  # a special token inside
    chosen = kmer_runs(candidates, 6, 0.15, gen)
    assert not (chosen & ~candidates).any()
    assert abs(chosen.sum().item() / candidates.sum().item() - 0.15) < 0.01
    for row, cand in zip(chosen.tolist(), candidates.tolist(), strict=True):
        t = 0
        while t < len(row):
            if not row[t]:
                t += 1
                continue
            s = t
            while t < len(row) and row[t]:
                t += 1
            assert t - s >= 6 or not cand[t], (s, t)  # shorter only when cut by a special token


@pytest.fixture(scope="module")
def kmer_items(tmp_path_factory, kmer6):
    root = tmp_path_factory.mktemp("kmer_shards")
    (root / "corpus.txt").write_text("\n".join(corpus_lines()[:2]) + "\n")
    prepare_corpus([root / "corpus.txt"], kmer6, root / "shards", validation_fraction=0.0, progress=False)
    ds = PackedSequences(TokenShards(root / "shards"), 128, kmer6.specials.cls, kmer6.specials.sep)
    return Specials.from_tokenizer(kmer6), [ds[i] for i in range(min(64, len(ds)))]


def test_mlm_masks_overlapping_kmers_in_runs_and_others_are_refused(kmer_items):
    specials, items = kmer_items
    assert specials.kmer_overlap == 6
    obj = build_objective("mlm", specials)
    batch = obj.collate(items, torch.Generator().manual_seed(0))
    sel = batch["labels"] != IGNORE
    ids = torch.tensor(np.stack([i for i, _ in items]))
    regular = ~special_mask(ids, specials.special_ids)
    assert abs(sel.sum().item() / regular.sum().item() - 0.15) < 0.02
    starts = sel[:, 1:] & ~sel[:, :-1]  # a masked run starts; its next 5 tokens are masked too (or special)
    for b, t in starts.nonzero().tolist():
        run = sel[b, t + 1: t + 7]
        assert bool(run.all()) or not bool(regular[b, t + 1: t + 7].all())
    for name in ("wwm", "span", "rtd"):
        with pytest.raises(InputError, match="runs of 6 tokens"):
            build_objective(name, specials)
    plain = Specials(**{**specials.__dict__, "kmer_overlap": 0})
    single = build_objective("mlm", plain).collate(items, torch.Generator().manual_seed(0))["labels"] != IGNORE
    runs = lambda m: int((m[:, 1:] & ~m[:, :-1]).sum())  # noqa: E731
    assert runs(single) > 3 * runs(sel)  # single tokens: many more, shorter runs


# ------------------------------------------------------------------------------------------ end to end


@pytest.mark.parametrize("kind", ["bpe", "kmer6-overlap"])
def test_seqtag_end_to_end_with_dna_tokens(tmp_path, kind):
    d = tmp_path
    pretrain_dna(d, kind, 3, "--vocab-size", "300")
    tok = PretuneTokenizer.load(d / "tok.json")
    assert main(["finetune", "--task", "seqtag", "--from", str(d / "pre" / "model"),
                 "--train", str(DNA / "train.tsv.gz"), "--validation", str(DNA / "validation.tsv.gz"),
                 "--test", str(DNA / "test.tsv.gz"), "--out", str(d / "ft"), "--max-len", "64",
                 "--label-map", "N,+,-", "--max-steps", "4", "--min-steps", "0", "--batch-size", "16",
                 "--no-progress"]) == 0
    report = json.loads((d / "ft" / "test_report.json").read_text())
    test_row = dna_rows(DNA / "test.tsv.gz")[0]
    assert report["support"] == len(test_row["labels"])
    labels = report["predictions"][0]["labels"]
    assert len(labels) == len(test_row["labels"])
    enc = tok.encode(test_row["sequence"])
    if kind == "bpe":  # a token's prediction goes to every nucleotide it covers
        assert len(enc.ids) < len(test_row["sequence"]) / 2
        assert all(len(set(labels[s:e])) == 1 for s, e in enc.offsets)
    else:
        assert len(enc.ids) == len(test_row["sequence"])
    assert main(["evaluate", "--from", str(d / "ft" / "model"), "--data", str(DNA / "test.tsv.gz"),
                 "--out", str(d / "eval.json"), "--decode", "orf"]) == 0
    assert json.loads((d / "eval.json").read_text())["support"] == report["support"]
    seqs = [test_row["sequence"][:500], "ACGTTGCA"]
    (d / "raw.txt").write_text("\n".join(seqs) + "\n")
    assert main(["predict", "--from", str(d / "ft" / "model"), "--input", str(d / "raw.txt"),
                 "--output", str(d / "pred.jsonl")]) == 0
    preds = [json.loads(ln)["prediction"] for ln in (d / "pred.jsonl").read_text().splitlines()]
    assert [len(p["labels"]) for p in preds] == [500, 8]
