"""The run report: one self-contained report.html (plots are matplotlib PNGs embedded as base64) and a terminal table.

`write_report` takes plain data (the pipeline gathers it from the run directory), so a report can be rebuilt from the
files of a finished run. Sections, each an element with a fixed id: comparison (when [compare] ran: every method
x label count and the winner sentence), config, data, pretraining, finetuning, results,
causal (a continued-pretrained causal checkpoint against the published one), label-efficiency
(when swept), tuning (when a hyperparameter search ran), self-training (when it ran), errors
(confusion matrix or per-entity table), examples.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pretune.compare.table import format_table, label_counts, table_from_summary
from pretune.evaluate.metrics import HEADLINE_KEYS, headline_metrics
from pretune.evaluate.plots import (
    MODELS,
    comparison_plot,
    confusion_plot,
    finetuning_plot,
    percent,
    pretraining_plot,
    sweep_plot,
    tuning_plot,
)
from pretune.files import write_text


@dataclass
class ReportData:
    """Everything the report shows. Curves are metrics.jsonl records ({"step", "split", ...})."""

    title: str
    summary: dict  # as written to summary.json (see run.summary.build_summary)
    config_text: str
    pretrain_log: list[dict] = field(default_factory=list)
    finetune_logs: dict[str, list[dict]] = field(default_factory=dict)  # model name -> records
    test_reports: dict[str, dict] = field(default_factory=dict)  # model name -> metrics report (confusion, ...)
    examples: list[dict] = field(default_factory=list)  # {"text", "gold", "predictions": {model: label}, "html"}
    tune: dict | None = None  # tune/trials.json of the hyperparameter search, when one ran


# ---- numbers ----------------------------------------------------------------------------------------------------
def gains(reports: dict[str, dict]) -> dict[str, float]:
    """pretrained - baseline for every headline metric both have."""
    if not all(m in reports for m in MODELS):
        return {}
    a, b = headline_metrics(reports["pretrained"]), headline_metrics(reports["baseline"])
    return {k: a[k] - b[k] for k in a if k in b}


def format_summary(summary: dict) -> str:
    """The terminal table: test metrics of the pretrained model and the baseline side by side, with the gain."""
    models = summary.get("models", {})
    names = [m for m in MODELS if m in models]
    if not names:
        return "no models were evaluated"
    keys = [k for k in HEADLINE_KEYS if any(k in models[m].get("test", {}) for m in names)]
    has_gain = len(names) == 2
    width = max(len(k) for k in [*keys, "metric", "labels used"])
    header = f"{'metric':<{width}}  " + "  ".join(f"{m:>10}" for m in names)
    header += f"  {'gain':>8}" if has_gain else ""
    lines = [f"test set ({summary.get('task', '?')}, {summary.get('test_size', '?')} examples)", header,
             "-" * len(header)]
    for k in keys:
        vals = [models[m].get("test", {}).get(k) for m in names]
        row = f"{k:<{width}}  " + "  ".join(f"{v:>10.4f}" if v is not None else f"{'-':>10}" for v in vals)
        if has_gain and None not in vals:
            row += f"  {vals[0] - vals[1]:>+8.4f}"
        lines.append(row)
    n_train = [models[m].get("n_train") for m in names]
    lines.append(f"{'labels used':<{width}}  " + "  ".join(f"{n if n is not None else '-':>10}" for n in n_train))
    sweep_metric = summary.get("sweep_metric", "")
    for point in summary.get("sweep", []):
        cells = [point.get(m, {}).get(sweep_metric) for m in names]
        text = "  ".join(f"{v:>10.4f}" if v is not None else f"{'-':>10}" for v in cells)
        name = "sweep " + percent(point["fraction"])
        lines.append(f"{name:<{width}}  {text}   ({point.get('n_train', '?')} labels, {sweep_metric})")
    rounds = (summary.get("self_training") or {}).get("rounds") or []
    if len(rounds) > 1:
        kept = [r["round"] for r in rounds if r.get("kept")]
        scores = ", ".join(f"{r['round']}: {r['validation']:.4f}" for r in rounds if r.get("validation") is not None)
        lines.append(f"pretrained = self-training round {kept[-1]} (of rounds 0-{rounds[-1]['round']}, kept by "
                     f"validation {summary['self_training'].get('metric', '')}: {scores})")
    best = (summary.get("tune") or {}).get("best")
    if best:
        lines.append(f"fine-tuned with the best values of a {summary['tune'].get('trials', '?')}-trial search "
                     f"(trial {best.get('number')})")
    if summary.get("comparison"):
        lines += ["", format_comparison(summary["comparison"])]
    causal = summary.get("causal")
    if causal:
        lines += ["", f"validation perplexity, checkpoint as published: {causal['published']['perplexity']:.2f}",
                  f"validation perplexity, continued pretraining:   {causal['continued']['perplexity']:.2f}"]
    return "\n".join(lines)


def format_comparison(comparison: dict) -> str:
    """The terminal comparison: every method x label count (test metric, best starred), the winner sentence, a
    warning per method that predicted a single class, and what a method cannot represent."""
    lines = [f"comparison (test {comparison['metric']} by number of training labels; * best)",
             format_table(table_from_summary(comparison), comparison["metric"]), "", comparison["sentence"]]
    lines += [comparison["without_blend"]] if comparison.get("without_blend") else []
    lines += [f"WARNING: {m} predicts a single class on the test set" for m in comparison.get("one_class", [])]
    lines += [f"note: {n}" for n in comparison.get("notes", [])]
    return "\n".join(lines)


# ---- HTML -------------------------------------------------------------------------------------------------------
CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1100px;
       padding: 1.5em 2em 4em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
.gain-pos { color: #137333; font-weight: 600; } .gain-neg { color: #b3261e; font-weight: 600; }
img { max-width: 100%; height: auto; display: block; margin: 0.6em 0; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; border: 1px solid #e4e4e4; }
.ok { color: #137333; } .bad { color: #b3261e; }
.example { border: 1px solid #e4e4e4; border-radius: 6px; padding: 0.6em 0.9em; margin: 0.7em 0; }
.example .meta { font-size: 0.88em; color: #444; margin-bottom: 0.35em; }
nav a { margin-right: 0.9em; font-size: 0.92em; }
.note { color: #555; font-size: 0.9em; }
"""


