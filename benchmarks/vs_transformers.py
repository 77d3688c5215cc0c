"""pretune against Hugging Face transformers on the same work, side by side, in one run.

    python benchmarks/vs_transformers.py                 # CPU, default settings: a few minutes
    python benchmarks/vs_transformers.py --device cuda   # on a GPU

Both tools get the same model shape, the same WordPiece vocabulary (trained here on the bundled WordNet corpus),
the same data and the same batch size. Every figure is measured in a fresh child process (so each tool's peak
resident memory is its own), the two tools alternate, each measure is repeated and the medians are printed: one
JSON line per measure with both figures and the ratio pretune / transformers.

Measures (see benchmarks/README.md):
  mlm_small, mlm_base  MLM pretraining tokens/s. pretune: PretrainModel + MaskedLM collate + the Trainer's own
                       optimizer step (Trainer._train_step: AdamW as the Trainer builds it, clipping, schedule,
                       bf16 autocast when `precision = "auto"` picks it). transformers: BertForMaskedLM (SDPA
                       attention) + DataCollatorForLanguageModeling + torch AdamW, same groups and settings.
  finetune             sequence-classification fine-tuning examples/s on supersense_train.csv, dynamic padding.
                       pretune: TaskModel + length-grouped batches as `pretune finetune` builds them, same step.
                       transformers: BertForSequenceClassification + DataCollatorWithPadding, shuffled batches.
  infer_classify       tokens/s of pretune.use.inference.predict vs tokenizer + BertForSequenceClassification.
  infer_embed          tokens/s of pretune.use.inference.embed (mean pooling) vs tokenizer + BertModel + mean pooling.
  *_peak_rss_mb        peak resident memory of each tool's process for that measure (lower is better).
  mlm_*_flops          achieved matmul FLOP/s of each tool's MLM step, as a fraction of this machine's peak, which
                       the benchmark measures with a large fp32 (and bf16) matmul.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "pretune" / "resources" / "wordnet"
MEASURES = ("mlm_small", "mlm_base", "finetune", "infer_classify", "infer_embed")
SHAPES = {  # hidden, layers, heads, ffn
    "small": (256, 4, 4, 1024),
    "base": (768, 12, 12, 3072),
}
RESULT = "BENCH-RESULT "


# ---- the parent: set up, alternate, summarise ------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    p.add_argument("--measures", default=",".join(MEASURES), help=f"comma-separated subset of {','.join(MEASURES)}")
    p.add_argument("--repeats", type=int, default=3, help="runs of each tool per measure (medians are printed)")
    p.add_argument("--base-repeats", type=int, default=2, help="runs per tool of mlm_base (slow on a CPU)")
    p.add_argument("--vocab-size", type=int, default=30522)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--small-shape", default="256,4,4,1024", help="hidden,layers,heads,ffn of the small config "
                   "(also the fine-tuning / inference model)")
    p.add_argument("--base-shape", default="768,12,12,3072", help="hidden,layers,heads,ffn of the base config")
    p.add_argument("--batch-size", type=int, default=32, help="MLM small, fine-tuning and inference batch size")
    p.add_argument("--base-batch-size", type=int, default=8, help="MLM base-shape batch size")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before each timing")
    p.add_argument("--steps", type=int, default=3, help="timed MLM steps (small config)")
    p.add_argument("--base-steps", type=int, default=2, help="timed MLM steps (base shape)")
    p.add_argument("--finetune-steps", type=int, default=20, help="timed fine-tuning steps")
    p.add_argument("--infer-texts", type=int, default=1000, help="texts for the inference measures")
    p.add_argument("--precision", default="auto", help="pretune's precision: auto (its default) | fp32 | bf16")
    p.add_argument("--peer-precision", default="fp32", help="transformers' precision: fp32 (its default) | bf16")
    p.add_argument("--no-fp32-line", action="store_true",
                   help="skip the extra pretune-in-fp32 training runs made when --precision resolves to bf16")
    p.add_argument("--compile", action="store_true", help="also time pretune's MLM step under torch.compile")
    p.add_argument("--threads", type=int, default=0, help="torch threads in each child (0: torch's default, all "
                   "cores; 1 is steadier on a machine shared with other work)")
    p.add_argument("--corpus-lines", type=int, default=0, help="train the tokenizer on the first N corpus lines")
    p.add_argument("--cache", default="", help="keep tokenizer / shards here (default: a temporary directory)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--inline", action="store_true",
                   help="run the workers in this process (a quick check: memory figures are then not separate)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def shape(text: str) -> dict:
    h, l, n, f = (int(x) for x in text.split(","))
    return {"hidden": h, "layers": l, "heads": n, "ffn": f}


def prepare(cache: Path, vocab_size: int, seq_len: int, corpus_lines: int) -> dict:
    """Tokenizer (pretune's and the same one with BERT's [CLS]/[SEP] template for transformers), token shards,
    packed MLM sequences as .npy. Reused when `cache` already holds them."""
    import numpy as np
    from tokenizers import Tokenizer, processors

    from pretune.pretrain.shards import PackedSequences, TokenShards, prepare_corpus
    from pretune.text.tokenizer import PretuneTokenizer, train_tokenizer

    cache = cache / f"vocab{vocab_size}-lines{corpus_lines or 'all'}"  # what the files below depend on
    cache.mkdir(parents=True, exist_ok=True)
    tok_path, hf_path = cache / "tokenizer.json", cache / "hf_tokenizer.json"
    shards, seqs = cache / "shards", cache / f"sequences_{seq_len}.npy"
    corpus = DATA / "corpus.txt.gz"
    if not tok_path.exists():
        with gzip.open(corpus, "rt", encoding="utf-8") as f:
            lines = f.read().splitlines()
        if corpus_lines:
            lines = lines[:corpus_lines]
        train_tokenizer(lines, "wordpiece", vocab_size=vocab_size, lowercase=True).save(tok_path)
    tok = PretuneTokenizer.load(tok_path)
    if not hf_path.exists():
        s = tok.specials
        inner = Tokenizer.from_str(tok.inner.to_str())
        inner.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", s.cls), ("[SEP]", s.sep)])
        inner.save(str(hf_path))
    if not shards.exists():
        source = corpus
        if corpus_lines:
            source = cache / "corpus.txt"
            with gzip.open(corpus, "rt", encoding="utf-8") as f:
                source.write_text("".join(line for _, line in zip(range(corpus_lines), f, strict=False)))
        prepare_corpus(source, tok, shards, progress=False)
    if not seqs.exists():
        packed = PackedSequences(TokenShards(shards, "train"), seq_len, tok.specials.cls, tok.specials.sep)
        np.save(seqs, np.stack([packed[i][0] for i in range(len(packed))]).astype(np.int32))
    return {"tokenizer": str(tok_path), "hf_tokenizer": str(hf_path), "shards": str(shards), "sequences": str(seqs),
            "vocab_size": tok.vocab_size}


def run_child(worker: str, spec: dict, quiet: bool, inline: bool = False) -> dict:
    if inline:
        result = run_worker(worker, spec)
        if not quiet:
            print(f"  {worker} {spec.get('tag', '')}: {result}", file=sys.stderr, flush=True)
        return result
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", worker, "--spec", json.dumps(spec)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(REPO))
    lines = [x for x in proc.stdout.splitlines() if x.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark worker {worker} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(lines[-1][len(RESULT):])
    if not quiet:
        shown = {k: (round(v, 1) if isinstance(v, float) else v) for k, v in result.items() if k != "flops"}
        print(f"  {worker} {spec.get('tag', '')}: {shown}", file=sys.stderr, flush=True)
    return result


def sig(x: float, digits: int = 3) -> float:
    return float(f"{x:.{digits}g}")


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def line(measure: str, unit: str, pt: list[float], hf: list[float], better: str = "higher", **extra) -> dict:
    a, b = median(pt), median(hf)
    rec = {"measure": measure, "unit": unit, "pretune": sig(a, 5), "transformers": sig(b, 5),
           "ratio": sig(a / b) if b else None, "better": better,
           "runs": {"pretune": [sig(x, 5) for x in pt], "transformers": [sig(x, 5) for x in hf]}}
    cpu = extra.pop("cpu", None)
    if cpu is not None:  # the same rates per CPU-second: steadier than wall time on a shared machine
        rec["ratio_cpu_time"] = sig(median(cpu[0]) / median(cpu[1]))
    rec.update(extra)
    print(json.dumps(rec), flush=True)
    return rec


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.worker:
        worker(args.worker, json.loads(args.spec))
        return []
    measures = [m.strip() for m in args.measures.split(",") if m.strip()]
    unknown = sorted(set(measures) - set(MEASURES))
    if unknown:
        raise SystemExit(f"unknown measures {unknown}; expected some of {list(MEASURES)}")
    with tempfile.TemporaryDirectory(prefix="pretune-bench-") as tmp:
        cache = Path(args.cache) if args.cache else Path(tmp)
        t0 = time.perf_counter()
        files = prepare(cache, args.vocab_size, args.seq_len, args.corpus_lines)
        if not args.quiet:
            print(f"prepared tokenizer and data in {time.perf_counter() - t0:.1f}s under {cache}", file=sys.stderr)
        common = {**files, "device": args.device, "threads": args.threads, "seq_len": args.seq_len,
                  "vocab": args.vocab_size, "warmup": args.warmup, "out": str(Path(tmp) / "runs")}
        records = []
        peak = None
        if any(m.startswith("mlm") for m in measures):
            peak = run_child("peak", common, args.quiet, args.inline)
            records.append(peak_line(peak, args.device))
        for m in measures:
            records += run_measure(m, args, common, peak)
    return records


def peak_line(peak: dict, device: str) -> dict:
    rec = {"measure": "matmul_peak_flops", "unit": "FLOP/s", "device": device, "fp32": peak["fp32"],
           "bf16": peak["bf16"], "ratio": round(peak["bf16"] / peak["fp32"], 3),
           "machine": peak.get("machine")}
    print(json.dumps(rec), flush=True)
    return rec


def run_measure(measure: str, args, common: dict, peak: dict | None) -> list[dict]:
    """Alternate the two tools (order flipped every repeat), then print the lines of `measure`."""
    base = measure == "mlm_base"
    model = shape(args.base_shape if base else args.small_shape)
    spec = {**common, "model": model, "precision": args.precision, "peer_precision": args.peer_precision,
            "batch": args.base_batch_size if base else args.batch_size}
    if measure.startswith("mlm"):
        kind, steps = "mlm", args.base_steps if base else args.steps
    elif measure == "finetune":
        kind, steps = "finetune", args.finetune_steps
    else:
        kind, steps = measure, 0
    spec.update(steps=steps, texts=args.infer_texts, tag=measure)
    variants = [("pretune", spec)]
    if kind in ("mlm", "finetune") and not args.no_fp32_line and args.precision != "fp32" and bf16_auto(args):
        variants.append(("pretune_fp32", {**spec, "precision": "fp32", "tag": measure + "_fp32"}))
    if kind == "mlm" and args.compile:
        variants.append(("pretune_compile", {**spec, "compile": True, "tag": measure + "_compile"}))
    runs: dict[str, list[dict]] = {name: [] for name, _ in variants}
    runs["transformers"] = []
    repeats = args.base_repeats if base else args.repeats
    for r in range(repeats):
        order = [*variants, ("transformers", spec)]
        if r % 2:
            order.reverse()
        for name, s in order:
            tool = "hf" if name == "transformers" else "pt"
            runs[name].append(run_child(f"{kind}_{tool}", s, args.quiet, args.inline))
    return summarise(measure, kind, spec, runs, peak)


def bf16_auto(args) -> bool:
    """Whether pretune's precision setting resolves to bf16 here (asked in a child so the parent stays light)."""
    if args.precision == "bf16":
        return True
    code = ("import torch; from pretune.training.trainer import use_bf16; "
            f"print(use_bf16({args.precision!r}, torch.device({args.device!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(REPO))
    return out.stdout.strip().endswith("True")


def cpu_rate(r: dict) -> float:
    return r["rate"] * r["seconds"] / max(r["cpu_s"], 1e-9)


def summarise(measure: str, kind: str, spec: dict, runs: dict, peak: dict | None) -> list[dict]:
    unit = {"mlm": "tokens/s", "finetune": "examples/s"}.get(kind, "tokens/s")
    hf = runs["transformers"]
    config = {"model": spec["model"], "batch": spec["batch"], "seq_len": spec["seq_len"], "vocab": spec["vocab"],
              "steps": spec["steps"], "device": spec["device"], "peer_precision": spec["peer_precision"],
              "precision": runs["pretune"][0].get("precision")}
    if kind.startswith("infer"):
        config["texts"] = spec["texts"]
        tokens = {r["tokens"] for rs in runs.values() for r in rs}
        config["same_tokens"] = len(tokens) == 1
    out = []
    for name, rs in runs.items():
        if name == "transformers":
            continue
        suffix = name[len("pretune"):]
        out.append(line(measure + suffix + "_" + unit.replace("/", "_per_"), unit, [r["rate"] for r in rs],
                        [r["rate"] for r in hf], config={**config, "precision": rs[0].get("precision")},
                        cpu=([cpu_rate(r) for r in rs], [cpu_rate(r) for r in hf])))
    out.append(line(measure + "_peak_rss_mb", "MB", [r["rss_mb"] for r in runs["pretune"]],
                    [r["rss_mb"] for r in hf], better="lower"))
    if spec["device"].startswith("cuda"):
        out.append(line(measure + "_peak_cuda_mb", "MB", [r["cuda_mb"] for r in runs["pretune"]],
                        [r["cuda_mb"] for r in hf], better="lower"))
    if kind == "mlm" and peak is not None:
        for name, rs in runs.items():
            if name == "transformers":
                continue
            pt_flops = [r["flops"] for r in rs]
            hf_flops = [r["flops"] for r in hf]
            a, b = median(pt_flops), median(hf_flops)
            rec = {"measure": measure + name[len("pretune"):] + "_flops", "unit": "FLOP/s",
                   "pretune": round(a), "transformers": round(b), "ratio": round(a / b, 3) if b else None,
                   "precision": rs[0].get("precision"),
                   "pretune_fraction_of_fp32_peak": sig(a / peak["fp32"]),
                   "transformers_fraction_of_fp32_peak": sig(b / peak["fp32"]),
                   "pretune_fraction_of_bf16_peak": sig(a / peak["bf16"]),
                   "note": "matmul FLOPs each tool executes (pretune decodes only the selected positions)"}
            print(json.dumps(rec), flush=True)
            out.append(rec)
    return out


# ---- the children: one tool, one measure, one process ----------------------------------------------------------------
def worker(kind: str, spec: dict) -> None:
    print(RESULT + json.dumps(run_worker(kind, spec)), flush=True)


def run_worker(kind: str, spec: dict) -> dict:
    import torch

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    if spec["device"].startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    result = WORKERS[kind](spec)
    result["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if spec["device"].startswith("cuda"):
        result["cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _timed(step, warmup: int, steps: int, device) -> tuple[float, float, list]:
    """Run `step` warmup + steps times; returns (seconds of the timed steps, CPU seconds, their results)."""
    for _ in range(warmup):
        step()
    _sync(device)
    t, c = time.perf_counter(), time.process_time()
    results = [step() for _ in range(steps)]
    _sync(device)
    return time.perf_counter() - t, time.process_time() - c, results


def peak_worker(spec: dict) -> dict:
    """Best matmul FLOP/s over a few large square matmuls, fp32 and bf16."""
    import platform

    import torch

    device = torch.device(spec["device"])
    n = 8192 if device.type == "cuda" else 2048
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        best = 0.0
        for _ in range(6):
            _sync(device)
            t = time.perf_counter()
            a @ b
            _sync(device)
            best = max(best, 2 * n**3 / (time.perf_counter() - t))
        out[name] = round(best)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    out["machine"] = f"{name}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    return out


def model_config(spec: dict, pad_id: int):
    from pretune.model.transformer import ModelConfig

    m = spec["model"]
    return ModelConfig(vocab_size=spec["vocab"], hidden_size=m["hidden"], num_layers=m["layers"],
                       num_heads=m["heads"], ffn_size=m["ffn"], max_positions=max(512, spec["seq_len"]),
                       pad_token_id=pad_id)


def bert_config(spec: dict, **extra):
    from transformers import BertConfig

    m = spec["model"]
    return BertConfig(vocab_size=spec["vocab"], hidden_size=m["hidden"], num_hidden_layers=m["layers"],
                      num_attention_heads=m["heads"], intermediate_size=m["ffn"],
                      max_position_embeddings=max(512, spec["seq_len"]), attn_implementation="sdpa", **extra)


def hf_tokenizer(spec: dict):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=spec["hf_tokenizer"], pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                   model_input_names=["input_ids", "token_type_ids", "attention_mask"])


def pretune_trainer(model, spec: dict, batches, loss_fn, groups=None, lr: float = 5e-4):
    """pretune's own Trainer (no files written: the benchmark only calls its optimizer step)."""
    from pretune.training.batches import label_count
    from pretune.training.config import TrainConfig
    from pretune.training.trainer import Trainer

    steps = spec["warmup"] + spec["steps"]
    cfg = TrainConfig(max_steps=steps, batch_size=spec["batch"], lr=lr, precision=spec["precision"],
                      device=spec["device"], progress=False, compile=bool(spec.get("compile")),
                      warmup_steps=1, seed=0).validate()
    return Trainer(model, cfg, Path(spec["out"]), batches=batches, loss_fn=loss_fn,
                   save_model=lambda directory, m: None, groups=groups, loss_weight=label_count)


def hf_optimizer(model, lr: float, steps: int):
    """torch AdamW (defaults otherwise) with the Trainer's groups and settings, plus its linear schedule."""
    import torch

    from pretune.training.config import TrainConfig
    from pretune.training.optim import lr_lambda, param_groups

    cfg = TrainConfig(max_steps=steps, lr=lr, warmup_steps=1)
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay, lr), lr=lr,
                            betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))


