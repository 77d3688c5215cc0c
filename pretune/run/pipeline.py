"""`pretune run [CONFIG.toml]`: the two-stage recipe in one command, compared with a no-pretraining baseline.

Stages, each in its own folder of the run directory:

    tokenizer/   train a tokenizer on the unlabeled corpus (or take the checkpoint's, with [pretrain] init_from)
    shards/      the corpus as token shards (train / validation split by document)
    pretrain/    pretraining (objective, model and trainer from [pretrain]); pretrain/model is the checkpoint
    tune/        optional ([tune] trials > 0): the hyperparameter search; the fine-tunings below use its best values
    finetune/    fine-tuning of the pretrained model on the labeled training set, early stopping on validation
    baseline/    the same fine-tuning from a random initialisation of the same architecture (never self-trained)
    sweep/       optional: both again on fractions of the labels ([sweep] label_fractions)
    evaluate/    every model on the held-out test set: <model>.json (metrics, confusion, predictions)
    report/      report.html (self-contained) and summary.json; the summary table is also printed

A stage that completes writes `stage.json` (its fingerprint: a hash of its config and of its inputs' contents and
fingerprints). A re-run skips every stage whose fingerprint is unchanged, so changing the labeled data re-runs
fine-tuning, evaluation and the report but not the tokenizer or pretraining. A stage that was interrupted (Ctrl-C,
a crash, a kill) continues from its last checkpoint when the re-run has the same fingerprint. Once a training stage
is complete its resumable `last/` checkpoint (with optimizer state) is deleted; `model/` is its result.

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
| `[corpus] files` | (required) | unlabeled text files: .txt, .jsonl, .csv, .tsv, optionally .gz |
| `[corpus] format` | from suffix | `txt`, `jsonl`, `csv` or `tsv` |
| `[corpus] field` | `"text"` | JSONL field or CSV/TSV column holding the text |
| `[corpus] doc_split` | `"line"` | txt: a document per `line`, or per `blank`-line-separated block |
| `[corpus] validation_fraction` | `0.05` | documents held out to validate pretraining |
| `[tokenizer] kind` | `"wordpiece"` | `wordpiece`, `bpe`, `bytelevel-bpe`, `unigram`, `char` |
| `[tokenizer] vocab_size` | `8000` | vocabulary size (specials included) |
| `[tokenizer] min_frequency` | `2` | rarest pair/piece kept |
| `[tokenizer] lowercase` | `false` | lowercase (and strip accents, WordPiece) before tokenizing |
| `[tokenizer] file` | none | use this `tokenizer.json` / `vocab.txt` (casing guessed) instead of training one |
| `[pretrain] objective` | `"mlm"` | pretraining objective (`pretune pretrain --help` lists them) |
| `[pretrain] model_size` | `"base"` | preset `tiny`, `mini`, `small` or `base`; `[pretrain.model]` overrides it |
| `[pretrain] max_len` | `128` | tokens per packed pretraining sequence |
| `[pretrain] mask_prob` ... | | the objective's options, as for `pretune pretrain` |
| `[pretrain] init_from` | none | continue pretraining from this checkpoint (its tokenizer and architecture) |
| `[pretrain.model]` | | any `ModelConfig` key (hidden_size, num_layers, ...), overriding the preset |
| `[pretrain.trainer]` | | the training loop of stage 1: max_steps, batch_size, lr, warmup_ratio, eval_every, ... |
| `[finetune] task` | (required) | `classify`, `pair`, `tag` or `span` |
| `[finetune] train` / `validation` / `test` | (required) | labeled files (formats: `pretune finetune --help`) |
| `[finetune] max_len`, `epochs`, `patience`, `metric`, `freeze`, `head_lr`, ... | | as for `pretune finetune` |
| `[finetune] label_fraction` | `1.0` | fine-tune on this fraction of the training labels (main run) |
| `[finetune] self_training_rounds`, `uda_weight` | `0` (off) | self-training / UDA of the pretrained model |
| `[finetune] unlabeled` | `[corpus] files` | the unlabeled pool of self-training and UDA |
| `[finetune.trainer]` | | the training loop of stage 2 (batch_size, lr of the body, ...), fine-tuning defaults |
| `[sweep] label_fractions` | `[]` | e.g. `[0.01, 0.1, 1.0]`: fine-tune both models on these fractions of the labels |
| `[sweep] label_seed` | `0` | which examples each fraction keeps |
| `[tune] trials`, ... | `0` | `> 0`: search the fine-tuning hyperparameters first (`pretune/tune.py`) |

`[finetune] checkpoint`, `out`, `from_scratch` and `[pretrain] shards`, `out` are set by the pipeline. Any key can
be overridden on the command line: `pretune run my.toml --set pretrain.trainer.max_steps=2000 --set run.seed=1`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from pretune import files
from pretune.config import NEUTRAL_KEYS, coerce_fields, from_dict, load_toml, toml_tables
from pretune.errors import InputError
from pretune.training import checkpoint as ck

FORMAT_VERSION = 1
DEFAULT_CONFIG = "default.toml"
TABLES = ("run", "corpus", "tokenizer", "pretrain", "finetune", "sweep", "tune")
# trainer keys that do not change what a stage computes (left out of fingerprints)
RUN_WIDE = ("device", "progress")  # trainer keys set for every stage in [run]


# ---- config -----------------------------------------------------------------------------------------------------
@dataclass
class RunSection:
    out: str = "pretune-run"
    seed: int = 0
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
    vocab_size: int = 8000
    min_frequency: int = 2
    lowercase: bool = False
    file: str = ""  # an existing tokenizer.json / vocab.txt to use instead of training one


@dataclass
class SweepSection:
    label_fractions: list[float] = field(default_factory=list)
    label_seed: int = 0

    def validate(self, source=None) -> SweepSection:
        for f in self.label_fractions:
            if not 0 < f <= 1:
                raise InputError(f"[sweep] label_fractions must lie in (0, 1], got {f}", path=source)
        if len(set(self.label_fractions)) != len(self.label_fractions):
            raise InputError("[sweep] label_fractions holds a value twice", path=source)
        return self


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
    tune: Any = None  # tune.TuneSection: the hyperparameter search

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
            "finetune": {k: v for k, v in asdict(self.finetune).items() if k not in owned},
            "finetune.trainer": _without(asdict(self.finetune_trainer), RUN_WIDE),
            "sweep": asdict(self.sweep),
            **({"tune": asdict(self.tune)} if self.tune is not None else {}),
        }
        return f"# resolved from {self.source}\n\n" + toml_tables(tables)


def _without(values: dict, keys) -> dict:
    return {k: v for k, v in values.items() if k not in keys}


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
             ("finetune", "unlabeled"), ("pretrain", "init_from"), ("tokenizer", "file")}


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
    import difflib

    close = difflib.get_close_matches(key, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; expected one of {', '.join(known)}"


def _table(raw: dict, name: str, source) -> dict:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise InputError(f"[{name}] must be a table, got {value!r}", path=source)
    return dict(value)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                out: str | None = None) -> PipelineConfig:
    """Read a pipeline TOML (default: the bundled one), apply `--set` overrides and `--out`, validate every table."""
    from pretune.finetune.stage import SECTIONS as FT_SECTIONS
    from pretune.pretrain.stage import SECTIONS as PT_SECTIONS
    from pretune.run.tune import TuneSection

    cfg_path = Path(path) if path is not None else default_config_path()
    source = str(cfg_path)
    raw = load_toml(cfg_path)
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
    pre.pop("model", None)
    pre.pop("trainer", None)
    _refuse_owned(pre, ("shards", "out"), "pretrain", source)
    # shards/out are placeholders until the run directory is known; validate() needs them set
    pretrain_sec = from_dict(PT_SECTIONS["pretrain"], {**pre, "shards": "-", "out": "-"}, source, "pretrain")
    pretrain_trainer = from_dict(PT_SECTIONS["train"], pre_train, source, "pretrain.trainer")

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
    return PipelineConfig(run, corpus, tokenizer, pretrain_sec, model, pretrain_trainer, finetune_sec,
                          finetune_trainer, sweep, source, tune)


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


# ---- fingerprints and stage records -----------------------------------------------------------------------------
_HASHES: dict[tuple, str] = {}


def file_hash(path: str | Path) -> str:
    """sha256 of a file's bytes (cached per path, size and mtime within this process)."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise InputError("file not found", path=p) from None
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def fingerprint(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]


