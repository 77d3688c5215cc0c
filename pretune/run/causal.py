"""The causal-model comparison of `pretune run` (`[pretrain] objective = "clm"` with `init_from`): the checkpoint as
published against the continued-pretrained one, in causal/result.json.

    perplexity    each model's exp(mean next-token loss) on the held-out validation shards (the fixed batches the
                  pretraining stage validates on)
    generations   a few prompts ([compare] prompts, else the first words of the corpus's last documents) continued
                  greedily by both models
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

from pretune import files
from pretune.pretrain.objectives import OBJECTIVES, Specials, build_objective
from pretune.pretrain.shards import TokenShards
from pretune.pretrain.stage import evaluator
from pretune.run.config import PipelineConfig
from pretune.run.stages import Runner, StageResult, file_hash
from pretune.text.corpus import iter_corpus
from pretune.training import checkpoint as ck
from pretune.use.generate import generate, load_causal_model

N_PROMPTS = 3
PROMPT_WORDS = 5
NEW_TOKENS = 30


def wants_causal(cfg: PipelineConfig) -> bool:
    """Whether the run continues pretraining a published causal model (the tokenizer is then the checkpoint's;
    with add_tokens it is extended, and the published model could not read the shards)."""
    sec = cfg.pretrain
    return (sec.objective == "clm" and bool(sec.init_from) and not sec.add_tokens
            and not cfg.run.skip_pretraining)


def default_prompts(cfg: PipelineConfig) -> list[str]:
    """The first words of the corpus's last documents. The validation documents are drawn at random while the
    shards are written and not recorded, so the last documents stand in for held-out text."""
    c = cfg.corpus
    last = deque((d for d in iter_corpus(c.files, fmt=c.format, field=c.field, doc_split=c.doc_split)
                  if d.split()), maxlen=N_PROMPTS)
    return [" ".join(doc.split()[:PROMPT_WORDS]) for doc in last]


def perplexity(model, cfg: PipelineConfig, shards_dir: Path, tok) -> float:
    """exp(mean next-token loss) over the validation batches the pretraining stage validates on."""
    sec, tcfg = cfg.pretrain, cfg.pretrain_trainer
    objective = build_objective("clm", Specials.from_tokenizer(tok), **sec.objective_options(OBJECTIVES["clm"]))
    data = objective.dataset(TokenShards(shards_dir, "validation"), sec.max_len)
    evaluate = evaluator(objective, data, tcfg.batch_size, tcfg.eval_batches, tcfg.seed, "cpu")
    return evaluate(model)["lm_perplexity"]


def stage_causal(runner: Runner, cfg: PipelineConfig, shards: StageResult, pretrained: StageResult) -> StageResult:
    """causal/: both models' validation perplexity and their generations side by side."""
    published = ck.resolve(cfg.pretrain.init_from)
    continued = pretrained.directory / "model"
    prompts = list(cfg.compare.prompts) or default_prompts(cfg)
    inputs = {"shards": shards.fingerprint, "published": file_hash(published / ck.WEIGHTS),
              "continued": file_hash(continued / ck.WEIGHTS), "prompts": prompts, "max_len": cfg.pretrain.max_len,
              "batch_size": cfg.pretrain_trainer.batch_size, "eval_batches": cfg.pretrain_trainer.eval_batches,
              "seed": cfg.pretrain_trainer.seed}

    def work(d: Path, resume: bool) -> dict:
        result: dict = {"generations": [{"prompt": p} for p in prompts]}
        for name, path in (("published", published), ("continued", continued)):
            model, tok = load_causal_model(str(path))
            result[name] = {"perplexity": perplexity(model, cfg, shards.directory, tok)}
            for row in result["generations"]:
                row[name] = generate(model, tok, row["prompt"], max_new_tokens=NEW_TOKENS, greedy=True, seed=0)
        d.mkdir(parents=True, exist_ok=True)
        files.write_json(d / "result.json", result)
        return result

    return runner.stage("causal", inputs, work)
