"""The `pretune` command. Each subcommand maps to one stage; bad input ends in one line on stderr and exit code 2.

The subcommands are defined beside their stage, each module's `register_cli(sub)` adding its own; COMMANDS lists
those modules, in the order `pretune --help` shows them.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pretune import __version__
from pretune.errors import InputError
from pretune.files import release_locks
from pretune.training.threads import set_threads
from pretune.training.trainer import TrainingError

EXIT_INPUT, EXIT_TRAINING, EXIT_INTERRUPTED = 2, 3, 130

COMMANDS = (
    "pretune.text.cli",  # tokenizer train | show
    "pretune.pretrain.cli",  # prepare, pretrain, vocab extend
    "pretune.finetune.cli",  # finetune, evaluate
    "pretune.use.cli",  # predict, embed, explain, generate
    "pretune.compare.cli",  # blend
    "pretune.run.cli",  # run, tune, compare
    "pretune.interop.cli",  # import, export
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pretune", description="Pretrain a transformer on unlabeled text, "
                                     "then fine-tune it on a few labels.")
    parser.add_argument("--version", action="version", version=f"pretune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Every stage module (and torch with them) is imported here, so even `pretune --help` takes about as long as
    # importing torch: each subcommand's flags come from its stage's config dataclasses, so this is the floor.
    for name in COMMANDS:
        importlib.import_module(name).register_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        set_threads(getattr(args, "threads", None))
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
    finally:
        release_locks()  # the output directories this command held
    return 0


if __name__ == "__main__":
    sys.exit(main())
