"""Stage-2 settings: [finetune] (`FinetuneSection`) and [train] with fine-tuning defaults (`FinetuneTrainConfig`)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from pretune.config import bounds, check_numbers, load_sections
from pretune.errors import InputError
from pretune.finetune.encode import TRUNCATE
from pretune.finetune.genes import DECODERS, OrfDecode, parse_starts, strand_label_ids
from pretune.finetune.tasks import TASKS, get_task
from pretune.model.heads import POOLING
from pretune.text.sequences import parse_label_map, strand_swap
from pretune.training.config import TrainConfig

FREEZE_RE = re.compile(r"^(none|embeddings|body|all-but-last-(\d+))$")


@dataclass
class FinetuneSection:
    """[finetune] keys (also accepted at the top level of the TOML file)."""

    task: str = field(default="", metadata={
        "help": "classify | pair | tag | span | seqtag (one label per character, e.g. per nucleotide)"})
    checkpoint: str = field(default="", metadata={"flag": False})  # --from / --checkpoint, added by register_cli
    train: str = field(default="", metadata={"help": "labeled training file"})
    validation: str = field(default="", metadata={"help": "labeled validation file (early stopping, best model)"})
    test: str | None = field(default=None, metadata={"help": "labeled test file, evaluated with the best model"})
    out: str = field(default="", metadata={"help": "run directory (metrics.jsonl, model/, test_report.json)"})
    text_field: str | None = field(default=None, metadata={"help": "text column (default: text; pair: text_a)"})
    text_b_field: str = field(default="text_b", metadata={"help": "pair: second text column"})
    label_field: str | None = field(default=None, metadata={"help": "label column (default: label; seqtag: labels)"})
    label_map: str = field(default="", metadata={
        "help": "seqtag: names of the label characters in order, the first the background of the segment scores, e.g. "
                "0=non-coding,1=cds+,2=cds- or N,+,- (default: the characters, the most frequent first)"})
    window_overlap: int | None = field(default=None, metadata={
        "help": "seqtag: tokens shared by neighbouring windows of a long sequence (default: a quarter of max_len)"})
    smooth: int = field(default=0, metadata={
        "help": "seqtag: average each character's label probabilities over this many characters before choosing "
                "its label (0: off): fewer, longer segments"})
    decode: str = field(default="argmax", metadata={
        "help": "seqtag: argmax (each character its most probable label) | orf (DNA: the best set of open reading "
                "frames on both strands, scored by the model, everything else the background; "
                "pretune.finetune.genes)"})
    orf_starts: str = field(default="ATG", metadata={"help": "decode = orf: start codons, e.g. ATG or ATG,GTG,TTG"})
    orf_min_length: int = field(default=90, metadata=bounds(ge=6, help=
        "decode = orf: shortest ORF in nucleotides, start and stop codons included"))
    orf_max_overlap: int = field(default=0, metadata=bounds(ge=0, help=
        "decode = orf: two ORFs on one strand may overlap by this many nucleotides (0: none)"))
    orf_bias: float = field(default=0.0, metadata={"help":
        "decode = orf: added to every nucleotide's score (> 0: more and longer genes, < 0: fewer)"})
    orf_score: str = field(default="background", metadata={"help":
        "decode = orf: a nucleotide's score on a strand, background (log p(strand) - log p(background)) or odds "
        "(log p(strand) - log(1 - p(strand)))"})
    reverse_complement: bool = field(default=False, metadata={
        "help": "seqtag: also train on the reverse complement of every training sequence (labels reversed, the "
                "label characters + and - swapped)"})
    max_len: int = field(default=128, metadata={"help": "subwords per input incl. [CLS]/[SEP]"})
    truncate: str = field(default="auto", metadata={
        "help": "classify: which subwords of a text longer than max_len are kept, head (the first) | head+tail (the "
                "first quarter and the last three quarters, as Sun et al. 2019 found best for long texts) | auto "
                "(head+tail)"})
    epochs: int = 10
    freeze: str = field(default="none", metadata={"help": "none | embeddings | body | all-but-last-N"})
    pooling: str = field(default="auto", metadata={
        "help": "classify/pair: mean (of the real tokens' states) | cls ([CLS]; a causal body: its last token) | "
                "auto (mean, but cls for a causal body)"})
    dropout: float | None = field(default=None, metadata={
        "help": "dropout (hidden and attention) while fine-tuning; unset: the checkpoint's"})
    head_lr: float = field(default=1e-3, metadata={"help": "learning rate of the new head (the body uses --lr)"})
    head_warmup_steps: int = field(default=0, metadata={
        "help": "train only the new head for this many steps, the body held still (linear probe, then fine-tune)"})
    layer_lr_decay: float = field(default=1.0, metadata={"help": "lr of layer l = lr * decay^(layers - l)"})
    metric: str = field(default="auto", metadata={"help": "early-stopping metric (auto: accuracy / f1)"})
    patience: int = field(default=3, metadata={"help": "epochs without gain before stopping (0: never stop)"})
    min_steps: int = field(default=150, metadata={
        "help": "train at least this many optimizer steps: epochs are raised to reach it and early stopping waits "
                "for it (150: 50 labels at batch 32 get 75 epochs, not 10 steps); an explicit --max-steps still caps"})
    crf: bool = field(default=False, metadata={"help": "tag: CRF layer (Viterbi decoding, valid BIO only)"})
    all_subwords: bool = field(default=False, metadata={"help": "tag: every subword of a word gets its label"})
    max_span_width: int = field(default=8, metadata={"help": "span: widest candidate span, in words"})
    ensemble: int = field(default=1, metadata=bounds(ge=1, le=32, help=
        "classify/pair: fine-tune this many models (seeds seed, seed+1, ...) and average their probabilities; "
        "the checkpoint holds all of them"))
    label_fraction: float = field(default=1.0, metadata={"help": "stratified fraction of the labels to train on"})
    label_seed: int = field(default=0, metadata=bounds(ge=0, le=2**63 - 1))
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

        check_numbers(self, source, "[finetune] ")
        if self.task not in TASKS:
            raise bad(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        metrics = TASKS[self.task].metrics
        for name, what in (("checkpoint", "the pretrained checkpoint (--from)"), ("train", "the training file"),
                           ("validation", "the validation file"), ("out", "the run directory to write")):
            if not getattr(self, name):
                raise bad(f"{name} is required: {what}")
        if self.max_len < 8:
            raise bad(f"max_len must be >= 8, got {self.max_len}")
        if self.epochs < 1:
            raise bad(f"epochs must be >= 1, got {self.epochs}")
        if self.truncate not in ("auto", *TRUNCATE):
            raise bad(f"truncate must be auto, {' or '.join(TRUNCATE)}, got {self.truncate!r}")
        if self.truncate not in ("auto", "head") and self.task != "classify":
            raise bad(f"truncate applies to task classify only (task {self.task} "
                      f"{'trims the longer text first' if self.task == 'pair' else 'splits long inputs into windows'})")
        if not FREEZE_RE.match(self.freeze):
            raise bad(f"freeze must be none, embeddings, body or all-but-last-N (e.g. all-but-last-2), "
                      f"got {self.freeze!r}")
        if self.pooling not in ("auto", *POOLING):
            raise bad(f"pooling must be auto, {' or '.join(POOLING)}, got {self.pooling!r}")
        if self.pooling == "mean" and self.task not in ("classify", "pair"):
            raise bad("pooling applies to the tasks classify and pair only")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise bad(f"dropout must be in [0, 1), got {self.dropout}")
        if self.head_lr <= 0:
            raise bad(f"head_lr must be > 0, got {self.head_lr}")
        if not 0 < self.layer_lr_decay <= 1:
            raise bad(f"layer_lr_decay must be in (0, 1], got {self.layer_lr_decay}")
        if self.metric != "auto" and self.metric not in metrics:
            raise bad(f"metric for task {self.task} must be auto or one of {metrics}, got {self.metric!r}")
        if self.patience < 0:
            raise bad(f"patience must be >= 0, got {self.patience}")
        if self.head_warmup_steps < 0:
            raise bad(f"head_warmup_steps must be >= 0, got {self.head_warmup_steps}")
        if self.min_steps < 0:
            raise bad(f"min_steps must be >= 0, got {self.min_steps}")
        if self.crf and self.task != "tag":
            raise bad("crf applies to task tag only")
        if self.crf and self.all_subwords:
            raise bad("crf scores word sequences (first subwords); it cannot be combined with all_subwords")
        if self.max_span_width < 1:
            raise bad(f"max_span_width must be >= 1, got {self.max_span_width}")
        self._validate_seqtag(bad, source)
        if self.ensemble > 1 and self.task not in ("classify", "pair"):
            raise bad(f"ensemble averages class probabilities: it applies to the tasks classify and pair only; set "
                      f"ensemble = 1 for task {self.task}")
        if not 0 < self.label_fraction <= 1:
            raise bad(f"label_fraction must be in (0, 1], got {self.label_fraction}")
        self._validate_semi_supervised(bad)
        return self

    def _validate_seqtag(self, bad, source) -> None:
        seq_keys = [k for k in ("label_map", "window_overlap", "reverse_complement", "smooth") if getattr(self, k)]
        seq_keys += ["decode"] if self.decode != "argmax" else []
        if self.smooth < 0:
            raise bad(f"smooth must be >= 0 characters, got {self.smooth}")
        if self.task != "seqtag" and seq_keys:
            raise bad(f"{seq_keys[0]} applies to task seqtag only")
        names = parse_label_map(self.label_map, source)
        if self.decode not in DECODERS:
            raise bad(f"decode must be one of {', '.join(DECODERS)}, got {self.decode!r}")
        defaults = {f.name: f.default for f in dataclasses.fields(self) if f.name.startswith("orf_")}
        changed = [k for k, v in defaults.items() if getattr(self, k) != v]
        if changed and self.decode != "orf":
            raise bad(f"{changed[0]} applies with decode = 'orf' (decode is {self.decode!r})")
        try:
            settings = self.decode_settings()
            if settings and names:
                strand_label_ids(list(names.values()))
        except InputError as e:
            raise bad(str(e)) from None
        if self.reverse_complement:
            strand_swap(names, source)
        if self.window_overlap is not None and not 0 <= self.window_overlap <= (self.max_len - 2) // 2:
            raise bad(f"window_overlap must be in [0, {(self.max_len - 2) // 2}] (half a window of max_len "
                      f"{self.max_len}), got {self.window_overlap}")
        if self.task == "seqtag" and self.all_subwords:
            raise bad("all_subwords applies to task tag only")

    def decode_settings(self) -> dict | None:
        """The seqtag decoder's settings as stored with the model's head options (None: the argmax)."""
        if self.decode != "orf":
            return None
        return OrfDecode(parse_starts(self.orf_starts), self.orf_min_length, self.orf_max_overlap,
                         float(self.orf_bias), self.orf_score).to_dict()

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
            if self.task in ("span", "seqtag"):
                raise bad(f"self-training and uda support the tasks classify, pair and tag, not {self.task}")
            if not self.unlabeled:
                raise bad("unlabeled is required with self_training_rounds or uda_weight: the pool of unlabeled "
                          "text (--unlabeled FILE)")

    def semi_supervised(self) -> bool:
        """Whether the unlabeled pool is used (self-training or consistency training)."""
        return self.self_training_rounds > 0 or self.uda_weight > 0

    SEMI_SUPERVISED_KEYS = ("unlabeled", "pool_size", "self_training_rounds", "pseudo_threshold", "pseudo_top_k",
                            "tag_confidence", "uda_weight", "uda_temperature", "uda_threshold", "uda_mask_prob",
                            "uda_batch_size", "pseudo_labels")  # without effect unless semi_supervised()

    def resolve_pooling(self, causal: bool) -> FinetuneSection:
        """pooling auto -> mean for a bidirectional body, cls (its last token) for a causal one."""
        if self.pooling != "auto":
            return self
        mean = not causal and self.task in ("classify", "pair")
        return dataclasses.replace(self, pooling="mean" if mean else "cls")

    def metric_name(self) -> str:
        return get_task(self.task).metrics[0] if self.metric == "auto" else self.metric

    def head_options(self) -> dict:
        return get_task(self.task).head_options(self)

    def label_order(self) -> list[str] | None:
        """seqtag: the label names in the order of label_map (the first is the background); else None."""
        return list(parse_label_map(self.label_map).values()) or None

    def fields(self) -> dict:
        label_field = self.label_field or ("labels" if self.task == "seqtag" else "label")
        out = {"text_field": self.text_field, "text_b_field": self.text_b_field, "label_field": label_field}
        if self.label_map:  # only when set, so the fields (and fingerprints) of other tasks stay as they were
            out["label_map"] = self.label_map
        return out


EVALS_PER_RUN = 20  # fine-tuning evaluates once an epoch, but by default no more than about this often a run


@dataclass
class FinetuneTrainConfig(TrainConfig):
    """[train] for fine-tuning: the same keys with fine-tuning defaults. max_steps is a cap on epochs x batches
    (unset: no cap); eval_every and save_every default to once per epoch, and to about EVALS_PER_RUN a run when
    epochs are short (a few labels: an epoch of 2 steps would spend most of the run evaluating)."""

    max_steps: int | None = field(default=None, metadata=bounds(ge=1, help="cap on optimizer steps (default: epochs)"))
    batch_size: int = field(default=16, metadata=bounds(ge=1))
    lr: float = field(default=2e-5, metadata=bounds(gt=0, help="learning rate of the pretrained body"))
    eval_every: int | None = field(default=None, metadata=bounds(
        ge=1, help="steps between evaluations (default: an epoch, or 1/20 of the run if longer)"))
    save_every: int | None = field(default=None, metadata=bounds(
        ge=1, help="steps between checkpoints (default: as eval_every)"))

    def validate(self, source: str | None = None) -> FinetuneTrainConfig:
        check_numbers(self, source, "[train] ")
        probe = {name: 1 if getattr(self, name) is None else getattr(self, name)
                 for name in ("max_steps", "eval_every", "save_every")}
        TrainConfig.validate(dataclasses.replace(self, **probe), source)
        return self

    def resolve(self, steps_per_epoch: int, epochs: int, min_steps: int = 0) -> TrainConfig:
        """A plain TrainConfig with the per-epoch defaults filled in. Epochs are raised until they give at least
        `min_steps` optimizer steps (a floor on steps); an explicit max_steps caps the total all the same."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)}
        epochs = max(epochs, -(-min_steps // steps_per_epoch))  # ceil(min_steps / steps_per_epoch)
        total = epochs * steps_per_epoch
        values["max_steps"] = min(total, self.max_steps) if self.max_steps else total
        every = max(steps_per_epoch, -(-values["max_steps"] // EVALS_PER_RUN))  # an epoch, or 1/20 of the run
        values["eval_every"] = self.eval_every or every
        values["save_every"] = self.save_every or every
        return TrainConfig(**values).validate()


SECTIONS = {"finetune": FinetuneSection, "train": FinetuneTrainConfig}


def load_finetune_sections(config_path: str | None, args) -> dict:
    """The sections of a TOML file (or none) with the command-line flags applied."""
    return load_sections(config_path, args, SECTIONS)
