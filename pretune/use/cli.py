"""The subcommands that use a checkpoint: predict, embed, explain and generate."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pretune import files
from pretune.finetune.genes import add_decode_flags, decode_from_flags
from pretune.finetune.model import load_task_model
from pretune.training.config import resolve_device
from pretune.training.threads import add_threads_flag
from pretune.use.embed import embed_file
from pretune.use.explain import METHODS, explain_ansi, explain_full, explain_html
from pretune.use.generate import check_options, generate, load_causal_model
from pretune.use.predict import predict_file


def cmd_predict(args) -> None:
    n = predict_file(args.checkpoint, args.input, args.output, batch_size=args.batch_size, overwrite=args.overwrite,
                     device=args.device, decode=decode_from_flags(args))
    print(f"{n} predictions -> {args.output}")


def cmd_embed(args) -> None:
    shape = embed_file(args.checkpoint, args.input, args.output, layers=args.layers, pool=args.pool,
                       field=args.field, batch_size=args.batch_size, max_len=args.max_len, overwrite=args.overwrite,
                       device=args.device)
    print(f"embeddings {list(shape)} -> {args.output}")


def cmd_explain(args) -> None:
    html_out = Path(args.html) if args.html else None
    if html_out is not None:
        files.check_output(html_out, args.overwrite)
    model, tok, conf = load_task_model(args.checkpoint, device=resolve_device(args.device or "auto"))
    ex = explain_full(model, tok, args.text, args.text_b, args.label, args.method, args.steps, conf.get("max_len"))
    color = sys.stdout.isatty() if args.color is None else args.color
    summary = f"{ex.label} (p = {ex.prob:.3f}); {ex.method}"
    if ex.method == "integrated-gradients":
        summary += f": scores add up to p(text) - p(baseline) = {ex.prob - ex.baseline_prob:+.3f}"
    print(summary)
    if color:
        print(explain_ansi(ex.text, ex.items))
    for token, _, _, score in sorted(ex.items, key=lambda x: -abs(x[3]))[: args.top]:
        print(f"  {score:+.4f}  {token}")
    if html_out is not None:
        snippet = explain_html(ex.text, ex.items, ex.label, ex.method)
        files.write_atomic(html_out, lambda f: f.write(snippet))
        print(f"html: {html_out}")


def cmd_generate(args) -> None:
    check_options(args.max_new_tokens, args.temperature, args.top_k, args.top_p)
    model, tok = load_causal_model(args.from_, resolve_device(args.device))
    print(generate(model, tok, args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                   top_k=args.top_k, top_p=args.top_p, greedy=args.greedy, seed=args.seed))


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise ValueError(value)
    return n


def register_cli(sub) -> None:
    """`pretune predict`, `embed`, `explain` and `generate`."""

    def command(name: str, func, help: str, batched: bool = True) -> argparse.ArgumentParser:
        """A subcommand with the options every use of a checkpoint shares."""
        c = sub.add_parser(name, help=help)
        c.add_argument("--from", "--checkpoint", dest="checkpoint", required=True, metavar="CKPT")
        if batched:
            c.add_argument("--batch-size", type=_positive, default=32)
        c.add_argument("--device", default="auto")
        c.add_argument("--overwrite", action="store_true", help="replace an existing output file")
        add_threads_flag(c)
        c.set_defaults(func=func)
        return c

    p = command("predict", cmd_predict, "predict labels (tags, spans) with a fine-tuned checkpoint")
    p.add_argument("--input", required=True, help="JSONL / CSV / TSV in the task's format (labels optional), "
                   "or .txt with one input per line")
    p.add_argument("--output", required=True, help="JSONL: each input's record plus \"prediction\"")
    add_decode_flags(p)

    e = command("embed", cmd_embed, "contextual embeddings from any checkpoint, saved as .npy")
    e.add_argument("--input", required=True, help=".txt (one text per line) or JSONL / CSV / TSV with --field")
    e.add_argument("--output", required=True, help="X.npy: [N, H] pooled, [N, T, H] with --pool none")
    e.add_argument("--layers", choices=("last", "last4"), default="last")
    e.add_argument("--pool", choices=("cls", "mean", "none"), default="cls")
    e.add_argument("--field", default="text")
    e.add_argument("--max-len", type=_positive, default=None)

    x = command("explain", cmd_explain, "which tokens drove a classify / pair prediction", batched=False)
    x.add_argument("--text", required=True)
    x.add_argument("--text-b", default=None, help="second text of a pair model")
    x.add_argument("--label", default=None, help="explain this label (default: the predicted one)")
    x.add_argument("--method", choices=METHODS, default="integrated-gradients")
    x.add_argument("--steps", type=_positive, default=32, help="integrated-gradients steps")
    x.add_argument("--top", type=_positive, default=10, help="list this many tokens by |score|")
    x.add_argument("--html", default=None, help="write an HTML snippet here")
    x.add_argument("--color", action=argparse.BooleanOptionalAction, default=None,
                   help="coloured text (default: when stdout is a terminal)")

    g = sub.add_parser("generate", help="continue a prompt with a causal (clm) model",
                       description="Sample text from a causal checkpoint: greedy, or with temperature, "
                                   "top-k and top-p; stops at the end token.")
    g.add_argument("--from", dest="from_", required=True, metavar="CKPT", help="checkpoint or run directory")
    g.add_argument("--prompt", required=True, help="text to continue")
    g.add_argument("--max-new-tokens", type=int, default=50)
    g.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    g.add_argument("--top-p", type=float, default=None, help="sample among the most likely tokens with mass p")
    g.add_argument("--greedy", action="store_true", help="always take the most likely token")
    g.add_argument("--seed", type=int, default=None, help="for reproducible sampling")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    add_threads_flag(g)
    g.set_defaults(func=cmd_generate)
