"""`--threads`: the CPU threads torch runs on, one flag for every subcommand that runs a model (set in
`pretune.cli.main` before the command runs; `pretune run` takes it as `[run] threads`)."""

from __future__ import annotations

import argparse

import torch

from pretune.errors import InputError

HELP = "CPU threads for torch (default: torch's own, all cores; 1 is often faster on a busy machine)"


def add_threads_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=None, help=HELP)


def set_threads(threads: int | None) -> None:
    """torch.set_num_threads(threads); None or 0 keeps torch's default."""
    if threads is None:
        return
    if threads < 0:
        raise InputError(f"--threads must be >= 0 (0: torch's default), got {threads}")
    if threads:
        torch.set_num_threads(threads)
