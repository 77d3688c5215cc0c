"""Stage 1: pretrain (or continue pretraining) a Transformer on token shards with one objective."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from pretune.config import bounds, check_numbers
from pretune.errors import InputError
from pretune.files import read_json
from pretune.interop.hf import folder_kind, open_checkpoint
from pretune.model.transformer import PRESETS, ModelConfig, describe
from pretune.pretrain.embed_init import EMBED_INITS, ppmi_embeddings
from pretune.pretrain.objectives import OBJECTIVES, Objective, PretrainModel, Specials, build_objective
from pretune.pretrain.shards import TokenShards, tokenizer_hash
from pretune.pretrain.vocab import extend_vocabulary, read_word_list
from pretune.text.hf_tokenizer import is_hf_folder
from pretune.text.tokenizer import PretuneTokenizer
from pretune.training import checkpoint as ck
from pretune.training import distributed as dist
from pretune.training.batches import BatchSource, label_count
from pretune.training.config import TrainConfig, resolve_device, seed_everything
from pretune.training.optim import param_groups
from pretune.training.outdir import prepare_out_dir
from pretune.training.trainer import Trainer


@dataclass
class PretrainSection:
    """[pretrain] keys (also accepted at the top level of the TOML file)."""

    shards: str = field(default="", metadata={"help": "directory written by `pretune prepare`"})
    out: str = field(default="", metadata={"help": "run directory (checkpoints, metrics.jsonl, model/)"})
    max_len: int = field(default=128, metadata=bounds(ge=8))
    model_size: str = field(default="base", metadata={"help": f"preset: {', '.join(PRESETS)}; [model] keys override"})
    objective: str = field(default="auto", metadata={
        "help": "mlm | wwm | span | mlm+nsp | clm | rtd | simcse | auto (mlm from scratch; with init_from, what the "
                "checkpoint's heads continue: simcse for one without a pretraining head, e.g. a sentence-embedding "
                "model; see auto_objective)"})
    mask_prob: float = field(default=0.15, metadata=bounds(
        gt=0, le=1, help="masked objectives: share of tokens to predict"))
    mask_ratio: float = field(default=0.8, metadata=bounds(
        ge=0, le=1, help="masked objectives: share of those replaced by [MASK]"))
    random_ratio: float = field(default=0.1, metadata=bounds(
        ge=0, le=1, help="masked objectives: share replaced by a random token"))
    span_p: float = field(default=0.2, metadata=bounds(
        gt=0, le=1, help="span: p of the geometric span length (in words)"))
    span_max: int = field(default=10, metadata=bounds(ge=1, help="span: longest span, in words"))
    nsp_prob: float = field(default=0.5, metadata=bounds(
        ge=0, le=1, help="mlm+nsp: probability that segment B is random"))
    temperature: float = field(default=0.05, metadata=bounds(
        gt=0, help="simcse: the softmax temperature of the cosine similarities"))
    views: str = field(default="split", metadata={
        "help": "simcse: split (the two parts of a text at a random cut) | dropout (the whole text twice)"})
    init_from: str | None = field(default=None, metadata={"help": "continue pretraining from this checkpoint"})
    head_warmup_steps: int = field(default=0, metadata=bounds(ge=0, help=
        "with init_from: the heads train alone for this many steps, the body held still (a checkpoint without an MLM "
        "head gets a random one: warm it up before it moves the body)"))
    embed_init: str = field(default="auto", metadata={
        "help": "initial token embeddings of a model trained from scratch: ppmi (vectors factorised from the "
                "training shards' co-occurrence counts, pretrain/embed_init.py) | random; auto = ppmi from scratch, "
                "the checkpoint's with init_from"})
    add_tokens: str | None = field(default=None, metadata={
        "help": "with init_from: file of domain words (one per line) to add to the vocabulary; new embedding rows "
                "start as the mean of the word's old pieces (prepare the shards with `pretune vocab extend`'s "
                "tokenizer)"})

    def validate(self, source=None) -> PretrainSection:
        check_numbers(self, source, "[pretrain] ")
        if not self.shards:
            raise InputError("shards is required: the directory written by `pretune prepare`", path=source)
        if not self.out:
            raise InputError("out is required: the run directory to write", path=source)
        if self.model_size not in PRESETS:
            raise InputError(f"model_size must be one of {sorted(PRESETS)}, got {self.model_size!r}", path=source)
        if self.max_len < 8:
            raise InputError(f"max_len must be >= 8, got {self.max_len}", path=source)
        if self.head_warmup_steps < 0:
            raise InputError(f"head_warmup_steps must be >= 0, got {self.head_warmup_steps}", path=source)
        if self.head_warmup_steps and not self.init_from:
            raise InputError("head_warmup_steps warms new heads up on a pretrained body: it needs init_from",
                             path=source)
        if self.embed_init not in EMBED_INITS:
            raise InputError(f"embed_init must be one of {EMBED_INITS}, got {self.embed_init!r}", path=source)
        if self.embed_init not in ("auto", "random") and self.init_from:
            raise InputError(f"embed_init = {self.embed_init!r} initialises a model trained from scratch; with "
                             "init_from the checkpoint's embeddings are used", path=source)
        if self.add_tokens and not self.init_from:
            raise InputError("add_tokens extends a pretrained model's vocabulary: it needs init_from", path=source)
        auto = self.objective == "auto"
        if auto:  # after the checks above: it opens the init_from checkpoint
            self.objective = auto_objective(self.init_from)
        if self.objective not in OBJECTIVES:
            raise InputError(f"unknown objective {self.objective!r}; expected one of {sorted(OBJECTIVES)}", path=source)
        if self.head_warmup_steps and OBJECTIVES[self.objective].headless:
            raise InputError(f"head_warmup_steps: objective {self.objective!r} has no head to warm up", path=source)
        taken = OBJECTIVES[self.objective].options
        for f in fields(self):
            if f.name in OPTION_NAMES and f.name not in taken and getattr(self, f.name) != f.default:
                if auto:  # options of the objectives auto did not choose (the bundled mask_prob with init_from)
                    setattr(self, f.name, f.default)
                    continue
                users = sorted(name for name, cls in OBJECTIVES.items() if f.name in cls.options)
                raise InputError(f"{f.name} is an option of objective {' / '.join(users)}, not of "
                                 f"{self.objective!r}: remove {f.name} = {getattr(self, f.name)!r} from the "
                                 f"config, or set it to its default {f.default!r}", path=source)
        return self

    def objective_options(self, cls: type[Objective]) -> dict:
        """The keyword arguments of objective class `cls`: the fields named in its `options`."""
        return {name: getattr(self, name) for name in cls.options}


def auto_objective(init_from: str | None) -> str:
    """The objective `objective = "auto"` stands for. From scratch: mlm. With `init_from`: clm for a causal model;
    the checkpoint's own masked objective (mlm, wwm, span; mlm for mlm+nsp) or rtd when its heads are there; else
    simcse, which adds no head, so that a body published without its pretraining head (a sentence-embedding model
    such as all-MiniLM-L6-v2) is not continued through a random MLM head (README "Starting from a published
    checkpoint")."""
    if not init_from:
        return "mlm"
    path = ck.resolve(init_from)
    if is_hf_folder(path):  # read from the config and the weights' names, not converted (pretrain() does that)
        return {"lm": "clm", "mlm": "mlm"}.get(folder_kind(path), "simcse")
    config = read_json(path / ck.CONFIG)
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    if model.get("causal"):
        return "clm"
    recorded, heads = config.get("objective"), set(config.get("heads") or ())
    if recorded == "rtd" and {"generator", "rtd"} <= heads:
        return "rtd"
    if "mlm" in heads:
        return recorded if recorded == "wwm" or (recorded == "span" and "sbo" in heads) else "mlm"
    return "simcse"


OPTION_NAMES = {name for cls in OBJECTIVES.values() for name in cls.options}
SECTIONS = {"pretrain": PretrainSection, "model": ModelConfig, "train": TrainConfig}


def build_model_config(section: PretrainSection, model_values: dict, tok, objective: Objective, source=None):
    values = {**PRESETS[section.model_size], **model_values}
    given_vocab = values.pop("vocab_size", None)
    if given_vocab is not None and given_vocab < tok.vocab_size:
        raise InputError(f"[model] vocab_size {given_vocab} is below the tokenizer's {tok.vocab_size}", path=source)
    values["vocab_size"] = max(given_vocab or 0, tok.vocab_size)
    values["pad_token_id"] = tok.specials.pad
    values["causal"] = objective.causal
    if objective.causal:  # GPT-2's architecture unless [model] says otherwise: `pretune export` writes it as gpt2
        values.setdefault("pre_ln", True)
        values.setdefault("final_layer_norm", values["pre_ln"])
        values.setdefault("embedding_layer_norm", not values["pre_ln"])
        values.setdefault("type_vocab_size", 0)
    cfg = ModelConfig.from_dict(values, source)
    if section.max_len > cfg.max_positions:
        raise InputError(f"max_len {section.max_len} is beyond the model's {cfg.max_positions} positions "
                         f"(raise [model] max_positions or lower max_len)", path=source)
    return cfg


def evaluator(objective: Objective, dataset, batch_size: int, max_batches: int, seed: int, device):
    """Validation over a fixed set of items with fixed masking, so numbers are comparable across steps. Batches are
    global (batch_size x world, each rank scores its rows) and masked from a seed per batch, so the numbers are the
    same under any number of ranks with the same global batch."""
    step = batch_size * dist.world_size()
    n = min(len(dataset), step * max_batches)

    def evaluate(model) -> dict[str, float]:
        totals: dict[str, list[float]] = {}
        for start in range(0, n, step):
            items = [dataset[i] for i in range(start, min(start + step, n))]
            gen = torch.Generator().manual_seed(seed + 7919 + start)
            batch = dist.local_rows(objective.collate(items, gen))
            if batch["input_ids"].shape[0] == 0:
                continue
            _, stats = objective.loss(model, {k: v.to(device) for k, v in batch.items()})
            for k, (num, den) in stats.items():
                acc = totals.setdefault(k, [0.0, 0.0])
                acc[0] += float(num)
                acc[1] += float(den)
        return objective.summarize(dist.all_reduce_totals(totals))

    return evaluate


def init_embeddings(model: PretrainModel, shards: TokenShards, tok, seed: int) -> None:
    """Replace the random token embeddings of a new model with PPMI vectors from the training shards (the special
    tokens keep theirs). Every rank computes the same vectors from the same shards and seed."""
    weight = model.body.embeddings.word.weight  # [V, H]
    keep = np.zeros(weight.shape[0], dtype=bool)
    keep[[i for i in tok.special_ids if 0 <= i < len(keep)]] = True
    start = time.perf_counter()
    vectors = ppmi_embeddings(shards.tokens, shards.doc_offsets, weight.shape[0], weight.shape[1],
                              std=float(weight.detach().std()), seed=seed, keep=keep)
    if vectors is None:
        if dist.is_main():
            print("embed_init ppmi: too few distinct tokens co-occur in the corpus; random embeddings kept")
        return
    rows = ~np.isnan(vectors[:, 0])
    with torch.no_grad():
        weight[torch.from_numpy(rows)] = torch.from_numpy(vectors[rows]).to(weight.dtype)
    if dist.is_main():
        print(f"embed_init ppmi: {int(rows.sum())} of {len(rows)} token embeddings from co-occurrence counts "
              f"({time.perf_counter() - start:.1f} s)")


def pretrain(sections: dict, resume: bool = False, overwrite: bool = False, model_values: dict | None = None,
             source=None) -> dict:
    """Run stage 1 from resolved config sections. Returns the trainer's summary."""
    sec: PretrainSection = sections["pretrain"]
    tcfg: TrainConfig = sections["train"]
    seed_everything(tcfg.seed)
    shards_dir = Path(sec.shards)
    train_shards = TokenShards(shards_dir, "train")
    val_shards = TokenShards(shards_dir, "validation")
    init = open_checkpoint(sec.init_from) if sec.init_from else None
    tok_source = init.path if init is not None else shards_dir
    tok = init.tokenizer() if init is not None else PretuneTokenizer.load(tok_source / ck.TOKENIZER)
    objective_cls = OBJECTIVES[sec.objective]
    objective = build_objective(sec.objective, Specials.from_tokenizer(tok), **sec.objective_options(objective_cls))
    if init is not None:
        cfg = init.model_config()
        objective.check_model(cfg, init.path)
        if sec.max_len > cfg.max_positions:
            raise InputError(f"max_len {sec.max_len} is beyond the checkpoint's {cfg.max_positions} positions",
                             path=source)
    else:
        cfg = build_model_config(sec, model_values or {}, tok, objective, source)
        objective.check_model(cfg, source)
    model = PretrainModel(cfg, objective.heads(cfg))
    if init is not None:
        own = {k for k in model.state_dict()}
        state = {k: v for k, v in init.state_dict.items() if k in own}
        ck.load_into(model, state, init.path, strict=False)
        if sec.add_tokens:
            old_size = tok.vocab_size
            cfg = extend_vocabulary(model, tok, read_word_list(sec.add_tokens))
            objective = build_objective(sec.objective, Specials.from_tokenizer(tok),
                                        **sec.objective_options(objective_cls))
            if dist.is_main():
                print(f"vocabulary: {tok.vocab_size - old_size} tokens added from {sec.add_tokens} "
                      f"({tok.vocab_size} in all)")
    shard_hash = train_shards.meta.get("tokenizer_sha256")
    if shard_hash and shard_hash != tokenizer_hash(tok):
        if sec.add_tokens:
            raise InputError("the shards were not made with this run's tokenizer (the checkpoint's, extended with "
                             f"{sec.add_tokens}); write it with `pretune vocab extend {init.path} {sec.add_tokens} "
                             "--out TOKENIZER` and run `pretune prepare` with it", path=shards_dir)
        raise InputError("the shards were made with another tokenizer than the one this run uses "
                         f"({tok_source / ck.TOKENIZER}); run `pretune prepare` with it", path=shards_dir)
    for shards in (train_shards, val_shards):
        top = int(shards.tokens.max()) if len(shards.tokens) else -1
        if top >= cfg.vocab_size:
            raise InputError(f"the {shards.split} shards hold token id {top}, beyond the model's vocabulary of "
                             f"{cfg.vocab_size}: they were made with another tokenizer (or are damaged)",
                             path=shards.directory / f"{shards.split}.tokens.bin")
    out = Path(sec.out)
    run_record = {name: asdict(obj) for name, obj in sections.items()}
    run_record["model"] = cfg.to_dict()  # the architecture trained: preset, overrides and the tokenizer's vocabulary
    run_record["launch"] = {"world_size": dist.world_size(),
                            "global_batch": tcfg.batch_size * tcfg.grad_accum * dist.world_size()}
    device = resolve_device(tcfg.device)  # the device the Trainer moves the model to: checked before --overwrite
    train_data = objective.dataset(train_shards, sec.max_len)  # and the data (NSP needs 2 documents per split)
    val_data = objective.dataset(val_shards, sec.max_len)
    batches = BatchSource(train_data, tcfg.batch_size, objective.collate, seed=tcfg.seed)
    resume = prepare_out_dir(out, run_record, resume, overwrite)
    if sec.embed_init in ("auto", "ppmi") and init is None and not resume:
        init_embeddings(model, train_shards, tok, tcfg.seed)
    if dist.is_main():
        print(describe(cfg, model.body.num_parameters() + sum(p.numel() for p in model.heads.parameters())))
    model_files = {"model": cfg.to_dict(), "objective": objective.name, "heads": sorted(model.heads.keys())}
    trainer = Trainer(
        model, tcfg, out,
        groups=param_groups(model, tcfg.weight_decay, tcfg.lr, sec.head_warmup_steps),
        batches=batches,
        loss_fn=objective.loss,
        save_model=ck.model_writer(model_files, tok),
        evaluate=evaluator(objective, val_data, tcfg.batch_size, tcfg.eval_batches, tcfg.seed, device),
        summarize=objective.summarize,
        loss_weight=getattr(objective, "loss_weight", label_count),  # masked tokens: the unit the loss averages
        run_record=run_record,
    )
    result = trainer.fit(resume=resume)
    if dist.is_main():
        print(json.dumps({"step": result["step"], "validation": result["validation"]}))
    return result

