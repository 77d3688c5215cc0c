"""Stage 2: fine-tune a pretrained body with a new task head (classify, pair, tag, span), evaluate it.

Read top to bottom: configs -> the task model -> freezing and learning rates -> data -> running a model over
features (shared by validation, `evaluate` and `pretune.use.inference.predict`) -> checkpoints -> `finetune` -> CLI.
The training loop is `pretune.training.trainer.Trainer`, the same one pretraining uses.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pretune import files
from pretune.errors import InputError
from pretune.evaluate.metrics import classification_report, entity_report, format_report, span_report
from pretune.interop.hf import open_checkpoint
from pretune.model.heads import ClassificationHead, SpanHead, TokenClassificationHead
from pretune.model.transformer import ModelConfig, Transformer, describe, init_weights
from pretune.text.labeled import (
    IGNORE,
    TASKS,
    EncodeStats,
    Example,
    LabelMap,
    collate,
    encode_examples,
    length_grouped_batches,
    read_examples,
)
from pretune.training import checkpoint as ck
from pretune.training import distributed as dist
from pretune.training.batches import BatchSource, label_count, row_count
from pretune.training.config import TrainConfig, seed_everything
from pretune.training.outdir import prepare_out_dir
from pretune.training.trainer import EarlyStopping, Trainer

METRICS = {
    "classify": ("accuracy", "macro_f1", "micro_f1", "loss"),
    "pair": ("accuracy", "macro_f1", "micro_f1", "loss"),
    "tag": ("f1", "precision", "recall", "loss"),
    "span": ("f1", "precision", "recall", "loss"),
}
_FREEZE_RE = re.compile(r"^(none|embeddings|body|all-but-last-(\d+))$")


# ---- configs ---------------------------------------------------------------------------------------------------------
@dataclass
class FinetuneSection:
    """[finetune] keys (also accepted at the top level of the TOML file)."""

    task: str = field(default="", metadata={"help": "classify | pair | tag | span"})
    checkpoint: str = field(default="", metadata={"flag": False})  # --from / --checkpoint, added by register_cli
    train: str = field(default="", metadata={"help": "labeled training file"})
    validation: str = field(default="", metadata={"help": "labeled validation file (early stopping, best model)"})
    test: str | None = field(default=None, metadata={"help": "labeled test file, evaluated with the best model"})
    out: str = field(default="", metadata={"help": "run directory (metrics.jsonl, model/, test_report.json)"})
    text_field: str | None = field(default=None, metadata={"help": "text column (default: text; pair: text_a)"})
    text_b_field: str = field(default="text_b", metadata={"help": "pair: second text column"})
    label_field: str = field(default="label", metadata={"help": "label column"})
    max_len: int = field(default=128, metadata={"help": "subwords per input incl. [CLS]/[SEP]"})
    epochs: int = 10
    freeze: str = field(default="none", metadata={"help": "none | embeddings | body | all-but-last-N"})
    head_lr: float = field(default=1e-3, metadata={"help": "learning rate of the new head (the body uses --lr)"})
    layer_lr_decay: float = field(default=1.0, metadata={"help": "lr of layer l = lr * decay^(layers - l)"})
    metric: str = field(default="auto", metadata={"help": "early-stopping metric (auto: accuracy / f1)"})
    patience: int = field(default=3, metadata={"help": "epochs without gain before stopping (0: never stop)"})
    crf: bool = field(default=False, metadata={"help": "tag: CRF layer (Viterbi decoding, valid BIO only)"})
    all_subwords: bool = field(default=False, metadata={"help": "tag: every subword of a word gets its label"})
    max_span_width: int = field(default=8, metadata={"help": "span: widest candidate span, in words"})
    label_fraction: float = field(default=1.0, metadata={"help": "train on this random fraction of the labels"})
    label_seed: int = 0
    from_scratch: bool = field(default=False, metadata={"help": "random init of the same architecture (baseline)"})
    # semi-supervised: an unlabeled pool for self-training (pretune.semisup.selftrain) and consistency training (UDA)
    unlabeled: list[str] = field(default_factory=list, metadata={
        "help": "unlabeled pool (comma-separated files): .txt/.txt.gz lines, or CSV/JSONL with the text field(s)"})
    pool_size: int = field(default=20000, metadata={"help": "use at most this many pool items, sampled (0: all)"})
    self_training_rounds: int = field(default=0, metadata={"help": "self-training rounds after the fine-tune (0: off)"})
    pseudo_threshold: float = field(default=0.9, metadata={"help": "pseudo-label items this confident (0: any)"})
    pseudo_top_k: int = field(default=0, metadata={"help": "at most this many pseudo labels per class (0: no cap)"})
    tag_confidence: str = field(default="mean", metadata={"help": "tag: sentence confidence, mean | min over words"})
    uda_weight: float = field(default=0.0, metadata={"help": "weight of the UDA consistency loss (0: off)"})
    uda_temperature: float = field(default=0.4, metadata={"help": "UDA: sharpening temperature of the target"})
    uda_threshold: float = field(default=0.8, metadata={"help": "UDA: only items predicted this confidently count"})
    uda_mask_prob: float = field(default=0.15, metadata={"help": "UDA noise: fraction of tokens replaced by [MASK]"})
    uda_batch_size: int = field(default=0, metadata={"help": "UDA: unlabeled items per batch (0: --batch-size)"})
    pseudo_labels: str | None = field(default=None, metadata={"flag": False})  # set by self-training: a file of
    # pseudo-labelled examples (format of `train`) added to the training subset; the label map stays train's

    def validate(self, source: str | None = None) -> FinetuneSection:
        def bad(msg: str) -> InputError:
            return InputError(f"[finetune] {msg}", path=source)

        if self.task not in TASKS:
            raise bad(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        for name, what in (("checkpoint", "the pretrained checkpoint (--from)"), ("train", "the training file"),
                           ("validation", "the validation file"), ("out", "the run directory to write")):
            if not getattr(self, name):
                raise bad(f"{name} is required: {what}")
        if self.max_len < 8:
            raise bad(f"max_len must be >= 8, got {self.max_len}")
        if self.epochs < 1:
            raise bad(f"epochs must be >= 1, got {self.epochs}")
        if not _FREEZE_RE.match(self.freeze):
            raise bad(f"freeze must be none, embeddings, body or all-but-last-N (e.g. all-but-last-2), "
                      f"got {self.freeze!r}")
        if self.head_lr <= 0:
            raise bad(f"head_lr must be > 0, got {self.head_lr}")
        if not 0 < self.layer_lr_decay <= 1:
            raise bad(f"layer_lr_decay must be in (0, 1], got {self.layer_lr_decay}")
        if self.metric != "auto" and self.metric not in METRICS[self.task]:
            raise bad(f"metric for task {self.task} must be auto or one of {METRICS[self.task]}, got {self.metric!r}")
        if self.patience < 0:
            raise bad(f"patience must be >= 0, got {self.patience}")
        if self.crf and self.task != "tag":
            raise bad("crf applies to task tag only")
        if self.crf and self.all_subwords:
            raise bad("crf scores word sequences (first subwords); it cannot be combined with all_subwords")
        if self.max_span_width < 1:
            raise bad(f"max_span_width must be >= 1, got {self.max_span_width}")
        if not 0 < self.label_fraction <= 1:
            raise bad(f"label_fraction must be in (0, 1], got {self.label_fraction}")
        self._validate_semi_supervised(bad)
        return self

    def _validate_semi_supervised(self, bad) -> None:
        for name in ("pool_size", "self_training_rounds", "pseudo_top_k", "uda_batch_size"):
            if getattr(self, name) < 0:
                raise bad(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("pseudo_threshold", "uda_threshold"):
            if not 0 <= getattr(self, name) <= 1:
                raise bad(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.tag_confidence not in ("mean", "min"):
            raise bad(f"tag_confidence must be mean or min, got {self.tag_confidence!r}")
        if self.uda_weight < 0:
            raise bad(f"uda_weight must be >= 0 (0: off), got {self.uda_weight}")
        if self.uda_temperature <= 0:
            raise bad(f"uda_temperature must be > 0, got {self.uda_temperature}")
        if not 0 <= self.uda_mask_prob < 1:
            raise bad(f"uda_mask_prob must be in [0, 1), got {self.uda_mask_prob}")
        if self.semi_supervised():
            if self.task == "span":
                raise bad("self-training and uda support the tasks classify, pair and tag, not span")
            if not self.unlabeled:
                raise bad("unlabeled is required with self_training_rounds or uda_weight: the pool of unlabeled "
                          "text (--unlabeled FILE)")

    def semi_supervised(self) -> bool:
        """Whether the unlabeled pool is used (self-training or consistency training)."""
        return self.self_training_rounds > 0 or self.uda_weight > 0

    SEMI_SUPERVISED_KEYS = ("unlabeled", "pool_size", "self_training_rounds", "pseudo_threshold", "pseudo_top_k",
                            "tag_confidence", "uda_weight", "uda_temperature", "uda_threshold", "uda_mask_prob",
                            "uda_batch_size", "pseudo_labels")  # without effect unless semi_supervised()

    def metric_name(self) -> str:
        return METRICS[self.task][0] if self.metric == "auto" else self.metric

    def head_options(self) -> dict:
        if self.task == "tag":
            return {"crf": self.crf, "all_subwords": self.all_subwords}
        if self.task == "span":
            return {"max_span_width": self.max_span_width}
        return {}

    def fields(self) -> dict:
        return {"text_field": self.text_field, "text_b_field": self.text_b_field, "label_field": self.label_field}


@dataclass
class FinetuneTrainConfig(TrainConfig):
    """[train] for fine-tuning: the same keys with fine-tuning defaults. max_steps is a cap on epochs x batches
    (unset: no cap); eval_every and save_every default to once per epoch."""

    max_steps: int | None = field(default=None, metadata={"help": "cap on optimizer steps (default: epochs)"})
    batch_size: int = 16
    lr: float = field(default=2e-5, metadata={"help": "learning rate of the pretrained body"})
    eval_every: int | None = field(default=None, metadata={"help": "steps between evaluations (default: an epoch)"})
    save_every: int | None = field(default=None, metadata={"help": "steps between checkpoints (default: an epoch)"})

    def validate(self, source: str | None = None) -> FinetuneTrainConfig:
        probe = {name: getattr(self, name) or 1 for name in ("max_steps", "eval_every", "save_every")}
        TrainConfig.validate(dataclasses.replace(self, **probe), source)
        return self

    def resolve(self, steps_per_epoch: int, epochs: int) -> TrainConfig:
        """A plain TrainConfig with the per-epoch defaults filled in."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)}
        total = epochs * steps_per_epoch
        values["max_steps"] = min(total, self.max_steps) if self.max_steps else total
        values["eval_every"] = self.eval_every or steps_per_epoch
        values["save_every"] = self.save_every or steps_per_epoch
        return TrainConfig(**values).validate()