def _trainer_fp(tcfg) -> dict:
    return {k: v for k, v in asdict(tcfg).items() if k not in NEUTRAL_KEYS}


@dataclass
class StageResult:
    name: str
    directory: Path
    fingerprint: str
    result: dict
    skipped: bool
    seconds: float


class Runner:
    """Runs stages in a run directory, skipping those whose fingerprint is unchanged and resuming interrupted ones."""

    def __init__(self, root: Path, force: bool = False, log=print):
        self.root, self.force, self.log = root, force, log
        self.stages: dict[str, StageResult] = {}

    def _marker(self, name: str) -> Path:
        return self.root / ".running" / (name.replace("/", "__") + ".json")

    def stage(self, name: str, inputs: dict, work, can_continue: Callable[[Path], bool] | None = None
              ) -> StageResult:
        """Run `work(directory, resume) -> dict` unless `name`'s stage.json holds the same fingerprint.
        `can_continue(directory)`: whether an interrupted run of the stage left something to continue from
        (None: the stage always starts over)."""
        d = self.root / name
        fp = fingerprint({"stage": name, **inputs})
        record_file = d / "stage.json"
        if not self.force and record_file.is_file():
            record = _read_record(record_file)
            if record.get("fingerprint") == fp and record.get("status") == "done":
                self.log(f"[{name}] up to date, skipped")
                res = StageResult(name, d, fp, record.get("result", {}), True, float(record.get("seconds", 0.0)))
                self.stages[name] = res
                return res
        marker = self._marker(name)
        resume = (can_continue is not None and not self.force and marker.is_file() and can_continue(d)
                  and _read_record(marker).get("fingerprint") == fp)
        if not resume and d.exists():
            shutil.rmtree(d)
        marker.parent.mkdir(parents=True, exist_ok=True)
        files.write_json(marker, {"fingerprint": fp, "started": _now()})
        self.log(f"[{name}] {'continuing from its last checkpoint' if resume else 'running'}")
        t0 = time.perf_counter()
        result = work(d, resume)
        seconds = time.perf_counter() - t0
        d.mkdir(parents=True, exist_ok=True)
        if can_continue is not None and (d / "model").is_dir():
            shutil.rmtree(d / "last", ignore_errors=True)
        files.write_json(record_file, {"stage": name, "status": "done", "fingerprint": fp, "finished": _now(),
                                    "seconds": round(seconds, 2), "inputs": inputs, "result": result})
        marker.unlink(missing_ok=True)
        self.log(f"[{name}] done in {seconds:.1f}s")
        res = StageResult(name, d, fp, result, False, seconds)
        self.stages[name] = res
        return res


