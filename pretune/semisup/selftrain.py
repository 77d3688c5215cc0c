"""Self-training on an unlabeled pool: the fine-tuned model labels the pool, its confident predictions join the
training set, and a student is fine-tuned again from the same pretrained checkpoint.

Read top to bottom: choosing pseudo labels (pure functions on fixed predictions) -> writing them, the teacher's
predictions on the pool (read by `pool.labeled_pool`) -> the round loop `self_train` (called by `pretune finetune`
and `pretune run` when self_training_rounds > 0).

Rounds, all under `out/`:

    round-0/              the plain fine-tune (`finetune()`): the first teacher
    pseudo-round-N.jsonl  the pool items the teacher of round N labelled confidently (with each "confidence")
    round-N/              the student of round N, fine-tuned from the pretrained checkpoint on the gold examples
                          (the same subset as round 0) plus pseudo-round-N.jsonl
    model/, metrics.jsonl, test_report.json    copies of the kept round's (what `evaluate`, `predict` and the
                          pipeline use)
    self_training.json    every round: pseudo-label counts, validation and test metrics, kept or not

The teacher of round N is the best round so far. A round is kept when its best validation metric beats the best so
far (strictly); the first round that does not is discarded and ends self-training: the next round would start from
the same teacher, hence with the same pseudo labels. Test metrics are recorded for every round but never decide.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from pretune import files
from pretune.config import NEUTRAL_KEYS, without_keys
from pretune.errors import InputError
from pretune.evaluate.metrics import headline_metrics
from pretune.finetune.data import encode_split, merge_outputs, run_features
from pretune.finetune.model import load_task_model
from pretune.finetune.stage import finetune
from pretune.finetune.tasks import get_task
from pretune.interop.hf import open_checkpoint
from pretune.semisup import consistency
from pretune.semisup.pool import labeled_pool
from pretune.text.labeled import Example
from pretune.training import distributed as dist
from pretune.training.config import resolve_device
from pretune.training.outdir import prepare_out_dir


# ---- choosing pseudo labels ------------------------------------------------------------------------------------------
def select_confident(confidence: Sequence[float], classes: Sequence[int], threshold: float | None = None,
                     top_k: int | None = None) -> list[tuple[int, int, float]]:
    """(index, class, confidence) of the items to pseudo-label, most confident first (ties: lower index first).

    `threshold`: keep items with confidence >= threshold. `top_k`: at most k items per class (the most confident
    ones), so a frequent class cannot crowd out the others. Both may be given; None (or 0) turns either off."""
    conf = np.asarray(confidence, dtype=np.float64)
    if conf.shape != (len(classes),):
        raise ValueError(f"confidence has shape {conf.shape}, expected ({len(classes)},)")
    order = sorted(range(len(conf)), key=lambda i: (-conf[i], i))
    taken: Counter = Counter()
    picked = []
    for i in order:
        if threshold and conf[i] < threshold:
            break  # sorted: every later item is below too
        c = int(classes[i])
        if top_k and taken[c] >= top_k:
            continue
        taken[c] += 1
        picked.append((i, c, float(conf[i])))
    return picked


def select_pseudo_labels(probs: np.ndarray, threshold: float | None = None,
                         top_k: int | None = None) -> list[tuple[int, int, float]]:
    """Pseudo labels from class probabilities [N, C]: each item's most probable class and its probability as the
    confidence, filtered by `select_confident` (threshold, top_k per class)."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] == 0:
        raise ValueError(f"probabilities must be [N, C], got shape {probs.shape}")
    if len(probs) == 0:
        return []
    return select_confident(probs.max(1), probs.argmax(1), threshold, top_k)


def pseudo_label(task: str, labels: list[str], pool: list[Example], merged: list, threshold: float | None,
                 top_k: int | None, tag_confidence: str = "mean") -> list[tuple[Example, float]]:
    """Pool examples with the teacher's labels filled in, and their confidence, most confident first.

    `merged` is the teacher's output per pool example (`finetune.data.merge_outputs`); the task says how confident
    each is and which class a per-class cap counts it against (tagging: `top_k` caps the number of sentences)."""
    kind = get_task(task)
    confidence = [kind.confidence(m, tag_confidence) for m in merged]
    chosen = select_confident(confidence, [kind.pseudo_class(m) for m in merged], threshold, top_k)
    return [(kind.pseudo_labeled(pool[i], labels, merged[i]), p) for i, _, p in chosen]