SECTIONS = {"finetune": FinetuneSection, "train": FinetuneTrainConfig}


# ---- the task model --------------------------------------------------------------------------------------------------
class TaskModel(nn.Module):
    """The Transformer `body` plus one task `head` (state-dict keys body.*, head.*).

    forward(**batch) returns {"logits"} plus {"loss", "stats"} when the batch has labels; `decode(batch)` turns a
    batch into predictions."""

    def __init__(self, cfg: ModelConfig, task: str, labels: list[str], head_options: dict | None = None):
        super().__init__()
        if task not in TASKS:
            raise InputError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
        self.config, self.task, self.labels = cfg, task, list(labels)
        self.head_options = dict(head_options or {})
        self.body = Transformer(cfg)
        k = len(labels)
        if task in ("classify", "pair"):
            self.head: nn.Module = ClassificationHead(cfg, k)
        elif task == "tag":
            self.head = TokenClassificationHead(cfg, k, crf=bool(self.head_options.get("crf")), labels=self.labels)
        else:
            self.head = SpanHead(cfg, k, max_span_width=int(self.head_options.get("max_span_width", 8)))
        self.head.apply(init_weights)

    @property
    def crf(self):
        return getattr(self.head, "crf", None)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, word_index=None,
                word_mask=None, span_index=None, span_mask=None, span_width=None, span_labels=None) -> dict:
        hidden = self.body(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state
        if self.task in ("classify", "pair"):
            positions = None
            if self.config.causal:  # a left-to-right body has seen the whole input only at its last token
                positions = (attention_mask.long().sum(1) - 1) if attention_mask is not None else \
                    torch.full((input_ids.shape[0],), input_ids.shape[1] - 1, device=input_ids.device)
            logits = self.head(hidden, positions)  # [B, K]
            out = {"logits": logits}
            if labels is not None:
                out["loss"] = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE)
                n = (labels != IGNORE).sum()
                correct = ((logits.argmax(-1) == labels) & (labels != IGNORE)).sum()
                out["stats"] = {"loss": (out["loss"].detach() * n, n), "accuracy": (correct, n)}
            return out
        if self.task == "tag":
            logits = self.head(hidden)  # [B, T, K]
            out = {"logits": logits}
            if labels is not None:
                if self.crf is not None:
                    word_em, word_tags = _gather_words(logits, word_index), labels.gather(1, word_index)
                    word_tags = word_tags.masked_fill(~word_mask, 0)
                    out["loss"] = self.crf(word_em, word_tags, word_mask)
                else:
                    out["loss"] = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
                n = (labels != IGNORE).sum()
                out["stats"] = {"loss": (out["loss"].detach() * n, n)}
            return out
        logits = self.head(hidden, span_index, span_width)  # [B, S, K]
        out = {"logits": logits}
        if span_labels is not None:
            out["loss"] = F.cross_entropy(logits.float().flatten(0, 1), span_labels.flatten(), ignore_index=IGNORE)
            n = (span_labels != IGNORE).sum()
            out["stats"] = {"loss": (out["loss"].detach() * n, n)}
        return out

    @torch.no_grad()
    def decode(self, batch: dict, out: dict | None = None) -> list:
        """Per row: classify/pair: probabilities [K] (np.ndarray); tag: (tag ids, probabilities) per word of the
        window; span: [(start, end, label id, probability)] for each span whose best label is not NULL."""
        out = out if out is not None else self(**batch)
        logits = out["logits"].float()
        if self.task in ("classify", "pair"):
            return list(logits.softmax(-1).cpu().numpy())
        if self.task == "tag":
            word_em = _gather_words(logits, batch["word_index"])  # [B, W, K]
            probs = word_em.softmax(-1)
            mask = batch["word_mask"]
            if self.crf is not None:
                paths = self.crf.decode(word_em, mask)
            else:
                best = word_em.argmax(-1).cpu()
                paths = [best[b, : int(mask[b].sum())].tolist() for b in range(len(best))]
            probs = probs.cpu()
            return [(path, [float(probs[b, w, t]) for w, t in enumerate(path)]) for b, path in enumerate(paths)]
        probs = logits.softmax(-1)  # [B, S, K]
        p, label = probs.max(-1)
        keep = (label != 0) & batch["span_mask"]
        rows: list[list] = [[] for _ in range(len(probs))]
        for b, s in keep.nonzero().tolist():
            rows[b].append((s, int(label[b, s]), float(p[b, s])))
        return rows


