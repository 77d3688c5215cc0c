"""The `pretune run` and `pretune tune` subcommands and the options they share."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from pretune.errors import InputError
from pretune.evaluate.report import format_comparison, format_summary
from pretune.run.config import load_config
from pretune.run.pipeline import run_comparison, run_pipeline, start_run
from pretune.run.tune import format_search, params_text, read_search, stage_tune, write_best_config

DEFAULT_TRIALS = 20  # `pretune tune` when neither --trials nor [tune] trials says


def cli_overrides(args) -> list[str]:
    """--set items plus the [run] flags (--device, --progress, --seed, --threads) as overrides."""
    overrides = list(args.set or [])
    if getattr(args, "device", None) is not None:
        overrides.append(f"run.device={json.dumps(args.device)}")
    if getattr(args, "progress", None) is not None:
        overrides.append(f"run.progress={'true' if args.progress else 'false'}")
    if getattr(args, "seed", None) is not None:
        overrides.append(f"run.seed={args.seed}")
    if getattr(args, "threads", None) is not None:
        overrides.append(f"run.threads={args.threads}")
    return overrides


def cmd_run(args) -> None:
    cfg = load_config(args.config, overrides=cli_overrides(args), out=args.out)
    if args.print_config:
        sys.stdout.write(cfg.to_toml())
        return
    t0 = time.perf_counter()
    summary = run_pipeline(cfg, force=args.force, overwrite=args.overwrite)
    root = Path(cfg.run.out)
    print()
    print(format_summary(summary))
    print(f"\nthis run took {time.perf_counter() - t0:.0f} s (the stages of these results: "
          f"{summary.get('compute_seconds', 0):.0f} s)")
    print(f"report: {root / 'report' / 'report.html'}\nsummary: {root / 'report' / 'summary.json'}")


def cmd_compare(args) -> None:
    cfg = load_config(args.config, overrides=cli_overrides(args), out=args.out)
    t0 = time.perf_counter()
    comparison = run_comparison(cfg, force=args.force, overwrite=args.overwrite)
    print()
    print(format_comparison(comparison))
    path = Path(cfg.run.out) / "compare" / "comparison.json"
    print(f"\nthis took {time.perf_counter() - t0:.0f} s; comparison: {path}")


def cmd_tune(args) -> None:
    if args.trials is not None and args.trials < 1:
        raise InputError(f"--trials must be >= 1, got {args.trials}")
    overrides = cli_overrides(args)
    if args.trials is not None:
        overrides.append(f"tune.trials={args.trials}")
    if args.timeout is not None:
        overrides.append(f"tune.timeout={args.timeout}")
    cfg = load_config(args.config, overrides=overrides, out=args.out)
    if cfg.tune.trials == 0:
        cfg = dataclasses.replace(cfg, tune=dataclasses.replace(cfg.tune, trials=DEFAULT_TRIALS))
    t0 = time.perf_counter()
    runner, base, base_fp, _ = start_run(cfg, force=args.force, overwrite=args.overwrite)
    stage = stage_tune(runner, cfg, base, base_fp)
    path = write_best_config(cfg, stage.directory)
    search = read_search(stage.directory)
    print()
    print(format_search(search))
    print(f"\nbest: trial {search['best']['number']}, validation {search['metric']} {search['best']['value']:.4f} "
          f"({params_text(search['best']['params'])}); this took {time.perf_counter() - t0:.0f} s")
    print(f"trials: {stage.directory / 'trials.json'}\nbest config: {path}\nnext: pretune run {path}")


def add_run_arguments(p, set_example: str, force_help: str) -> None:
    """The options of every command that reads a run config (`pretune run`, `pretune tune`); see cli_overrides."""
    p.add_argument("config", nargs="?", default=None, help="pipeline TOML (default: the bundled WordNet example)")
    p.add_argument("--out", default=None, help="run directory (default: [run] out, else ./pretune-run)")
    p.add_argument("--set", action="append", default=[], metavar="TABLE.KEY=VALUE",
                   help=f"override a config value, {set_example} (repeatable)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    p.add_argument("--seed", type=int, default=None, help="[run] seed")
    p.add_argument("--threads", type=int, default=None, help="[run] threads: CPU threads for torch")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bars")
    p.add_argument("--force", action="store_true", help=force_help)
    p.add_argument("--overwrite", action="store_true",
                   help="replace training stages made with another config (without it they are refused)")


def register_cli(sub) -> None:
    p = sub.add_parser(
        "run", help="the whole recipe: tokenizer, pretraining, fine-tuning vs. a baseline, report",
        description="Run every stage of the two-stage recipe (tokenizer, shards, pretraining, fine-tuning, a "
                    "from-scratch baseline, optional label sweep, test evaluation, report). Stages whose inputs "
                    "did not change since the last run in the same --out are skipped; an interrupted stage "
                    "continues from its checkpoint. With no CONFIG, the bundled WordNet default runs.")
    add_run_arguments(p, "e.g. --set pretrain.trainer.max_steps=500", "re-run every stage, even those up to date")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as TOML and exit")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "tune", help="search fine-tuning hyperparameters (Optuna) and write the best run config",
        description="Bring the run's tokenizer, shards and pretraining up to date (as `pretune run` does, in the "
                    "same --out), then search the [tune] space of learning rate, head learning rate, batch size, "
                    "epochs, warm-up and freezing on the validation metric, pruning trials that fall behind. "
                    "Writes OUT/tune/trials.json and OUT/tune/best.toml (pass it to `pretune run`).")
    add_run_arguments(p, "e.g. --set tune.lr=[1e-5,1e-3]", "re-run every stage, the search included")
    p.add_argument("--trials", type=int, default=None, help=f"[tune] trials (default {DEFAULT_TRIALS})")
    p.add_argument("--timeout", type=float, default=None, help="[tune] timeout: no new trial after this many seconds")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser(
        "compare", help="only the comparison: classic baselines and [compare] checkpoints on the same labels",
        description="Run only the comparison stage of `pretune run` (no tokenizer, no pretraining) on the config's "
                    "labeled data, in the same --out: the classic baseline (TF-IDF + logistic regression, or a CRF), "
                    "and for each [compare] checkpoint a linear probe and a fine-tuning, at the main run's label "
                    "fraction and every sweep fraction. pretune's models join the table when the run directory "
                    "already holds their report. Prints the table and which method wins at each label count.")
    add_run_arguments(p, "e.g. --set compare.checkpoints=[\"path/to/model\"]", "re-run the comparison")
    p.set_defaults(func=cmd_compare)
