"""What the report shows besides the logs: summary.json (test metrics of both models, the gain, the sweep, the
timings), label and corpus statistics, and the test examples shown with their contributions or entities."""

from __future__ import annotations

import html
import json
from collections import Counter
from pathlib import Path

from pretune.evaluate.metrics import entity_spans
from pretune.evaluate.plots import short_labels
from pretune.evaluate.report import gains
from pretune.finetune.model import load_task_model
from pretune.run.config import PipelineConfig, table_metric
from pretune.run.stages import FORMAT_VERSION, StageResult, now
from pretune.text.labeled import read_examples
from pretune.training.config import resolve_device
from pretune.use.explain import explain_full, explain_html


def label_statistics(sec) -> dict:
    """Per split, how often each label occurs (classify/pair: examples; tag: entities; span: spans)."""
    counts: dict[str, dict[str, int]] = {}
    fields = sec.fields()
    for split in ("train", "validation", "test"):
        path = getattr(sec, split)
        examples = read_examples(path, sec.task, **fields)
        c: dict[str, int] = {}
        for ex in examples:
            if sec.task in ("classify", "pair"):
                names = [ex.label]
            elif sec.task == "tag":
                names = [t for t, _, _ in entity_spans(ex.tags or [])]
            elif sec.task == "seqtag":  # characters per label
                for n, k in Counter(ex.tags or []).items():
                    c[n] = c.get(n, 0) + k
                continue
            else:
                names = [lab for _, _, lab in ex.spans or []]
            for n in names:
                c[n] = c.get(n, 0) + 1
        counts[split] = dict(sorted(c.items()))
        counts.setdefault("_examples", {})[split] = len(examples)
    n = counts.pop("_examples")
    unit = {"classify": "examples", "pair": "examples", "tag": "entities",
            "seqtag": "characters"}.get(sec.task, "spans")
    item = {"classify": "examples", "pair": "examples", "seqtag": "sequences"}.get(sec.task, "sentences")
    note = ", ".join(f"{split}: {n[split]:,} {item}"
                     for split in n)
    if sec.label_fraction < 1:
        note += f" (fine-tuning uses {sec.label_fraction:g} of the training set)"
    return {"counts": counts, "unit": unit, "note": note}


def corpus_statistics(cfg: PipelineConfig, stages: dict[str, StageResult]) -> dict | None:
    if "shards" not in stages:
        return None
    meta = json.loads((stages["shards"].directory / "meta.json").read_text(encoding="utf-8"))
    splits = {}
    for split, v in meta.get("splits", {}).items():
        docs, toks = int(v.get("n_docs", 0)), int(v.get("n_tokens", 0))
        splits[split] = {"documents": docs, "tokens": toks, "tokens_per_document": toks / docs if docs else 0.0}
    tok = stages["tokenizer"].result
    return {"files": [Path(f).name for f in cfg.corpus.files], "splits": splits, "tokenizer": tok.get("kind"),
            "vocab_size": tok.get("vocab_size")}