def _gather_words(logits: torch.Tensor, word_index: torch.Tensor) -> torch.Tensor:
    """[B, T, K] scores at each word's first subword -> [B, W, K]."""
    return logits.gather(1, word_index.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))


# ---- freezing and learning rates -------------------------------------------------------------------------------------
def apply_freeze(model: TaskModel, spec: str) -> list[str]:
    """Turn off gradients for part of the body: none | embeddings | body | all-but-last-N (embeddings and all blocks
    but the last N). Returns the names of the frozen parameters."""
    m = _FREEZE_RE.match(spec)
    if not m:
        raise InputError(f"freeze must be none, embeddings, body or all-but-last-N, got {spec!r}")
    body = model.body
    if spec == "none":
        modules: list[nn.Module] = []
    elif spec == "embeddings":
        modules = [body.embeddings]
    elif spec == "body":
        modules = [body]
    else:
        keep = int(m.group(2))
        if keep > len(body.blocks):
            raise InputError(f"freeze {spec!r}: the model has only {len(body.blocks)} layers")
        modules = [body.embeddings, *list(body.blocks)[: len(body.blocks) - keep]]
    frozen = {id(p) for mod in modules for p in mod.parameters()}
    names = []
    for name, p in model.named_parameters():
        if id(p) in frozen:
            p.requires_grad_(False)
            names.append(name)
    return names