# ---- pseudo labels on disk, the teacher's predictions ----------------------------------------------------------------
def write_pseudo_labels(path: Path, task: str, fields: dict, pseudo: list[tuple[Example, float]]) -> None:
    """JSONL of pseudo-labelled examples, readable by `read_examples` with `fields` (plus their "confidence")."""
    kind = get_task(task)
    rows = [{**kind.record(ex, fields), "confidence": round(p, 6)} for ex, p in pseudo]
    files.write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def predict_pool(model_dir: Path, pool: list[Example], batch_size: int, device: str) -> tuple[list[str], list]:
    """(label names, the teacher's merged output per pool example) of a fine-tuned checkpoint."""
    model, tok, conf = load_task_model(model_dir, device=resolve_device(device))
    data = encode_split(None, pool, model.task, tok, None, conf.get("max_len", 128), model.head_options)
    outputs, _ = run_features(model, data.features, tok.specials.pad, batch_size)
    return list(model.labels), merge_outputs(model.task, model.labels, pool, data.features, outputs)


# ---- the rounds ------------------------------------------------------------------------------------------------------
RECORD = "self_training.json"
RESULT_FILES = ("metrics.jsonl", "test_report.json")


def _improves(value, best, greater: bool) -> bool:
    if value is None:
        return False
    return best is None or (value > best if greater else value < best)


def _prepare(out: Path, run_record: dict, resume: bool, overwrite: bool) -> list[dict]:
    """Make `out` ready; returns the rounds already finished (with --resume), else []."""
    if not resume:
        prepare_out_dir(out, run_record, resume=False, overwrite=overwrite)
        files.write_json(out / "run.json", run_record)
        return []
    if not (out / "run.json").is_file():
        raise InputError("--resume: no self-training run here (no run.json)", path=out)
    old = files.read_json(out / "run.json")
    if without_keys(old, NEUTRAL_KEYS) != without_keys(run_record, NEUTRAL_KEYS):
        raise InputError("--resume: this directory holds a run with a different config; use the same config or "
                         "another --out", path=out)
    return files.read_json(out / RECORD)["rounds"] if (out / RECORD).is_file() else []


def can_continue(out: Path) -> bool:
    """A self-training run interrupted in `out` can continue (`self_train(resume=True)`): finished rounds are
    reused and an unfinished one continues from its own last/ checkpoint."""
    return (out / "run.json").is_file() and (out / "round-0").is_dir()


def _install_result(out: Path, round_dir: Path) -> None:
    """out/model, metrics.jsonl, test_report.json := the kept round's."""
    def fill(tmp: Path) -> None:
        for f in (round_dir / "model").iterdir():
            shutil.copy2(f, tmp / f.name)

    files.write_dir_atomic(out / "model", fill)
    for name in RESULT_FILES:
        (out / name).unlink(missing_ok=True)
        if (round_dir / name).is_file():
            shutil.copy2(round_dir / name, out / name)


