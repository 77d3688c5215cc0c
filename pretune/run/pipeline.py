"""`pretune run [CONFIG.toml]`: the two-stage recipe in one command, compared with a no-pretraining baseline.

Stages, each in its own folder of the run directory:

    tokenizer/   train a tokenizer on the unlabeled corpus (or take the checkpoint's, with [pretrain] init_from)
    shards/      the corpus as token shards (train / validation split by document)
    pretrain/    pretraining (objective, model and trainer from [pretrain]); pretrain/model is the checkpoint
    contrastive/ optional ([pretrain.contrastive] steps > 0): simcse steps on pretrain/model; then its model/ is
                 the checkpoint fine-tuning starts from
    causal/      clm with init_from only: the published checkpoint against the continued one (pretune/run/causal.py)
    tune/        optional ([tune] trials > 0): the hyperparameter search; the fine-tunings below use its best values
    finetune/    fine-tuning of the pretrained model on the labeled training set, early stopping on validation
    baseline/    the same fine-tuning from a random initialisation of the same architecture (never self-trained)
    sweep/       optional: both again on fractions of the labels ([sweep] label_fractions)
    compare/     on by default ([compare]): the alternatives on the same label subsets (pretune/run/compare.py):
                 fits/ the classic baseline and linear probes, <checkpoint>-<fraction>/ named checkpoints fine-tuned
    evaluate/    every model on the held-out test set: <model>.json (metrics, confusion, predictions)
    report/      report.html (self-contained) and summary.json; the summary table is also printed

A stage that completes writes `stage.json` (its fingerprint: a hash of its config and of its inputs' contents and
fingerprints). A re-run skips every stage whose fingerprint is unchanged. A training stage whose fingerprint changed is
replaced only with --overwrite (`Runner`), so changing the labeled data re-runs (with --overwrite) fine-tuning,
evaluation and the report but not the tokenizer or pretraining. A stage that was interrupted (Ctrl-C, a crash, a kill)
continues from its last checkpoint when the re-run has the same fingerprint. Once a training stage
is complete its resumable `last/` checkpoint (with optimizer state) is deleted; `model/` is its result.


Configuration: see `pretune/run/config.py`; the hyperparameter search: `pretune/run/tune.py`.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from pretune import files
from pretune.compare.blend import TASKS as BLEND_TASKS
from pretune.errors import InputError
from pretune.run.causal import stage_causal, wants_causal
from pretune.run.compare import (
    blended_models,
    checkpoint_finetunes,
    comparison,
    evaluated_rows,
    label_points,
    pretune_method,
    stage_blend,
    stage_compare,
)
from pretune.run.config import PipelineConfig, table_metric
from pretune.run.stages import FORMAT_VERSION, Runner, StageResult, architecture_fp, file_hash, read_record
from pretune.run.steps import (
    stage_contrastive,
    stage_evaluate,
    stage_finetune,
    stage_pretrain,
    stage_report,
    stage_shards,
    stage_tokenizer,
)
from pretune.run.summary import sweep_points
from pretune.run.tune import tuned_config
from pretune.text.labeled import LabelMap, read_examples
from pretune.training import checkpoint as ck
from pretune.training.threads import set_threads


def check_inputs(cfg: PipelineConfig) -> None:
    """Fail before hours of pretraining, not after: every input file exists, the labeled sets read cleanly, and
    validation and test use only labels the training set has."""
    if not cfg.run.skip_pretraining:
        for f in cfg.corpus.files:
            if not Path(f).is_file():
                raise InputError("corpus file not found", path=f)
    if cfg.pretrain.init_from:
        ck.resolve(cfg.pretrain.init_from)
    sec = cfg.finetune
    train = read_examples(sec.train, sec.task, **sec.fields())
    labels = LabelMap.from_examples(train, sec.task, sec.train, order=sec.label_order())
    for path in (sec.validation, sec.test):
        for ex in read_examples(path, sec.task, **sec.fields()):
            if sec.task in ("classify", "pair"):
                names = [ex.label]
            elif sec.task in ("tag", "seqtag"):
                names = sorted(set(ex.tags or []))
            else:
                names = [lab for _, _, lab in ex.spans or []]
            for name in names:
                labels.index(name, path, ex.line)


def untrained_positions_warning(cfg: PipelineConfig) -> str | None:
    """A line when fine-tuning reads more positions than pretraining from scratch trains: those position embeddings
    keep their initial values (default.toml pretrains at the fine-tuning length for this reason)."""
    if cfg.run.skip_pretraining or cfg.pretrain.init_from or cfg.finetune.max_len <= cfg.pretrain.max_len:
        return None
    return (f"[finetune] max_len {cfg.finetune.max_len} is longer than [pretrain] max_len {cfg.pretrain.max_len}: "
            f"positions {cfg.pretrain.max_len}-{cfg.finetune.max_len - 1} are never pretrained (set both to the same "
            "length, with [pretrain.trainer] batch_size scaled to keep the tokens per step)")


PUBLISHED_LR = 3e-4  # above it a learning rate is one for training from scratch (fine-tuning BERT: 2e-5 to 5e-5)


def published_lr_warning(cfg: PipelineConfig) -> str | None:
    """A line when a checkpoint given by init_from is trained at a from-scratch learning rate (the bundled default's
    2e-3 and 1e-3 with only init_from set): at that rate it loses what it was published with."""
    if not cfg.pretrain.init_from:
        return None
    high = [f"[{name}] lr {lr:g}" for name, lr, used in (
        ("pretrain.trainer", cfg.pretrain_trainer.lr, not cfg.run.skip_pretraining),
        ("pretrain.contrastive", cfg.contrastive.lr, cfg.wants_contrastive() is None),
        ("finetune.trainer", cfg.finetune_trainer.lr, True)) if used and lr > PUBLISHED_LR]
    if not high:
        return None
    return (f"{' and '.join(high)}: rates for a model trained from scratch; a published checkpoint "
            f"({cfg.pretrain.init_from}) trained at them forgets what it learned. Use about 3e-5 to 1e-4 "
            "(examples/minilm.toml: 5e-5 for both)")


def prepare_run_dir(root: Path, cfg: PipelineConfig) -> None:
    """A new or empty directory becomes a run directory; one holding anything else is refused."""
    marker = root / "pipeline.json"
    if root.exists() and not root.is_dir():
        raise InputError("run directory is a file; choose another --out", path=root)
    if root.exists() and files.dir_entries(root) and not marker.is_file():
        raise InputError("this directory holds files but no pretune run (no pipeline.json); choose another --out",
                         path=root)
    files.lock_dir(root)  # one writer per run directory: a second `pretune run` on it is refused
    files.write_json(marker, {"format_version": FORMAT_VERSION, "config": cfg.source})
    (root / "config.toml").write_text(cfg.to_toml(), encoding="utf-8")


def start_run(cfg: PipelineConfig, force: bool = False, log=print,
              overwrite: bool = False) -> tuple[Runner, Path, dict, dict]:
    """Check the inputs, set up the run directory, bring the tokenizer, shards and pretraining up to date.

    Returns (runner, the checkpoint to fine-tune, its fingerprint, the fingerprint of its architecture)."""
    check_inputs(cfg)
    for warning in (untrained_positions_warning(cfg), published_lr_warning(cfg)):
        if warning:
            print(f"pretune: warning: {warning}", file=sys.stderr)
    set_threads(cfg.run.threads)
    root = Path(cfg.run.out).resolve()
    prepare_run_dir(root, cfg)
    runner = Runner(root, force=force, log=log, overwrite=overwrite)
    if cfg.run.skip_pretraining:
        base = ck.resolve(cfg.pretrain.init_from)
    else:
        tok = stage_tokenizer(runner, cfg)
        shards = stage_shards(runner, cfg, tok)
        pretrained = stage_pretrain(runner, cfg, shards)
        base = pretrained.directory / "model"
        skip = cfg.wants_contrastive()
        if skip is None:
            base = stage_contrastive(runner, cfg, shards, pretrained).directory / "model"
        elif skip != "off":
            log(f"[contrastive] not run: {skip}")
    # fine-tuning depends on the pretrained weights; the baseline only on the architecture and the tokenizer
    arch_fp = architecture_fp(base)
    base_fp = {"weights": file_hash(base / ck.WEIGHTS), **arch_fp}
    return runner, base, base_fp, arch_fp


def run_pipeline(cfg: PipelineConfig, force: bool = False, log=print, overwrite: bool = False) -> dict:
    """Run (or bring up to date) every stage; returns the summary (also in report/summary.json). A training stage
    made with another config is replaced only with `overwrite` (or `force`)."""
    wall_start = time.perf_counter()
    runner, base, base_fp, arch_fp = start_run(cfg, force, log, overwrite)
    stages = runner.stages
    causal = stage_causal(runner, cfg, stages["shards"], stages["pretrain"]) if wants_causal(cfg) else None
    cfg = tuned_config(runner, cfg, base, base_fp)  # [tune] trials > 0: search first, then use the best values
    sec = cfg.finetune
    models = {
        "pretrained": stage_finetune(runner, cfg, "finetune", base, base_fp, from_scratch=False),
        "baseline": stage_finetune(runner, cfg, "baseline", base, arch_fp, from_scratch=True),
    }
    sweep_models: dict[str, tuple[float, str]] = {}
    for f in cfg.sweep.label_fractions:
        if f == sec.label_fraction and cfg.sweep.label_seed == sec.label_seed:
            continue  # the main runs are this point
        for model, upstream, scratch in (("pretrained", base_fp, False), ("baseline", arch_fp, True)):
            name = f"sweep/{model}-{f:g}"
            models[name] = stage_finetune(runner, cfg, name, base, upstream, scratch, label_fraction=f,
                                          label_seed=cfg.sweep.label_seed)
            sweep_models[name] = (f, model)
    alternatives = checkpoint_finetunes(runner, cfg, label_points(cfg))
    evaluation = stage_evaluate(runner, cfg, {**models, **{n: st for n, (st, _) in alternatives.items()}})
    points = sweep_points(cfg, models, evaluation, sweep_models)
    methods = {n: (st, pretune_method(n)) for n, st in models.items()}
    compared = compare_stage(runner, cfg, {**methods, **alternatives}, evaluation)
    report = stage_report(runner, cfg, dict(stages), evaluation, points, wall_start, compared,
                          causal.result if causal else None)
    summary = files.read_json(report.directory / "summary.json")
    return summary



def compare_stage(runner: Runner, cfg: PipelineConfig, methods: dict, evaluation: StageResult | None,
                  earlier: list[dict] | None = None) -> dict | None:
    """The [compare] stage and the comparison of every method: the fine-tuned models `methods` ({stage name:
    (stage, method)}, scored in `evaluation`), the classic baseline and probes, and `earlier` rows."""
    if not cfg.compare.enabled:
        return None
    fits = stage_compare(runner, cfg, label_points(cfg))
    rows = (evaluated_rows(methods, evaluation) if evaluation else []) + list(earlier or []) + fits.result["rows"]
    blended = blended_models(cfg, methods)
    if cfg.compare.blend and cfg.finetune.task in BLEND_TASKS and blended and evaluation:
        rows += stage_blend(runner, cfg, blended, evaluation).result["rows"]
    return comparison(table_metric(cfg), rows)


def run_comparison(cfg: PipelineConfig, force: bool = False, log=print, overwrite: bool = False) -> dict:
    """`pretune compare`: only the [compare] stage (no tokenizer, no pretraining) in the run directory, with
    pretune's models when the directory's last report holds them. Returns the comparison (also in
    compare/comparison.json)."""
    check_inputs(dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, skip_pretraining=True),
                                     pretrain=dataclasses.replace(cfg.pretrain, init_from=None)))
    set_threads(cfg.run.threads)
    root = Path(cfg.run.out).resolve()
    prepare_run_dir(root, cfg)
    runner = Runner(root, force=force, log=log, overwrite=overwrite)
    cfg = dataclasses.replace(cfg, compare=dataclasses.replace(cfg.compare, enabled=True))
    alternatives = checkpoint_finetunes(runner, cfg, label_points(cfg))
    evaluation = stage_evaluate(runner, cfg, {n: st for n, (st, _) in alternatives.items()},
                                name="compare/evaluate") if alternatives else None
    compared = compare_stage(runner, cfg, alternatives, evaluation, earlier=pretune_rows(root))
    files.write_json(root / "compare" / "comparison.json", compared)
    return compared


def pretune_rows(root: Path) -> list[dict]:
    """pretune's models' rows of the comparison, from the run directory's last evaluation (none without one)."""
    record = read_record(root / "evaluate" / "stage.json")
    if record.get("status") != "done":
        return []
    names = [n for n in record["inputs"]["models"] if not n.startswith("compare/")]
    folders = {n: root / ("finetune" if n == "pretrained" else n) for n in names}  # the pretrained model's stage
    methods = {n: (StageResult(n, d, "", read_record(d / "stage.json").get("result", {}), True, 0.0),
                   pretune_method(n)) for n, d in folders.items()}
    return evaluated_rows(methods, StageResult("evaluate", root / "evaluate", "", record["result"], True, 0.0))