def _esc(x) -> str:
    return html.escape(str(x))


def _table(header: Sequence[str], rows: list[Sequence], left: int = 1) -> str:
    """An HTML table; the first `left` columns are left-aligned; cells are escaped unless they are _Raw."""
    def cell(tag: str, i: int, v) -> str:
        cls = ' class="l"' if i < left else ""
        text = v.html if isinstance(v, _Raw) else _esc(_fmt(v))
        return f"<{tag}{cls}>{text}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


@dataclass
class _Raw:
    html: str


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return "-" if v is None else str(v)


def _duration(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return "?"
    return f"{seconds:.1f} s" if seconds < 120 else f"{int(seconds // 60)} min {int(seconds % 60)} s"


def _gain_cell(g: float) -> _Raw:
    cls = "gain-pos" if g > 0 else "gain-neg" if g < 0 else ""
    return _Raw(f'<span class="{cls}">{g:+.4f}</span>')


def _section(id_: str, title: str, body: str) -> str:
    return f'<section id="{id_}"><h2>{_esc(title)}</h2>\n{body}\n</section>'


def _comparison_section(comparison: dict) -> str:
    """The sentence, every method x label count (test metric; the best of each column in bold), one-class flags."""
    metric, table = comparison["metric"], table_from_summary(comparison)
    counts = label_counts(table)
    rows = [[m, *(_Raw(f"<b>{row[n][metric]:.4f}</b>") if m in comparison["best"].get(str(n), []) else
                  row.get(n, {}).get(metric) for n in counts)] for m, row in table.items()]
    warn = "".join(f'<p class="bad">{_esc(m)} predicts a single class on the test set.</p>'
                   for m in comparison.get("one_class", []))
    notes = "".join(f'<p class="note">{_esc(n)}</p>' for n in comparison.get("notes", []))
    alone = comparison.get("without_blend")
    return (f"<p><b>{_esc(comparison['sentence'])}</b></p>" + (f"<p>{_esc(alone)}</p>" if alone else "") + warn
            + _table(["method", *(f"{n:,} labels" for n in counts)], rows) + notes)


def _causal_section(causal: dict) -> str:
    """The published causal checkpoint against the continued-pretrained one: perplexities and generations."""
    ppl = _table(["model", "validation perplexity"],
                 [["as published", causal["published"]["perplexity"]],
                  ["continued pretraining", causal["continued"]["perplexity"]]])
    gens = _table(["prompt", "as published", "continued pretraining"],
                  [[g["prompt"], g["published"], g["continued"]] for g in causal["generations"]], left=3)
    return ppl + "<p>Greedy continuations of the same prompts:</p>" + gens


def _results_section(data: ReportData) -> str:
    s = data.summary
    models = s.get("models", {})
    names = [m for m in MODELS if m in models]
    keys = [k for k in HEADLINE_KEYS if any(k in models[m].get("test", {}) for m in names)]
    rows = []
    for k in keys:
        vals = [models[m].get("test", {}).get(k) for m in names]
        row: list = [k, *vals]
        if len(names) == 2 and None not in vals:
            row.append(_gain_cell(vals[0] - vals[1]))
        rows.append(row)
    rows.append(["labeled examples used", *[models[m].get("n_train") for m in names]]
                + ([""] if len(names) == 2 else []))
    rows.append(["best validation " + s.get("metric", ""), *[models[m].get("best") for m in names]]
                + ([""] if len(names) == 2 else []))
    rows.append(["fine-tuning steps", *[models[m].get("steps") for m in names]] + ([""] if len(names) == 2 else []))
    header = ["test metric", *names] + (["gain"] if len(names) == 2 else [])
    note = (f'<p class="note">Test set: {_esc(s.get("test_size", "?"))} held-out examples. The baseline is the same '
            "architecture fine-tuned the same way from a random initialisation (no pretraining).</p>")
    return _table(header, rows) + note


def _data_section(data: ReportData) -> str:
    s = data.summary
    parts = []
    corpus = s.get("corpus")
    if corpus:
        rows = [[split, v.get("documents"), v.get("tokens"), f"{v.get('tokens_per_document', 0):.1f}"]
                for split, v in corpus.get("splits", {}).items()]
        parts.append(f"<h3>Unlabeled corpus</h3><p>{_esc(', '.join(corpus.get('files', [])))}: tokenizer "
                     f"{_esc(corpus.get('tokenizer', ''))} with {_fmt(corpus.get('vocab_size'))} tokens.</p>")
        parts.append(_table(["split", "documents", "tokens", "tokens / document"], rows))
    labels = s.get("labels")
    if labels:
        splits = [x for x in ("train", "validation", "test") if x in labels.get("counts", {})]
        names = sorted({n for x in splits for n in labels["counts"][x]})
        rows = [[n, *[labels["counts"][x].get(n, 0) for x in splits]] for n in names]
        rows.append([_Raw("<b>total</b>"), *[sum(labels["counts"][x].values()) for x in splits]])
        unit = labels.get("unit", "examples")
        parts.append(f"<h3>Labeled data ({_esc(s.get('task', ''))})</h3><p>{_esc(labels.get('note', ''))}</p>")
        parts.append(_table([f"label ({unit})", *splits], rows))
    return "\n".join(parts) or "<p>No data statistics.</p>"


def _errors_section(data: ReportData) -> str:
    reports = data.test_reports
    img = confusion_plot(reports)
    if img:
        return ('<p class="note">Row-normalised confusion matrices on the test set (rows: true label, columns: '
                "predicted).</p>" + img + _per_class_table(reports, "per_class"))
    for key in ("per_type", "per_label"):
        if any(key in reports.get(m, {}) for m in MODELS):
            return _per_class_table(reports, key)
    return "<p>No per-class results.</p>"


def _per_class_table(reports: dict[str, dict], key: str) -> str:
    names = [m for m in MODELS if key in reports.get(m, {})]
    if not names:
        return ""
    labels = sorted({lab for m in names for lab in reports[m][key]})
    rows = []
    for lab in labels:
        cells = [reports[m][key].get(lab, {}) for m in names]
        f1s = [c.get("f1") for c in cells]
        gain = _gain_cell(f1s[0] - f1s[1]) if len(names) == 2 and None not in f1s else ""
        rows.append([lab, cells[0].get("support"), *f1s, *([gain] if len(names) == 2 else [])])
    header = ["label", "support", *[f"F1 {m}" for m in names], *(["gain"] if len(names) == 2 else [])]
    what = "entity type" if key == "per_type" else "label"
    return f"<h3>Per {what} on the test set</h3>" + _table(header, rows)


def _examples_section(data: ReportData) -> str:
    if not data.examples:
        return "<p>No examples.</p>"
    if data.summary.get("explain_method"):
        note = ("the text is coloured by each token's contribution to the pretrained model's prediction (green: "
                "towards the predicted label, red: against it)")
    else:
        note = "the pretrained model's entities are highlighted (green: a gold entity, red: not one)"
    out = [f'<p class="note">Test examples, picked where pretraining made the difference first; {note}.</p>']
    for ex in data.examples:
        preds = []
        for name, label in ex.get("predictions", {}).items():
            right = label == ex.get("gold")
            mark = '<span class="ok">&#10003;</span>' if right else '<span class="bad">&#10007;</span>'
            preds.append(f"{_esc(name)}: <b>{_esc(label)}</b> {mark}")
        meta = f"gold: <b>{_esc(ex.get('gold'))}</b> &middot; " + " &middot; ".join(preds)
        body = ex.get("html") or _esc(ex.get("text", ""))
        out.append(f'<div class="example"><div class="meta">{meta}</div><div>{body}</div></div>')
    if data.summary.get("explain_method"):
        out.append(f'<p class="note">Contributions: {_esc(data.summary["explain_method"])}.</p>')
    return "\n".join(out)


def _tuning_section(search: dict, top: int = 5) -> str:
    """The search: trial values plotted, the space and budget, the best trials as a table."""
    def value_text(v) -> str:
        return "-" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)

    trials, metric = search.get("trials", []), search.get("metric", "")
    space = search.get("space", {})
    greater = search.get("direction") != "minimize"
    counts = {s: sum(t["state"] == s for t in trials) for s in ("complete", "pruned", "failed")}
    ranked = sorted((t for t in trials if t["state"] == "complete" and isinstance(t["value"], (int, float))
                     and math.isfinite(t["value"])), key=lambda t: t["value"], reverse=greater)[:top]
    rows = [[t["number"], t["value"], *[value_text(t["params"].get(n)) for n in space], len(t["evaluations"]),
             _duration(t.get("seconds"))] for t in ranked]
    ranges = "; ".join(
        f"{n} " + (f"one of {', '.join(value_text(x) for x in sp['values'])}" if sp["kind"] == "choice" else
                   f"{value_text(sp['values'][0])} to {value_text(sp['values'][1])}"
                   + (" (log scale)" if sp["kind"] == "log" else ""))
        for n, sp in space.items())
    pruning = ("; a trial was pruned (stopped) when it fell behind the median of the earlier trials at the same "
               "evaluation" if (search.get("pruner") or {}).get("kind") == "median" else "")
    note = (f'<p class="note">{len(trials)} trials ({counts["complete"]} complete, {counts["pruned"]} pruned, '
            f'{counts["failed"]} failed) in {_duration(search.get("seconds"))}, each a fine-tuning of the pretrained '
            f"model scored by its best validation {_esc(metric)}{pruning}. Searched: {_esc(ranges)}. The best values "
            "were used to fine-tune both the pretrained model and the baseline.</p>")
    header = ["trial", f"validation {metric}", *space, "evaluations", "time"]
    return (note + (tuning_plot(search) or "") + f"<h3>The best {len(rows)} trials</h3>"
            + _table(header, rows, left=0))


