"""Score a fine-tuned seqtag model's per-nucleotide probabilities once, then try ORF decoder settings on them.

    python scripts/seqtag_decode_grid.py --from runs/dna/finetune/model --data data/dna/validation.tsv.gz \
        --starts ATG ATG,GTG ATG,GTG,TTG --min-length 60 90 --max-overlap 0 60 --bias -1 0 1

With --no-model, each setting is also tried on flat probabilities (every label 1/K: the decoder alone, choosing
ORFs by length, the model's scores left out), a baseline for what the model adds. Prints one JSON line per setting
(argmax first): per-nucleotide accuracy, segment precision / recall / F1, number of
predicted segments, seconds. Choose settings on the validation file, then run `pretune evaluate --decode orf ...`
with them on the test file. The model is run once; the probabilities are those `pretune evaluate` decodes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import numpy as np

from pretune.evaluate.metrics import sequence_report
from pretune.finetune.data import encode_split, run_features
from pretune.finetune.genes import OrfDecode, decode_orfs, parse_starts, strand_label_ids, with_decode
from pretune.finetune.model import load_task_model
from pretune.finetune.seqencode import merge_probs
from pretune.text.labeled import LabelMap, read_examples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--from", dest="checkpoint", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--starts", nargs="+", default=["ATG"])
    ap.add_argument("--min-length", nargs="+", type=int, default=[90])
    ap.add_argument("--max-overlap", nargs="+", type=int, default=[0])
    ap.add_argument("--bias", nargs="+", type=float, default=[0.0])
    ap.add_argument("--score", nargs="+", default=["background"], help="background and/or odds")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--no-model", action="store_true", help="also decode flat probabilities (the decoder alone)")
    args = ap.parse_args()
    model, tok, conf = load_task_model(args.checkpoint)
    if model.task != "seqtag":
        raise SystemExit("a seqtag model is needed")
    labels = LabelMap(model.labels)
    examples = read_examples(args.data, "seqtag", **(conf.get("fields") or {}))
    options = with_decode(model.head_options, "seqtag", "argmax")
    t0 = time.time()
    data = encode_split(args.data, examples, "seqtag", tok, labels, conf.get("max_len", 128), options)
    outputs, _ = run_features(model, data.features, tok.specials.pad, args.batch_size)
    probs = merge_probs(len(model.labels), examples, data.features, outputs)
    print(json.dumps({"scored_s": round(time.time() - t0, 1), "examples": len(examples)}), flush=True)
    true = [np.asarray([labels.index(t) for t in ex.tags or []]) for ex in examples]
    fwd, rev = strand_label_ids(model.labels)

    def show(name: dict, pred: list, seconds: float) -> None:
        r = sequence_report(true, pred, model.labels, background=0)
        n_pred = sum(len(np.flatnonzero(np.diff(p))) + 1 for p in pred)  # runs, background included
        print(json.dumps({**name, "accuracy": round(r["accuracy"], 4), "segment_precision":
                          round(r["segment_precision"], 4), "segment_recall": round(r["segment_recall"], 4),
                          "segment_f1": round(r["segment_f1"], 4), "segment_support": r["segment_support"],
                          "runs": n_pred, "seconds": round(seconds, 1)}), flush=True)

    show({"decode": "argmax"}, [p.argmax(-1) for p in probs], 0.0)
    for score, starts, min_len, overlap, bias in itertools.product(args.score, args.starts, args.min_length,
                                                                   args.max_overlap, args.bias):
        settings = OrfDecode(parse_starts(starts), min_len, overlap, bias, score)
        t = time.time()
        pred = [decode_orfs(ex.text or "", p, fwd, rev, settings) for ex, p in zip(examples, probs, strict=True)]
        name = {"decode": "orf", "score": score, "starts": starts, "min_length": min_len, "max_overlap": overlap,
                "bias": bias}
        show(name, pred, time.time() - t)
        if args.no_model:
            flat = [decode_orfs(ex.text or "", np.full_like(p, 1 / p.shape[1]), fwd, rev, settings)
                    for ex, p in zip(examples, probs, strict=True)]
            show({**name, "decode": "orf-flat"}, flat, 0.0)


if __name__ == "__main__":
    main()
