"""Predictions of a fine-tuned checkpoint on new text, in length-grouped batches under torch.inference_mode
(`run_features`); results come back in input order."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pretune import files
from pretune.errors import InputError
from pretune.finetune.data import encode_split, length_warnings, merge_outputs, run_features
from pretune.finetune.genes import with_decode
from pretune.finetune.model import TaskModel, load_task_model
from pretune.finetune.tasks import predictions_json
from pretune.text.labeled import Example, read_examples
from pretune.text.words import split_words
from pretune.training.config import resolve_device
from pretune.use.io import read_lines


def _loaded(checkpoint, device=None) -> tuple[TaskModel, Any, dict]:
    """A (model, tokenizer, config) tuple as given, or loaded from a checkpoint path."""
    if isinstance(checkpoint, tuple):
        return checkpoint
    return load_task_model(checkpoint, device=resolve_device(device or "auto"))


def to_examples(task: str, inputs: Sequence, fields: dict | None = None) -> list[Example]:
    """Unlabeled examples from Python values. classify: str or {"text": ...}; pair: (a, b) or {"text_a", "text_b"};
    tag/span: a list of words, {"tokens": [...]}, or a str (split with `split_words`); seqtag: a sequence str or
    {"sequence": ...}. Example objects pass through."""
    fields = fields or {}
    text_key = fields.get("text_field") or ("text_a" if task == "pair" else "text")
    b_key = fields.get("text_b_field") or "text_b"
    out = []
    for i, item in enumerate(inputs):
        line = i + 1
        if isinstance(item, Example):
            out.append(item)
        elif task == "seqtag":
            seq = item.get(fields.get("text_field") or "sequence") if isinstance(item, dict) else item
            if not isinstance(seq, str) or not seq.strip():
                raise InputError(f"input {i}: expected a non-empty sequence string")
            out.append(Example(line=line, text=seq.strip()))
        elif task == "classify":
            text = item.get(text_key) if isinstance(item, dict) else item
            if not isinstance(text, str):
                raise InputError(f"input {i}: expected a text string (or a dict with {text_key!r})")
            out.append(Example(line=line, text=text))
        elif task == "pair":
            a, b = (item.get(text_key), item.get(b_key)) if isinstance(item, dict) else \
                (tuple(item) if isinstance(item, (list, tuple)) and len(item) == 2 else (None, None))
            if not isinstance(a, str) or not isinstance(b, str):
                raise InputError(f"input {i}: expected two texts, as (a, b) or a dict with {text_key!r} and {b_key!r}")
            out.append(Example(line=line, text=a, text_b=b))
        else:
            words = item.get("tokens", item.get("text")) if isinstance(item, dict) else item
            if isinstance(words, str):
                words = split_words(words)
            if not isinstance(words, (list, tuple)) or not words or not all(isinstance(w, str) and w.strip()
                                                                          for w in words):
                raise InputError(f"input {i}: expected a non-empty list of words (or a text to split)")
            out.append(Example(line=line, tokens=list(words)))
    return out


def predict(checkpoint, inputs: Sequence, batch_size: int = 32, device: str | None = None,
            decode: str | dict | None = None) -> list[dict]:
    """Predictions for `inputs` (see `to_examples`), in order, from a fine-tuned checkpoint path or a loaded
    (model, tokenizer, config) tuple. classify/pair: {"label", "probs": {label: p}}; tag: {"tags", "probs"}
    (probability of each word's tag); span: {"spans": [{"start", "end", "label", "prob"}]} (words, end exclusive);
    seqtag: {"labels" (one per character), "segments", "mean_prob"} (`SeqTag.prediction`); `decode` replaces the
    model's decoder (`pretune.finetune.genes.with_decode`; None keeps it)."""
    model, tok, conf = _loaded(checkpoint, device)
    head_options = with_decode(model.head_options, model.task, decode)
    examples = to_examples(model.task, inputs, conf.get("fields"))
    if not examples:
        return []
    data = encode_split(None, examples, model.task, tok, None, conf.get("max_len", 128), head_options)
    for w in length_warnings(data, model.task, conf.get("max_len", 128)):
        print(f"pretune: warning: {w}", file=sys.stderr)
    outputs, _ = run_features(model, data.features, tok.specials.pad, batch_size)
    merged = merge_outputs(model.task, model.labels, examples, data.features, outputs)
    partner = getattr(model, "tfidf_partner", None)
    if partner is not None:  # a served blend (`pretune.compare.blend`): averaged with TF-IDF + LR
        merged = partner.blend(examples, merged, model.labels)
    return predictions_json(model.task, model.labels, merged)


def read_inputs(path: str | Path, task: str, fields: dict | None = None) -> tuple[list[Example], list[dict]]:
    """Unlabeled examples from a file, with a JSON record of each input to echo in the output.

    .txt: one input per line (classify: the text; seqtag: the sequence; tag/span: words split with `split_words`);
    other files are
    read like training data (JSONL / CSV / TSV / CoNLL) with labels optional."""
    path = Path(path)
    fields = {k: v for k, v in (fields or {}).items() if v is not None}
    if path.suffix.lower() == ".txt":
        if task == "pair":
            raise InputError("pair inputs need two texts: give JSONL, CSV or TSV with text_a and text_b", path=path)
        lines = read_lines(path)
        examples = [Example(line=i + 1, text=ln.strip() if task == "seqtag" else ln.rstrip("\r"))
                    if task in ("classify", "seqtag") else
                    Example(line=i + 1, tokens=split_words(ln)) for i, ln in enumerate(lines) if ln.strip()]
        if not examples or (task not in ("classify", "seqtag") and any(not ex.tokens for ex in examples)):
            raise InputError("no inputs found (or a line without words)", path=path)
    else:
        examples = read_examples(path, task, require_labels=False, **fields)
    records = []
    raw_lines = None
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        raw_lines = path.read_text(encoding="utf-8-sig").split("\n")
    for ex in examples:
        if raw_lines is not None:
            records.append(json.loads(raw_lines[ex.line - 1]))
        elif task == "seqtag":
            records.append({fields.get("text_field") or "sequence": ex.text})
        elif task in ("classify", "pair"):
            rec = {fields.get("text_field") or ("text_a" if task == "pair" else "text"): ex.text}
            if task == "pair":
                rec[fields.get("text_b_field") or "text_b"] = ex.text_b
            records.append(rec)
        else:
            records.append({"tokens": ex.tokens})
    return examples, records


def predict_file(checkpoint, input_path: str | Path, output_path: str | Path, batch_size: int = 32,
                 overwrite: bool = False, device: str | None = None, decode: str | dict | None = None) -> int:
    """JSONL out: each input's record (the JSONL object itself, or its fields) plus "prediction". Returns the count."""
    out = Path(output_path)
    files.check_output(out, overwrite, Path(input_path))
    model, tok, conf = _loaded(checkpoint, device)
    examples, records = read_inputs(input_path, model.task, conf.get("fields"))
    preds = predict((model, tok, conf), examples, batch_size=batch_size, decode=decode)
    lines = [json.dumps({**rec, "prediction": p}, ensure_ascii=False) + "\n"
             for rec, p in zip(records, preds, strict=True)]
    files.write_atomic(out, lambda f: f.write("".join(lines)))
    return len(lines)
