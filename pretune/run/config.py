"""The configuration of a run (`pretune run`, `pretune tune`): one TOML file of tables, read and validated.

Configuration: one TOML file; with no file, the bundled default (`pretune/resources/default.toml`: pretraining on
WordNet glosses, noun-supersense classification with 2,000 labels). Relative data paths in a file are relative to
that file's folder; `[run] out` and values given with `--set` are relative to the current directory.

| key | default | meaning |
| --- | --- | --- |
| `[run] out` | `"pretune-run"` | run directory (also `--out`) |
| `[run] seed` | `0` | seed of the corpus split and default seed of both trainers |
| `[run] device` | `"auto"` | `auto`, `cpu`, `cuda`, `cuda:N` for every stage (also `--device`) |
| `[run] progress` | `true` | progress bars (also `--no-progress`) |
| `[run] threads` | `0` | CPU threads for torch; 0 keeps torch's default (all cores). 1 is faster on a busy machine |
| `[run] title` | `""` | report title (default: "pretune: <task> on <train file>") |
| `[run] examples` | `6` | test examples shown with per-token contributions in the report |
| `[run] skip_pretraining` | `false` | fine-tune `[pretrain] init_from` as it is: no tokenizer, shards, pretraining |
| `[corpus] files` | (required) | unlabeled text files: .txt, .jsonl, .csv, .tsv, optionally .gz; .parquet |
| `[corpus] format` | from suffix | `txt`, `jsonl`, `csv`, `tsv` or `parquet` |
| `[corpus] field` | `"text"` | JSONL field or CSV/TSV/parquet column holding the text |
| `[corpus] doc_split` | `"line"` | txt: a document per `line`, or per `blank`-line-separated block |
| `[corpus] validation_fraction` | `0.05` | documents held out to validate pretraining |
| `[tokenizer] kind` | `"wordpiece"` | wordpiece, bpe, bytelevel-bpe, unigram, char, kmerK, kmerK-overlap (K 3..6) |
| `[tokenizer] vocab_size` | `8000` | vocabulary size (specials included) |
| `[tokenizer] min_frequency` | `2` | rarest pair/piece kept |
| `[tokenizer] lowercase` | `false` | lowercase (and strip accents, WordPiece) before tokenizing |
| `[tokenizer] file` | none | use this `tokenizer.json` / `vocab.txt` (casing guessed) instead of training one |
| `[pretrain] objective` | `"auto"` | see `pretune pretrain --help`; auto: mlm, or with `init_from` the checkpoint's |
| `[pretrain] model_size` | `"base"` | preset `tiny`, `mini`, `small` or `base`; `[pretrain.model]` overrides it |
| `[pretrain] max_len` | `128` | tokens per packed pretraining sequence |
| `[pretrain] mask_prob` ... | | the objective's options, as for `pretune pretrain` |
| `[pretrain] init_from` | none | continue pretraining from this checkpoint (its tokenizer and architecture) |
| `[pretrain.model]` | | any `ModelConfig` key (hidden_size, num_layers, ...), overriding the preset |
| `[pretrain.trainer]` | | the training loop of stage 1: max_steps, batch_size, lr, warmup_ratio, eval_every, ... |
| `[pretrain.contrastive] steps` | `0` (off) | after pretraining, this many simcse steps on the same corpus |
| `[pretrain.contrastive] lr`, `batch_size`, ... | `1e-3`, `64` | its lr, batch, warmup_steps, temperature, views |
| `[finetune] task` | (required) | `classify`, `pair`, `tag`, `span` or `seqtag` (a label per character) |
| `[finetune] train` / `validation` / `test` | (required) | labeled files (formats: `pretune finetune --help`) |
| `[finetune] max_len`, `epochs`, `patience`, `metric`, `freeze`, `head_lr`, ... | | as for `pretune finetune` |
| `[finetune] label_fraction` | `1.0` | fine-tune on this fraction of the training labels (main run) |
| `[finetune] self_training_rounds`, `uda_weight` | `0` (off) | self-training / UDA of the pretrained model |
| `[finetune] unlabeled` | `[corpus] files` | the unlabeled pool of self-training and UDA |
| `[finetune.trainer]` | | the training loop of stage 2 (batch_size, lr of the body, ...), fine-tuning defaults |
| `[sweep] label_fractions` | `[]` | e.g. `[0.01, 0.1, 1.0]`: fine-tune both models on these fractions of the labels |
| `[sweep] label_seed` | `0` | which examples each fraction keeps |
| `[tune] trials`, ... | `0` | `> 0`: search the fine-tuning hyperparameters first (`pretune/run/tune.py`) |
| `[compare] enabled` | `true` | compare with the alternatives below on the same label subsets and test set |
| `[compare] classic` | `true` | TF-IDF + logistic regression (classify, pair) or a CRF (tag, span) |
| `[compare] checkpoints` | `[]` | pretune or Hugging Face folders to compare with (nothing is downloaded) |
| `[compare] probe` | `true` | a linear probe (frozen mean-pooled features + logistic regression) of each checkpoint |
| `[compare] finetune_checkpoints` | `true` | each checkpoint fine-tuned as published with the [finetune] settings |
| `[compare] blend` | `true` | classify, pair: a row of pretune's model and TF-IDF + LR averaged (weight: validation) |
| `[compare] prompts` | `[]` | causal runs with init_from: prompts the published and continued models both continue |

`[finetune] checkpoint`, `out`, `from_scratch` and `[pretrain] shards`, `out` are set by the pipeline. Any key can
be overridden on the command line: `pretune run my.toml --set pretrain.trainer.max_steps=2000 --set run.seed=1`.
"""