def _read_record(path: Path) -> dict:
    try:
        return files.read_json(path)
    except InputError:
        return {}  # a damaged record only means the stage runs again


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# ---- the stages -------------------------------------------------------------------------------------------------
def _corpus_inputs(cfg: PipelineConfig) -> dict:
    c = cfg.corpus
    return {"files": [file_hash(f) for f in c.files], "format": c.format, "field": c.field,
            "doc_split": c.doc_split}


def stage_tokenizer(runner: Runner, cfg: PipelineConfig) -> StageResult:
    from pretune.text.corpus import Corpus
    from pretune.text.tokenizer import PretuneTokenizer, train_tokenizer

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
    from pretune.pretrain.shards import prepare_corpus
    from pretune.text.tokenizer import PretuneTokenizer

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
    from pretune.pretrain.stage import pretrain

    sec = dataclasses.replace(cfg.pretrain, shards=str(shards.directory))
    init = cfg.pretrain.init_from
    inputs = {
        "shards": shards.fingerprint,
        "pretrain": {k: v for k, v in asdict(sec).items() if k not in ("shards", "out", "init_from")},
        "model": cfg.model,
        "trainer": _trainer_fp(cfg.pretrain_trainer),
        "init_from": file_hash(ck.resolve(init) / ck.WEIGHTS) if init else None,
    }

    def work(d: Path, resume: bool) -> dict:
        sections = {"pretrain": dataclasses.replace(sec, out=str(d)), "model": _model_config_for_record(cfg),
                    "train": dataclasses.replace(cfg.pretrain_trainer)}
        result = pretrain(sections, resume=resume, overwrite=not resume, model_values=dict(cfg.model),
                          source=cfg.source)
        return {"steps": result["step"], "validation": result["validation"]}

    return runner.stage("pretrain", inputs, work, can_continue=has_last_checkpoint)