def layer_scales(num_layers: int, decay: float) -> list[float]:
    """Learning-rate factor per depth: [embeddings, block 0, ..., block L-1]; the top block gets 1, each layer below
    `decay` times the one above it (embeddings: decay^L)."""
    return [decay ** (num_layers - depth) for depth in range(num_layers + 1)]


def build_param_groups(model: TaskModel, lr: float, head_lr: float, weight_decay: float,
                       layer_lr_decay: float = 1.0) -> list[dict]:
    """AdamW groups: the head at `head_lr`; body depth d at lr * layer_scales[d] (a final LayerNorm at lr);
    no weight decay on 1-D parameters (biases, norms). Frozen parameters are left out."""
    body = model.body
    scales = layer_scales(len(body.blocks), layer_lr_decay)
    depth_of: dict[int, float] = {id(p): scales[0] for p in body.embeddings.parameters()}
    for i, block in enumerate(body.blocks):
        depth_of.update({id(p): scales[i + 1] for p in block.parameters()})
    groups: dict[tuple[float, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        rate = head_lr if name.startswith("head.") else lr * depth_of.get(id(p), 1.0)
        groups.setdefault((rate, p.ndim >= 2), []).append(p)
    return [{"params": ps, "lr": rate, "weight_decay": weight_decay if decay else 0.0}
            for (rate, decay), ps in groups.items()]


# ---- data ------------------------------------------------------------------------------------------------------------
@dataclass
class TaskData:
    """One labeled file, read and encoded: features point back into examples (feature["example"])."""

    path: Path
    examples: list[Example]
    features: list[dict]
    stats: EncodeStats


def encode_split(path: str | Path | None, examples: list[Example], task: str, tok, labels: LabelMap | None,
                 max_len: int, head_options: dict) -> TaskData:
    features, stats = encode_examples(
        examples, task, tok, labels, max_len, all_subwords=bool(head_options.get("all_subwords")),
        max_span_width=int(head_options.get("max_span_width", 8)), source=path,
    )
    return TaskData(Path(path) if path is not None else Path("<input>"), examples, features, stats)


def length_warnings(data: TaskData, task: str, max_len: int) -> list[str]:
    """Lines to print about texts longer than max_len (classify/pair: truncated; tag/span: split into windows)."""
    s, n, where = data.stats, data.stats.n_examples, data.path
    lines = []
    if task in ("classify", "pair") and s.n_truncated:
        lines.append(f"{where}: {s.n_truncated} of {n} texts are longer than max_len {max_len} subwords "
                     "and were truncated")
    if task in ("tag", "span"):
        if s.n_split:
            lines.append(f"{where}: {s.n_split} of {n} sentences are longer than max_len {max_len} subwords and "
                         "were split into windows (predictions are merged back per word)")
        if s.n_truncated:
            lines.append(f"{where}: {s.n_truncated} sentences hold a word longer than max_len; its subwords "
                         "were cut")
        if s.n_spans_lost:
            lines.append(f"{where}: {s.n_spans_lost} gold spans cannot be predicted (wider than max_span_width "
                         "or cut by a window)")
    return lines


def task_collate(features: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """labeled.collate plus what the task model needs: tag word_index/word_mask [B, W], span span_width [B, S]."""
    batch = collate(features, pad_id)
    if "word_positions" in features[0]:
        W = max(len(f["word_positions"]) for f in features)
        index = torch.zeros((len(features), W), dtype=torch.long)
        mask = torch.zeros((len(features), W), dtype=torch.bool)
        for r, f in enumerate(features):
            index[r, : len(f["word_positions"])] = torch.tensor(f["word_positions"], dtype=torch.long)
            mask[r, : len(f["word_positions"])] = True
        batch.update(word_index=index, word_mask=mask)
    elif "spans" in features[0]:
        width = torch.zeros(batch["span_mask"].shape, dtype=torch.long)
        for r, f in enumerate(features):
            if f["spans"]:
                width[r, : len(f["spans"])] = torch.tensor([e - s for s, e in f["spans"]], dtype=torch.long)
        batch["span_width"] = width
    return batch


def loss_weight(task: str, crf: bool = False):
    """What a batch's loss is a mean over (the Trainer weighs micro-batches by it): labeled rows (classify, pair),
    labeled subwords (tag), sentences (tag with CRF), labeled candidate spans (span)."""
    if task == "span":
        return lambda batch: float((batch["span_labels"] != IGNORE).sum())
    if task == "tag" and crf:
        return row_count
    return label_count


def subsample(examples: list[Example], fraction: float, seed: int) -> list[Example]:
    """A random `fraction` of the examples (at least one), in file order."""
    if fraction >= 1:
        return examples
    k = max(1, round(fraction * len(examples)))
    keep = sorted(random.Random(seed).sample(range(len(examples)), k))
    return [examples[i] for i in keep]


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
    if task in ("classify", "pair"):
        merged: list = [None] * len(examples)
        for f, probs in zip(features, outputs, strict=True):
            merged[f["example"]] = probs
        return merged
    if task == "tag":
        tags: list[list[str]] = [["O"] * len(ex.tokens or []) for ex in examples]
        probs: list[list[float]] = [[0.0] * len(ex.tokens or []) for ex in examples]
        for f, (path, p) in zip(features, outputs, strict=True):
            for w, (t, q) in enumerate(zip(path, p, strict=True)):
                tags[f["example"]][f["word_offset"] + w] = labels[t]
                probs[f["example"]][f["word_offset"] + w] = q
        return list(zip(tags, probs, strict=True))
    spans: list[list] = [[] for _ in examples]
    for f, rows in zip(features, outputs, strict=True):
        a = f["word_offset"]
        for s_index, label, p in rows:
            s, e = f["spans"][s_index]
            spans[f["example"]].append((s + a, e + a, labels[label], p))
    return [sorted(x) for x in spans]


def make_report(task: str, labels: LabelMap, examples: list[Example], merged: list, source=None) -> dict:
    """The task's report (classification_report / entity_report / span_report) over labeled examples."""
    if task in ("classify", "pair"):
        y_true = [labels.index(ex.label, source, ex.line) for ex in examples]
        y_pred = [int(np.argmax(p)) for p in merged]
        return classification_report(y_true, y_pred, labels.names)
    if task == "tag":
        return entity_report([list(ex.tags or []) for ex in examples], [tags for tags, _ in merged])
    true = [set(ex.spans or []) for ex in examples]
    pred = [{(s, e, lab) for s, e, lab, _ in spans} for spans in merged]
    return span_report(true, pred)


def predictions_json(task: str, labels: list[str], merged: list) -> list:
    """JSON-ready predictions (the shape `pretune predict` writes, minus the inputs)."""
    out = []
    for m in merged:
        if task in ("classify", "pair"):
            k = int(np.argmax(m))
            probs = {lab: round(float(p), 6) for lab, p in zip(labels, m, strict=True)}
            out.append({"label": labels[k], "probs": probs})
        elif task == "tag":
            out.append({"tags": m[0], "probs": [round(p, 6) for p in m[1]]})
        else:
            out.append({"spans": [{"start": s, "end": e, "label": lab, "prob": round(p, 6)} for s, e, lab, p in m]})
    return out


def evaluate_data(model: TaskModel, tok, data: TaskData, batch_size: int = 32) -> tuple[dict, list, float]:
    """(report, merged predictions, mean loss) of a task model on encoded labeled data."""
    outputs, loss = run_features(model, data.features, tok.specials.pad, batch_size)
    merged = merge_outputs(model.task, model.labels, data.examples, data.features, outputs)
    report = make_report(model.task, LabelMap(model.labels), data.examples, merged, data.path)
    return report, merged, loss


def scalar_metrics(task: str, report: dict, loss: float) -> dict[str, float]:
    """The numbers logged for validation: accuracy/macro_f1/micro_f1 or precision/recall/f1, and loss."""
    names = METRICS[task][:-1]
    return {**{k: float(report[k]) for k in names}, "loss": float(loss)}


# ---- checkpoints -----------------------------------------------------------------------------------------------------
def task_config(model: TaskModel, max_len: int, extra: dict | None = None) -> dict:
    return {"model": model.config.to_dict(), "task": model.task, "labels": list(model.labels),
            "head": dict(model.head_options), "max_len": max_len, **(extra or {})}


def task_model_writer(config: dict, tok):
    """A `save_model(dir, model)` for the trainer: config.json, model.safetensors, tokenizer.json."""

    def save(directory: Path, model: nn.Module) -> None:
        files.write_json(directory / ck.CONFIG, {"format_version": ck.FORMAT_VERSION, **config})
        ck.save_weights(directory / ck.WEIGHTS, model)
        tok.save(directory / ck.TOKENIZER)

    return save


def model_config_of(ckpt: ck.Checkpoint) -> ModelConfig:
    source = str(ckpt.path / ck.CONFIG)
    if not isinstance(ckpt.config.get("model"), dict):
        raise InputError("config.json has no 'model' table; expected a pretune checkpoint", path=source)
    return ModelConfig.from_dict(ckpt.config["model"], source)


def load_task_model(path: str | Path, device: str | torch.device | None = None) -> tuple[TaskModel, Any, dict]:
    """(model in eval mode, tokenizer, config.json) of a fine-tuned checkpoint (a directory or a run holding one)."""
    ckpt = open_checkpoint(path)
    conf = ckpt.config
    if conf.get("task") not in TASKS:
        raise InputError("not a fine-tuned checkpoint (config.json names no task); fine-tune it first with "
                         "`pretune finetune`", path=ckpt.path)
    tok = ckpt.tokenizer()
    labels = LabelMap.from_json(conf.get("labels")).names
    model = TaskModel(model_config_of(ckpt), conf["task"], labels, conf.get("head") or {})
    ck.load_into(model, ckpt.state_dict, ckpt.path)
    model.eval()
    if device is not None:
        model.to(device)
    return model, tok, conf


def _load_initial_weights(model: TaskModel, ckpt: ck.Checkpoint, head_options: dict) -> str:
    """Body from the checkpoint's body.*; its head too when it is a checkpoint of the same task, labels and head."""
    body = {k[len("body."):]: v for k, v in ckpt.state_dict.items() if k.startswith("body.")}
    if not body:
        raise InputError("checkpoint holds no body.* weights; expected a pretune checkpoint", path=ckpt.path)
    ck.load_into(model.body, body, ckpt.path)
    conf = ckpt.config
    same = (conf.get("task") == model.task and conf.get("labels") == model.labels
            and (conf.get("head") or {}) == head_options)
    if same:
        head = {k[len("head."):]: v for k, v in ckpt.state_dict.items() if k.startswith("head.")}
        ck.load_into(model.head, head, ckpt.path)
        return "body and head"
    return "body"


# ---- fine-tuning -----------------------------------------------------------------------------------------------------
def _best_validation(out: Path, metric: str, greater: bool) -> dict:
    best: dict = {}
    log = out / "metrics.jsonl"
    if not log.exists():
        return best
    for line in log.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("split") != "validation" or metric not in rec:
            continue
        if not best or (rec[metric] > best[metric] if greater else rec[metric] < best[metric]):
            best = rec
    return best


def finetune(sections: dict, resume: bool = False, overwrite: bool = False, source=None,
             on_evaluate=None) -> dict:
    """Run stage 2 from resolved sections {"finetune": FinetuneSection, "train": TrainConfig}.

    Everything the user gave is read and checked (checkpoint, tokenizer, files, labels) before `out` is touched.
    Writes out/model (best checkpoint by validation), out/metrics.jsonl, out/test_report.json (with a test file).
    `on_evaluate(step, metrics)` is called after every validation (it may raise to stop the run).
    Returns {"out", "metric", "best", "validation", "test", "steps", "n_train", "stopped_early", "warnings"}."""
    sec: FinetuneSection = sections["finetune"].validate(source)
    tcfg = sections["train"]
    tcfg.validate(source)
    task, head_options = sec.task, sec.head_options()
    seed_everything(tcfg.seed)

    init = open_checkpoint(sec.checkpoint)
    tok = init.tokenizer()
    cfg = model_config_of(init)
    if tok.vocab_size > cfg.vocab_size:
        raise InputError(f"the tokenizer has {tok.vocab_size} tokens but the model only {cfg.vocab_size}",
                         path=init.path)
    if sec.max_len > cfg.max_positions:
        raise InputError(f"max_len {sec.max_len} is beyond the checkpoint's {cfg.max_positions} positions",
                         path=source)

    train_ex = read_examples(sec.train, task, **sec.fields())
    labels = LabelMap.from_examples(train_ex, task)
    val_ex = read_examples(sec.validation, task, **sec.fields())
    test_ex = read_examples(sec.test, task, **sec.fields()) if sec.test else None
    train_ex = subsample(train_ex, sec.label_fraction, sec.label_seed)
    if sec.pseudo_labels:
        train_ex = train_ex + read_examples(sec.pseudo_labels, task, **sec.fields())
    train = encode_split(sec.train, train_ex, task, tok, labels, sec.max_len, head_options)
    val = encode_split(sec.validation, val_ex, task, tok, labels, sec.max_len, head_options)
    test = encode_split(sec.test, test_ex, task, tok, labels, sec.max_len, head_options) if test_ex else None
    warnings = [w for d in (train, val, test) if d is not None for w in length_warnings(d, task, sec.max_len)]
    uda = pool_info = None
    if sec.uda_weight > 0:  # consistency training on the unlabeled pool (pretune.semisup.consistency)
        from pretune.semisup import consistency

        uda, pool_info = consistency.from_section(sec, tok, train_ex + val_ex + (test_ex or []), tcfg.batch_size,
                                                  tcfg.seed)

    model = TaskModel(cfg, task, labels.names, head_options)
    loaded = "nothing (from scratch)" if sec.from_scratch else _load_initial_weights(model, init, head_options)
    frozen = apply_freeze(model, sec.freeze)
    groups = build_param_groups(model, tcfg.lr, sec.head_lr, tcfg.weight_decay, sec.layer_lr_decay)
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
    run_cfg = tcfg.resolve(steps_per_epoch, sec.epochs) if isinstance(tcfg, FinetuneTrainConfig) else tcfg

    out = Path(sec.out)
    if out.resolve() == init.path.resolve() or out.resolve() in init.path.resolve().parents:
        raise InputError("--out holds the checkpoint being fine-tuned; choose another directory", path=out)
    run_record = {"finetune": asdict(sec), "train": asdict(tcfg)}
    prepare_out_dir(out, run_record, resume, overwrite)
    extra = {"fields": sec.fields(), "base_checkpoint": str(init.path), "from_scratch": sec.from_scratch}
    config = task_config(model, sec.max_len, extra)
    if dist.is_main():
        files.write_json(out / "run.json", run_record)
        for w in warnings:
            print(f"pretune: warning: {w}", file=sys.stderr)
        print(f"{task}: {len(labels)} labels, {len(train_ex)} training examples ({len(train.features)} inputs), "
              f"{steps_per_epoch} steps per epoch; weights loaded: {loaded}; frozen tensors: {len(frozen)}")
        if pool_info is not None:
            print(f"consistency training (UDA, weight {sec.uda_weight:g}) on {pool_info['used']} unlabeled items "
                  f"({pool_info['dropped_duplicates']} repeated or labeled texts dropped)")
        print(describe(cfg, model.body.num_parameters()))

    metric = sec.metric_name()
    greater = metric != "loss"

    def evaluate(m: nn.Module) -> dict[str, float]:
        report, _, loss = evaluate_data(m, tok, val, tcfg.batch_size * 2)
        return scalar_metrics(task, report, loss)

    def loss_fn(m: nn.Module, batch: dict):
        if uda is None:
            res = m(**batch)
            return res["loss"], res["stats"]
        labeled, unlabeled = uda.split(batch)
        res = m(**labeled)
        uda_loss, uda_stats = uda.loss(m, unlabeled)
        return res["loss"] + uda_loss, {**res["stats"], **uda_stats}

    trainer = Trainer(model, run_cfg, out, batches=batches, loss_fn=loss_fn,
                      save_model=task_model_writer(config, tok), model_config=config, evaluate=evaluate,
                      groups=groups, early_stopping=EarlyStopping(metric, greater, sec.patience or None),
                      loss_weight=loss_weight(task, sec.crf), on_evaluate=on_evaluate)
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


def evaluate_file(checkpoint, data: str | Path, batch_size: int = 32) -> dict:
    """Evaluate a fine-tuned checkpoint (a path, or a (model, tokenizer, config) tuple) on a labeled file.

    Returns the task's report plus "predictions" (one per example, as `pretune predict` writes them)."""
    model, tok, conf = checkpoint if isinstance(checkpoint, tuple) else load_task_model(checkpoint)
    fields = conf.get("fields") or {}
    examples = read_examples(data, model.task, **fields)
    data_ = encode_split(data, examples, model.task, tok, LabelMap(model.labels), conf.get("max_len", 128),
                         model.head_options)
    for w in length_warnings(data_, model.task, conf.get("max_len", 128)):
        print(f"pretune: warning: {w}", file=sys.stderr)
    report, merged, _ = evaluate_data(model, tok, data_, batch_size)
    return {**report, "predictions": predictions_json(model.task, model.labels, merged)}


# ---- CLI -------------------------------------------------------------------------------------------------------------
def load_finetune_sections(config_path: str | None, args) -> dict:
    from pretune.config import load_sections

    return load_sections(config_path, args, SECTIONS)


def cmd_finetune(args) -> None:
    sections = load_finetune_sections(args.config, args)
    dist.setup()
    try:
        if sections["finetune"].self_training_rounds > 0:
            from pretune.semisup.selftrain import self_train

            result = self_train(sections, resume=args.resume, overwrite=args.overwrite, source=args.config)
        else:
            result = finetune(sections, resume=args.resume, overwrite=args.overwrite, source=args.config)
        main_rank = dist.is_main()  # asked before teardown: afterwards every process reports rank 0
    finally:
        dist.teardown()
    if not main_rank:
        return
    best = result["best"]
    print(f"best validation {result['metric']}: {best:.4f}" if best is not None else "no validation result")
    if result.get("self_training"):
        from pretune.semisup.selftrain import format_rounds

        print(format_rounds(result["self_training"]))
    if result["test"] is not None:
        print(f"test ({sections['finetune'].test}):")
        print(format_report(result["test"]))
    print(f"model: {Path(result['out']) / 'model'}")


def _check_new_file(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise InputError("already exists; pass --overwrite to replace it", path=path)
    if path.exists() and path.is_dir():
        raise InputError("expected a file path, found a directory", path=path)


def cmd_evaluate(args) -> None:
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    out = Path(args.out) if args.out else None
    if out is not None:
        _check_new_file(out, args.overwrite)
    report = evaluate_file(args.checkpoint, args.data, batch_size=args.batch_size)
    print(format_report(report))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        files.write_json(out, report)
        print(f"report: {out}")


def register_cli(sub) -> None:
    from pretune.config import add_flags

    ft = sub.add_parser("finetune", help="fine-tune a pretrained checkpoint on a labeled set",
                        description="Every key of the TOML config ([finetune], [train]) is also a flag; flags win.")
    ft.add_argument("--config", default=None, help="TOML file with [finetune] and [train] tables")
    ft.add_argument("--from", "--checkpoint", dest="checkpoint", default=None, metavar="CKPT",
                    help="pretrained (or fine-tuned) checkpoint, or a run directory holding one")
    ft.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    ft.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    add_flags(ft, *SECTIONS.values())
    ft.set_defaults(func=cmd_finetune)

    ev = sub.add_parser("evaluate", help="score a fine-tuned checkpoint on a labeled file")
    ev.add_argument("--from", "--checkpoint", dest="checkpoint", required=True, metavar="CKPT")
    ev.add_argument("--data", required=True, help="labeled file in the task's format")
    ev.add_argument("--out", default=None, help="write the report (with predictions) as JSON here")
    ev.add_argument("--batch-size", type=int, default=32)
    ev.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    ev.set_defaults(func=cmd_evaluate)