from __future__ import annotations

import copy
import re
import tomllib
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from pretune.config import bounds, close_match, coerce_fields, from_dict, load_toml, toml_tables
from pretune.errors import InputError
from pretune.finetune.config import FREEZE_RE
from pretune.finetune.config import SECTIONS as FT_SECTIONS
from pretune.model.transformer import PRESETS
from pretune.pretrain.objectives.contrastive import VIEWS
from pretune.pretrain.stage import SECTIONS as PT_SECTIONS

DEFAULT_CONFIG = "default.toml"
TABLES = ("run", "corpus", "tokenizer", "pretrain", "finetune", "sweep", "tune", "compare")
RUN_WIDE = ("device", "progress")  # trainer keys set for every stage in [run]

# [tune]: a searched key -> (the PipelineConfig attribute holding it, how it is sampled)
SPACE = {
    "lr": ("finetune_trainer", "log"),  # [low, high], log-uniform
    "head_lr": ("finetune", "log"),
    "batch_size": ("finetune_trainer", "choice"),  # one of a list
    "epochs": ("finetune", "int"),  # [low, high], integers
    "warmup_ratio": ("finetune_trainer", "float"),  # [low, high], uniform
    "freeze": ("finetune", "choice"),
}
PRUNERS = ("median", "none")


@dataclass
class RunSection:
    out: str = "pretune-run"
    seed: int = field(default=0, metadata=bounds(ge=0, le=2**63 - 1))
    device: str = "auto"
    progress: bool = True
    threads: int = 0
    title: str = ""
    examples: int = 6
    skip_pretraining: bool = False

    def validate(self, source=None) -> RunSection:
        if self.examples < 0:
            raise InputError(f"[run] examples must be >= 0, got {self.examples}", path=source)
        if self.threads < 0:
            raise InputError(f"[run] threads must be >= 0 (0: torch's default), got {self.threads}", path=source)
        return self


@dataclass
class CorpusSection:
    files: list[str] = field(default_factory=list)
    format: str | None = None
    field: str = "text"
    doc_split: str = "line"
    validation_fraction: float = 0.05

    def validate(self, source=None) -> CorpusSection:
        if not 0 < self.validation_fraction < 1:
            raise InputError(f"[corpus] validation_fraction must be in (0, 1), got {self.validation_fraction}",
                             path=source)
        return self


@dataclass
class TokenizerSection:
    kind: str = "wordpiece"
    vocab_size: int = field(default=8000, metadata=bounds(ge=1))
    min_frequency: int = field(default=2, metadata=bounds(ge=0))
    lowercase: bool = False
    file: str = ""  # an existing tokenizer.json / vocab.txt to use instead of training one


