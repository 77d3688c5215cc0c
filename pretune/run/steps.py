"""The stages of a run, each a function of the Runner and the config: tokenizer, shards, pretraining, fine-tuning
(the pretrained model or the from-scratch baseline), evaluation on the test set, the report."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict
from pathlib import Path

from pretune import files
from pretune.errors import InputError
from pretune.evaluate.metrics import headline_metrics
from pretune.evaluate.report import ReportData, write_report
from pretune.finetune.model import load_task_model
from pretune.finetune.stage import evaluate_file
from pretune.model.transformer import PRESETS, ModelConfig
from pretune.pretrain.shards import prepare_corpus
from pretune.pretrain.stage import PretrainSection, pretrain
from pretune.run.config import PipelineConfig
from pretune.run.stages import (
    Runner,
    StageResult,
    file_hash,
    finetune_fp,
    has_last_checkpoint,
    labeled_inputs,
    trainer_fp,
)
from pretune.run.summary import build_examples, build_summary, corpus_statistics, label_statistics
from pretune.run.tune import read_search, search_summary
from pretune.semisup import selftrain
from pretune.text.corpus import Corpus
from pretune.text.tokenizer import PretuneTokenizer, train_tokenizer
from pretune.training import checkpoint as ck
from pretune.training.config import resolve_device


def _corpus_inputs(cfg: PipelineConfig) -> dict:
    c = cfg.corpus
    return {"files": [file_hash(f) for f in c.files], "format": c.format, "field": c.field,
            "doc_split": c.doc_split}


def stage_tokenizer(runner: Runner, cfg: PipelineConfig) -> StageResult:
    init = cfg.pretrain.init_from
    if init:
        source = ck.resolve(init) / ck.TOKENIZER
        if not source.is_file():
            raise InputError(f"checkpoint has no {ck.TOKENIZER}; it cannot be continued", path=source.parent)
        inputs = {"from_checkpoint": file_hash(source)}
    elif cfg.tokenizer.file:
        source = Path(cfg.tokenizer.file)
        if not source.is_file():
            raise InputError("[tokenizer] file not found: expected a tokenizer.json or vocab.txt", path=source)
        inputs = {"from_file": file_hash(source)}
    else:
        trained = {k: v for k, v in asdict(cfg.tokenizer).items() if k != "file"}  # what training depends on
        inputs = {"tokenizer": trained, "corpus": _corpus_inputs(cfg)}

    def work(d: Path, resume: bool) -> dict:
        d.mkdir(parents=True, exist_ok=True)
        if init:
            tok = PretuneTokenizer.load(source)
            kind = "from checkpoint"
        elif cfg.tokenizer.file:
            tok = PretuneTokenizer.load(source)
            kind = f"from {source.name}"
        else:
            t = cfg.tokenizer
            texts = Corpus(cfg.corpus.files, fmt=cfg.corpus.format, field=cfg.corpus.field,
                           doc_split=cfg.corpus.doc_split)
            tok = train_tokenizer(texts, kind=t.kind, vocab_size=t.vocab_size, min_frequency=t.min_frequency,
                                  lowercase=t.lowercase)
            kind = t.kind
        tok.save(d / ck.TOKENIZER)
        return {"vocab_size": tok.vocab_size, "kind": kind, "sha256": file_hash(d / ck.TOKENIZER)}

    return runner.stage("tokenizer", inputs, work)


def stage_shards(runner: Runner, cfg: PipelineConfig, tok_stage: StageResult) -> StageResult:
    inputs = {"tokenizer": tok_stage.result["sha256"], "corpus": _corpus_inputs(cfg),
              "validation_fraction": cfg.corpus.validation_fraction, "seed": cfg.run.seed}

    def work(d: Path, resume: bool) -> dict:
        tok = PretuneTokenizer.load(tok_stage.directory / ck.TOKENIZER)
        c = cfg.corpus
        stats = prepare_corpus(c.files, tok, d, fmt=c.format, field=c.field, doc_split=c.doc_split,
                               validation_fraction=c.validation_fraction, seed=cfg.run.seed, overwrite=True,
                               progress=cfg.run.progress)
        tok.save(d / ck.TOKENIZER)
        return {"documents": stats.n_docs, "tokens": stats.n_tokens, "dtype": stats.dtype}

    return runner.stage("shards", inputs, work)


def stage_pretrain(runner: Runner, cfg: PipelineConfig, shards: StageResult) -> StageResult:
    sec = dataclasses.replace(cfg.pretrain, shards=str(shards.directory))
    init = cfg.pretrain.init_from
    inputs = {
        "shards": shards.fingerprint,
        "pretrain": {k: v for k, v in asdict(sec).items() if k not in ("shards", "out", "init_from")},
        "model": cfg.model,
        "trainer": trainer_fp(cfg.pretrain_trainer),
        "init_from": file_hash(ck.resolve(init) / ck.WEIGHTS) if init else None,
    }

    def work(d: Path, resume: bool) -> dict:
        sections = {"pretrain": dataclasses.replace(sec, out=str(d)), "model": _model_config_for_record(cfg),
                    "train": dataclasses.replace(cfg.pretrain_trainer)}
        result = pretrain(sections, resume=resume, overwrite=not resume, model_values=dict(cfg.model),
                          source=cfg.source)
        return {"steps": result["step"], "validation": result["validation"]}

    return runner.stage("pretrain", inputs, work, can_continue=has_last_checkpoint)


def stage_contrastive(runner: Runner, cfg: PipelineConfig, shards: StageResult, pretrained: StageResult) -> StageResult:
    """[pretrain.contrastive]: simcse steps on the pretrained body (pretrained/model), on the same shards; its
    model/ is the checkpoint fine-tuning starts from. No heads: the pretraining heads stay in pretrain/model."""
    c = cfg.contrastive
    sec = PretrainSection(shards=str(shards.directory), out="-", max_len=cfg.pretrain.max_len,
                          model_size=cfg.pretrain.model_size, objective="simcse", temperature=c.temperature,
                          views=c.views, init_from=str(pretrained.directory / "model"))
    base = cfg.pretrain_trainer
    trainer = dataclasses.replace(base, max_steps=c.steps, lr=c.lr, batch_size=c.batch_size,
                                  warmup_steps=c.warmup_steps, eval_every=min(base.eval_every, c.steps),
                                  save_every=min(base.save_every, c.steps))
    inputs = {"pretrained": file_hash(pretrained.directory / "model" / ck.WEIGHTS), "contrastive": asdict(c),
              "trainer": trainer_fp(trainer)}

    def work(d: Path, resume: bool) -> dict:
        sections = {"pretrain": dataclasses.replace(sec, out=str(d)), "model": _model_config_for_record(cfg),
                    "train": trainer}
        result = pretrain(sections, resume=resume, overwrite=not resume, source=cfg.source)
        return {"steps": result["step"], "validation": result["validation"]}

    return runner.stage("contrastive", inputs, work, can_continue=has_last_checkpoint)


def _model_config_for_record(cfg: PipelineConfig):
    """pretrain() records asdict() of every section in run.json: give it the preset merged with the overrides."""
    return ModelConfig(**{**PRESETS[cfg.pretrain.model_size], **cfg.model})


def stage_finetune(runner: Runner, cfg: PipelineConfig, name: str, checkpoint: Path, upstream: dict,
                   from_scratch: bool, label_fraction: float | None = None,
                   label_seed: int | None = None, lr: float | None = None) -> StageResult:
    """One fine-tuning run (the pretrained model, or the baseline when from_scratch) in `name`/. The pretrained model
    is self-trained / consistency-trained when [finetune] asks for it; the baseline is always the plain fine-tune.
    `lr` replaces [finetune.trainer] lr (a published checkpoint fine-tuned at its own rate)."""
    sec = dataclasses.replace(cfg.finetune, checkpoint=str(checkpoint), from_scratch=from_scratch)
    if from_scratch:  # a fair baseline: nothing that only makes sense for a pretrained body. freeze -> none (frozen
        # random layers would never learn), layer_lr_decay -> 1 (it shrinks the lr of "general" lower layers, which
        # random layers are not); head_lr stays (the new head is new in both models); the plain fine-tune only
        sec = dataclasses.replace(sec, freeze="none", layer_lr_decay=1.0, self_training_rounds=0, uda_weight=0.0)
    if not sec.self_training_rounds:  # self-training records each round's test metrics; others leave test to evaluate
        sec = dataclasses.replace(sec, test=None)
    if label_fraction is not None:
        sec = dataclasses.replace(sec, label_fraction=label_fraction)
    if label_seed is not None:
        sec = dataclasses.replace(sec, label_seed=label_seed)
    trainer = dataclasses.replace(cfg.finetune_trainer, **({"lr": lr} if lr is not None else {}))
    inputs = {"init": upstream, "from_scratch": from_scratch, "data": labeled_inputs(sec),
              **finetune_fp(sec, trainer)}

    def work(d: Path, resume: bool) -> dict:
        sections = {"finetune": dataclasses.replace(sec, out=str(d)), "train": dataclasses.replace(trainer)}
        r = selftrain.run_finetune(sections, resume=resume, overwrite=not resume, source=cfg.source)
        return {k: r.get(k) for k in ("metric", "best", "validation", "steps", "n_train", "stopped_early",
                                      "self_training")}

    return runner.stage(name, inputs, work,
                        can_continue=selftrain.can_continue if sec.self_training_rounds else has_last_checkpoint)


def stage_evaluate(runner: Runner, cfg: PipelineConfig, models: dict[str, StageResult],
                   name: str = "evaluate") -> StageResult:
    """Every model on the test set: `name`/<model>.json with metrics, confusion/per-type scores, predictions."""
    test = cfg.finetune.test
    inputs = {"test": file_hash(test), "models": {n: s.fingerprint for n, s in models.items()}}

    def work(d: Path, resume: bool) -> dict:
        d.mkdir(parents=True, exist_ok=True)
        device = resolve_device(cfg.run.device)
        scores = {}
        for model, st in models.items():
            loaded = load_task_model(st.directory / "model", device=device)
            report = evaluate_file(loaded, test, batch_size=max(32, cfg.finetune_trainer.batch_size * 2))
            files.write_json(d / f"{_file_name(model)}.json", report)
            scores[model] = headline_metrics(report)
            runner.log(f"  {model}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores[model].items()))
        return {"test": scores, "test_size": _support(report)}

    return runner.stage(name, inputs, work)


def _file_name(model: str) -> str:
    return model.replace("/", "_")


def _support(report: dict) -> int:
    """The number of test examples (sentences for tag/span, where "support" counts entities)."""
    return len(report.get("predictions", []))


def stage_report(runner: Runner, cfg: PipelineConfig, stages: dict[str, StageResult], evaluation: StageResult,
                 sweep_points: list[dict], wall_start: float, comparison: dict | None = None,
                 causal: dict | None = None) -> StageResult:
    """report/report.html (self-contained) and report/summary.json (with the [compare] table, when it ran, and
    the causal-model comparison of a continued-pretrained causal checkpoint, when it ran)."""
    inputs = {"stages": {n: s.fingerprint for n, s in stages.items()}, "config": cfg.to_toml().split("\n", 1)[1],
              "title": cfg.run.title, "examples": cfg.run.examples, "comparison": comparison}
    if causal is not None:  # only then, so that other runs' reports keep their fingerprints
        inputs["causal"] = causal

    def work(d: Path, resume: bool) -> dict:
        d.mkdir(parents=True, exist_ok=True)
        reports = {m: files.read_json(evaluation.directory / f"{m}.json") for m in ("pretrained", "baseline")}
        summary = build_summary(cfg, stages, evaluation, sweep_points)
        summary["comparison"] = comparison
        if causal is not None:
            summary["causal"] = causal
        summary["wall_seconds"] = round(time.perf_counter() - wall_start, 1)
        summary["corpus"] = corpus_statistics(cfg, stages)
        summary["labels"] = label_statistics(cfg.finetune)
        examples, method = build_examples(cfg, stages, reports)
        summary["explain_method"] = method
        search = read_search(stages["tune"].directory) if "tune" in stages else None
        summary["tune"] = search_summary(search) if search else None
        data = ReportData(
            title=cfg.run.title or f"pretune: {cfg.finetune.task} on {Path(cfg.finetune.train).name}",
            summary=summary,
            config_text=cfg.to_toml(),
            pretrain_log=files.read_metrics(stages["pretrain"].directory) if "pretrain" in stages else [],
            finetune_logs={"pretrained": files.read_metrics(stages["finetune"].directory),
                           "baseline": files.read_metrics(stages["baseline"].directory)},
            test_reports=reports,
            examples=examples,
            tune=search,
        )
        path = write_report(d, data)
        files.write_json(d / "summary.json", summary)
        return {"report": str(path)}

    return runner.stage("report", inputs, work)