def self_train(sections: dict, resume: bool = False, overwrite: bool = False, source=None) -> dict:
    """Fine-tune, then self-train for [finetune] self_training_rounds rounds (see the module docstring).

    Returns what `finetune()` returns for the kept round (n_train: the gold examples), plus "self_training": the
    content of out/self_training.json."""
    sec = sections["finetune"].validate(source)
    tcfg = sections["train"].validate(source)
    if sec.self_training_rounds < 1:
        raise InputError("self_training_rounds must be >= 1 for self-training", path=source)
    if dist.world_size() > 1:
        raise InputError("self-training runs in one process: start it without torchrun (consistency training, "
                         "uda_weight, works under torchrun)")
    open_checkpoint(sec.checkpoint)  # a bad --from fails here, before `out` is touched
    gold, pool, pool_info = labeled_pool(sec, tcfg.seed)
    out = Path(sec.out)
    rounds = _prepare(out, {"finetune": asdict(sec), "train": asdict(tcfg)}, resume, overwrite)
    metric = sec.metric_name()
    greater = metric != "loss"
    per_word = get_task(sec.task).per_word
    record = {"metric": metric, "greater_is_better": greater, "threshold": sec.pseudo_threshold or None,
              "top_k": sec.pseudo_top_k or None, "tag_confidence": sec.tag_confidence if per_word else None,
              "n_gold": len(gold), "pool": pool_info, "rounds": rounds}
    results: dict[int, dict] = {}
    kept = max((r["round"] for r in rounds if r["kept"]), default=None)  # the teacher: the best round so far
    best = next((r["validation"] for r in rounds if r["round"] == kept), None)
    # with --resume: go on after the finished rounds, unless one was discarded (that ended self-training)
    first = len(rounds) if all(r["kept"] for r in rounds) else sec.self_training_rounds + 1
    for n in range(first, sec.self_training_rounds + 1):
        d = out / f"round-{n}"
        round_sec = dataclasses.replace(sec, out=str(d), self_training_rounds=0)
        row: dict = {"round": n, "teacher": kept, "n_gold": len(gold), "n_pseudo": 0}
        if n > 0:
            labels, merged = predict_pool(out / f"round-{kept}" / "model", pool, tcfg.batch_size * 2, tcfg.device)
            chosen = pseudo_label(sec.task, labels, pool, merged, sec.pseudo_threshold, sec.pseudo_top_k,
                                  sec.tag_confidence)
            row["n_pseudo"] = len(chosen)
            if not per_word:
                row["pseudo_per_label"] = dict(sorted(Counter(ex.label for ex, _ in chosen).items()))
            if not chosen:
                rounds.append({**row, "kept": False, "note": "no pool item passed the confidence threshold"})
                break
            pseudo_file = out / f"pseudo-round-{n}.jsonl"
            write_pseudo_labels(pseudo_file, sec.task, sec.fields(), chosen)
            round_sec = dataclasses.replace(round_sec, pseudo_labels=str(pseudo_file))
        if dist.is_main():
            print(f"self-training round {n}" + (f": {row['n_pseudo']} pseudo labels from round {kept}" if n else
                                                 ": the plain fine-tune (first teacher)"))
        again = resume and (d / "last").is_dir()
        res = finetune({"finetune": round_sec, "train": dataclasses.replace(tcfg)}, resume=again,
                       overwrite=not again, source=source, consistency=consistency.from_section)
        results[n] = res
        for name in ("last", "best"):  # model/ is the round's result; the rest only served resuming
            shutil.rmtree(d / name, ignore_errors=True)
        improved = n == 0 or _improves(res["best"], best, greater)
        row.update(validation=res["best"], validation_metrics=res["validation"], steps=res["steps"],
                   test=headline_metrics(res["test"]) if res["test"] else None, kept=improved)
        rounds.append(row)
        files.write_json(out / RECORD, record)
        if not improved:
            break
        kept, best = n, res["best"]
    record["kept_round"] = kept
    files.write_json(out / RECORD, record)
    _install_result(out, out / f"round-{kept}")
    final = next(r for r in rounds if r["round"] == kept)
    test = files.read_json(out / "test_report.json") if (out / "test_report.json").is_file() else None
    return {"out": str(out), "metric": metric, "best": final["validation"], "validation": final["validation_metrics"],
            "test": test, "steps": final["steps"], "n_train": len(gold), "n_pseudo": final["n_pseudo"],
            "stopped_early": results[kept]["stopped_early"] if kept in results else None,
            "warnings": [w for r in results.values() for w in r["warnings"]], "self_training": record}


def run_finetune(sections: dict, resume: bool = False, overwrite: bool = False, source=None) -> dict:
    """Fine-tune as the sections ask: self-trained when [finetune] self_training_rounds > 0, with the consistency
    term when uda_weight > 0, else plainly."""
    if sections["finetune"].self_training_rounds > 0:
        return self_train(sections, resume=resume, overwrite=overwrite, source=source)
    return finetune(sections, resume=resume, overwrite=overwrite, source=source,
                    consistency=consistency.from_section)


def format_rounds(record: dict) -> str:
    """The rounds of a self-training record as a terminal table (validation and test gain over round 0)."""
    metric, rounds = record.get("metric", "?"), record.get("rounds", [])
    first = rounds[0] if rounds else {}
    test_key = metric if metric in (first.get("test") or {}) else next(iter(first.get("test") or {}), None)
    lines = [f"self-training ({record.get('n_gold', '?')} gold labels, pool of "
             f"{record.get('pool', {}).get('used', '?')}): validation {metric}"
             + (f", test {test_key}" if test_key else ""),
             f"{'round':>5}  {'pseudo':>7}  {'validation':>10}  {'gain':>8}  {'test':>8}  {'gain':>8}  kept"]
    for r in rounds:
        val, test = r.get("validation"), (r.get("test") or {}).get(test_key) if test_key else None
        val0, test0 = first.get("validation"), (first.get("test") or {}).get(test_key) if test_key else None

        def cell(v, width=8, sign=False):
            return f"{v:>+{width}.4f}" if sign and v is not None else f"{v:>{width}.4f}" if v is not None else \
                f"{'-':>{width}}"

        lines.append(f"{r['round']:>5}  {r.get('n_pseudo', 0):>7}  {cell(val, 10)}  "
                     f"{cell(val - val0 if None not in (val, val0) else None, sign=True)}  {cell(test)}  "
                     f"{cell(test - test0 if None not in (test, test0) else None, sign=True)}  "
                     f"{'yes' if r.get('kept') else 'no'}{'  (' + r['note'] + ')' if r.get('note') else ''}")
    return "\n".join(lines)
