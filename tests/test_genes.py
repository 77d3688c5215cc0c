"""The ORF decoder for per-nucleotide strand labels (`pretune.finetune.genes`, seqtag ``decode = "orf"``)."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from pretune.errors import InputError
from pretune.evaluate.metrics import label_runs, sequence_report
from pretune.finetune.config import FinetuneSection
from pretune.finetune.genes import (
    OrfDecode,
    candidate_orfs,
    choose_orfs,
    decode_orfs,
    find_orfs,
    strand_label_ids,
    with_decode,
)
from pretune.finetune.seqencode import merge_windows
from pretune.text.labeled import Example
from pretune.text.sequences import reverse_complement

STOPS = {"TAA", "TAG", "TGA"}


def gene(rng: random.Random, codons: int, start: str = "ATG", stop: str = "TAA") -> str:
    """start + `codons` random sense codons + stop."""
    sense = ["".join(c) for c in itertools.product("ACGT", repeat=3) if "".join(c) not in STOPS]
    return start + "".join(rng.choice(sense) for _ in range(codons)) + stop


def filler(rng: random.Random, n: int) -> str:
    """Non-coding DNA with no start codon in any frame (only C and T: no ATG, GTG or TTG ... but TTG: avoid G)."""
    return "".join(rng.choice("CT") for _ in range(n))


def rc(seq: str) -> str:
    return reverse_complement(seq, None, {})[0]


def test_find_orfs_frames_nested_starts_and_min_length():
    rng = random.Random(0)
    g = gene(rng, 40)  # 126 nt
    seq = "CC" + g + "C" + gene(rng, 10) + "CCC"  # a second, short gene (36 nt) in another frame
    orfs = find_orfs(seq, ("ATG",), 90)
    assert (2, 2 + len(g)) in orfs
    assert all(e - b >= 90 for b, e in orfs)
    assert all(seq[b:b + 3] == "ATG" and seq[e - 3:e] in STOPS and (e - b) % 3 == 0 for b, e in orfs)
    assert all(seq[i:i + 3] not in STOPS for b, e in orfs for i in range(b, e - 3, 3))  # the FIRST stop
    short = find_orfs(seq, ("ATG",), 30)
    assert (2 + len(g) + 1, 2 + len(g) + 1 + 36) in short and len(short) > len(orfs)
    nested = "ATG" + "GCA" * 10 + "ATG" + "GCA" * 30 + "TAG"
    assert [b for b, _ in find_orfs(nested, ("ATG",), 90)] == [0, 33]  # both starts, one stop
    assert find_orfs("GTG" + "GCA" * 30 + "TGA", ("ATG",), 90) == []
    assert find_orfs("GTG" + "GCA" * 30 + "TGA", ("ATG", "GTG"), 90) == [(0, 96)]
    assert find_orfs("ATG" + "GCA" * 40, ("ATG",), 90) == []  # no stop: not an ORF


def test_reverse_strand_orfs_map_back_to_forward_coordinates():
    rng = random.Random(1)
    g = gene(rng, 35)
    seq = filler(rng, 20) + rc(g) + filler(rng, 17)
    found = candidate_orfs(seq, ("ATG",), 90)
    assert (20, 20 + len(g), -1) in found
    b, e = 20, 20 + len(g)
    assert rc(seq[b:e]).startswith("ATG") and rc(seq[b:e])[-3:] in STOPS


def brute_force(orfs, cum, max_overlap):
    """Every subset of the ORFs that the rules allow, scored as the union of its nucleotides per strand."""
    best = 0.0
    for r in range(1, len(orfs) + 1):
        for subset in itertools.combinations(orfs, r):
            ok = True
            for (b1, e1, s1), (b2, e2, s2) in itertools.combinations(sorted(subset, key=lambda o: (o[1], o[0])), 2):
                overlap = min(e1, e2) - max(b1, b2)
                if overlap > 0 and not (s1 == s2 and overlap <= max_overlap and b1 < b2 and e1 < e2):
                    ok = False
            # three ORFs of one strand overlapping in a chain are fine; a nucleotide covered twice counts once
            if not ok:
                continue
            score = 0.0
            for s in (1, -1):
                covered = np.zeros(len(cum[s]) - 1, dtype=bool)
                for b, e, st in subset:
                    if st == s:
                        covered[b:e] = True
                score += float(np.diff(cum[s])[covered].sum())
            best = max(best, score)
    return best


@pytest.mark.parametrize("max_overlap", [0, 4])
def test_interval_choice_matches_brute_force(max_overlap):
    rng = np.random.default_rng(0)
    for _ in range(60):
        n = 40
        cum = {s: np.concatenate([[0.0], np.cumsum(rng.normal(0.2, 1.0, n))]) for s in (1, -1)}
        orfs = set()
        for _ in range(int(rng.integers(1, 8))):
            b = int(rng.integers(0, n - 3))
            orfs.add((b, int(rng.integers(b + 3, min(n, b + 15) + 1)), int(rng.choice([1, -1]))))
        chosen, total = choose_orfs(sorted(orfs), cum, max_overlap)
        assert total == pytest.approx(brute_force(sorted(orfs), cum, max_overlap))
        covered = {1: np.zeros(n, bool), -1: np.zeros(n, bool)}
        for b, e, s in chosen:
            covered[s][b:e] = True
        assert total == pytest.approx(sum(float(np.diff(cum[s])[covered[s]].sum()) for s in (1, -1)))
    assert choose_orfs([], cum) == ([], 0.0)


def noisy_probs(labels: str, rng: np.random.Generator, flip: float) -> np.ndarray:
    """Probabilities [n, 3] over N,+,- that favour the true label but put the most weight elsewhere on a
    `flip` share of the nucleotides (scattered flips, like a per-nucleotide classifier's)."""
    ids = np.asarray(["N+-".index(c) for c in labels])
    probs = np.full((len(ids), 3), 0.15)
    probs[np.arange(len(ids)), ids] = 0.7
    flipped = rng.random(len(ids)) < flip
    other = (ids + rng.integers(1, 3, len(ids))) % 3
    probs[flipped] = 0.15
    probs[flipped, other[flipped]] = 0.7
    return probs


def test_decoder_recovers_exact_genes_where_the_argmax_does_not():
    rng = random.Random(2)
    g1, g2, g3 = gene(rng, 60), gene(rng, 45, start="GTG"), gene(rng, 50, stop="TGA")
    parts = [filler(rng, 40), g1, filler(rng, 25), rc(g2), filler(rng, 30), g3, filler(rng, 33)]
    labels = "".join(("+" if p in (g1, g3) else "-" if p == rc(g2) else "N") * len(p) for p in parts)
    seq = "".join(parts)
    probs = noisy_probs(labels, np.random.default_rng(0), flip=0.2)
    gold = np.asarray(["N+-".index(c) for c in labels])
    argmax = probs.argmax(-1)
    settings = OrfDecode(starts=("ATG", "GTG"), min_length=90)
    decoded = decode_orfs(seq, probs, 1, 2, settings)
    names = ["N", "+", "-"]
    before, after = sequence_report([gold], [argmax], names), sequence_report([gold], [decoded], names)
    assert before["segment_f1"] < 0.1 and after["segment_f1"] == 1.0
    assert after["accuracy"] == 1.0 > before["accuracy"]
    only_atg = decode_orfs(seq, probs, 1, 2, OrfDecode(starts=("ATG",)))
    assert sequence_report([gold], [only_atg], names)["segment_f1"] < 1.0  # the GTG gene needs GTG


def test_same_strand_genes_overlapping_by_a_few_nucleotides_make_one_run():
    rng = random.Random(3)
    g1 = gene(rng, 40, stop="TGA")
    g2 = "ATGACC" + gene(rng, 40)[3:]  # its second codon starts with A
    operon = g1[:-4] + g2  # ...ATGA...: g1's stop TGA overlaps g2's start ATG by two nucleotides
    assert operon[len(g1) - 4: len(g1) - 1] == "ATG" and operon[len(g1) - 3: len(g1)] == "TGA"
    assert {(0, len(g1)), (len(g1) - 4, len(operon))} <= set(find_orfs(operon, ("ATG",), 90))
    seq = filler(rng, 30) + operon + filler(rng, 30)
    labels = "N" * 30 + "+" * len(operon) + "N" * 30
    gold = np.asarray(["N+-".index(c) for c in labels])
    probs = noisy_probs(labels, np.random.default_rng(1), flip=0.1)
    apart = decode_orfs(seq, probs, 1, 2, OrfDecode(max_overlap=0))
    joined = decode_orfs(seq, probs, 1, 2, OrfDecode(max_overlap=10))
    assert label_runs(joined, 0) == label_runs(gold, 0) == {(30, 30 + len(operon), 1)}
    assert label_runs(apart, 0) != label_runs(gold, 0)


def test_bias_trades_genes_for_background():
    rng = random.Random(4)
    g = gene(rng, 40)
    seq = filler(rng, 20) + g + filler(rng, 20)
    probs = np.tile([0.3, 0.5, 0.2], (len(seq), 1))  # undecided: log-odds of + is 0 everywhere
    assert set(decode_orfs(seq, probs, 1, 2, OrfDecode(bias=-0.1, score="odds")).tolist()) == {0}
    assert (decode_orfs(seq, probs, 1, 2, OrfDecode(bias=0.1, score="odds")) == 1).sum() == len(g)
    # against the background: log(0.5 / 0.3) = 0.51 per nucleotide
    assert set(decode_orfs(seq, probs, 1, 2, OrfDecode(bias=-0.52)).tolist()) == {0}
    assert (decode_orfs(seq, probs, 1, 2, OrfDecode(bias=-0.5)) == 1).sum() == len(g)


@pytest.mark.parametrize("score", ["background", "odds"])
def test_both_scores_recover_clear_genes(score):
    rng = random.Random(6)
    g1, g2 = gene(rng, 50), gene(rng, 40)
    seq = filler(rng, 30) + g1 + filler(rng, 20) + rc(g2) + filler(rng, 30)
    labels = "N" * 30 + "+" * len(g1) + "N" * 20 + "-" * len(g2) + "N" * 30
    probs = noisy_probs(labels, np.random.default_rng(3), flip=0.15)
    out = decode_orfs(seq, probs, 1, 2, OrfDecode(score=score))
    assert "".join("N+-"[i] for i in out) == labels


def test_merge_windows_applies_the_decoder_from_the_features():
    rng = random.Random(5)
    g = gene(rng, 40)
    seq = filler(rng, 10) + g + filler(rng, 10)
    labels = "N" * 10 + "+" * len(g) + "N" * 10
    probs = noisy_probs(labels, np.random.default_rng(2), flip=0.25).astype(np.float32)
    feat = {"example": 0, "token_offset": 0, "n_tokens": len(seq), "char_token": np.arange(len(seq)), "smooth": 0,
            "decode": OrfDecode().to_dict()}
    (ids, p), = merge_windows(3, [Example(line=1, text=seq)], [feat], [probs], ["N", "+", "-"])
    assert "".join("N+-"[i] for i in ids) == labels
    assert np.allclose(p, probs[np.arange(len(seq)), ids])
    with pytest.raises(InputError, match="label names"):
        merge_windows(3, [Example(line=1, text=seq)], [feat], [probs])


def test_strand_labels_settings_and_config_are_checked():
    assert strand_label_ids(["N", "+", "-"]) == (1, 2)
    assert strand_label_ids(["non-coding", "cds-", "cds+"]) == (2, 1)
    with pytest.raises(InputError, match="forward strand"):
        strand_label_ids(["N", "A", "B"])
    for bad, match in ((dict(starts=("AUG",)), "not a codon"), (dict(starts=()), "at least one"),
                       (dict(min_length=3), "min_length"), (dict(max_overlap=-1), "max_overlap"),
                       (dict(bias=float("nan")), "bias"), (dict(score="viterbi"), "orf_score")):
        with pytest.raises(InputError, match=match):
            OrfDecode(**bad)
    assert OrfDecode.from_dict(OrfDecode(starts=("gtg", "ATG")).to_dict()).starts == ("ATG", "GTG")
    base = dict(task="seqtag", checkpoint="c", train="t", validation="v", out="o")
    sec = FinetuneSection(**base, decode="orf", orf_starts="ATG,TTG", orf_min_length=120).validate()
    assert sec.head_options()["decode"]["starts"] == ["ATG", "TTG"]
    assert "decode" not in FinetuneSection(**base).validate().head_options()
    for kwargs, match in ((dict(decode="viterbi"), "decode must be one of"),
                          (dict(decode="orf", orf_starts="XYZ"), "not a codon"),
                          (dict(decode="orf", label_map="0=a,1=b,2=c"), "forward strand"),
                          (dict(orf_min_length=300), "applies with decode = 'orf'")):
        with pytest.raises(InputError, match=match):
            FinetuneSection(**base, **kwargs).validate()
    with pytest.raises(InputError, match="seqtag only"):
        FinetuneSection(**{**base, "task": "tag"}, decode="orf").validate()
    opts = {"window_overlap": 8, "decode": OrfDecode().to_dict()}
    assert with_decode(opts, "seqtag", "argmax") == {"window_overlap": 8}
    assert with_decode(opts, "seqtag", None) is opts
    assert with_decode({}, "seqtag", "orf")["decode"]["min_length"] == 90
    with pytest.raises(InputError, match="seqtag only"):
        with_decode({}, "tag", "orf")
