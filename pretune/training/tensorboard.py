"""TensorBoard event files beside metrics.jsonl: each record the Trainer logs, its numbers as scalars "split/name"
(train/loss, train/lr, train/grad_norm, train/tokens_per_s, validation/<every metric>).

Optional: needs the `tensorboard` package (`pip install "pretune[tensorboard]"`); without it training runs as before
and says once, in one line, how to turn this on. `tensorboard --logdir DIR` shows every training under DIR (in a
`pretune run`, each stage's folder is one run).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

ENABLE_HINT = ('pretune: note: no TensorBoard logs (the tensorboard package is not installed); '
               'pip install "pretune[tensorboard]" to write them beside metrics.jsonl')
_hinted = False  # the hint is printed once per process


class EventLog:
    """Writes the numeric values of metrics.jsonl records to an event file in `out`."""

    def __init__(self, writer):
        self.writer = writer

    def write(self, record: dict) -> None:
        split = record.get("split", "train")
        for name, value in record.items():
            if name not in ("step", "split") and isinstance(value, int | float) and not isinstance(value, bool):
                self.writer.add_scalar(f"{split}/{name}", value, record["step"])


@contextlib.contextmanager
def event_log(out: Path, resumed_at: int | None = None) -> Iterator[EventLog | None]:
    """An EventLog for the training in `out` (None without the tensorboard package), closed (flushed) at the end.
    A run resumed at step N hides the events a crashed run wrote after N, as its metrics.jsonl drops them."""
    global _hinted
    try:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package
    except ImportError:
        if not _hinted:
            print(ENABLE_HINT, file=sys.stderr)
            _hinted = True
        yield None
        return
    purge = resumed_at + 1 if resumed_at is not None else None
    writer = SummaryWriter(log_dir=str(out), purge_step=purge)
    try:
        yield EventLog(writer)
    finally:
        writer.close()
