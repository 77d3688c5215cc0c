"""The task model (a pretrained Transformer body + one task head), its freezing and learning-rate groups, and its
checkpoints: config.json of a fine-tuned model, loading one, and the initial weights of a fine-tune."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pretune.errors import InputError
from pretune.finetune.config import FREEZE_RE
from pretune.finetune.encode import IGNORE
from pretune.finetune.tasks import TASKS, get_task
from pretune.interop.hf import open_checkpoint
from pretune.model.heads import Pooler
from pretune.model.transformer import ModelConfig, Transformer, init_weights
from pretune.text.labeled import LabelMap
from pretune.training import checkpoint as ck


# ---- the task model --------------------------------------------------------------------------------------------------
class TaskModel(nn.Module):
    """The Transformer `body` plus one task `head` (state-dict keys body.*, head.*); `kind` is the task's `Task`.

    forward(**batch) returns {"logits"} plus {"loss", "stats"} when the batch has labels; `decode(batch)` turns a
    batch into predictions."""

    def __init__(self, cfg: ModelConfig, task: str, labels: list[str], head_options: dict | None = None):
        super().__init__()
        self.kind = get_task(task)
        self.config, self.task, self.labels = cfg, task, list(labels)
        self.head_options = dict(head_options or {})
        self.body = Transformer(cfg)
        self.head: nn.Module = self.kind.head(cfg, self.labels, self.head_options)
        self.head.apply(init_weights)

    @property
    def crf(self):
        return getattr(self.head, "crf", None)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, word_index=None,
                word_mask=None, span_index=None, span_mask=None, span_width=None, span_labels=None) -> dict:
        hidden = self.body(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "word_index": word_index,
                 "word_mask": word_mask, "span_index": span_index, "span_width": span_width, "span_labels": span_labels}
        return self.kind.forward(self, hidden, batch)

    @torch.no_grad()
    def decode(self, batch: dict, out: dict | None = None) -> list:
        """Per row: classify/pair: probabilities [K] (np.ndarray); tag: (tag ids, probabilities) per word of the
        window; span: [(span index, label id, probability)] for each span whose best label is not NULL."""
        out = out if out is not None else self(**batch)
        return self.kind.decode(self, batch, out["logits"].float())


class EnsembleTaskModel(TaskModel):
    """Fine-tuned TaskModels of one task and label set (`[finetune] ensemble`): forward averages their class
    probabilities and returns the log of the average as "logits" (its softmax is the average). State-dict keys
    members.<k>.body.*, members.<k>.head.*; `body` and `head` are the first member's (embeddings, explanations)."""

    def __init__(self, members: list[TaskModel]):
        nn.Module.__init__(self)
        first = members[0]
        if first.task not in ("classify", "pair"):
            raise InputError(f"an ensemble averages class probabilities: task {first.task!r} has none")
        self.kind, self.config, self.task, self.labels = first.kind, first.config, first.task, first.labels
        self.head_options = first.head_options
        self.members = nn.ModuleList(members)

    @property
    def body(self) -> Transformer:  # type: ignore[override]
        return self.members[0].body

    @property
    def head(self) -> nn.Module:  # type: ignore[override]
        return self.members[0].head

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, **_) -> dict:
        probs = torch.stack([m(input_ids, attention_mask, token_type_ids)["logits"].float().softmax(-1)
                             for m in self.members]).mean(0)  # [B, K]
        out = {"logits": probs.clamp_min(1e-12).log()}
        if labels is not None:
            out["loss"] = F.nll_loss(out["logits"], labels, ignore_index=IGNORE)
            n = (labels != IGNORE).sum()
            correct = ((probs.argmax(-1) == labels) & (labels != IGNORE)).sum()
            out["stats"] = {"loss": (out["loss"].detach() * n, n), "accuracy": (correct, n)}
        return out