def pick_examples(gold: list[str], preds: dict[str, list[str]], n: int) -> list[int]:
    """Indices of test examples to show: where only the pretrained model is right first, then both right, then
    other cases; within each group spread evenly over the test set (deterministic)."""
    if n <= 0 or not gold:
        return []
    p, b = preds.get("pretrained", []), preds.get("baseline", [])
    groups: list[list[int]] = [[], [], []]
    for i, g in enumerate(gold):
        pr, ba = (p[i] if i < len(p) else None), (b[i] if i < len(b) else None)
        groups[0 if pr == g and ba != g else 1 if pr == g else 2].append(i)
    quota = [n - 2 * (n // 3), n // 3, n // 3]  # e.g. 6 -> 2 + 2 + 2, 4 -> 2 + 1 + 1
    chosen: list[int] = []
    for group, k in zip(groups, quota, strict=True):
        chosen += _spread(group, k)
    rest = [i for g in groups for i in _spread(g, len(g)) if i not in chosen]
    return sorted(chosen + rest[: n - len(chosen)])


def _spread(items: list[int], k: int) -> list[int]:
    if k <= 0 or not items:
        return []
    if k >= len(items):
        return list(items)
    step = len(items) / k
    return [items[int(j * step)] for j in range(k)]


def build_examples(cfg: PipelineConfig, stages: dict[str, StageResult], reports: dict[str, dict]) -> tuple[list, str]:
    """Test examples for the report, each with the pretrained model's per-token contributions as HTML.

    Returns (examples, the attribution method's name)."""
    sec = cfg.finetune
    if sec.task == "seqtag":  # a sequence of thousands of characters is no example to read in a report
        return [], ""
    if sec.task not in ("classify", "pair"):
        return _token_task_examples(cfg, reports), ""
    examples = read_examples(sec.test, sec.task, **sec.fields())
    gold = [ex.label for ex in examples]
    preds = {m: [p["label"] for p in reports[m]["predictions"]] for m in ("pretrained", "baseline")}
    chosen = pick_examples(gold, preds, cfg.run.examples)
    if not chosen:
        return [], ""
    model, tok, conf = load_task_model(stages["finetune"].directory / "model", device=resolve_device(cfg.run.device))
    names = reports["pretrained"]["labels"]
    shorten = dict(zip(names, short_labels(names), strict=True))
    out, method = [], ""
    for i in chosen:
        ex = examples[i]
        exp = explain_full(model, tok, ex.text, ex.text_b, max_len=conf.get("max_len"))
        method = exp.method
        out.append({"index": i, "text": exp.text, "gold": shorten[ex.label],
                    "html": explain_html(exp.text, exp.items),
                    "predictions": {m: shorten.get(preds[m][i], preds[m][i]) for m in preds}})
    return out, method


def _token_task_examples(cfg: PipelineConfig, reports: dict[str, dict]) -> list:
    """tag/span: a few test sentences with gold and predicted entities; the pretrained model's entities are
    highlighted in the sentence (green: right, red: wrong)."""
    sec = cfg.finetune
    examples = read_examples(sec.test, sec.task, **sec.fields())

    def as_spans(item) -> set[tuple[int, int, str]]:
        if isinstance(item, dict) and "tags" in item:
            return {(s, e, t) for t, s, e in entity_spans(item["tags"])}
        if isinstance(item, dict):
            return {(x["start"], x["end"], x["label"]) for x in item["spans"]}
        if sec.task == "tag":
            return {(s, e, t) for t, s, e in entity_spans(item.tags or [])}
        return set(item.spans or [])

    def describe(tokens: list[str], spans: set) -> str:
        return "; ".join(f"{' '.join(tokens[s:e])} ({lab})" for s, e, lab in sorted(spans)) or "none"

    gold_spans = [as_spans(ex) for ex in examples]
    pred_spans = {m: [as_spans(p) for p in reports[m]["predictions"]] for m in ("pretrained", "baseline")}
    gold = [describe(ex.tokens, g) for ex, g in zip(examples, gold_spans, strict=True)]
    preds = {m: [describe(ex.tokens, p) for ex, p in zip(examples, pred_spans[m], strict=True)] for m in pred_spans}
    chosen = pick_examples(gold, preds, cfg.run.examples)
    return [{"index": i, "text": " ".join(examples[i].tokens), "gold": gold[i],
             "predictions": {m: preds[m][i] for m in preds},
             "html": _highlight(examples[i].tokens, pred_spans["pretrained"][i], gold_spans[i])} for i in chosen]


def _highlight(tokens: list[str], predicted: set, gold: set) -> str:
    """The sentence with each predicted span marked: green when it is a gold span, red when not."""
    starts = {s: (e, lab) for s, e, lab in sorted(predicted, key=lambda x: (x[0], -x[1]))}
    out, i = [], 0
    while i < len(tokens):
        if i in starts:
            e, lab = starts[i]
            color = "40, 160, 60" if (i, e, lab) in gold else "210, 50, 50"
            text = html.escape(" ".join(tokens[i:e]))
            out.append(f'<span style="background-color: rgba({color}, 0.35); border-radius: 3px" '
                       f'title="{html.escape(lab)}">{text} <sub>{html.escape(lab)}</sub></span>')
            i = max(e, i + 1)
        else:
            out.append(html.escape(tokens[i]))
            i += 1
    return " ".join(out)


def build_summary(cfg: PipelineConfig, stages: dict[str, StageResult], evaluation: StageResult,
                  sweep_points: list[dict]) -> dict:
    """summary.json: the test metrics of both models, the gain, the sweep and the stage timings."""
    scores = evaluation.result["test"]
    models = {}
    for name in ("pretrained", "baseline"):
        st = stages["finetune" if name == "pretrained" else "baseline"]
        models[name] = {"test": scores[name], "best": st.result.get("best"), "steps": st.result.get("steps"),
                        "n_train": st.result.get("n_train"), "checkpoint": str(st.directory / "model")}
    summary = {
        "format_version": FORMAT_VERSION,
        "created": now(),
        "task": cfg.finetune.task,
        "metric": cfg.finetune.metric_name(),
        "test_size": evaluation.result.get("test_size"),
        "models": models,
        "gain": gains({m: models[m]["test"] for m in models}),
        "sweep": sweep_points,
        "sweep_metric": table_metric(cfg),
        "pretrain": stages["pretrain"].result if "pretrain" in stages else None,
        "contrastive": stages["contrastive"].result if "contrastive" in stages else None,
        "self_training": stages["finetune"].result.get("self_training"),  # rounds of the pretrained model, or None
        "stages": {n: {"skipped": s.skipped, "seconds": round(s.seconds, 1)} for n, s in stages.items()},
        "compute_seconds": round(sum(s.seconds for s in stages.values()), 1),
    }
    return summary


def sweep_points(cfg: PipelineConfig, models: dict[str, StageResult], evaluation: StageResult,
                  sweep_models: dict[str, tuple[float, str]]) -> list[dict]:
    if not cfg.sweep.label_fractions:
        return []
    scores = evaluation.result["test"]
    points: dict[float, dict] = {}
    main = cfg.finetune.label_fraction
    for f in cfg.sweep.label_fractions:
        points[f] = {"fraction": f}
    if main in points and cfg.sweep.label_seed == cfg.finetune.label_seed:
        points[main].update(n_train=models["pretrained"].result.get("n_train"), pretrained=scores["pretrained"],
                            baseline=scores["baseline"])
    for name, (f, model) in sweep_models.items():
        points[f][model] = scores[name]
        points[f]["n_train"] = models[name].result.get("n_train")
    return [points[f] for f in sorted(points)]