def hf_step(model, opt, sched, batch: dict, autocast: bool, device) -> float:
    import torch

    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=autocast):
        loss = model(**batch).loss
    loss.backward()
    value = float(loss.detach())
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return value


def mlm_pt(spec: dict) -> dict:

    from pretune.model.transformer import model_flops_per_token
    from pretune.pretrain.objectives import MaskedLM, PretrainModel, Specials
    from pretune.pretrain.shards import PackedSequences, TokenShards
    from pretune.text.tokenizer import PretuneTokenizer
    from pretune.training.batches import BatchSource
    from pretune.training.config import seed_everything

    seed_everything(0)
    tok = PretuneTokenizer.load(spec["tokenizer"])
    specials = Specials.from_tokenizer(tok)
    objective = MaskedLM(specials)
    cfg = model_config(spec, specials.pad)
    model = PretrainModel(cfg, objective.heads(cfg))
    data = PackedSequences(TokenShards(spec["shards"], "train"), spec["seq_len"], specials.cls, specials.sep)
    batches = BatchSource(data, spec["batch"], objective.collate, seed=0)
    selected = []

    def loss_fn(m, batch):
        selected.append(int((batch["labels"] != -100).sum()))
        return objective.loss(m, batch)

    trainer = pretune_trainer(model, spec, batches, loss_fn)
    totals: dict = {}
    seconds, cpu, _ = _timed(lambda: trainer._train_step(totals), spec["warmup"], spec["steps"], spec["device"])
    tokens = spec["steps"] * spec["batch"] * spec["seq_len"]
    n_sel = sum(selected[spec["warmup"]:])
    H, V = cfg.hidden_size, cfg.vocab_size
    flops = 3 * (tokens * model_flops_per_token(cfg, spec["seq_len"]) + n_sel * (2 * H * H + 2 * H * V))
    return {"rate": tokens / seconds, "seconds": seconds, "cpu_s": cpu, "flops": flops / seconds,
            "precision": "bf16" if trainer.bf16 else "fp32"}