@dataclass
class SweepSection:
    label_fractions: list[float] = field(default_factory=list)
    label_seed: int = field(default=0, metadata=bounds(ge=0, le=2**63 - 1))

    def validate(self, source=None) -> SweepSection:
        for f in self.label_fractions:
            if not 0 < f <= 1:
                raise InputError(f"[sweep] label_fractions must lie in (0, 1], got {f}", path=source)
        if len(set(self.label_fractions)) != len(self.label_fractions):
            raise InputError("[sweep] label_fractions holds a value twice", path=source)
        return self


@dataclass
class ContrastiveSection:
    """[pretrain.contrastive]: a contrastive stage after pretraining (`contrastive/`): `steps` of the simcse objective
    (pretune/pretrain/objectives/contrastive.py) on the pretrained body and the same shards, so that the mean-pooled
    vector fine-tuning starts from says what a text is about. It runs when steps > 0 and the pretraining objective
    is a bidirectional one other than simcse itself; the rest of the trainer is [pretrain.trainer]'s."""
    steps: int = field(default=0, metadata=bounds(ge=0))
    lr: float = field(default=1e-3, metadata=bounds(gt=0))
    batch_size: int = field(default=64, metadata=bounds(ge=2))  # in-batch negatives: at least two texts
    warmup_steps: int = field(default=30, metadata=bounds(ge=0))
    temperature: float = field(default=0.05, metadata=bounds(gt=0))
    views: str = "split"

    def validate(self, source=None) -> ContrastiveSection:
        if self.views not in VIEWS:
            raise InputError(f"[pretrain.contrastive] views must be one of {', '.join(VIEWS)}, got {self.views!r}",
                             path=source)
        return self


@dataclass
class CompareSection:
    enabled: bool = True
    classic: bool = True
    checkpoints: list[str] = field(default_factory=list)  # absolute once loaded
    probe: bool = True
    finetune_checkpoints: bool = True
    blend: bool = True  # classify / pair: pretune's model averaged with TF-IDF + LR, an extra row
    # the body's learning rate when a published checkpoint is fine-tuned as published ([finetune.trainer] lr suits
    # pretune's small models; a BERT-sized checkpoint wants the usual 2e-5 to 1e-4)
    finetune_lr: float = 5e-5
    prompts: list[str] = field(default_factory=list)  # causal runs: prompts generated from by both checkpoints

    def validate(self, source=None) -> CompareSection:
        if not 0 < self.finetune_lr < 1:
            raise InputError(f"[compare] finetune_lr must be in (0, 1), got {self.finetune_lr}", path=source)
        for path in self.checkpoints:
            if not Path(path).is_dir():
                raise InputError("[compare] checkpoints: no such folder (a pretune checkpoint or a Hugging Face "
                                 "model folder)", path=path)
        if len({checkpoint_name(p) for p in self.checkpoints}) != len(self.checkpoints):
            raise InputError("[compare] checkpoints: two folders have the same name; the report names each "
                             "checkpoint by its folder", path=source)
        return self


def checkpoint_name(path: str | Path) -> str:
    """How the report names a [compare] checkpoint: its folder's name, or the parent's for a folder named "model"
    (pretune's run/model, a package's bundled model/)."""
    p = Path(path)
    return p.parent.name if p.name == "model" else p.name


