"""The unlabeled pool of self-training and consistency training: read from text or labeled-format files, without
the texts of the labeled sets, and sampled down to `pool_size`."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from pathlib import Path

from pretune.errors import InputError
from pretune.finetune.data import subsample
from pretune.text.corpus import iter_documents
from pretune.text.labeled import Example, read_examples
from pretune.text.words import split_words

POOL_TASKS = ("classify", "pair", "tag")  # tasks that self-training and consistency training support


def _text_lines(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(".txt") or name.endswith(".txt.gz")


def _key(task: str, ex: Example) -> tuple:
    """What makes two examples the same text (whitespace-insensitive)."""
    if task == "tag":
        return tuple(ex.tokens or [])
    return (" ".join((ex.text or "").split()), " ".join((ex.text_b or "").split()))


def read_pool(paths: Sequence[str | Path], task: str, fields: dict, exclude: Sequence[Example] = (),
              size: int = 0, seed: int = 0) -> tuple[list[Example], dict]:
    """Unlabeled examples for self-training / consistency training, and what was done to get them.

    .txt / .txt.gz: one text per non-empty line (tag: the line split into words). CSV/TSV/JSONL (.gz allowed): the
    text field(s) named in `fields` (as for the labeled files; a label column is ignored); CoNLL for tag. A pair pool
    needs both texts (text_a/text_b), so it cannot be a .txt file. Items identical to an `exclude` example (the
    labeled sets) or to an earlier pool item are dropped; then at most `size` (0: all) are sampled with `seed`."""
    if task not in POOL_TASKS:
        raise InputError(f"an unlabeled pool is used for the tasks {', '.join(POOL_TASKS)}, not {task!r}")
    if not paths:
        raise InputError("no unlabeled files given (unlabeled / --unlabeled)")
    fields = {k: v for k, v in fields.items() if v is not None}
    items: list[Example] = []
    for p in map(Path, paths):
        if not _text_lines(p):
            items += [dataclasses.replace(ex, label=None, tags=None, spans=None)  # labels there are not used
                      for ex in read_examples(p, task, require_labels=False, **fields)]
            continue
        if task == "pair":
            raise InputError("a pool for a pair task needs two texts per item: give CSV/TSV/JSONL with "
                             f"{fields.get('text_field') or 'text_a'} and {fields.get('text_b_field', 'text_b')}",
                             path=p)
        for n, doc in enumerate(iter_documents(p, fmt="txt"), start=1):
            if task == "classify":
                items.append(Example(line=n, text=doc))
            elif words := split_words(doc):
                items.append(Example(line=n, tokens=words))
    seen = {_key(task, ex) for ex in exclude}
    n_read, pool = len(items), []
    for ex in items:
        k = _key(task, ex)
        if k not in seen:
            seen.add(k)
            pool.append(ex)
    n_unique = len(pool)
    if not pool:
        raise InputError(f"the unlabeled pool ({', '.join(map(str, paths))}) holds no text that is not already in "
                         "the labeled training, validation or test set")
    if size and len(pool) > size:
        pool = [pool[i] for i in sorted(random.Random(seed).sample(range(len(pool)), size))]
    info = {"files": [str(p) for p in paths], "read": n_read, "dropped_duplicates": n_read - n_unique,
            "used": len(pool)}
    return pool, info


def gold_examples(sec) -> list[Example]:
    """The gold training examples of a FinetuneSection as fine-tuning uses them (the label_fraction subset)."""
    return subsample(read_examples(sec.train, sec.task, **sec.fields()), sec.label_fraction, sec.label_seed)


def held_out_examples(sec) -> list[Example]:
    """The validation and test examples of a FinetuneSection."""
    return [ex for path in (sec.validation, sec.test) if path for ex in read_examples(path, sec.task, **sec.fields())]


def labeled_pool(sec, seed: int) -> tuple[list[Example], list[Example], dict]:
    """(gold training examples as fine-tuning uses them, the pool, pool info) for a FinetuneSection: the pool
    without the texts of the training subset, the validation and the test set."""
    gold = gold_examples(sec)
    pool, info = read_pool(sec.unlabeled, sec.task, sec.fields(), exclude=gold + held_out_examples(sec),
                           size=sec.pool_size, seed=seed)
    return gold, pool, info
