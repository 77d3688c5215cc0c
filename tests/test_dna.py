"""Gene sequences (task seqtag): per-character label files, windows and their merge, reverse complement, the
sequence report, masking of whitespace-free text, and a tiny end-to-end CLI run on the bundled Kaptive slice."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch
from conftest import DNA, dna_rows, pretrain_dna

from pretune.cli import main
from pretune.errors import InputError
from pretune.evaluate.metrics import format_report, sequence_report
from pretune.finetune.config import FinetuneSection
from pretune.finetune.seqencode import char_to_token, encode_sequences, merge_windows, sequence_windows
from pretune.pretrain.objectives import IGNORE, SpanMLM, Specials, WholeWordMLM, special_mask
from pretune.pretrain.shards import PackedSequences, TokenShards, prepare_corpus
from pretune.text.labeled import Example, LabelMap, read_examples
from pretune.text.sequences import parse_label_map, reverse_complement, strand_swap
from pretune.text.tokenizer import train_tokenizer

# ---------------------------------------------------------------------------------------------------- reading


def test_bundled_slice_is_real_per_nucleotide_data():
    rows = dna_rows(DNA / "train.tsv.gz")
    assert len(rows) == 4
    for row in rows:
        assert len(row["sequence"]) == len(row["labels"]) > 5000
        assert set(row["sequence"]) <= set("ACGTNRYKMSWBDHV")
        assert set(row["labels"]) <= set("N+-") and "+" in row["labels"] and "N" in row["labels"]
    ids = {r["id"] for name in ("train", "validation", "test") for r in dna_rows(DNA / f"{name}.tsv.gz")}
    assert len(ids) == 6  # split by record: no locus in two splits
    assert "GPL-3+" in (DNA / "LICENSE").read_text()


@pytest.mark.parametrize("fmt", ["tsv", "csv", "jsonl"])
def test_sequence_label_files_in_every_format(tmp_path, fmt):
    rows = [("ACGTACGT", "NN+++--N"), ("GGCC", "++++")]
    path = tmp_path / f"d.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps({"sequence": s, "labels": lab}) + "\n" for s, lab in rows))
    else:
        sep = "\t" if fmt == "tsv" else ","
        path.write_text(f"sequence{sep}labels\n" + "".join(f"{s}{sep}{lab}\n" for s, lab in rows))
    examples = read_examples(path, "seqtag")
    assert [ex.text for ex in examples] == ["ACGTACGT", "GGCC"]
    assert examples[0].tags == list("NN+++--N") and examples[1].line == 3 - (fmt == "jsonl")
    labels = LabelMap.from_examples(examples, "seqtag")
    assert labels.names == ["+", "-", "N"]  # most frequent first (the background), then sorted


def test_label_map_and_field_names(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text("dna\ty\nACGTA\t00120\n")
    examples = read_examples(path, "seqtag", text_field="dna", label_field="y", label_map="0=non-coding,1=cds+,2=cds-")
    assert examples[0].tags == ["non-coding", "non-coding", "cds+", "cds-", "non-coding"]
    order = list(parse_label_map("0=non-coding,1=cds+,2=cds-").values())
    assert LabelMap.from_examples(examples, "seqtag", order=order).names == ["non-coding", "cds+", "cds-"]
    assert parse_label_map("N,+,-") == {"N": "N", "+": "+", "-": "-"}
    with pytest.raises(InputError, match=r"d.tsv:2: label character\(s\) '2' not in label_map"):
        read_examples(path, "seqtag", text_field="dna", label_field="y", label_map="0=a,1=b")
    with pytest.raises(InputError, match="each key must be one label character"):
        parse_label_map("00=a")


def test_unequal_lengths_name_the_file_row_and_both_lengths(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text("sequence\tlabels\nACGT\tNNNN\nACGTAC\tNN+\n")
    with pytest.raises(InputError) as e:
        read_examples(path, "seqtag")
    assert str(e.value) == (f"{path}:3: the sequence has 6 characters but its labels 3; expected one label per "
                            "character")
    assert main(["finetune", "--task", "seqtag", "--from", str(tmp_path), "--train", str(path), "--validation",
                 str(path), "--out", str(tmp_path / "o")]) == 2
    with pytest.raises(InputError, match="d.tsv:1: a 'sequence labels' header: a label per character is task seqtag"):
        read_examples(path, "tag")


def test_seqtag_config_is_checked_at_load():
    base = dict(task="seqtag", checkpoint="c", train="t", validation="v", out="o")
    FinetuneSection(**base, window_overlap=31, max_len=64).validate()
    with pytest.raises(InputError, match="smooth must be >= 0"):
        FinetuneSection(**base, smooth=-1).validate()
    assert "smooth" not in FinetuneSection(**base).validate().head_options()  # off: checkpoints' heads unchanged
    assert FinetuneSection(**base, smooth=31).validate().head_options()["smooth"] == 31
    with pytest.raises(InputError, match="window_overlap must be in"):
        FinetuneSection(**base, window_overlap=32, max_len=64).validate()
    with pytest.raises(InputError, match="label_map applies to task seqtag only"):
        FinetuneSection(**{**base, "task": "tag"}, label_map="N,+").validate()
    with pytest.raises(InputError, match="label_map"):
        FinetuneSection(**base, label_map="N=x,+=x").validate()
    assert FinetuneSection(**base).fields()["label_field"] == "labels"
    assert FinetuneSection(**{**base, "task": "classify"}).fields() == {
        "text_field": None, "text_b_field": "text_b", "label_field": "label"}  # unchanged for other tasks


# ---------------------------------------------------------------------------------------------------- windows


def test_windows_cover_everything_with_the_overlap():
    assert sequence_windows(10, 16, 4) == [(0, 10)]
    w = sequence_windows(100, 30, 10)
    assert w[0] == (0, 30) and w[-1] == (70, 100)
    assert all(b - a == 30 for a, b in w)
    assert all(w[i + 1][0] == w[i][0] + 20 for i in range(len(w) - 2))  # stride = cap - overlap
    assert all(w[i + 1][0] < w[i][1] for i in range(len(w) - 1))  # neighbours overlap: nothing is missed


def test_merge_takes_each_token_from_the_window_where_it_is_most_central():
    n, cap, overlap, k = 50, 20, 8, 3
    windows = sequence_windows(n, cap, overlap)
    ex = Example(line=1, text="A" * n)
    features = [{"example": 0, "token_offset": a} for a, _ in windows]
    features[0].update(n_tokens=n, char_token=np.arange(n))
    # window w predicts label w % k everywhere, with probability 0.9
    outputs = []
    for w, (a, b) in enumerate(windows):
        p = np.full((b - a, k), 0.05, dtype=np.float32)
        p[:, w % k] = 0.9
        outputs.append(p)
    (ids, probs), = merge_windows(k, [ex], features, outputs)
    assert len(ids) == n and np.allclose(probs, 0.9)
    def score(t: int, a: int, b: int) -> int:  # distance to a cut edge (the sequence's own ends are none)
        return min(n if a == 0 else t - a, n if b == n else b - 1 - t)

    for t in range(n):
        best = max((w for w, (a, b) in enumerate(windows) if a <= t < b), key=lambda w: score(t, *windows[w]))
        assert ids[t] == best % k


def test_long_sequences_round_trip_through_windows_per_nucleotide():
    rows = dna_rows(DNA / "validation.tsv.gz")
    ex = read_examples(DNA / "validation.tsv.gz", "seqtag")[0]
    tok = train_tokenizer([rows[0]["sequence"]], kind="char")
    labels = LabelMap(["N", "+", "-"])
    features, stats = encode_sequences([ex], tok, labels, max_len=66, overlap=16)
    assert stats.n_split == 1 and len(features) > len(ex.text) // 64
    # an oracle that returns the gold label of every token: merged back, every nucleotide is right
    outputs = [np.eye(3, dtype=np.float32)[[lab for lab in f["labels"] if lab != IGNORE]] for f in features]
    (ids, _), = merge_windows(3, [ex], features, outputs)
    assert "".join(labels.names[i] for i in ids) == rows[0]["labels"]


def test_smoothing_removes_short_flips_and_keeps_long_runs():
    n = 60
    truth = np.array([0] * 20 + [1] * 40)
    noisy = truth.copy()
    noisy[30:33] = 0  # a 3-nt flip inside the + run
    probs = np.eye(2, dtype=np.float32)[noisy] * 0.8 + 0.1
    ex = Example(line=1, text="A" * n)

    def merged(width: int) -> np.ndarray:
        feat = {"example": 0, "token_offset": 0, "n_tokens": n, "char_token": np.arange(n), "smooth": width}
        return merge_windows(2, [ex], [feat], [probs])[0][0]

    assert (merged(0) == noisy).all()
    assert (merged(9) == truth).all()  # the flip is gone, the real boundary at 20 stays where it was


def test_k_mer_tokens_project_labels_back_to_nucleotides():
    offsets = [(0, 3), (3, 6), (6, 9), (9, 10)]  # non-overlapping 3-mers, a short last one
    assert char_to_token(offsets, 10).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]
    ids, probs = merge_windows(2, [Example(line=1, text="A" * 10)],
                               [{"example": 0, "token_offset": 0, "n_tokens": 4,
                                 "char_token": char_to_token(offsets, 10)}],
                               [np.array([[1, 0], [0, 1], [1, 0], [0, 1]], dtype=np.float32)])[0]
    assert ids.tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 0, 1]


def test_kmer_tokenizer_labels_go_back_to_every_nucleotide():
    seq, labs = "ACGTACGTACGTAC", "NNN+++++++--NN"
    tok = train_tokenizer([seq, "GGGTTTCCCAAA"], kind="kmer3")
    assert tok.encode(seq).tokens == ["ACG", "TAC", "GTA", "CGT", "AC"]
    ex = Example(line=1, text=seq, tags=list(labs))
    labels = LabelMap(["N", "+", "-"])
    features, _ = encode_sequences([ex], tok, labels, max_len=5, overlap=1)  # windows of 3 k-mers
    assert len(features) == 2
    outputs = [np.eye(3, dtype=np.float32)[[lab for lab in f["labels"] if lab != IGNORE]] for f in features]
    (ids, _), = merge_windows(3, [ex], features, outputs)
    # each k-mer is trained on (and gives back) the label of its first nucleotide
    assert "".join(labels.names[i] for i in ids) == "NNN+++++++++NN"


# ---------------------------------------------------------------------------------------------------- augmentation


def test_reverse_complement_swaps_strands():
    seq, tags = reverse_complement("AACGTn", list("NN++-N"), strand_swap({}))
    assert seq == "nACGTT"
    assert tags == list("N+--NN")
    back, tags2 = reverse_complement(seq, tags, strand_swap({}))
    assert back == "AACGTn" and tags2 == list("NN++-N")
    named = strand_swap(parse_label_map("N=non-coding,+=fwd,-=rev"))
    assert named == {"fwd": "rev", "rev": "fwd"}
    assert strand_swap(parse_label_map("0=non-coding,1=cds+,2=cds-")) == {"cds+": "cds-", "cds-": "cds+"}
    with pytest.raises(InputError, match="reverse_complement needs to know the strands"):
        FinetuneSection(task="seqtag", checkpoint="c", train="t", validation="v", out="o", label_map="0=a,1=b",
                        reverse_complement=True).validate()


# ---------------------------------------------------------------------------------------------------- metrics


def test_sequence_report_scores_nucleotides_and_exact_segments():
    true = [np.array([0, 1, 1, 1, 0, 2, 2, 0])]
    pred = [np.array([0, 1, 1, 0, 0, 2, 2, 0])]  # the + segment ends one too early; the - segment is exact
    r = sequence_report(true, pred, ["N", "+", "-"], background=0)
    assert r["accuracy"] == 7 / 8
    assert r["per_class"]["+"]["recall"] == 2 / 3 and r["per_class"]["N"]["precision"] == 3 / 4
    assert (r["segment_precision"], r["segment_recall"], r["segment_support"]) == (0.5, 0.5, 2)
    assert r["per_segment_label"]["-"]["f1"] == 1.0 and r["per_segment_label"]["+"]["f1"] == 0.0
    assert "segments" in format_report(r)


# ---------------------------------------------------------------------------------------------------- masking


@pytest.fixture(scope="module")
def dna_items(tmp_path_factory):
    root = tmp_path_factory.mktemp("dna_shards")
    with gzip.open(DNA / "corpus.txt.gz", "rt", encoding="utf-8") as f:
        lines = f.read().splitlines()
    (root / "corpus.txt").write_text("\n".join(lines) + "\n")
    tok = train_tokenizer(lines, kind="char")
    prepare_corpus([root / "corpus.txt"], tok, root / "shards", validation_fraction=0.0, progress=False)
    specials = Specials.from_tokenizer(tok)
    ds = PackedSequences(TokenShards(root / "shards"), 128, specials.cls, specials.sep)
    return specials, [ds[i] for i in range(min(256, len(ds)))]


@pytest.mark.parametrize("objective", [WholeWordMLM, SpanMLM])
def test_masking_rate_on_whitespace_free_text(dna_items, objective, capsys):
    specials, items = dna_items
    obj = objective(specials)
    gen = torch.Generator().manual_seed(0)
    selected = regular = 0
    for k in range(0, len(items), 32):
        batch = obj.collate(items[k: k + 32], gen)
        sel = batch["labels"] != IGNORE
        special = special_mask(torch.tensor(np.stack([i for i, _ in items[k: k + 32]])), specials.special_ids)
        assert not (sel & special).any()
        selected, regular = selected + int(sel.sum()), regular + int((~special).sum())
    assert abs(selected / regular - 0.15) < 0.01, selected / regular
    err = capsys.readouterr().err
    assert err.count("masked by single tokens instead") == 1  # warned once


# ---------------------------------------------------------------------------------------------------- end to end


def test_tiny_end_to_end_cli_run_on_the_bundled_slice(tmp_path, capsys):
    d = tmp_path
    pretrain_dna(d, "char", 4)
    assert main(["finetune", "--task", "seqtag", "--from", str(d / "pre" / "model"),
                 "--train", str(DNA / "train.tsv.gz"), "--validation", str(DNA / "validation.tsv.gz"),
                 "--test", str(DNA / "test.tsv.gz"), "--out", str(d / "ft"), "--max-len", "64",
                 "--label-map", "N,+,-", "--reverse-complement", "--max-steps", "6", "--min-steps", "0",
                 "--batch-size", "16", "--lr", "1e-3", "--no-progress"]) == 0
    report = json.loads((d / "ft" / "test_report.json").read_text())
    test_labels = dna_rows(DNA / "test.tsv.gz")[0]["labels"]
    assert report["labels"] == ["N", "+", "-"] and report["support"] == len(test_labels)
    assert {"accuracy", "segment_f1", "per_class", "per_segment_label"} <= set(report)
    assert len(report["predictions"][0]["labels"]) == len(test_labels)
    assert main(["evaluate", "--from", str(d / "ft" / "model"), "--data", str(DNA / "test.tsv.gz"),
                 "--out", str(d / "eval.json")]) == 0
    again = json.loads((d / "eval.json").read_text())
    assert again["accuracy"] == report["accuracy"] and again["segment_f1"] == report["segment_f1"]
    # predict on raw sequences: one label per nucleotide, whatever the length
    seqs = [dna_rows(DNA / "validation.tsv.gz")[0]["sequence"][:1000], "ACGTTGCA"]
    (d / "raw.txt").write_text("\n".join(seqs) + "\n")
    assert main(["predict", "--from", str(d / "ft" / "model"), "--input", str(d / "raw.txt"),
                 "--output", str(d / "pred.jsonl")]) == 0
    preds = [json.loads(ln) for ln in (d / "pred.jsonl").read_text().splitlines()]
    assert [len(p["prediction"]["labels"]) for p in preds] == [1000, 8]
    assert preds[1]["sequence"] == "ACGTTGCA" and set(preds[0]["prediction"]["labels"]) <= set("N+-")
    # the ORF decoder, chosen at evaluate / predict time: every predicted segment is a whole ORF
    assert main(["evaluate", "--from", str(d / "ft" / "model"), "--data", str(DNA / "test.tsv.gz"),
                 "--out", str(d / "orf.json"), "--decode", "orf", "--orf-bias", "5"]) == 0
    orf = json.loads((d / "orf.json").read_text())
    assert orf["support"] == report["support"] and orf["predictions"][0]["segments"]
    assert main(["predict", "--from", str(d / "ft" / "model"), "--input", str(d / "raw.txt"), "--decode", "orf",
                 "--orf-starts", "ATG,GTG", "--orf-min-length", "60", "--orf-bias", "5",
                 "--output", str(d / "orf.jsonl")]) == 0
    pred = json.loads((d / "orf.jsonl").read_text().splitlines()[0])["prediction"]
    assert pred["segments"] and len(pred["labels"]) == 1000
    for seg in pred["segments"]:
        piece = seqs[0][seg["start"]: seg["end"]]
        piece = piece if seg["label"] == "+" else reverse_complement(piece, None, {})[0]
        assert piece[:3] in ("ATG", "GTG") and piece[-3:] in ("TAA", "TAG", "TGA") and len(piece) % 3 == 0
        assert len(piece) >= 60
    assert main(["evaluate", "--from", str(d / "ft" / "model"), "--data", str(DNA / "test.tsv.gz"),
                 "--orf-bias", "1"]) == 2  # an --orf-* flag without --decode orf
    # fine-tuning on from a fine-tuned model with another decoder keeps its head (decoding is not a weight)
    capsys.readouterr()
    assert main(["finetune", "--task", "seqtag", "--from", str(d / "ft" / "model"),
                 "--train", str(DNA / "train.tsv.gz"), "--validation", str(DNA / "validation.tsv.gz"),
                 "--out", str(d / "ft2"), "--max-len", "64",
                 "--label-map", "N,+,-", "--decode", "orf", "--orf-bias", "5", "--max-steps", "1", "--min-steps", "0",
                 "--batch-size", "16", "--no-progress"]) == 0
    assert "weights loaded: body and head" in capsys.readouterr().out


def test_codon_frame_features_count_trinucleotides_per_frame():
    from pretune.compare.seqclassic import codon_frame_features

    seq = "ATG" * 20
    f = codon_frame_features(seq, half=6).reshape(len(seq), 3, 64)
    atg, tga, gat = 16 * 0 + 4 * 3 + 2, 16 * 3 + 4 * 2 + 0, 16 * 2 + 4 * 0 + 3
    i = 30  # an A: frame 0 sees ATG (positions i, i+-3, i+-6), frame 1 TGA, frame 2 GAT
    assert f[i, 0, atg] * (13 / 3) == 5 and f[i, 1, tga] * (13 / 3) == 4 and f[i, 2, gat] * (13 / 3) == 4
    assert f[i].sum() * (13 / 3) == 13  # nothing else counted
    assert np.allclose(codon_frame_features("NNNNN", 2), 0)  # unknown nucleotides count as nothing