@dataclass
class PipelineConfig:
    """The resolved configuration of one run (paths absolute)."""

    run: RunSection
    corpus: CorpusSection
    tokenizer: TokenizerSection
    pretrain: Any  # pretrain.PretrainSection (shards/out filled in per run)
    model: dict  # [pretrain.model]: overrides of the preset
    pretrain_trainer: Any  # train.TrainConfig
    finetune: Any  # finetune.FinetuneSection
    finetune_trainer: Any  # finetune.FinetuneTrainConfig
    sweep: SweepSection
    source: str
    tune: TuneSection | None = None  # [tune]: the hyperparameter search
    compare: CompareSection = field(default_factory=CompareSection)  # [compare]: the alternatives
    contrastive: ContrastiveSection = field(default_factory=ContrastiveSection)  # [pretrain.contrastive]

    def wants_contrastive(self) -> str | None:
        """Why the contrastive stage does not run (None: it runs)."""
        if self.run.skip_pretraining or not self.contrastive.steps:
            return "off"
        if self.pretrain.objective == "simcse":
            return "the pretraining objective is simcse already"
        if self.pretrain.objective == "clm":
            return "a causal model pools its last token for fine-tuning, not the mean simcse trains"
        return None

    def to_toml(self) -> str:
        """The resolved config as TOML (what `--print-config` shows and the run directory records)."""
        owned = {"shards", "out", "checkpoint", "from_scratch"}
        tables = {
            "run": asdict(self.run),
            "corpus": asdict(self.corpus),
            "tokenizer": asdict(self.tokenizer),
            "pretrain": {k: v for k, v in asdict(self.pretrain).items() if k not in owned},
            "pretrain.model": self.model,
            "pretrain.trainer": _without(asdict(self.pretrain_trainer), RUN_WIDE),
            "pretrain.contrastive": asdict(self.contrastive),
            "finetune": {k: v for k, v in asdict(self.finetune).items() if k not in owned},
            "finetune.trainer": _without(asdict(self.finetune_trainer), RUN_WIDE),
            "sweep": asdict(self.sweep),
            **({"tune": asdict(self.tune)} if self.tune is not None else {}),
            # prompts only when set, so that a run without them records the config it always has
            "compare": {k: v for k, v in asdict(self.compare).items() if k != "prompts" or v},
        }
        return f"# resolved from {self.source}\n\n" + toml_tables(tables)


def _without(values: dict, keys) -> dict:
    return {k: v for k, v in values.items() if k not in keys}


@dataclass
class TuneSection:
    """[tune]: budget, search space and pruning. A range is [low, high]; [] keeps the config's own value."""
    trials: int = 0  # `pretune run`: 0 = no search; `pretune tune`: 0 = DEFAULT_TRIALS
    timeout: float = 0.0  # seconds after which no new trial starts (0: no limit)
    seed: int = 0  # of the sampler (TPE)
    lr: list[float] = field(default_factory=lambda: [1e-5, 1e-3])
    head_lr: list[float] = field(default_factory=list)
    batch_size: list[int] = field(default_factory=lambda: [16, 32, 64])
    epochs: list[int] = field(default_factory=lambda: [3, 12])
    warmup_ratio: list[float] = field(default_factory=lambda: [0.0, 0.2])
    freeze: list[str] = field(default_factory=lambda: ["none", "embeddings"])
    start_from_config: bool = True  # trial 0 runs the config's own values (those inside the space)
    pruner: str = "median"
    prune_startup_trials: int = 3  # trials that finish before any is pruned
    prune_warmup: int = 2  # evaluations every trial gets before it can be pruned (>= 1)

    def validate(self, source: str | None = None) -> TuneSection:
        def bad(msg: str) -> InputError:
            return InputError(f"[tune] {msg}", path=source)

        if self.trials < 0:
            raise bad(f"trials must be >= 0 (0: no search in `pretune run`), got {self.trials}")
        if self.timeout < 0:
            raise bad(f"timeout must be >= 0 seconds (0: no limit), got {self.timeout}")
        for name, low_ok, high_ok, what in (
                ("lr", lambda lo: lo > 0, lambda hi: True, "0 < low <= high"),
                ("head_lr", lambda lo: lo > 0, lambda hi: True, "0 < low <= high"),
                ("epochs", lambda lo: lo >= 1, lambda hi: True, "1 <= low <= high"),
                ("warmup_ratio", lambda lo: lo >= 0, lambda hi: hi < 1, "0 <= low <= high < 1")):
            v = getattr(self, name)
            if v and not (len(v) == 2 and low_ok(v[0]) and high_ok(v[1]) and v[0] <= v[1]):
                raise bad(f"{name} must be [] (not searched) or a range [low, high] with {what}, got {v}")
        for name, ok, what in (("batch_size", lambda b: b >= 1, "sizes >= 1"),
                               ("freeze", lambda f: bool(FREEZE_RE.match(f)),
                                "none, embeddings, body or all-but-last-N")):
            v = getattr(self, name)
            if not all(ok(x) for x in v) or len(set(v)) != len(v):
                raise bad(f"{name} must be [] (not searched) or a list of distinct choices ({what}), got {v}")
        if not any(getattr(self, name) for name in SPACE):
            raise bad(f"the search space is empty: give a range or choices for at least one of {', '.join(SPACE)}")
        if self.pruner not in PRUNERS:
            raise bad(f"pruner must be one of {', '.join(PRUNERS)}, got {self.pruner!r}")
        if self.prune_startup_trials < 0:
            raise bad(f"prune_startup_trials must be >= 0, got {self.prune_startup_trials}")
        if self.prune_warmup < 1:
            raise bad(f"prune_warmup must be >= 1 (evaluations before a trial can be pruned), got {self.prune_warmup}")
        return self

    def space(self) -> dict[str, tuple[str, list]]:
        """The searched keys: name -> (kind, range or choices)."""
        return {name: (kind, list(getattr(self, name))) for name, (_, kind) in SPACE.items() if getattr(self, name)}


