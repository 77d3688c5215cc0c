"""Build a per-nucleotide gene-finding task and an unlabeled DNA corpus from Debian's `kaptive-data` package.

    apt-get install kaptive-data
    python scripts/make_dna_data.py --out data/dna                # the full task
    python scripts/make_dna_data.py --out pretune/resources/dna --slice 4,1,1   # the small slice shipped for tests

Source: /usr/share/kaptive/reference_database/*.gbk — annotated bacterial capsule (K / O / OC) loci of Klebsiella
and Acinetobacter baumannii in GenBank format, GPL-3+ (Kaptive, Wick, Holt, Wyres et al.). Every nucleotide gets
one label character: ``+`` inside a CDS on the forward strand, ``-`` inside a CDS on the reverse strand (a
``complement(...)`` location), ``N`` elsewhere (non-coding). Where CDSs of both strands overlap, the later feature
in the file wins (counted in the summary). Records with the same sequence are kept once. The records are split
BY RECORD (seeded), so validation and test loci are never seen in training or in the corpus.

Writes train.tsv.gz, validation.tsv.gz, test.tsv.gz (columns id, sequence, labels) and corpus.txt.gz (one
training-split sequence per line: the unlabeled corpus for pretraining), plus summary.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
from pathlib import Path

SOURCE = Path("/usr/share/kaptive/reference_database")
_RANGE = re.compile(r"<?(\d+)(?:\.\.>?(\d+))?")


def read_genbank(path: Path) -> list[dict]:
    """Records of a GenBank file: {"id", "sequence", "cds": [(strand, [(start0, end_exclusive), ...])]}. Reads
    only LOCUS, the CDS locations of FEATURES and ORIGIN."""
    records = []
    rec: dict | None = None
    section = ""
    location = None  # the CDS location being read (it may continue over lines)
    seq_parts: list[str] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("LOCUS"):
            rec, section, seq_parts, location = {"id": line.split()[1], "cds": []}, "", [], None
            continue
        if rec is None:
            continue
        if line.startswith("//"):
            if location is not None:
                rec["cds"].append(_parse_location(location))
            rec["sequence"] = "".join(seq_parts).upper()
            records.append(rec)
            rec, location = None, None
            continue
        if line.startswith("FEATURES"):
            section = "features"
            continue
        if line.startswith("ORIGIN"):
            if location is not None:
                rec["cds"].append(_parse_location(location))
                location = None
            section = "origin"
            continue
        if section == "features":
            key = line[5:21].strip()
            body = line[21:].strip()
            if key:  # a new feature
                if location is not None:
                    rec["cds"].append(_parse_location(location))
                location = body if key == "CDS" else None
            elif location is not None and not body.startswith("/") and location.count("(") > location.count(")"):
                location += body  # a location continued on the next line
        elif section == "origin":
            seq_parts.append("".join(ch for ch in line if ch.isalpha()))
    return records


def _parse_location(location: str) -> tuple[str, list[tuple[int, int]]]:
    """"complement(join(1..10,20..>30))" -> ("-", [(0, 10), (19, 30)]) (0-based, end exclusive)."""
    strand = "-" if "complement" in location else "+"
    ranges = []
    for m in _RANGE.finditer(location.split(":")[-1]):
        start = int(m.group(1))
        end = int(m.group(2)) if m.group(2) else start
        ranges.append((start - 1, end))
    return strand, ranges


def labels_of(rec: dict) -> tuple[str, int]:
    """The label string of a record and the number of nucleotides labeled by CDSs of both strands."""
    n = len(rec["sequence"])
    labels = ["N"] * n
    strand_of = [""] * n
    conflicts = 0
    for strand, ranges in rec["cds"]:
        for start, end in ranges:
            for i in range(max(0, start), min(n, end)):
                if strand_of[i] and strand_of[i] != strand:
                    conflicts += 1
                strand_of[i] = strand
                labels[i] = strand
    return "".join(labels), conflicts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", default=str(SOURCE), help="folder of .gbk files (kaptive-data)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fractions", default="0.8,0.1,0.1", help="train,validation,test shares of the records")
    ap.add_argument("--slice", default="", help="N_TRAIN,N_VAL,N_TEST: keep only this many records per split "
                    "(the small slice shipped for tests)")
    args = ap.parse_args()
    files = sorted(Path(args.source).glob("*.gbk"))
    if not files:
        raise SystemExit(f"no .gbk files in {args.source}: apt-get install kaptive-data")
    records, seen, conflicts, n_cds = [], set(), 0, 0
    for path in files:
        for rec in read_genbank(path):
            if not rec["sequence"] or rec["sequence"] in seen:
                continue
            seen.add(rec["sequence"])
            rec["labels"], c = labels_of(rec)
            rec["id"] = f"{path.stem}:{rec['id']}"
            conflicts, n_cds = conflicts + c, n_cds + len(rec["cds"])
            records.append(rec)
    random.Random(args.seed).shuffle(records)
    shares = [float(x) for x in args.fractions.split(",")]
    n_train = round(shares[0] * len(records))
    n_val = round(shares[1] * len(records))
    splits = {"train": records[:n_train], "validation": records[n_train:n_train + n_val],
              "test": records[n_train + n_val:]}
    if args.slice:
        keep = [int(x) for x in args.slice.split(",")]
        splits = {name: recs[:k] for (name, recs), k in zip(splits.items(), keep, strict=True)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"source": args.source, "files": [p.name for p in files], "records": len(records),
                     "cds_features": n_cds, "both_strand_nucleotides": conflicts, "seed": args.seed, "splits": {}}
    for name, recs in splits.items():
        with gzip.open(out / f"{name}.tsv.gz", "wt", encoding="utf-8", compresslevel=9) as f:
            f.write("id\tsequence\tlabels\n")
            for rec in recs:
                f.write(f"{rec['id']}\t{rec['sequence']}\t{rec['labels']}\n")
        chars = "".join(r["labels"] for r in recs)
        summary["splits"][name] = {"records": len(recs), "nucleotides": len(chars),
                                   "label_counts": {c: chars.count(c) for c in "N+-"}}
    with gzip.open(out / "corpus.txt.gz", "wt", encoding="utf-8", compresslevel=9) as f:
        for rec in splits["train"]:
            f.write(rec["sequence"] + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(summary["splits"]))


if __name__ == "__main__":
    main()
