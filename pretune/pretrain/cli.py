"""Stage 1 on the command line: `pretune prepare` (token shards), `pretune pretrain`, `pretune vocab extend`."""

from __future__ import annotations

from pathlib import Path

from pretune.config import add_flags, coerce_fields, load_sections, load_toml, merge
from pretune.files import check_output
from pretune.model.transformer import PRESETS, ModelConfig
from pretune.pretrain.shards import prepare_corpus
from pretune.pretrain.stage import SECTIONS, pretrain
from pretune.pretrain.vocab import new_words, read_word_list
from pretune.text.cli import corpus_args
from pretune.text.tokenizer import PretuneTokenizer
from pretune.training import distributed as dist
from pretune.training.checkpoint import TOKENIZER, resolve
from pretune.training.threads import add_threads_flag


def cmd_prepare(args) -> None:
    tok = PretuneTokenizer.load(args.tokenizer)
    stats = prepare_corpus(args.files, tok, args.out, fmt=args.fmt, field=args.field, doc_split=args.doc_split,
                           validation_fraction=args.validation_fraction, seed=args.seed, overwrite=args.overwrite)
    tok.save(Path(args.out) / TOKENIZER)
    for split in stats.n_docs:
        print(f"{split}: {stats.n_docs[split]} documents, {stats.n_tokens[split]} tokens")
    print(f"{stats.dtype} shards in {args.out}; {stats.tokens_per_second:,.0f} tokens/s ({stats.seconds:.1f}s)")


def cmd_pretrain(args) -> None:
    # the [model] section is validated as the preset model_size names, with the given keys over it
    sections = load_sections(args.config, args, SECTIONS,
                             lambda merged: {"model": PRESETS.get(merged["pretrain"].get("model_size", "base"), {})})
    # [model] keys are overrides of the preset: keep only those the user gave
    values = load_toml(args.config) if args.config else {}
    model_values = coerce_fields(ModelConfig, merge(values, args, SECTIONS, args.config)["model"], args.config, "model")
    dist.setup()
    try:
        pretrain(sections, resume=args.resume, overwrite=args.overwrite, model_values=model_values, source=args.config)
    finally:
        dist.teardown()


def cmd_vocab_extend(args) -> None:
    out = Path(args.out)
    check_output(out, args.overwrite, Path(args.tokenizer), Path(args.words))
    source = Path(args.tokenizer)
    if source.is_dir() and not any((source / f).is_file() for f in ("tokenizer.json", "vocab.txt")):
        source = resolve(source)  # a run directory: its model/ (or best/, last/)
    tok = PretuneTokenizer.load(source)
    before = tok.vocab_size
    words = read_word_list(args.words)
    tok.add_tokens(list(new_words(tok, words)))
    tok.save(out)
    print(f"{tok.vocab_size - before} of {len(words)} words added: {tok.vocab_size} tokens -> {out}")


def register_cli(sub) -> None:
    """`pretune prepare`, `pretune pretrain` and `pretune vocab extend TOKENIZER WORDS --out FILE`."""
    p = sub.add_parser("prepare", help="tokenize a corpus into memory-mapped token shards")
    corpus_args(p)
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
    add_threads_flag(pt)
    pt.set_defaults(func=cmd_pretrain)

    v = sub.add_parser("vocab", help="extend a tokenizer with domain words")
    v_sub = v.add_subparsers(dest="vocab_command", required=True, metavar="ACTION")
    e = v_sub.add_parser("extend", help="add words (one per line) to a tokenizer, as pretrain --add-tokens will")
    e.add_argument("tokenizer", help="tokenizer.json, vocab.txt or a checkpoint directory")
    e.add_argument("words", help="word list: one word per line, '#' comments")
    e.add_argument("--out", required=True, help="tokenizer.json to write")
    e.add_argument("--overwrite", action="store_true")
    e.set_defaults(func=cmd_vocab_extend)