def _self_training_section(record: dict) -> str:
    """One row per self-training round: pseudo labels added, validation and test metric, gain over round 0."""
    metric, rounds = record.get("metric", ""), record.get("rounds", [])
    first = rounds[0] if rounds else {}
    test_key = metric if metric in (first.get("test") or {}) else next(iter(first.get("test") or {}), None)

    def gain(r: dict, get) -> object:
        v, v0 = get(r), get(first)
        return _gain_cell(v - v0) if r is not first and None not in (v, v0) else ""

    def val(r: dict):
        return r.get("validation")

    def test(r: dict):
        return (r.get("test") or {}).get(test_key)

    rows = [[r["round"], "-" if r.get("teacher") is None else r["teacher"], r.get("n_pseudo", 0), val(r),
             gain(r, val), test(r), gain(r, test), ("kept" if r.get("kept") else "discarded")
             + (f" ({r['note']})" if r.get("note") else "")] for r in rounds]
    pool = record.get("pool", {})
    how = " and ".join(x for x in (f"confidence >= {record['threshold']:g}" if record.get("threshold") else "",
                                   f"at most {record['top_k']} per class" if record.get("top_k") else "") if x)
    note = (f'<p class="note">Round 0 is the plain fine-tune of the pretrained model on {_fmt(record.get("n_gold"))} '
            f"labels. In each later round the best model so far labels the unlabeled pool ({_fmt(pool.get('used'))} "
            f"texts, without those of the labeled sets); its predictions with {_esc(how or 'any confidence')} join "
            "the labels, and a new model is fine-tuned from the pretrained checkpoint. A round is kept only when its "
            f"validation {_esc(metric)} beats every earlier round; the first that does not ends self-training. "
            f"Round {_esc(record.get('kept_round'))} is the pretrained model evaluated above; test numbers never "
            "decide.</p>")
    header = ["round", "teacher", "pseudo labels", f"validation {metric}", "gain", f"test {test_key or ''}", "gain",
              ""]
    return note + _table(header, rows, left=0)


