"""Stage-2 data: labeled files encoded for a task model (`TaskData`), and running a model over them — shared by
validation, `evaluate`, self-training and `pretune.use.inference.predict`."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pretune.finetune.encode import EncodeStats, task_collate
from pretune.finetune.model import TaskModel
from pretune.finetune.tasks import get_task
from pretune.text.labeled import Example, LabelMap, length_grouped_batches


@dataclass
class TaskData:
    """One labeled file, read and encoded: features point back into examples (feature["example"])."""

    path: Path
    examples: list[Example]
    features: list[dict]
    stats: EncodeStats


def encode_split(path: str | Path | None, examples: list[Example], task: str, tok, labels: LabelMap | None,
                 max_len: int, head_options: dict) -> TaskData:
    features, stats = get_task(task).encode(examples, tok, labels, max_len, head_options, source=path)
    return TaskData(Path(path) if path is not None else Path("<input>"), examples, features, stats)


def length_warnings(data: TaskData, task: str, max_len: int) -> list[str]:
    """Lines to print about texts longer than max_len (classify/pair: truncated; tag/span: split into windows)."""
    return get_task(task).length_warnings(data.stats, data.path, max_len)


def subsample(examples: list[Example], fraction: float, seed: int) -> list[Example]:
    """A stratified `fraction` of the examples, in file order: per stratum (classify/pair: the label; tag/span: the
    example's rarest entity type, or "O" for none) round(fraction x n) examples but at least one, so no class that
    has an example vanishes. Deterministic for (fraction, seed); fraction 1 returns the input unchanged."""
    if fraction >= 1:
        return examples
    strata: dict[str, list[int]] = {}
    for i, key in enumerate(_strata_keys(examples)):
        strata.setdefault(key, []).append(i)
    rng = random.Random(seed)
    keep = [i for key in sorted(strata) for i in rng.sample(strata[key], max(1, round(fraction * len(strata[key]))))]
    return [examples[i] for i in sorted(keep)]


def _entity_types(ex: Example) -> set[str]:
    if ex.spans is not None:
        return {label for _, _, label in ex.spans}
    return {t[2:] if t[1:2] == "-" else t for t in ex.tags or [] if t != "O"}  # B-PER, I-PER -> PER


def _strata_keys(examples: list[Example]) -> list[str]:
    """classify/pair: the label; tag/span: the rarest entity type of the example (fewest examples with it), or O."""
    if all(ex.label is not None for ex in examples):
        return [ex.label for ex in examples]
    types = [_entity_types(ex) for ex in examples]
    count = Counter(t for ts in types for t in ts)
    return [min(ts, key=lambda t: (count[t], t)) if ts else "O" for ts in types]


# ---- running a model over features -----------------------------------------------------------------------------------
def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def run_features(model: TaskModel, features: list[dict], pad_id: int, batch_size: int = 32) -> tuple[list, float]:
    """Decode every feature (length-grouped batches, dynamic padding, outputs in input order) and, when the
    features carry labels, the mean loss per labeled item. Returns (decoded per feature, loss or nan)."""
    device = model_device(model)
    was_training = model.training
    model.eval()
    outputs: list = [None] * len(features)
    loss_sum, loss_n = 0.0, 0
    lengths = [len(f["input_ids"]) for f in features]
    try:
        with torch.inference_mode():
            for idx in length_grouped_batches(lengths, batch_size, shuffle=False, seed=0):
                batch = {k: v.to(device) for k, v in task_collate([features[i] for i in idx], pad_id).items()}
                out = model(**batch)
                for i, row in zip(idx, model.decode(batch, out), strict=True):
                    outputs[i] = row
                if "stats" in out:
                    num, den = out["stats"]["loss"]
                    loss_sum, loss_n = loss_sum + float(num), loss_n + int(den)
    finally:
        model.train(was_training)
    return outputs, (loss_sum / loss_n if loss_n else float("nan"))


def merge_outputs(task: str, labels: list[str], examples: list[Example], features: list[dict], outputs: list) -> list:
    """Per example: classify/pair: probabilities [K]; tag: (tag names, probabilities) per word; span: sorted list
    of (start, end, label, probability) over words. Windows of one sentence are merged back in word order."""
    return get_task(task).merge(labels, examples, features, outputs)


def make_report(task: str, labels: LabelMap, examples: list[Example], merged: list, source=None) -> dict:
    """The task's report (classification_report / entity_report / span_report) over labeled examples."""
    return get_task(task).report(labels, examples, merged, source)


def evaluate_data(model: TaskModel, tok, data: TaskData, batch_size: int = 32) -> tuple[dict, list, float]:
    """(report, merged predictions, mean loss) of a task model on encoded labeled data."""
    outputs, loss = run_features(model, data.features, tok.specials.pad, batch_size)
    merged = model.kind.merge(model.labels, data.examples, data.features, outputs)
    report = model.kind.report(LabelMap(model.labels), data.examples, merged, data.path)
    return report, merged, loss