def _model_config_for_record(cfg: PipelineConfig):
    """pretrain() records asdict() of every section in run.json: give it the preset merged with the overrides."""
    from pretune.model.transformer import PRESETS, ModelConfig

    return ModelConfig(**{**PRESETS[cfg.pretrain.model_size], **cfg.model})


def _labeled_inputs(sec) -> dict:
    files = {"train": file_hash(sec.train), "validation": file_hash(sec.validation)}
    if sec.semi_supervised():  # the pool is read, and pool texts also in the test set are dropped
        files.update(unlabeled=[file_hash(f) for f in sec.unlabeled], test=file_hash(sec.test))
    return files


def _finetune_fp(sec, tcfg) -> dict:
    skip = ("checkpoint", "out", "test", "train", "validation", "from_scratch", "unlabeled", "pseudo_labels")
    if not sec.semi_supervised():  # e.g. the baseline: the pool settings change nothing
        skip += sec.SEMI_SUPERVISED_KEYS
    return {"finetune": {k: v for k, v in asdict(sec).items() if k not in skip}, "trainer": _trainer_fp(tcfg)}


def architecture_fp(checkpoint: Path) -> dict:
    """What a from-scratch baseline depends on: the architecture and the tokenizer, not the weights."""
    conf = files.read_json(checkpoint / ck.CONFIG)
    return {"model": conf.get("model"), "tokenizer": file_hash(checkpoint / ck.TOKENIZER)}


def has_last_checkpoint(d: Path) -> bool:
    """A training run interrupted in `d` can continue: it left its last/ checkpoint."""
    return (d / "last").is_dir()


def stage_finetune(runner: Runner, cfg: PipelineConfig, name: str, checkpoint: Path, upstream: dict,
                   from_scratch: bool, label_fraction: float | None = None, label_seed: int | None = None):
    """One fine-tuning run (the pretrained model, or the baseline when from_scratch) in `name`/. The pretrained model
    is self-trained / consistency-trained when [finetune] asks for it; the baseline is always the plain fine-tune."""
    from pretune.finetune.stage import finetune
    from pretune.semisup import selftrain

    sec = dataclasses.replace(cfg.finetune, checkpoint=str(checkpoint), from_scratch=from_scratch)
    if from_scratch:
        sec = dataclasses.replace(sec, self_training_rounds=0, uda_weight=0.0)
    if not sec.self_training_rounds:  # self-training records each round's test metrics; others leave test to evaluate
        sec = dataclasses.replace(sec, test=None)
    if label_fraction is not None:
        sec = dataclasses.replace(sec, label_fraction=label_fraction)
    if label_seed is not None:
        sec = dataclasses.replace(sec, label_seed=label_seed)
    inputs = {"init": upstream, "from_scratch": from_scratch, "data": _labeled_inputs(sec),
              **_finetune_fp(sec, cfg.finetune_trainer)}

    def work(d: Path, resume: bool) -> dict:
        sections = {"finetune": dataclasses.replace(sec, out=str(d)),
                    "train": dataclasses.replace(cfg.finetune_trainer)}
        run = selftrain.self_train if sec.self_training_rounds else finetune
        r = run(sections, resume=resume, overwrite=not resume, source=cfg.source)
        return {k: r.get(k) for k in ("metric", "best", "validation", "steps", "n_train", "stopped_early",
                                      "self_training")}

    return runner.stage(name, inputs, work,
                        can_continue=selftrain.can_continue if sec.self_training_rounds else has_last_checkpoint)