def default_config_path() -> Path:
    return Path(str(resources.files("pretune").joinpath("resources", DEFAULT_CONFIG)))


def parse_override(item: str) -> tuple[list[str], Any]:
    """'finetune.trainer.lr=3e-5' -> (['finetune', 'trainer', 'lr'], 3e-05); the value is read as TOML, else text."""
    key, sep, raw = item.partition("=")
    parts = [p.strip() for p in key.split(".")]
    if not sep or len(parts) < 2 or not all(parts):
        raise InputError(f"--set expects TABLE.KEY=VALUE (e.g. finetune.epochs=5), got {item!r}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return parts, value


PATH_KEYS = {("corpus", "files"), ("finetune", "train"), ("finetune", "validation"), ("finetune", "test"),
             ("finetune", "unlabeled"), ("pretrain", "init_from"), ("tokenizer", "file"),
             ("compare", "checkpoints")}


def _resolve_paths(raw: dict, base: Path) -> None:
    for table, key in PATH_KEYS:
        values = raw.get(table)
        if not isinstance(values, dict) or values.get(key) in (None, ""):
            continue
        v = values[key]
        if isinstance(v, list):
            values[key] = [str((base / str(x)).resolve()) if isinstance(x, str) else x for x in v]
        elif isinstance(v, str):
            values[key] = str((base / v).resolve())


def _did_you_mean(key: str, known) -> str:
    close = close_match(key, known)
    return f"; did you mean {close!r}?" if close else f"; expected one of {', '.join(known)}"


def _table(raw: dict, name: str, source) -> dict:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise InputError(f"[{name}] must be a table, got {value!r}", path=source)
    return dict(value)


def load_config(path: str | Path | dict | None = None, overrides: list[str] | None = None,
                out: str | None = None) -> PipelineConfig:
    """Read a pipeline TOML (default: the bundled one), apply `--set` overrides and `--out`, validate every table.
    `path` may also be the tables themselves (a dict, as TOML gives; relative paths from the working directory).
    An error in a value that a `--set` gave names that --set, not the file."""
    try:
        return _load_config(path, overrides, out)
    except InputError as e:
        for item in reversed(overrides or []):
            key = item.partition("=")[0].split(".")[-1].strip()
            if key and e.path is not None and re.search(rf"(?<![\w]){re.escape(key)}(?![\w])", e.message):
                raise InputError(f"--set {item}: {e.message}") from None
        raise


def _load_config(path: str | Path | dict | None, overrides: list[str] | None, out: str | None) -> PipelineConfig:
    if isinstance(path, dict):
        cfg_path, source, raw = Path.cwd() / "config.toml", "the config dict", copy.deepcopy(path)
    else:
        cfg_path = Path(path) if path is not None else default_config_path()
        source, raw = str(cfg_path), load_toml(cfg_path)
    for key in raw:
        if key not in TABLES:
            raise InputError(f"unknown table or key {key!r}{_did_you_mean(key, TABLES)}", path=source)
    _resolve_paths(raw, cfg_path.resolve().parent)
    for item in overrides or []:
        parts, value = parse_override(item)
        if parts[0] not in TABLES:
            raise InputError(f"--set {item!r}: unknown table {parts[0]!r}{_did_you_mean(parts[0], TABLES)}")
        if tuple(parts[:2]) in PATH_KEYS and len(parts) == 2:
            value = [str(Path(v).resolve()) for v in value] if isinstance(value, list) else str(Path(value).resolve())
        node = raw
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise InputError(f"--set {item!r}: {p!r} is a value, not a table")
        node[parts[-1]] = value
    if out is not None:
        raw.setdefault("run", {})["out"] = out

    run = from_dict(RunSection, _table(raw, "run", source), source, "run")
    corpus = from_dict(CorpusSection, _table(raw, "corpus", source), source, "corpus")
    tokenizer = from_dict(TokenizerSection, _table(raw, "tokenizer", source), source, "tokenizer")
    sweep = from_dict(SweepSection, _table(raw, "sweep", source), source, "sweep")

    pre = _table(raw, "pretrain", source)
    model = coerce_fields(PT_SECTIONS["model"], _table(pre, "model", source), source, "pretrain.model")
    pre_train = _trainer_values(_table(pre, "trainer", source), run, "pretrain.trainer", source)
    contrastive = from_dict(ContrastiveSection, _table(pre, "contrastive", source), source, "pretrain.contrastive")
    for sub in ("model", "trainer", "contrastive"):
        pre.pop(sub, None)
    _refuse_owned(pre, ("shards", "out"), "pretrain", source)
    # shards/out are placeholders until the run directory is known; validate() needs them set
    pretrain_sec = from_dict(PT_SECTIONS["pretrain"], {**pre, "shards": "-", "out": "-"}, source, "pretrain")
    pretrain_trainer = from_dict(PT_SECTIONS["train"], pre_train, source, "pretrain.trainer")
    # [pretrain.model] over its preset, checked now rather than after the tokenizer stage (the vocabulary comes later)
    from_dict(PT_SECTIONS["model"], {**PRESETS[pretrain_sec.model_size], **model}, source, "pretrain.model")

    ft = _table(raw, "finetune", source)
    ft_train = _trainer_values(_table(ft, "trainer", source), run, "finetune.trainer", source)
    ft.pop("trainer", None)
    _refuse_owned(ft, ("checkpoint", "out", "from_scratch"), "finetune", source)
    ft.setdefault("unlabeled", list(corpus.files))  # the pool of self-training / consistency training
    finetune_sec = from_dict(FT_SECTIONS["finetune"], {**ft, "checkpoint": "-", "out": "-"}, source, "finetune")
    finetune_trainer = from_dict(FT_SECTIONS["train"], ft_train, source, "finetune.trainer")
    if not finetune_sec.test:
        raise InputError("[finetune] test is required: the held-out file every model is evaluated on", path=source)

    if run.skip_pretraining and not pretrain_sec.init_from:
        raise InputError("[run] skip_pretraining needs [pretrain] init_from: the checkpoint to fine-tune",
                         path=source)
    if not run.skip_pretraining and not corpus.files:
        raise InputError("[corpus] files is required: the unlabeled text to pretrain on", path=source)
    tune = from_dict(TuneSection, _table(raw, "tune", source), source, "tune")
    compare = from_dict(CompareSection, _table(raw, "compare", source), source, "compare")
    return PipelineConfig(run, corpus, tokenizer, pretrain_sec, model, pretrain_trainer, finetune_sec,
                          finetune_trainer, sweep, source, tune, compare, contrastive)


def _trainer_values(values: dict, run: RunSection, where: str, source) -> dict:
    """A trainer table with the [run] settings every stage shares: device and progress (only there) and the seed
    (unless the table sets its own)."""
    if values.get("stop_after") is not None:
        raise InputError(f"[{where}] stop_after is not used by `pretune run`: interrupt the run (Ctrl-C) and run "
                         "it again to continue", path=source)
    for key in RUN_WIDE:
        if key in values:
            raise InputError(f"[{where}] {key}: set it once for every stage in [run] (or with --{key})", path=source)
    values.setdefault("seed", run.seed)
    return {**values, "device": run.device, "progress": run.progress}


def _refuse_owned(values: dict, keys: tuple[str, ...], table: str, source) -> None:
    for key in keys:
        if key in values:
            raise InputError(f"[{table}] {key} is set by `pretune run` (each stage has its own folder); remove it",
                             path=source)


def table_metric(cfg: PipelineConfig) -> str:
    """The test metric of the sweep and the comparison table: the fine-tuning metric, accuracy when that is the loss."""
    metric = cfg.finetune.metric_name()
    return metric if metric != "loss" else "accuracy"