def _stages_table(summary: dict) -> str:
    stages = summary.get("stages", {})
    if not stages:
        return ""
    rows = [[name, "skipped (up to date)" if st.get("skipped") else "ran", st.get("seconds")]
            for name, st in stages.items()]
    return "<h3>Stages</h3>" + _table(["stage", "this run", "seconds (when it ran)"], rows)


def render_report(data: ReportData) -> str:
    """The report as one HTML string."""
    s = data.summary
    metric = s.get("metric", "accuracy")
    sections = []
    nav = []

    def add(id_: str, title: str, body: str) -> None:
        sections.append(_section(id_, title, body))
        nav.append(f'<a href="#{id_}">{_esc(title)}</a>')

    if s.get("comparison"):
        add("comparison", f"Comparison of every method (test {s['comparison']['metric']})",
            _comparison_section(s["comparison"]))
    add("results", "Test results: pretrained vs. baseline", _results_section(data))
    if s.get("causal"):
        add("causal", "Continued pretraining of a causal model", _causal_section(s["causal"]))
    if s.get("self_training"):
        add("self-training", "Self-training rounds", _self_training_section(s["self_training"]))
    add("data", "Corpus and label statistics", _data_section(data))
    pre = pretraining_plot(data.pretrain_log)
    add("pretraining", "Pretraining", pre or "<p>No pretraining in this run (fine-tuned an existing checkpoint).</p>")
    add("finetuning", "Fine-tuning curves", finetuning_plot(data.finetune_logs, metric) or "<p>No curves.</p>")
    if data.tune:
        add("tuning", "Hyperparameter search", _tuning_section(data.tune))
    if s.get("sweep"):
        sm = s.get("sweep_metric", metric)
        rows = [[percent(p["fraction"]), p.get("n_train"), *[p.get(m, {}).get(sm) for m in MODELS],
                 _gain_cell(p["pretrained"][sm] - p["baseline"][sm])
                 if sm in p.get("pretrained", {}) and sm in p.get("baseline", {}) else ""]
                for p in s["sweep"]]
        comp = s.get("comparison")  # with [compare]: every method on the plot
        plot = comparison_plot(table_from_summary(comp), comp["metric"]) if comp else sweep_plot(s["sweep"], sm)
        body = (plot or "") + _table(["labels", "examples", *MODELS, "gain"], rows)
        add("label-efficiency", f"Label efficiency (test {sm})", body)
    add("errors", "Errors by class", _errors_section(data))
    add("examples", "Test examples", _examples_section(data))
    add("config", "Configuration", f"<pre>{_esc(data.config_text)}</pre>" + _stages_table(s))
    subtitle = (f"task: {_esc(s.get('task', ''))} &middot; created {_esc(s.get('created', ''))} &middot; "
                f"stages took {_duration(s.get('compute_seconds'))} in all")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{_esc(data.title)}</title>"
            f"<style>{CSS}</style></head><body>\n<h1>{_esc(data.title)}</h1><p class=\"sub\">{subtitle}</p>\n"
            f"<nav>{''.join(nav)}</nav>\n" + "\n".join(sections) + "\n</body></html>\n")


def write_report(directory: str | Path, data: ReportData) -> Path:
    """Write report.html into `directory` (atomically) and return its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "report.html"
    write_text(path, render_report(data))
    return path