def stage_evaluate(runner: Runner, cfg: PipelineConfig, models: dict[str, StageResult]) -> StageResult:
    """Every model on the test set: evaluate/<model>.json with metrics, confusion/per-type scores, predictions."""
    from pretune.evaluate.report import headline_metrics
    from pretune.finetune.stage import evaluate_file, load_task_model

    test = cfg.finetune.test
    inputs = {"test": file_hash(test), "models": {n: s.fingerprint for n, s in models.items()}}

    def work(d: Path, resume: bool) -> dict:
        from pretune.training.config import resolve_device

        d.mkdir(parents=True, exist_ok=True)
        device = resolve_device(cfg.run.device)
        scores = {}
        for name, st in models.items():
            loaded = load_task_model(st.directory / "model", device=device)
            report = evaluate_file(loaded, test, batch_size=max(32, cfg.finetune_trainer.batch_size * 2))
            files.write_json(d / f"{_file_name(name)}.json", report)
            scores[name] = headline_metrics(report)
            runner.log(f"  {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores[name].items()))
        return {"test": scores, "test_size": _support(report)}

    return runner.stage("evaluate", inputs, work)


def _file_name(model: str) -> str:
    return model.replace("/", "_")


def _support(report: dict) -> int:
    """The number of test examples (sentences for tag/span, where "support" counts entities)."""
    return len(report.get("predictions", []))


# ---- statistics, examples, summary -------------------------------------------------------------------------------
def check_inputs(cfg: PipelineConfig) -> None:
    """Fail before hours of pretraining, not after: every input file exists, the labeled sets read cleanly, and
    validation and test use only labels the training set has."""
    from pretune.text.labeled import LabelMap, read_examples

    if not cfg.run.skip_pretraining:
        for f in cfg.corpus.files:
            if not Path(f).is_file():
                raise InputError("corpus file not found", path=f)
    if cfg.pretrain.init_from:
        ck.resolve(cfg.pretrain.init_from)
    sec = cfg.finetune
    train = read_examples(sec.train, sec.task, **sec.fields())
    labels = LabelMap.from_examples(train, sec.task)
    for path in (sec.validation, sec.test):
        for ex in read_examples(path, sec.task, **sec.fields()):
            if sec.task in ("classify", "pair"):
                names = [ex.label]
            elif sec.task == "tag":
                names = ex.tags or []
            else:
                names = [lab for _, _, lab in ex.spans or []]
            for name in names:
                labels.index(name, path, ex.line)


def label_statistics(sec) -> dict:
    """Per split, how often each label occurs (classify/pair: examples; tag: entities; span: spans)."""
    from pretune.evaluate.metrics import entity_spans
    from pretune.text.labeled import read_examples

    counts: dict[str, dict[str, int]] = {}
    fields = sec.fields()
    for split in ("train", "validation", "test"):
        path = getattr(sec, split)
        examples = read_examples(path, sec.task, **fields)
        c: dict[str, int] = {}
        for ex in examples:
            if sec.task in ("classify", "pair"):
                names = [ex.label]
            elif sec.task == "tag":
                names = [t for t, _, _ in entity_spans(ex.tags or [])]
            else:
                names = [lab for _, _, lab in ex.spans or []]
            for n in names:
                c[n] = c.get(n, 0) + 1
        counts[split] = dict(sorted(c.items()))
        counts.setdefault("_examples", {})[split] = len(examples)
    n = counts.pop("_examples")
    unit = "examples" if sec.task in ("classify", "pair") else "entities" if sec.task == "tag" else "spans"
    note = ", ".join(f"{split}: {n[split]:,} {'examples' if sec.task in ('classify', 'pair') else 'sentences'}"
                     for split in n)
    if sec.label_fraction < 1:
        note += f" (fine-tuning uses {sec.label_fraction:g} of the training set)"
    return {"counts": counts, "unit": unit, "note": note}


def corpus_statistics(cfg: PipelineConfig, stages: dict[str, StageResult]) -> dict | None:
    if "shards" not in stages:
        return None
    meta = json.loads((stages["shards"].directory / "meta.json").read_text(encoding="utf-8"))
    splits = {}
    for split, v in meta.get("splits", {}).items():
        docs, toks = int(v.get("n_docs", 0)), int(v.get("n_tokens", 0))
        splits[split] = {"documents": docs, "tokens": toks, "tokens_per_document": toks / docs if docs else 0.0}
    tok = stages["tokenizer"].result
    return {"files": [Path(f).name for f in cfg.corpus.files], "splits": splits, "tokenizer": tok.get("kind"),
            "vocab_size": tok.get("vocab_size")}


def pick_examples(gold: list[str], preds: dict[str, list[str]], n: int) -> list[int]:
    """Indices of test examples to show: where only the pretrained model is right first, then both right, then
    other cases; within each group spread evenly over the test set (deterministic)."""
    if n <= 0 or not gold:
        return []
    p, b = preds.get("pretrained", []), preds.get("baseline", [])
    groups: list[list[int]] = [[], [], []]
    for i, g in enumerate(gold):
        pr, ba = (p[i] if i < len(p) else None), (b[i] if i < len(b) else None)
        groups[0 if pr == g and ba != g else 1 if pr == g else 2].append(i)
    quota = [n - 2 * (n // 3), n // 3, n // 3]  # e.g. 6 -> 2 + 2 + 2, 4 -> 2 + 1 + 1
    chosen: list[int] = []
    for group, k in zip(groups, quota, strict=True):
        chosen += _spread(group, k)
    rest = [i for g in groups for i in _spread(g, len(g)) if i not in chosen]
    return sorted(chosen + rest[: n - len(chosen)])


def _spread(items: list[int], k: int) -> list[int]:
    if k <= 0 or not items:
        return []
    if k >= len(items):
        return list(items)
    step = len(items) / k
    return [items[int(j * step)] for j in range(k)]


def build_examples(cfg: PipelineConfig, stages: dict[str, StageResult], reports: dict[str, dict]) -> tuple[list, str]:
    """Test examples for the report, each with the pretrained model's per-token contributions as HTML.

    Returns (examples, the attribution method's name)."""
    from pretune.evaluate.report import short_labels
    from pretune.finetune.stage import load_task_model
    from pretune.text.labeled import read_examples
    from pretune.training.config import resolve_device
    from pretune.use.explain import explain_full, explain_html

    sec = cfg.finetune
    if sec.task not in ("classify", "pair"):
        return _token_task_examples(cfg, reports), ""
    examples = read_examples(sec.test, sec.task, **sec.fields())
    gold = [ex.label for ex in examples]
    preds = {m: [p["label"] for p in reports[m]["predictions"]] for m in ("pretrained", "baseline")}
    chosen = pick_examples(gold, preds, cfg.run.examples)
    if not chosen:
        return [], ""
    model, tok, conf = load_task_model(stages["finetune"].directory / "model", device=resolve_device(cfg.run.device))
    names = reports["pretrained"]["labels"]
    shorten = dict(zip(names, short_labels(names), strict=True))
    out, method = [], ""
    for i in chosen:
        ex = examples[i]
        exp = explain_full(model, tok, ex.text, ex.text_b, max_len=conf.get("max_len"))
        method = exp.method
        out.append({"index": i, "text": exp.text, "gold": shorten[ex.label],
                    "html": explain_html(exp.text, exp.items),
                    "predictions": {m: shorten.get(preds[m][i], preds[m][i]) for m in preds}})
    return out, method


def _token_task_examples(cfg: PipelineConfig, reports: dict[str, dict]) -> list:
    """tag/span: a few test sentences with gold and predicted entities; the pretrained model's entities are
    highlighted in the sentence (green: right, red: wrong)."""
    from pretune.evaluate.metrics import entity_spans
    from pretune.text.labeled import read_examples

    sec = cfg.finetune
    examples = read_examples(sec.test, sec.task, **sec.fields())

    def as_spans(item) -> set[tuple[int, int, str]]:
        if isinstance(item, dict) and "tags" in item:
            return {(s, e, t) for t, s, e in entity_spans(item["tags"])}
        if isinstance(item, dict):
            return {(x["start"], x["end"], x["label"]) for x in item["spans"]}
        if sec.task == "tag":
            return {(s, e, t) for t, s, e in entity_spans(item.tags or [])}
        return set(item.spans or [])

    def describe(tokens: list[str], spans: set) -> str:
        return "; ".join(f"{' '.join(tokens[s:e])} ({lab})" for s, e, lab in sorted(spans)) or "none"

    gold_spans = [as_spans(ex) for ex in examples]
    pred_spans = {m: [as_spans(p) for p in reports[m]["predictions"]] for m in ("pretrained", "baseline")}
    gold = [describe(ex.tokens, g) for ex, g in zip(examples, gold_spans, strict=True)]
    preds = {m: [describe(ex.tokens, p) for ex, p in zip(examples, pred_spans[m], strict=True)] for m in pred_spans}
    chosen = pick_examples(gold, preds, cfg.run.examples)
    return [{"index": i, "text": " ".join(examples[i].tokens), "gold": gold[i],
             "predictions": {m: preds[m][i] for m in preds},
             "html": _highlight(examples[i].tokens, pred_spans["pretrained"][i], gold_spans[i])} for i in chosen]


def _highlight(tokens: list[str], predicted: set, gold: set) -> str:
    """The sentence with each predicted span marked: green when it is a gold span, red when not."""
    import html

    starts = {s: (e, lab) for s, e, lab in sorted(predicted, key=lambda x: (x[0], -x[1]))}
    out, i = [], 0
    while i < len(tokens):
        if i in starts:
            e, lab = starts[i]
            color = "40, 160, 60" if (i, e, lab) in gold else "210, 50, 50"
            text = html.escape(" ".join(tokens[i:e]))
            out.append(f'<span style="background-color: rgba({color}, 0.35); border-radius: 3px" '
                       f'title="{html.escape(lab)}">{text} <sub>{html.escape(lab)}</sub></span>')
            i = max(e, i + 1)
        else:
            out.append(html.escape(tokens[i]))
            i += 1
    return " ".join(out)


def build_summary(cfg: PipelineConfig, stages: dict[str, StageResult], evaluation: StageResult,
                  sweep_points: list[dict]) -> dict:
    """summary.json: the test metrics of both models, the gain, the sweep and the stage timings."""
    from pretune.evaluate.report import gains

    scores = evaluation.result["test"]
    models = {}
    for name in ("pretrained", "baseline"):
        st = stages["finetune" if name == "pretrained" else "baseline"]
        models[name] = {"test": scores[name], "best": st.result.get("best"), "steps": st.result.get("steps"),
                        "n_train": st.result.get("n_train"), "checkpoint": str(st.directory / "model")}
    summary = {
        "format_version": FORMAT_VERSION,
        "created": _now(),
        "task": cfg.finetune.task,
        "metric": cfg.finetune.metric_name(),
        "test_size": evaluation.result.get("test_size"),
        "models": models,
        "gain": gains({m: models[m]["test"] for m in models}),
        "sweep": sweep_points,
        "sweep_metric": cfg.finetune.metric_name() if cfg.finetune.metric_name() != "loss" else "accuracy",
        "pretrain": stages["pretrain"].result if "pretrain" in stages else None,
        "self_training": stages["finetune"].result.get("self_training"),  # rounds of the pretrained model, or None
        "stages": {n: {"skipped": s.skipped, "seconds": round(s.seconds, 1)} for n, s in stages.items()},
        "compute_seconds": round(sum(s.seconds for s in stages.values()), 1),
    }
    return summary


def stage_report(runner: Runner, cfg: PipelineConfig, stages: dict[str, StageResult], evaluation: StageResult,
                 sweep_points: list[dict], wall_start: float) -> StageResult:
    from pretune.evaluate.report import ReportData, write_report
    from pretune.run.tune import read_search, search_summary

    inputs = {"stages": {n: s.fingerprint for n, s in stages.items()}, "config": cfg.to_toml().split("\n", 1)[1],
              "title": cfg.run.title, "examples": cfg.run.examples}

    def work(d: Path, resume: bool) -> dict:
        d.mkdir(parents=True, exist_ok=True)
        reports = {m: files.read_json(evaluation.directory / f"{m}.json") for m in ("pretrained", "baseline")}
        summary = build_summary(cfg, stages, evaluation, sweep_points)
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
            pretrain_log=_read_log(stages["pretrain"].directory) if "pretrain" in stages else [],
            finetune_logs={"pretrained": _read_log(stages["finetune"].directory),
                           "baseline": _read_log(stages["baseline"].directory)},
            test_reports=reports,
            examples=examples,
            tune=search,
        )
        path = write_report(d, data)
        files.write_json(d / "summary.json", summary)
        return {"report": str(path)}

    return runner.stage("report", inputs, work)


def _read_log(directory: Path) -> list[dict]:
    log = directory / "metrics.jsonl"
    records = []
    if log.is_file():
        for line in log.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


# ---- the whole run ----------------------------------------------------------------------------------------------
def prepare_run_dir(root: Path, cfg: PipelineConfig) -> None:
    """A new or empty directory becomes a run directory; one holding anything else is refused."""
    marker = root / "pipeline.json"
    if root.exists() and not root.is_dir():
        raise InputError("run directory is a file; choose another --out", path=root)
    if root.exists() and any(root.iterdir()) and not marker.is_file():
        raise InputError("this directory holds files but no pretune run (no pipeline.json); choose another --out",
                         path=root)
    root.mkdir(parents=True, exist_ok=True)
    files.write_json(marker, {"format_version": FORMAT_VERSION, "config": cfg.source})
    (root / "config.toml").write_text(cfg.to_toml(), encoding="utf-8")


def start_run(cfg: PipelineConfig, force: bool = False, log=print) -> tuple[Runner, Path, dict, dict]:
    """Check the inputs, set up the run directory, bring the tokenizer, shards and pretraining up to date.

    Returns (runner, the checkpoint to fine-tune, its fingerprint, the fingerprint of its architecture)."""
    check_inputs(cfg)
    if cfg.run.threads:
        import torch

        torch.set_num_threads(cfg.run.threads)
    root = Path(cfg.run.out).resolve()
    prepare_run_dir(root, cfg)
    runner = Runner(root, force=force, log=log)
    if cfg.run.skip_pretraining:
        base = ck.resolve(cfg.pretrain.init_from)
    else:
        tok = stage_tokenizer(runner, cfg)
        shards = stage_shards(runner, cfg, tok)
        base = stage_pretrain(runner, cfg, shards).directory / "model"
    # fine-tuning depends on the pretrained weights; the baseline only on the architecture and the tokenizer
    arch_fp = architecture_fp(base)
    base_fp = {"weights": file_hash(base / ck.WEIGHTS), **arch_fp}
    return runner, base, base_fp, arch_fp


def run_pipeline(cfg: PipelineConfig, force: bool = False, log=print) -> dict:
    """Run (or bring up to date) every stage; returns the summary (also in report/summary.json)."""
    from pretune.run.tune import tuned_config

    wall_start = time.perf_counter()
    runner, base, base_fp, arch_fp = start_run(cfg, force, log)
    stages = runner.stages
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
    evaluation = stage_evaluate(runner, cfg, models)
    sweep_points = _sweep_points(cfg, models, evaluation, sweep_models)
    report = stage_report(runner, cfg, dict(stages), evaluation, sweep_points, wall_start)
    summary = files.read_json(report.directory / "summary.json")
    return summary


def _sweep_points(cfg: PipelineConfig, models: dict[str, StageResult], evaluation: StageResult,
                  sweep_models: dict[str, tuple[float, str]]) -> list[dict]:
    if not cfg.sweep.label_fractions:
        return []
    scores = evaluation.result["test"]
    points: dict[float, dict] = {}
    main = cfg.finetune.label_fraction
    for f in cfg.sweep.label_fractions:
        points[f] = {"fraction": f}
    if main in points and cfg.sweep.label_seed == cfg.finetune.label_seed:
        points[main].update(n_train=models["pretrained"].result.get("n_train"), pretrained=scores["pretrained"],
                            baseline=scores["baseline"])
    for name, (f, model) in sweep_models.items():
        points[f][model] = scores[name]
        points[f]["n_train"] = models[name].result.get("n_train")
    return [points[f] for f in sorted(points)]


# ---- CLI --------------------------------------------------------------------------------------------------------
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
    from pretune.evaluate.report import format_summary

    cfg = load_config(args.config, overrides=cli_overrides(args), out=args.out)
    if args.print_config:
        sys.stdout.write(cfg.to_toml())
        return
    t0 = time.perf_counter()
    summary = run_pipeline(cfg, force=args.force)
    root = Path(cfg.run.out)
    print()
    print(format_summary(summary))
    print(f"\nthis run took {time.perf_counter() - t0:.0f} s (the stages of these results: "
          f"{summary.get('compute_seconds', 0):.0f} s)")
    print(f"report: {root / 'report' / 'report.html'}\nsummary: {root / 'report' / 'summary.json'}")


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


def add_run_arguments(p, set_example: str, force_help: str) -> None:
    """The options of every command that reads a run config (`pretune run`, `pretune tune`); see cli_overrides."""
    import argparse

    p.add_argument("config", nargs="?", default=None, help="pipeline TOML (default: the bundled WordNet example)")
    p.add_argument("--out", default=None, help="run directory (default: [run] out, else ./pretune-run)")
    p.add_argument("--set", action="append", default=[], metavar="TABLE.KEY=VALUE",
                   help=f"override a config value, {set_example} (repeatable)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    p.add_argument("--seed", type=int, default=None, help="[run] seed")
    p.add_argument("--threads", type=int, default=None, help="[run] threads: CPU threads for torch")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bars")
    p.add_argument("--force", action="store_true", help=force_help)
