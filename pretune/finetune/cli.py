"""The `pretune finetune` and `pretune evaluate` subcommands. Fine-tuning with an unlabeled pool is chosen here:
self-training (`pretune.semisup.selftrain`) or consistency training (`pretune.semisup.consistency`)."""

from __future__ import annotations

from pathlib import Path

from pretune import files
from pretune.config import add_flags
from pretune.errors import InputError
from pretune.evaluate.metrics import format_report
from pretune.finetune.config import SECTIONS, load_finetune_sections
from pretune.finetune.genes import add_decode_flags, decode_from_flags
from pretune.finetune.stage import evaluate_file
from pretune.semisup.selftrain import format_rounds, run_finetune
from pretune.training import distributed as dist
from pretune.training.threads import add_threads_flag


def cmd_finetune(args) -> None:
    sections = load_finetune_sections(args.config, args)
    dist.setup()
    try:
        result = run_finetune(sections, resume=args.resume, overwrite=args.overwrite, source=args.config)
        main_rank = dist.is_main()  # asked before teardown: afterwards every process reports rank 0
    finally:
        dist.teardown()
    if not main_rank:
        return
    best = result["best"]
    print(f"best validation {result['metric']}: {best:.4f}" if best is not None else "no validation result")
    if result.get("self_training"):
        print(format_rounds(result["self_training"]))
    if result["test"] is not None:
        print(f"test ({sections['finetune'].test}):")
        print(format_report(result["test"]))
    print(f"model: {Path(result['out']) / 'model'}")


def cmd_evaluate(args) -> None:
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    out = Path(args.out) if args.out else None
    if out is not None:
        files.check_output(out, args.overwrite)
    report = evaluate_file(args.checkpoint, args.data, batch_size=args.batch_size, decode=decode_from_flags(args))
    if "blend_weight" in report:
        w = report["blend_weight"]
        print(f"a blend: {w:g} x the fine-tuned network + {1 - w:g} x TF-IDF + LR (its blend/ folder)")
    print(format_report(report))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        files.write_json(out, report)
        print(f"report: {out}")


def register_cli(sub) -> None:
    ft = sub.add_parser("finetune", help="fine-tune a pretrained checkpoint on a labeled set",
                        description="Every key of the TOML config ([finetune], [train]) is also a flag; flags win.")
    ft.add_argument("--config", default=None, help="TOML file with [finetune] and [train] tables")
    ft.add_argument("--from", "--checkpoint", dest="checkpoint", default=None, metavar="CKPT",
                    help="pretrained (or fine-tuned) checkpoint, or a run directory holding one")
    ft.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    ft.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    add_flags(ft, *SECTIONS.values())
    add_threads_flag(ft)
    ft.set_defaults(func=cmd_finetune)

    ev = sub.add_parser("evaluate", help="score a fine-tuned checkpoint on a labeled file")
    ev.add_argument("--from", "--checkpoint", dest="checkpoint", required=True, metavar="CKPT")
    ev.add_argument("--data", required=True, help="labeled file in the task's format")
    ev.add_argument("--out", default=None, help="write the report (with predictions) as JSON here")
    ev.add_argument("--batch-size", type=int, default=32)
    ev.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    add_decode_flags(ev)
    add_threads_flag(ev)
    ev.set_defaults(func=cmd_evaluate)
