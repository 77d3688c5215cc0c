"""`pretune blend`: a fine-tuned classifier averaged with TF-IDF + LR trained on the same labels, the weight chosen
on validation, written as a checkpoint that `pretune predict`, `evaluate` and the Python API serve
(`pretune.compare.blend`). `pretune run` makes the same for its main model (compare/blend/model); this command is for
a model fine-tuned with `pretune finetune`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pretune import files
from pretune.compare import blend
from pretune.compare.classic import class_labels, label_ids
from pretune.errors import InputError
from pretune.finetune.data import subsample
from pretune.finetune.model import load_task_model
from pretune.finetune.stage import evaluate_file
from pretune.text.labeled import read_examples
from pretune.training.checkpoint import resolve
from pretune.training.config import resolve_device
from pretune.training.threads import add_threads_flag


def fine_tuning_record(checkpoint: Path) -> dict:
    """The [finetune] settings of the `pretune finetune` run that holds `checkpoint` (its run.json), or {}."""
    for run_dir in (checkpoint, checkpoint.parent):
        if (run_dir / "run.json").is_file():
            record = files.read_json(run_dir / "run.json").get("finetune")
            return record if isinstance(record, dict) else {}
    return {}


def blend_settings(args: argparse.Namespace, model_dir: Path) -> dict:
    """train / validation / test files and the label subset: the flags, else the fine-tuning run's run.json."""
    record = fine_tuning_record(model_dir)
    pick = {k: getattr(args, k) if getattr(args, k) is not None else record.get(k)
            for k in ("train", "validation", "test", "label_fraction", "label_seed")}
    for key in ("train", "validation"):
        if not pick[key]:
            raise InputError(f"--{key} is needed: no run.json of a `pretune finetune` run beside the checkpoint "
                             "names it", path=model_dir)
    pick["label_fraction"] = 1.0 if pick["label_fraction"] is None else float(pick["label_fraction"])
    pick["label_seed"] = 0 if pick["label_seed"] is None else int(pick["label_seed"])
    if not 0 < pick["label_fraction"] <= 1:
        raise InputError(f"--label-fraction must be in (0, 1], got {pick['label_fraction']}")
    return pick


def cmd_blend(args: argparse.Namespace) -> None:
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise InputError("already exists; pass --overwrite to replace it", path=out)
    model_dir = resolve(args.checkpoint)
    if out.resolve() in (model_dir.resolve(), *model_dir.resolve().parents):
        raise InputError("--out would replace the fine-tuned model (or its run); name a new folder", path=out)
    if (model_dir / blend.PARTNER_DIR).is_dir():
        raise InputError("this checkpoint is a blend already; give the fine-tuned model it was made from",
                         path=model_dir)
    loaded = load_task_model(model_dir, device=resolve_device(args.device))
    model, _, conf = loaded
    if model.task not in blend.TASKS:
        raise InputError(f"a blend with TF-IDF + LR is for {' and '.join(blend.TASKS)} models; this one is "
                         f"{model.task}", path=model_dir)
    s = blend_settings(args, model_dir)
    fields = conf.get("fields") or {}
    train = subsample(read_examples(s["train"], model.task, **fields), s["label_fraction"], s["label_seed"])
    val = read_examples(s["validation"], model.task, **fields)
    model_val = evaluate_file(loaded, s["validation"], batch_size=args.batch_size)["predictions"]
    print(f"TF-IDF + LR on {len(train):,} labels ({s['train']}), the weight chosen on {s['validation']}")
    if s["test"]:
        test = read_examples(s["test"], model.task, **fields)
        model_test = evaluate_file(loaded, s["test"], batch_size=args.batch_size)["predictions"]
        r, partner = blend.fit_blend(model.task, train, val, test, model_val, model_test, seed=args.seed)
        y = label_ids(test, partner.labels)
        alone = float(np.mean(blend.probs_matrix(model_test, partner.labels, "test").argmax(1) == y))
        classic = float(np.mean(partner.probs(test).argmax(1) == y))
    else:
        labels = class_labels((train, val), None)
        partner, scores = blend.fit_partner(model.task, train, val, model_val, labels, seed=args.seed)
        r = {"val_scores": scores}
    shown = ", ".join(f"{float(w):g}: {acc:.4f}" for w, acc in r["val_scores"].items())
    print(f"validation accuracy by the network's weight ({shown}): {partner.weight:g} chosen")
    if s["test"]:
        print(f"test accuracy ({s['test']}): network {alone:.4f}, TF-IDF + LR {classic:.4f}, blend {r['score']:.4f}")
    blend.write_blend_model(out, model_dir, partner)
    print(f"blend: {out} (pretune predict --from {out} ...)")


def register_cli(sub) -> None:
    """`pretune blend`."""
    b = sub.add_parser("blend", help="average a fine-tuned classifier with TF-IDF + LR; save it for predict",
                       description="Fit TF-IDF + LR on the labels the model was fine-tuned on, choose the "
                       "network's weight (0, 0.25, 0.5, 0.75, 1) on validation, and write the blend as a "
                       "checkpoint that `pretune predict` and `pretune evaluate` serve. The files and label "
                       "subset default to those of the `pretune finetune` run holding the model.")
    b.add_argument("--from", "--checkpoint", dest="checkpoint", required=True, metavar="CKPT",
                   help="a fine-tuned classify / pair checkpoint, or the `pretune finetune` run holding it")
    b.add_argument("--out", required=True, help="folder of the blend checkpoint (a copy of the model + blend/)")
    b.add_argument("--train", default=None, help="labeled file the model was fine-tuned on (default: run.json's)")
    b.add_argument("--validation", default=None, help="labeled file to choose the weight on (default: run.json's)")
    b.add_argument("--test", default=None, help="labeled file to report test accuracy on (default: run.json's)")
    b.add_argument("--label-fraction", type=float, default=None,
                   help="the stratified fraction of --train the model was fine-tuned on (default: run.json's, else 1)")
    b.add_argument("--label-seed", type=int, default=None, help="its seed (default: run.json's, else 0)")
    b.add_argument("--seed", type=int, default=0, help="logistic regression's seed")
    b.add_argument("--batch-size", type=int, default=64)
    b.add_argument("--device", default="auto")
    b.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_threads_flag(b)
    b.set_defaults(func=cmd_blend)
