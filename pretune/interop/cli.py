"""`pretune import` and `pretune export`: Hugging Face folders in and out."""

from __future__ import annotations

import argparse

from pretune.errors import InputError
from pretune.interop.hf import import_folder, supported
from pretune.interop.hf_export import EXPORT_FAMILIES, export_hf


def cmd_import(args) -> None:
    imported = import_folder(args.folder, args.out, overwrite=args.overwrite)
    cfg = imported.config
    what = f"task {cfg['task']} ({len(cfg['labels'])} labels)" if "task" in cfg else f"heads {cfg['heads']}"
    for note in imported.notes:
        print(f"note: {note}")
    print(f"imported {cfg['imported_from']['model_type']} ({what}) -> {args.out}")


def cmd_export(args) -> None:
    if args.format != "hf":
        raise InputError(f"unknown export format {args.format!r}; expected hf")
    notes = export_hf(args.checkpoint, args.out, family=args.family, overwrite=args.overwrite)
    for note in notes:
        print(f"note: {note}")
    print(f"exported {args.checkpoint} -> {args.out} (Hugging Face format)")


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("import", help="convert a local Hugging Face model folder into a pretune checkpoint",
                              description=f"Supported model types: {supported()}. Never uses the network.")
    p.add_argument("folder", help="folder with config.json, model.safetensors or pytorch_model.bin, tokenizer files")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_import)
    e = subparsers.add_parser("export", help="write a checkpoint as a folder that transformers loads")
    e.add_argument("checkpoint", help="checkpoint directory (or run directory)")
    e.add_argument("--format", default="hf", help="hf (the only format)")
    e.add_argument("--family", default="auto", choices=("auto", *EXPORT_FAMILIES),
                   help="auto: gpt2 for causal models, roberta-prelayernorm for pre-LN encoders, roberta for "
                        "post-LN ones with a <s>/</s> vocabulary, else bert")
    e.add_argument("--out", required=True, help="folder to write")
    e.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    e.set_defaults(func=cmd_export)