def mlm_hf(spec: dict) -> dict:
    import numpy as np
    import torch
    from transformers import BertForMaskedLM, DataCollatorForLanguageModeling

    from pretune.model.transformer import model_flops_per_token

    torch.manual_seed(0)
    device = torch.device(spec["device"])
    tok = hf_tokenizer(spec)
    model = BertForMaskedLM(bert_config(spec)).to(device).train()
    collator = DataCollatorForLanguageModeling(tok, mlm_probability=0.15)
    seqs = np.load(spec["sequences"])
    order = np.random.default_rng(0).permutation(len(seqs))
    B, steps = spec["batch"], spec["warmup"] + spec["steps"]
    opt, sched = hf_optimizer(model, 5e-4, steps)
    autocast = spec["peer_precision"] == "bf16"
    it = iter(range(10**9))

    def step():
        i = next(it) % max(1, len(seqs) // B)
        rows = seqs[order[i * B:(i + 1) * B]]
        batch = collator([{"input_ids": r.tolist()} for r in rows])
        return hf_step(model, opt, sched, {k: v.to(device) for k, v in batch.items()}, autocast, device)

    seconds, cpu, _ = _timed(step, spec["warmup"], spec["steps"], device)
    tokens = spec["steps"] * B * spec["seq_len"]
    cfg = model_config(spec, 0)
    H, V = cfg.hidden_size, cfg.vocab_size
    flops = 3 * tokens * (model_flops_per_token(cfg, spec["seq_len"]) + 2 * H * H + 2 * H * V)
    return {"rate": tokens / seconds, "seconds": seconds, "cpu_s": cpu, "flops": flops / seconds,
            "precision": spec["peer_precision"]}


def _classify_file(spec: dict) -> Path:
    return DATA / "supersense_train.csv"


def finetune_pt(spec: dict) -> dict:
    import numpy as np

    from pretune.finetune.config import FinetuneSection
    from pretune.finetune.data import encode_split
    from pretune.finetune.encode import task_collate
    from pretune.finetune.model import TaskModel, build_param_groups
    from pretune.text.labeled import LabelMap, length_grouped_batches, read_examples
    from pretune.text.tokenizer import PretuneTokenizer
    from pretune.training.batches import BatchSource
    from pretune.training.config import seed_everything

    seed_everything(0)
    tok = PretuneTokenizer.load(spec["tokenizer"])
    path = _classify_file(spec)
    examples = read_examples(path, "classify")
    labels = LabelMap.from_examples(examples, "classify")
    sec = FinetuneSection(task="classify", max_len=spec["seq_len"])
    data = encode_split(path, examples, "classify", tok, labels, sec.max_len, {})
    model = TaskModel(model_config(spec, tok.specials.pad), "classify", labels.names)
    lr = 5e-5
    groups = build_param_groups(model, lr, sec.head_lr, 0.01, sec.layer_lr_decay)
    lengths = [len(f["input_ids"]) for f in data.features]
    B, pad = spec["batch"], tok.specials.pad

    def plan(epoch: int) -> list[list[int]]:  # as pretune.finetune.stage builds it
        seed = int(np.random.SeedSequence([0, epoch]).generate_state(1)[0])
        return length_grouped_batches(lengths, B, shuffle=True, seed=seed)

    batches = BatchSource(data.features, B, lambda items, gen: task_collate(items, pad), seed=0, plan=plan)
    counted = []

    def loss_fn(m, batch):
        counted.append(int(batch["input_ids"].shape[0]))
        res = m(**batch)
        return res["loss"], res["stats"]

    trainer = pretune_trainer(model, spec, batches, loss_fn, groups=groups, lr=lr)
    totals: dict = {}
    seconds, cpu, _ = _timed(lambda: trainer._train_step(totals), spec["warmup"], spec["steps"], spec["device"])
    examples_done = sum(counted[spec["warmup"]:])
    return {"rate": examples_done / seconds, "seconds": seconds, "cpu_s": cpu,
            "precision": "bf16" if trainer.bf16 else "fp32"}


def _read_classify(path: Path) -> tuple[list[str], list[str]]:
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [r["label"] for r in rows]


def finetune_hf(spec: dict) -> dict:
    import numpy as np
    import torch
    from transformers import BertForSequenceClassification, DataCollatorWithPadding

    torch.manual_seed(0)
    device = torch.device(spec["device"])
    tok = hf_tokenizer(spec)
    texts, labels = _read_classify(_classify_file(spec))
    names = sorted(set(labels))
    enc = tok(texts, truncation=True, max_length=spec["seq_len"])
    features = [{"input_ids": ids, "token_type_ids": tt, "attention_mask": am, "labels": names.index(y)}
                for ids, tt, am, y in zip(enc["input_ids"], enc["token_type_ids"], enc["attention_mask"], labels,
                                          strict=True)]
    model = BertForSequenceClassification(bert_config(spec, num_labels=len(names))).to(device).train()
    collator = DataCollatorWithPadding(tok)
    B, steps = spec["batch"], spec["warmup"] + spec["steps"]
    opt, sched = hf_optimizer(model, 5e-5, steps)
    autocast = spec["peer_precision"] == "bf16"
    rng = np.random.default_rng(0)
    order: list[int] = []

    def step():  # RandomSampler order, as the transformers Trainer samples by default
        nonlocal order
        if len(order) < B:
            order = rng.permutation(len(features)).tolist()
        idx, order = order[:B], order[B:]
        batch = collator([features[i] for i in idx])
        return hf_step(model, opt, sched, {k: v.to(device) for k, v in batch.items()}, autocast, device)

    seconds, cpu, _ = _timed(step, spec["warmup"], spec["steps"], device)
    return {"rate": spec["steps"] * B / seconds, "seconds": seconds, "cpu_s": cpu, "precision": spec["peer_precision"]}


def _infer_texts(spec: dict) -> list[str]:
    texts, _ = _read_classify(DATA / "supersense_test.csv")
    n = spec["texts"]
    return (texts * (n // len(texts) + 1))[:n]


def infer_pt(spec: dict, embed: bool) -> dict:
    import torch

    from pretune.finetune.model import TaskModel
    from pretune.text.tokenizer import PretuneTokenizer
    from pretune.use.embed import embed as embed_texts
    from pretune.use.predict import predict

    torch.manual_seed(0)
    tok = PretuneTokenizer.load(spec["tokenizer"])
    model = TaskModel(model_config(spec, tok.specials.pad), "classify", [f"c{i}" for i in range(26)])
    model = model.to(torch.device(spec["device"])).eval()
    conf = {"max_len": spec["seq_len"], "fields": {}}
    texts = _infer_texts(spec)
    B = spec["batch"]
    if embed:
        def run(xs):
            return embed_texts((model.body, tok, conf), xs, pool="mean", batch_size=B)
    else:
        def run(xs):
            return predict((model, tok, conf), xs, batch_size=B)
    run(texts[: 2 * B])  # warm-up
    _sync(spec["device"])
    t, c = time.perf_counter(), time.process_time()
    out = run(texts)
    _sync(spec["device"])
    seconds, cpu = time.perf_counter() - t, time.process_time() - c
    assert len(out) == len(texts)
    tokens = sum(min(len(e.ids) + 2, spec["seq_len"]) for e in tok.encode_batch(texts))
    return {"rate": tokens / seconds, "seconds": seconds, "cpu_s": cpu, "tokens": tokens, "precision": "fp32"}


def infer_hf(spec: dict, embed: bool) -> dict:
    import torch
    from transformers import BertForSequenceClassification, BertModel

    torch.manual_seed(0)
    device = torch.device(spec["device"])
    tok = hf_tokenizer(spec)
    if embed:
        model = BertModel(bert_config(spec), add_pooling_layer=False)
    else:
        model = BertForSequenceClassification(bert_config(spec, num_labels=26))
    model = model.to(device).eval()
    texts = _infer_texts(spec)
    B = spec["batch"]

    def run(xs):
        out = []
        with torch.inference_mode():
            for i in range(0, len(xs), B):
                enc = tok(xs[i:i + B], padding=True, truncation=True, max_length=spec["seq_len"],
                          return_tensors="pt").to(device)
                if embed:
                    h = model(**enc).last_hidden_state
                    m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
                    out.extend(((h * m).sum(1) / m.sum(1)).float().cpu().numpy())
                else:
                    out.extend(model(**enc).logits.float().softmax(-1).cpu().numpy())
        return out

    run(texts[: 2 * B])
    _sync(device)
    t, c = time.perf_counter(), time.process_time()
    out = run(texts)
    _sync(device)
    seconds, cpu = time.perf_counter() - t, time.process_time() - c
    assert len(out) == len(texts)
    tokens = sum(len(x) for x in tok(texts, truncation=True, max_length=spec["seq_len"])["input_ids"])
    return {"rate": tokens / seconds, "seconds": seconds, "cpu_s": cpu, "tokens": tokens, "precision": "fp32"}


WORKERS = {
    "peak": peak_worker,
    "mlm_pt": mlm_pt,
    "mlm_hf": mlm_hf,
    "finetune_pt": finetune_pt,
    "finetune_hf": finetune_hf,
    "infer_classify_pt": lambda s: infer_pt(s, embed=False),
    "infer_classify_hf": lambda s: infer_hf(s, embed=False),
    "infer_embed_pt": lambda s: infer_pt(s, embed=True),
    "infer_embed_hf": lambda s: infer_hf(s, embed=True),
}


if __name__ == "__main__":
    main()
