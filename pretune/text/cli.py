"""`pretune tokenizer train | show`: train a vocabulary on text files, or print the tokens of some text."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pretune.files import check_output, input_file
from pretune.text.corpus import Corpus
from pretune.text.tokenizer import ALL_KINDS, PretuneTokenizer, train_tokenizer


def corpus_args(p: argparse.ArgumentParser) -> None:
    """The flags that name a corpus: files, --format, --field, --doc-split (as `text.corpus.iter_documents` takes)."""
    p.add_argument("files", nargs="+", help="text files: .txt, .jsonl, .csv, .tsv (optionally .gz), .parquet")
    p.add_argument("--format", dest="fmt", default=None,
                   help="txt | jsonl | csv | tsv | parquet (default: from the suffix)")
    p.add_argument("--field", default="text",
                   help="JSONL field or CSV / parquet column holding the text (default: text)")
    p.add_argument("--doc-split", default="line", choices=("line", "blank"),
                   help="txt: one document per line, or per blank-line-separated block")


def cmd_tokenizer_train(args) -> None:
    out = Path(args.out)
    check_output(out, args.overwrite, *args.files)  # a file: never into (or over) a directory, nor over an input
    for f in args.files:
        input_file(f, "corpus file")
    t0 = time.perf_counter()
    texts = Corpus(args.files, fmt=args.fmt, field=args.field, doc_split=args.doc_split)
    tok = train_tokenizer(texts, kind=args.kind, vocab_size=args.vocab_size, min_frequency=args.min_frequency,
                          lowercase=args.lowercase)
    tok.save(out)
    print(f"{args.kind} tokenizer: {tok.vocab_size} tokens, trained in {time.perf_counter() - t0:.1f}s -> {out}")


def cmd_tokenizer_show(args) -> None:
    tok = PretuneTokenizer.load(args.tokenizer)
    for text in args.text:
        enc = tok.encode(text)
        print(" ".join(enc.tokens))


def register_cli(sub) -> None:
    """`pretune tokenizer train FILES... --out FILE` and `pretune tokenizer show TOKENIZER TEXT...`."""
    tok = sub.add_parser("tokenizer", help="train or inspect a tokenizer")
    tok_sub = tok.add_subparsers(dest="tokenizer_command", required=True, metavar="ACTION")
    t = tok_sub.add_parser("train", help="train a vocabulary on text files")
    corpus_args(t)
    t.add_argument("--kind", default="wordpiece", choices=ALL_KINDS)
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
