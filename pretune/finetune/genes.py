"""A gene-structure decoder for per-nucleotide strand labels (task ``seqtag``, ``decode = "orf"``).

A per-nucleotide classifier labels each nucleotide on its own, so its labels flip inside genes and almost no
predicted segment has the exact start and end of a gene. This decoder only allows gene-shaped answers:

1. Candidates: every open reading frame (ORF) on both strands, from a start codon (ATG; optionally GTG / TTG) to
   the first in-frame stop codon (TAA, TAG, TGA), stop codon included, at least ``min_length`` nucleotides. On the
   reverse strand the same is done on the reverse complement and mapped back (a reverse-strand ORF ends, on the
   forward coordinates, at the last nucleotide of its start codon). Every start codon before a stop is a candidate
   of its own (nested ORFs sharing one stop), so the scores choose the start.
2. Scores: each nucleotide i and strand s get ``score_s(i) + bias``, an ORF the sum over its nucleotides (prefix
   sums). ``score = "background"`` (the default): ``log p_s(i) - log p_N(i)``, the nucleotide coding on that strand
   against not coding at all (N, the background label) -- the comparison the decoder makes, since what an ORF
   does not cover becomes N. ``score = "odds"``: ``log p_s(i) - log(1 - p_s(i))``, that strand's label against all
   others. (On the Kaptive validation loci the two tie at the best settings and "background" is better with short
   ORFs allowed; README "Gene sequences".)
3. Choice: the set of ORFs with the largest total score, by weighted interval scheduling (dynamic programming over
   the ORFs sorted by end). ORFs may not overlap, except two ORFs of the same strand by at most ``max_overlap``
   nucleotides (operons: a stop codon overlapping the next start, ATGA); there the later ORF scores only the
   nucleotides past the earlier one's end, so nothing is counted twice. An ORF with a negative total is never
   worth taking; no ORF at all scores 0.
4. Output: chosen ORFs get their strand's label (overlapping same-strand ORFs give one run), everything else the
   background label. Segment scores (``pretune.evaluate.metrics.sequence_report``) then see maximal runs of one
   label, exactly as for the gold labels, where abutting or overlapping CDSs of one strand also make one run.

Pure numpy and Python; no model code. Which labels are the strands: ``strand_label_ids``.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import asdict, dataclass, field

import numpy as np

from pretune.errors import InputError

DECODERS = ("argmax", "orf")  # [finetune] decode
SCORES = ("background", "odds")  # [finetune] orf_score
STOPS = ("TAA", "TAG", "TGA")
NUCLEOTIDES = "ACGT"  # codon code = 16 * a + 4 * b + c over these
_BASE = np.full(256, -1, dtype=np.int64)
for _i, _c in enumerate("ACGT"):
    _BASE[ord(_c)] = _i
    _BASE[ord(_c.lower())] = _i
_COMPLEMENT = str.maketrans("ACGTacgt", "TGCAtgca")


@dataclass(frozen=True)
class OrfDecode:
    """Settings of the ORF decoder (see the module docstring)."""

    starts: tuple[str, ...] = ("ATG",)
    min_length: int = 90
    max_overlap: int = 0
    bias: float = 0.0
    score: str = "background"
    kind: str = field(default="orf", init=False)

    def __post_init__(self) -> None:
        starts = tuple(self.starts)
        if not starts:
            raise InputError("orf_starts: give at least one start codon, e.g. ATG or ATG,GTG,TTG")
        for codon in starts:
            if not isinstance(codon, str) or len(codon) != 3 or any(c not in "ACGT" for c in codon.upper()):
                raise InputError(f"orf_starts: {codon!r} is not a codon (three of A, C, G, T)")
        object.__setattr__(self, "starts", tuple(sorted({c.upper() for c in starts})))
        if isinstance(self.min_length, bool) or not isinstance(self.min_length, int) or self.min_length < 6:
            raise InputError(f"orf_min_length must be an integer >= 6 nucleotides (a start and a stop codon), "
                             f"got {self.min_length!r}")
        if isinstance(self.max_overlap, bool) or not isinstance(self.max_overlap, int) or self.max_overlap < 0:
            raise InputError(f"orf_max_overlap must be an integer >= 0 nucleotides, got {self.max_overlap!r}")
        if not isinstance(self.bias, (int, float)) or not np.isfinite(self.bias):
            raise InputError(f"orf_bias must be a finite number, got {self.bias!r}")
        if self.score not in SCORES:
            raise InputError(f"orf_score must be one of {', '.join(SCORES)}, got {self.score!r}")

    def to_dict(self) -> dict:
        """JSON-ready (stored with a fine-tuned model's head options)."""
        d = asdict(self)
        d["starts"] = list(self.starts)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> OrfDecode:
        """The inverse of `to_dict` (unknown keys refused)."""
        known = {"starts", "min_length", "max_overlap", "bias", "score", "kind"}
        extra = set(d) - known
        if extra or d.get("kind", "orf") != "orf":
            raise InputError(f"unknown ORF decoder settings: {sorted(extra) or d.get('kind')}")
        return cls(starts=tuple(d.get("starts", ("ATG",))), min_length=int(d.get("min_length", 90)),
                   max_overlap=int(d.get("max_overlap", 0)), bias=float(d.get("bias", 0.0)),
                   score=str(d.get("score", "background")))


def parse_starts(spec: str) -> tuple[str, ...]:
    """``"ATG,GTG"`` -> ("ATG", "GTG")."""
    return tuple(p.strip().upper() for p in spec.split(",") if p.strip())


def strand_label_ids(names: list[str]) -> tuple[int, int]:
    """(forward, reverse): the label ids of coding on the forward / reverse strand — the labels named ``+`` and
    ``-``, or else the names ending in ``+`` and ``-`` (``cds+``, ``cds-``). The background is label 0."""
    def find(sign: str) -> int:
        exact = [i for i, n in enumerate(names) if n == sign]
        ending = [i for i, n in enumerate(names) if n.endswith(sign)]
        hits = exact or ending
        if len(hits) != 1 or hits[0] == 0:
            strand = "forward" if sign == "+" else "reverse"
            raise InputError(f"decode = 'orf' needs exactly one label for coding on the {strand} strand, "
                             f" named {sign!r} or ending in {sign!r}, other than the background (the first "
                             f"label); the labels are {', '.join(map(repr, names))}")
        return hits[0]
    fwd, rev = find("+"), find("-")
    if fwd == rev:  # pragma: no cover - a name cannot end in both
        raise InputError("the forward and reverse strand labels must differ")
    return fwd, rev


def _codons(seq: str) -> np.ndarray:
    """[len(seq)] codon code (16*a + 4*b + c over A,C,G,T = 0..3) starting at each position; -1 where the codon
    runs past the end or holds another letter (N, gaps)."""
    base = _BASE[np.frombuffer(seq.encode("latin-1", "replace"), dtype=np.uint8)]
    n = len(base)
    out = np.full(n, -1, dtype=np.int64)
    if n >= 3:
        a, b, c = base[:-2], base[1:-1], base[2:]
        ok = (a >= 0) & (b >= 0) & (c >= 0)
        out[: n - 2] = np.where(ok, 16 * a + 4 * b + c, -1)
    return out


def _code(codon: str) -> int:
    return 16 * NUCLEOTIDES.index(codon[0]) + 4 * NUCLEOTIDES.index(codon[1]) + NUCLEOTIDES.index(codon[2])


def find_orfs(seq: str, starts: tuple[str, ...] = ("ATG",), min_length: int = 90) -> list[tuple[int, int]]:
    """ORFs [begin, end) of `seq` on its own (forward) strand: a start codon at `begin`, the first in-frame stop
    codon ending at `end`, ``end - begin >= min_length``. Every start codon gives one ORF (nested ones share an
    end). Sorted by (begin, end)."""
    codons = _codons(seq)
    is_start = np.isin(codons, [_code(c) for c in starts])
    is_stop = np.isin(codons, [_code(c) for c in STOPS])
    out: list[tuple[int, int]] = []
    for frame in range(3):
        pos = np.arange(frame, len(seq) - 2, 3)
        stop_pos = pos[is_stop[pos]]
        start_pos = pos[is_start[pos]]
        k = np.searchsorted(stop_pos, start_pos)  # the first stop at or after the start (never the start itself)
        has = k < len(stop_pos)
        begin, end = start_pos[has], stop_pos[k[has]] + 3
        keep = end - begin >= min_length
        out.extend(zip(begin[keep].tolist(), end[keep].tolist(), strict=True))
    return sorted(out)


def candidate_orfs(seq: str, starts: tuple[str, ...], min_length: int) -> list[tuple[int, int, int]]:
    """ORFs of both strands as (begin, end, strand) in forward coordinates, strand +1 or -1."""
    n = len(seq)
    fwd = [(b, e, 1) for b, e in find_orfs(seq, starts, min_length)]
    rc = seq.translate(_COMPLEMENT)[::-1]
    rev = [(n - e, n - b, -1) for b, e in find_orfs(rc, starts, min_length)]
    return fwd + rev


def log_odds(p: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """log(p / (1 - p)), with p clipped into [eps, 1 - eps]."""
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    return np.log(p) - np.log1p(-p)


def choose_orfs(orfs: list[tuple[int, int, int]], cum: dict[int, np.ndarray],
                max_overlap: int = 0) -> tuple[list[tuple[int, int, int]], float]:
    """The best-scoring set of ORFs (begin, end, strand) and its score. `cum[strand]` is the prefix sum [n + 1] of
    that strand's per-nucleotide score, so [b, e) scores cum[e] - cum[b]. ORFs may abut; two of one strand may
    overlap by at most `max_overlap` nucleotides (the later one then scores only past the earlier one's end)."""
    if not orfs:
        return [], 0.0
    items = sorted(set(orfs), key=lambda o: (o[1], o[0], o[2]))
    ends = [e for _, e, _ in items]
    best = np.empty(len(items))
    back = np.full(len(items), -1, dtype=np.int64)
    prefix_best = np.empty(len(items))  # max(0, best[0..j]) and where it is
    prefix_arg = np.full(len(items), -1, dtype=np.int64)
    for j, (b, e, s) in enumerate(items):
        c = cum[s]
        # predecessors that end at or before b: the best of them (or nothing) is a prefix maximum
        k = bisect_right(ends, b) - 1
        base, arg = (prefix_best[k], prefix_arg[k]) if k >= 0 else (0.0, -1)
        score, prev = base + c[e] - c[b], arg
        if max_overlap > 0:  # same-strand predecessors ending inside this ORF's first max_overlap nucleotides
            lo = bisect_right(ends, b)
            hi = bisect_left(ends, min(b + max_overlap, e) + 1)
            for i in range(lo, min(hi, j)):
                bi, ei, si = items[i]
                if si != s or bi >= b or ei >= e:
                    continue
                cand = best[i] + c[e] - c[ei]
                if cand > score:
                    score, prev = cand, i
        best[j], back[j] = score, prev
        before = prefix_best[j - 1] if j else 0.0
        if score > before:
            prefix_best[j], prefix_arg[j] = score, j
        else:
            prefix_best[j], prefix_arg[j] = before, (prefix_arg[j - 1] if j else -1)
    chosen = []
    j = int(prefix_arg[-1])
    total = float(prefix_best[-1])
    while j >= 0:
        chosen.append(items[j])
        j = int(back[j])
    return sorted(chosen), total


def nucleotide_scores(probs: np.ndarray, label: int, background: int, score: str,
                      eps: float = 1e-6) -> np.ndarray:
    """[n] the per-nucleotide score of coding with `label` (module docstring, step 2), without the bias."""
    if score == "odds":
        return log_odds(probs[:, label], eps)
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1.0)
    return np.log(p[:, label]) - np.log(p[:, background])


def decode_orfs(seq: str, probs: np.ndarray, forward: int, reverse: int, settings: OrfDecode,
                background: int = 0) -> np.ndarray:
    """[n] label ids for `seq` from per-nucleotide label probabilities `probs` [n, K]: the chosen ORFs (module
    docstring) get `forward` / `reverse`, everything else `background`."""
    n = len(seq)
    probs = np.asarray(probs)
    if probs.ndim != 2 or len(probs) != n:
        raise InputError(f"the ORF decoder needs one probability row per nucleotide: {n} nucleotides, "
                         f"probabilities of shape {probs.shape}")
    cum = {}
    for strand, label in ((1, forward), (-1, reverse)):
        per_nt = nucleotide_scores(probs, label, background, settings.score) + settings.bias
        cum[strand] = np.concatenate([[0.0], np.cumsum(per_nt)])
    chosen, _ = choose_orfs(candidate_orfs(seq, settings.starts, settings.min_length), cum, settings.max_overlap)
    out = np.full(n, background, dtype=np.int64)
    for b, e, s in chosen:
        out[b:e] = forward if s == 1 else reverse
    return out


# ---------------------------------------------------------------------------------------------- choosing a decoder


def with_decode(head_options: dict, task: str, decode: str | dict | None) -> dict:
    """`head_options` of a fine-tuned model with its seqtag decoder replaced: None keeps the model's, "argmax"
    drops the ORF decoder, a dict (`OrfDecode.to_dict`, or "orf" for the defaults) sets it."""
    if decode is None:
        return head_options
    if task != "seqtag":
        raise InputError(f"a decoder (--decode) applies to task seqtag only, not {task}")
    options = {k: v for k, v in head_options.items() if k != "decode"}
    if decode == "argmax":
        return options
    if decode == "orf":
        decode = OrfDecode().to_dict()
    if not isinstance(decode, dict):
        raise InputError(f"decode must be one of {', '.join(DECODERS)} or ORF settings, got {decode!r}")
    return {**options, "decode": OrfDecode.from_dict(decode).to_dict()}


_FLAGS = {"orf_starts": "starts", "orf_min_length": "min_length", "orf_max_overlap": "max_overlap",
          "orf_bias": "bias", "orf_score": "score"}


def add_decode_flags(parser) -> None:
    """--decode and --orf-* (for `pretune evaluate` / `pretune predict`); read back with `decode_from_flags`."""
    g = parser.add_argument_group("seqtag decoder (default: the one the model was fine-tuned with)")
    g.add_argument("--decode", choices=DECODERS, default=None, help="argmax | orf (pretune.finetune.genes)")
    g.add_argument("--orf-starts", default=None, help="start codons, e.g. ATG,GTG,TTG (default ATG)")
    g.add_argument("--orf-min-length", type=int, default=None, help="shortest ORF in nucleotides (default 90)")
    g.add_argument("--orf-max-overlap", type=int, default=None,
                   help="same-strand ORFs may overlap by this many nucleotides (default 0)")
    g.add_argument("--orf-bias", type=float, default=None, help="added to every nucleotide's score (default 0)")
    g.add_argument("--orf-score", choices=SCORES, default=None,
                   help="background: log p(strand) - log p(N) (default); odds: log p(strand) / (1 - p(strand))")


def decode_from_flags(args) -> str | dict | None:
    """The `decode` argument of `with_decode` from the flags of `add_decode_flags`: None when none is given."""
    given = {key: getattr(args, flag) for flag, key in _FLAGS.items() if getattr(args, flag, None) is not None}
    if "starts" in given:
        given["starts"] = parse_starts(given["starts"])
    decode = getattr(args, "decode", None)
    if given and decode != "orf":
        raise InputError(f"--{next(iter(k for k in _FLAGS if _FLAGS[k] in given)).replace('_', '-')} applies "
                         "with --decode orf")
    if decode == "orf":
        return OrfDecode.from_dict(given).to_dict()
    return decode