# ---- freezing and learning rates -------------------------------------------------------------------------------------
def apply_freeze(model: TaskModel, spec: str) -> list[str]:
    """Turn off gradients for part of the body: none | embeddings | body | all-but-last-N (embeddings and all blocks
    but the last N). Returns the names of the frozen parameters."""
    m = FREEZE_RE.match(spec)
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
                       layer_lr_decay: float = 1.0, head_warmup_steps: int = 0) -> list[dict]:
    """AdamW groups: the head at `head_lr`; body depth d at lr * layer_scales[d] (a final LayerNorm at lr);
    no weight decay on 1-D parameters (biases, norms). Frozen parameters are left out. With `head_warmup_steps`
    the body's groups hold still for that many steps while the new head trains alone."""
    body = model.body
    scales = layer_scales(len(body.blocks), layer_lr_decay)
    depth_of: dict[int, float] = {id(p): scales[0] for p in body.embeddings.parameters()}
    for i, block in enumerate(body.blocks):
        depth_of.update({id(p): scales[i + 1] for p in block.parameters()})
    groups: dict[tuple[bool, float, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        head = name.startswith("head.")
        rate = head_lr if head else lr * depth_of.get(id(p), 1.0)
        groups.setdefault((head, rate, p.ndim >= 2), []).append(p)
    return [{"params": ps, "lr": rate, "weight_decay": weight_decay if decay else 0.0,
             **({} if head or not head_warmup_steps else {"hold_steps": head_warmup_steps})}
            for (head, rate, decay), ps in groups.items()]


# ---- checkpoints -----------------------------------------------------------------------------------------------------
def task_config(model: TaskModel, max_len: int, extra: dict | None = None) -> dict:
    """config.json of a fine-tuned model (checkpoint.write_model_files adds format_version)."""
    return {"model": model.config.to_dict(), "task": model.task, "labels": list(model.labels),
            "head": dict(model.head_options), "max_len": max_len, **(extra or {})}


def load_task_model(path: str | Path, device: str | torch.device | None = None) -> tuple[TaskModel, Any, dict]:
    """(model in eval mode, tokenizer, config.json) of a fine-tuned checkpoint (a directory or a run holding one).

    A checkpoint with a blend/ folder carries TF-IDF + LR to average with (`pretune.compare.blend`): the model's
    `tfidf_partner`, which `predict` and `evaluate_file` apply."""
    ckpt = open_checkpoint(path)
    conf = ckpt.config
    if conf.get("task") not in TASKS:
        raise InputError("not a fine-tuned checkpoint (config.json names no task); fine-tune it first with "
                         "`pretune finetune`", path=ckpt.path)
    tok = ckpt.tokenizer()
    labels = LabelMap.from_json(conf.get("labels")).names
    k = conf.get("ensemble", 1)
    if not isinstance(k, int) or k < 1:
        raise InputError(f"config.json: ensemble must be a whole number >= 1, found {k!r}", path=ckpt.path)
    members = [TaskModel(ckpt.model_config(), conf["task"], labels, conf.get("head") or {}) for _ in range(k)]
    model = members[0] if k == 1 else EnsembleTaskModel(members)
    ck.load_into(model, ckpt.state_dict, ckpt.path)
    model.eval()
    if device is not None:
        model.to(device)
    if (Path(ckpt.path) / "blend").is_dir():  # a served blend (`pretune run`'s compare/blend/model)
        from pretune.compare.blend import read_partner

        model.tfidf_partner = read_partner(ckpt.path)
    return model, tok, conf


# head options that change how inputs or outputs are read, not the weights
READ_OPTIONS = ("smooth", "decode", "truncate")


def _weights_options(options: dict) -> dict:
    return {k: v for k, v in options.items() if k not in READ_OPTIONS}


def load_initial_weights(model: TaskModel, ckpt: ck.Checkpoint, head_options: dict) -> str:
    """Body from the checkpoint's body.*; its head too when it is a checkpoint of the same task, labels and head;
    else a [CLS]-pooled classifier's pooler from the checkpoint's `pooler.*` (a Hugging Face base model's pooler,
    kept on import). Returns what was loaded ("body", "body and pooler" or "body and head")."""
    ck.load_into(model.body, ckpt.body_weights(), ckpt.path)
    conf = ckpt.config
    same = (conf.get("task") == model.task and conf.get("labels") == model.labels
            and _weights_options(conf.get("head") or {}) == _weights_options(head_options))
    if same:
        ck.load_into(model.head, ckpt.weights("head."), ckpt.path)
        return "body and head"
    pooler = getattr(model.head, "pooler", None)
    if isinstance(pooler, Pooler) and getattr(model.head, "pooling", None) == "cls" and not model.config.causal:
        weights = ckpt.weights("pooler.")
        if weights:
            ck.load_into(pooler, weights, ckpt.path)
            return "body and pooler"
    return "body"
