"""Stage 2: fine-tune a pretrained body with a new task head (classify, pair, tag, span), evaluate it.

`finetune()` reads and checks everything, builds the `TaskModel` and runs `pretune.training.trainer.Trainer`, the
same loop pretraining uses; `evaluate_file` scores a fine-tuned model on a labeled file. The tasks themselves are
`pretune.finetune.tasks`; settings `.config`, model `.model`, data `.data`, subcommands `.cli`.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pretune import files
from pretune.errors import InputError
from pretune.finetune.config import FinetuneSection, FinetuneTrainConfig
from pretune.finetune.data import (
    encode_split,
    evaluate_data,
    length_warnings,
    subsample,
)
from pretune.finetune.encode import task_collate
from pretune.finetune.ensemble import finetune_ensemble
from pretune.finetune.genes import with_decode
from pretune.finetune.model import (
    TaskModel,
    apply_freeze,
    build_param_groups,
    load_initial_weights,
    load_task_model,
    task_config,
)
from pretune.finetune.tasks import get_task, predictions_json
from pretune.interop.hf import open_checkpoint
from pretune.model.transformer import describe
from pretune.text.labeled import LabelMap, length_grouped_batches, read_examples
from pretune.text.sequences import parse_label_map, reverse_complement, strand_swap
from pretune.training import checkpoint as ck
from pretune.training import distributed as dist
from pretune.training.batches import BatchSource
from pretune.training.config import resolve_device, seed_everything
from pretune.training.outdir import prepare_out_dir
from pretune.training.trainer import EarlyStopping, Trainer

ConsistencyBuilder = Callable[..., tuple]  # (sec, tok, exclude examples, batch_size, seed) -> (term, pool info)


def _best_validation(out: Path, metric: str, greater: bool) -> dict:
    """The validation record of out/metrics.jsonl with the best `metric` ({} when there is none)."""
    best: dict = {}
    for rec in files.read_metrics(out):
        if rec.get("split") != "validation" or metric not in rec:
            continue
        if not best or (rec[metric] > best[metric] if greater else rec[metric] < best[metric]):
            best = rec
    return best


def finetune(sections: dict, resume: bool = False, overwrite: bool = False, source=None,
             on_evaluate=None, consistency: ConsistencyBuilder | None = None) -> dict:
    """Run stage 2 from resolved sections {"finetune": FinetuneSection, "train": TrainConfig}.

    Everything the user gave is read and checked (checkpoint, tokenizer, files, labels) before `out` is touched.
    Writes out/model (best checkpoint by validation), out/metrics.jsonl, out/test_report.json (with a test file).
    `on_evaluate(step, metrics)` is called after every validation (it may raise to stop the run).
    `consistency(sec, tok, exclude, batch_size, seed) -> (term, pool info)` builds the consistency term (UDA) that
    [finetune] uda_weight > 0 asks for, e.g. `pretune.semisup.consistency.from_section`; the term adds unlabeled rows
    to each batch (`batch`), takes them out (`split`), scores them (`loss`) and says when it had no effect
    (`idle_warning`).
    Returns {"out", "metric", "best", "validation", "test", "steps", "n_train", "stopped_early", "warnings"}."""
    sec: FinetuneSection = sections["finetune"].validate(source)
    tcfg = sections["train"]
    tcfg.validate(source)
    if sec.ensemble > 1:  # K fine-tunes of this function, their probabilities averaged
        return finetune_ensemble(sections, finetune, evaluate_file, resume=resume, overwrite=overwrite, source=source,
                                 on_evaluate=on_evaluate, consistency=consistency)
    task, kind = sec.task, get_task(sec.task)
    if sec.uda_weight > 0 and consistency is None:
        raise ValueError("uda_weight > 0 needs the consistency term: pass consistency= (e.g. "
                         "pretune.semisup.consistency.from_section)")
    seed_everything(tcfg.seed)

    init = open_checkpoint(sec.checkpoint)
    tok = init.tokenizer()
    cfg = init.model_config()
    if sec.dropout is not None:  # a training-time setting: the fine-tuned checkpoint records it, nothing else changes
        cfg = dataclasses.replace(cfg, dropout=sec.dropout, attention_dropout=sec.dropout)
    sec = sec.resolve_pooling(cfg.causal)
    head_options = sec.head_options()
    if tok.vocab_size > cfg.vocab_size:
        raise InputError(f"the tokenizer has {tok.vocab_size} tokens but the model only {cfg.vocab_size}",
                         path=init.path)
    if sec.max_len > cfg.max_positions:
        raise InputError(f"max_len {sec.max_len} is beyond the checkpoint's {cfg.max_positions} positions",
                         path=source)

    train_ex = read_examples(sec.train, task, **sec.fields())
    labels = LabelMap.from_examples(train_ex, task, sec.train, order=sec.label_order())
    val_ex = read_examples(sec.validation, task, **sec.fields())
    test_ex = read_examples(sec.test, task, **sec.fields()) if sec.test else None
    train_ex = subsample(train_ex, sec.label_fraction, sec.label_seed)
    if sec.pseudo_labels:
        train_ex = train_ex + read_examples(sec.pseudo_labels, task, **sec.fields())
    if sec.reverse_complement:  # seqtag: the other strand of every training sequence too
        swap = strand_swap(parse_label_map(sec.label_map))
        train_ex = train_ex + [dataclasses.replace(ex, text=seq, tags=tags) for ex in train_ex
                               for seq, tags in [reverse_complement(ex.text or "", ex.tags, swap)]]
    train = encode_split(sec.train, train_ex, task, tok, labels, sec.max_len, head_options)
    val = encode_split(sec.validation, val_ex, task, tok, labels, sec.max_len, head_options)
    test = encode_split(sec.test, test_ex, task, tok, labels, sec.max_len, head_options) if test_ex else None
    warnings = [w for d in (train, val, test) if d is not None for w in length_warnings(d, task, sec.max_len)]
    uda = pool_info = None
    if sec.uda_weight > 0:  # consistency training on the unlabeled pool
        uda, pool_info = consistency(sec, tok, train_ex + val_ex + (test_ex or []), tcfg.batch_size, tcfg.seed)

    model = TaskModel(cfg, task, labels.names, head_options)
    loaded = "nothing (from scratch)" if sec.from_scratch else load_initial_weights(model, init, head_options)
    frozen = apply_freeze(model, sec.freeze)
    groups = build_param_groups(model, tcfg.lr, sec.head_lr, tcfg.weight_decay, sec.layer_lr_decay,
                                sec.head_warmup_steps)
    if not groups:
        raise InputError("nothing to train: every parameter is frozen")

    pad_id = tok.specials.pad
    global_batch = tcfg.batch_size * dist.world_size()
    lengths = [len(f["input_ids"]) for f in train.features]

    def plan(epoch: int) -> list[list[int]]:
        seed = int(np.random.SeedSequence([tcfg.seed, epoch]).generate_state(1)[0])
        return [b for b in length_grouped_batches(lengths, global_batch, shuffle=True, seed=seed)
                if len(b) >= dist.world_size()]

    def collate(items: list[dict], gen: torch.Generator) -> dict:
        batch = task_collate(items, pad_id)
        return batch if uda is None else {**batch, **uda.batch(gen)}  # + unlabeled rows drawn with the batch's seed

    batches = BatchSource(train.features, tcfg.batch_size, collate, seed=tcfg.seed, plan=plan)
    steps_per_epoch = max(1, len(plan(0)) // tcfg.grad_accum)
    run_cfg = tcfg
    if isinstance(tcfg, FinetuneTrainConfig):  # epochs (raised to the floor of min_steps) -> steps
        run_cfg = tcfg.resolve(steps_per_epoch, sec.epochs, sec.min_steps)

    out = Path(sec.out)
    if out.resolve() == init.path.resolve() or out.resolve() in init.path.resolve().parents:
        raise InputError("--out holds the checkpoint being fine-tuned; choose another directory", path=out)
    run_record = {"finetune": asdict(sec), "train": asdict(tcfg)}
    resolve_device(tcfg.device)  # an unavailable device is refused before --overwrite clears anything
    resume = prepare_out_dir(out, run_record, resume, overwrite)
    extra = {"fields": sec.fields(), "base_checkpoint": str(init.path), "from_scratch": sec.from_scratch}
    config = task_config(model, sec.max_len, extra)
    if dist.is_main():
        for w in warnings:
            print(f"pretune: warning: {w}", file=sys.stderr)
        print(f"{task}: {len(labels)} labels, {len(train_ex)} training examples ({len(train.features)} inputs), "
              f"{steps_per_epoch} steps per epoch, {run_cfg.max_steps} steps evaluated every {run_cfg.eval_every}; "
              f"weights loaded: {loaded}; frozen tensors: {len(frozen)}")
        if pool_info is not None:
            print(f"consistency training (UDA, weight {sec.uda_weight:g}) on {pool_info['used']} unlabeled items "
                  f"({pool_info['dropped_duplicates']} repeated or labeled texts dropped)")
        print(describe(cfg, model.body.num_parameters()))

    metric = sec.metric_name()
    greater = metric != "loss"

    def evaluate(m: nn.Module) -> dict[str, float]:
        report, _, loss = evaluate_data(m, tok, val, tcfg.batch_size * 2)
        return kind.scalar_metrics(report, loss)

    def loss_fn(m: nn.Module, batch: dict):
        if uda is None:
            res = m(**batch)
            return res["loss"], res["stats"]
        labeled, unlabeled = uda.split(batch)
        res = m(**labeled)
        uda_loss, uda_stats = uda.loss(m, unlabeled)
        return res["loss"] + uda_loss, {**res["stats"], **uda_stats}

    trainer = Trainer(model, run_cfg, out, batches=batches, loss_fn=loss_fn,
                      save_model=ck.model_writer(config, tok), evaluate=evaluate,
                      groups=groups, early_stopping=EarlyStopping(metric, greater, sec.patience or None, sec.min_steps),
                      loss_weight=kind.loss_weight(sec.crf), on_evaluate=on_evaluate, run_record=run_record)
    result = trainer.fit(resume=resume)
    idle = uda.idle_warning() if uda is not None and dist.is_main() else None
    if idle:
        warnings.append(idle)
        print(f"pretune: warning: {idle}", file=sys.stderr)

    test_report = None
    if test is not None and dist.is_main():
        best_model, _, _ = load_task_model(out / "model", device=trainer.device)
        report, merged, _ = evaluate_data(best_model, tok, test, tcfg.batch_size * 2)
        test_report = {**report, "predictions": predictions_json(task, labels.names, merged)}
        files.write_json(out / "test_report.json", test_report)
    return {
        "out": str(out),
        "metric": metric,
        "best": result["best"],
        "validation": _best_validation(out, metric, greater) if dist.is_main() else result["validation"],
        "test": test_report,
        "steps": result["step"],
        "n_train": len(train_ex),
        "stopped_early": result["stopped_early"],
        "warnings": warnings,
    }


def evaluate_file(checkpoint, data: str | Path, batch_size: int = 32, decode: str | dict | None = None) -> dict:
    """Evaluate a fine-tuned checkpoint (a path, or a (model, tokenizer, config) tuple) on a labeled file.
    seqtag: `decode` replaces the model's decoder (see `pretune.finetune.genes.with_decode`; None keeps it).

    Returns the task's report plus "predictions" (one per example, as `pretune predict` writes them)."""
    model, tok, conf = checkpoint if isinstance(checkpoint, tuple) else load_task_model(checkpoint)
    head_options = with_decode(model.head_options, model.task, decode)
    fields = conf.get("fields") or {}
    examples = read_examples(data, model.task, **fields)
    data_ = encode_split(data, examples, model.task, tok, LabelMap(model.labels), conf.get("max_len", 128),
                         head_options)
    for w in length_warnings(data_, model.task, conf.get("max_len", 128)):
        print(f"pretune: warning: {w}", file=sys.stderr)
    report, merged, _ = evaluate_data(model, tok, data_, batch_size)
    partner = getattr(model, "tfidf_partner", None)
    if partner is not None:  # a served blend: score the average with TF-IDF + LR, not the network alone
        merged = partner.blend(data_.examples, merged, model.labels)
        report = {**model.kind.report(LabelMap(model.labels), data_.examples, merged, data),
                  "blend_weight": partner.weight}  # the network's share; TF-IDF + LR has the rest
    return {**report, "predictions": predictions_json(model.task, model.labels, merged)}
