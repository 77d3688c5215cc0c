"""SetFit on a local sentence-transformers folder, on the label subsets `pretune run` fine-tunes on, for
benchmarks/quality.py (its --setfit-python runs this with a Python that has the `setfit` package; a benchmark-only
extra, never a pretune dependency). Offline: the model is a local folder.

    python benchmarks/setfit_run.py --train T.csv --test E.csv --model DIR --seed 0 --fractions 0.1,1.0 --out R.json

R.json: {"args": [...], "table": {"SetFit <model>": {label count: test metric}}}. SetFit as the issue measured it:
contrastive fine-tuning of the body (5 pair iterations, one epoch) and a logistic-regression head.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from datasets import Dataset
from setfit import SetFitModel, Trainer, TrainingArguments
from sklearn.metrics import accuracy_score, f1_score

from pretune.files import write_json
from pretune.finetune.data import subsample
from pretune.run.config import checkpoint_name
from pretune.text.labeled import read_examples

METRICS = {"accuracy": accuracy_score, "macro_f1": lambda y, p: f1_score(y, p, average="macro")}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for flag in ("--train", "--test", "--model", "--fractions", "--out"):
        p.add_argument(flag, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--metric", default="accuracy", choices=sorted(METRICS))
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-len", type=int, default=64, help="tokens per text (pretune's [finetune] max_len)")
    args = p.parse_args(argv)
    train, test = read_examples(args.train, "classify"), read_examples(args.test, "classify")
    method = f"SetFit {checkpoint_name(args.model)}"
    row = {}
    scratch = tempfile.TemporaryDirectory()  # SetFit's Trainer writes checkpoints to its output_dir
    for fraction in map(float, args.fractions.split(",")):
        subset = subsample(train, fraction, args.seed)  # the subset pretune's sweep and [compare] use
        model = SetFitModel.from_pretrained(args.model)
        model.model_body.max_seq_length = args.max_len
        trainer = Trainer(model=model, args=TrainingArguments(num_iterations=args.iterations,
                                                              num_epochs=args.epochs, seed=args.seed,
                                                              output_dir=scratch.name, save_strategy="no"),
                          train_dataset=Dataset.from_dict({"text": [e.text for e in subset],
                                                           "label": [e.label for e in subset]}))
        trainer.train()
        predicted = [str(x) for x in model.predict([e.text for e in test], as_numpy=True)]
        row[str(len(subset))] = float(METRICS[args.metric]([e.label for e in test], predicted))
        print(f"[setfit] {len(subset)} labels: {args.metric} {row[str(len(subset))]:.4f}", file=sys.stderr, flush=True)
    write_json(Path(args.out), {"args": sys.argv[1:] if argv is None else argv, "table": {method: row}})


if __name__ == "__main__":
    main()
