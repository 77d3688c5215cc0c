"""The `pretune` command. Each subcommand maps to one stage; bad input ends in one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pretune.errors import InputError

EXIT_INPUT, EXIT_TRAINING, EXIT_INTERRUPTED = 2, 3, 130


def _corpus_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", help="text files: .txt, .jsonl, .csv, .tsv (optionally .gz)")
    p.add_argument("--format", dest="fmt", default=None, help="txt | jsonl | csv | tsv (default: from the suffix)")
    p.add_argument("--field", default="text", help="JSONL field or CSV column holding the text (default: text)")
    p.add_argument("--doc-split", default="line", choices=("line", "blank"),
                   help="txt: one document per line, or per blank-line-separated block")


# ---- tokenizer ----------------------------------------------------------------------------------------------------
def cmd_tokenizer_train(args) -> None:
    from pretune.text.corpus import Corpus
    from pretune.text.tokenizer import train_tokenizer

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise InputError("already exists; pass --overwrite to replace it", path=out)
    t0 = time.perf_counter()
    texts = Corpus(args.files, fmt=args.fmt, field=args.field, doc_split=args.doc_split)
    tok = train_tokenizer(texts, kind=args.kind, vocab_size=args.vocab_size, min_frequency=args.min_frequency,
                          lowercase=args.lowercase)
    tok.save(out)
    print(f"{args.kind} tokenizer: {tok.vocab_size} tokens, trained in {time.perf_counter() - t0:.1f}s -> {out}")


def cmd_tokenizer_show(args) -> None:
    from pretune.text.tokenizer import PretuneTokenizer

    tok = PretuneTokenizer.load(args.tokenizer)
    for text in args.text:
        enc = tok.encode(text)
        print(" ".join(enc.tokens))


# ---- prepare --------------------------------------------------------------------------------------------------------
def cmd_prepare(args) -> None:
    from pretune.pretrain.shards import prepare_corpus
    from pretune.text.tokenizer import PretuneTokenizer
    from pretune.training.checkpoint import TOKENIZER

    tok = PretuneTokenizer.load(args.tokenizer)
    stats = prepare_corpus(args.files, tok, args.out, fmt=args.fmt, field=args.field, doc_split=args.doc_split,
                           validation_fraction=args.validation_fraction, seed=args.seed, overwrite=args.overwrite)
    tok.save(Path(args.out) / TOKENIZER)
    for split in stats.n_docs:
        print(f"{split}: {stats.n_docs[split]} documents, {stats.n_tokens[split]} tokens")
    print(f"{stats.dtype} shards in {args.out}; {stats.tokens_per_second:,.0f} tokens/s ({stats.seconds:.1f}s)")


# ---- pretrain -------------------------------------------------------------------------------------------------------
def cmd_pretrain(args) -> None:
    from pretune.config import coerce_fields, load_sections, load_toml, merge
    from pretune.model.transformer import ModelConfig
    from pretune.pretrain.stage import SECTIONS, pretrain
    from pretune.training import distributed as dist

    sections = load_sections(args.config, args, SECTIONS)
    # [model] keys are overrides of the preset: keep only those the user gave
    values = load_toml(args.config) if args.config else {}
    model_values = coerce_fields(ModelConfig, merge(values, args, SECTIONS, args.config)["model"], args.config, "model")
    dist.setup()
    try:
        pretrain(sections, resume=args.resume, overwrite=args.overwrite, model_values=model_values, source=args.config)
    finally:
        dist.teardown()


def build_parser() -> argparse.ArgumentParser:
    from pretune import __version__
    from pretune.config import add_flags
    from pretune.pretrain.stage import SECTIONS

    parser = argparse.ArgumentParser(prog="pretune", description="Pretrain a transformer on unlabeled text, "
                                     "then fine-tune it on a few labels.")
    parser.add_argument("--version", action="version", version=f"pretune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tok = sub.add_parser("tokenizer", help="train or inspect a tokenizer")
    tok_sub = tok.add_subparsers(dest="tokenizer_command", required=True, metavar="ACTION")
    t = tok_sub.add_parser("train", help="train a vocabulary on text files")
    _corpus_args(t)
    t.add_argument("--kind", default="wordpiece", choices=("wordpiece", "bpe", "bytelevel-bpe", "unigram", "char"))
    t.add_argument("--vocab-size", type=int, default=8000)
    t.add_argument("--min-frequency", type=int, default=2)
    t.add_argument("--lowercase", action="store_true")
    t.add_argument("--out", required=True, help="tokenizer.json to write")
    t.add_argument("--overwrite", action="store_true")
    t.set_defaults(func=cmd_tokenizer_train)
    s = tok_sub.add_parser("show", help="print the tokens of some text")
    s.add_argument("tokenizer", help="tokenizer.json, vocab.txt or a checkpoint directory")
    s.add_argument("text", nargs="+")
    s.set_defaults(func=cmd_tokenizer_show)

    p = sub.add_parser("prepare", help="tokenize a corpus into memory-mapped token shards")
    _corpus_args(p)
    p.add_argument("--tokenizer", required=True, help="tokenizer.json, vocab.txt or a checkpoint directory")
    p.add_argument("--out", required=True, help="shard directory to write")
    p.add_argument("--validation-fraction", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_prepare)

    pt = sub.add_parser("pretrain", help="pretrain (or continue pretraining) on token shards",
                        description="Every key of the TOML config is also a flag; flags win.")
    pt.add_argument("--config", default=None, help="TOML file with [pretrain], [model] and [train] tables")
    pt.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    pt.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    add_flags(pt, *SECTIONS.values())
    pt.set_defaults(func=cmd_pretrain)

    for register in _extensions():
        register(sub)
    return parser


def _extensions():
    """Subcommands defined beside their stage (fine-tuning, inference, pipeline, interop), when present."""
    import importlib

    found = []
    for module in ("pretune.finetune.stage", "pretune.use.inference", "pretune.run.pipeline", "pretune.run.tune",
                   "pretune.interop.hf", "pretune.use.generate", "pretune.pretrain.vocab"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name == module:
                continue
            raise
        if hasattr(mod, "register_cli"):
            found.append(mod.register_cli)
    return found


def main(argv: list[str] | None = None) -> int:
    from pretune.training.trainer import TrainingError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except InputError as e:
        print(f"pretune: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    except TrainingError as e:
        print(f"pretune: training stopped: {e}", file=sys.stderr)
        return EXIT_TRAINING
    except KeyboardInterrupt:
        print("pretune: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0
    except OSError as e:  # a full disk, a permission: name the file, keep the traceback out of the user's way
        where = f"{e.filename}: " if e.filename else ""
        print(f"pretune: error: {where}{e.strerror or e}", file=sys.stderr)
        return EXIT_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
