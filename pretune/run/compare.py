"""The comparison stage of `pretune run` ([compare]): the alternatives trained on exactly the label subsets pretune's
models are fine-tuned on (the main run and every sweep point) and scored on the same test set.

    compare/fits/                  classic baseline and linear probes: <method>-<fraction>.json (result dicts)
    compare/blend/                 classify / pair: pretune's model and TF-IDF + LR averaged, <method>-<fraction>.json;
                                   model/: the main run's blend, a checkpoint `pretune predict` serves
    compare/<checkpoint>-<fraction>/  each named checkpoint fine-tuned as published (evaluated with pretune's models)

The table {method: {label count: test metric}} of every method and its winner sentence go into summary.json
("comparison"), the terminal summary and the report.
"""

from __future__ import annotations

import re
from pathlib import Path

from pretune import files
from pretune.compare import blend
from pretune.compare.classic import fit_classic
from pretune.compare.probe import fit_probe
from pretune.compare.table import best_per_column, winner_sentence
from pretune.evaluate.metrics import headline_metrics
from pretune.finetune.data import subsample
from pretune.finetune.model import load_task_model
from pretune.finetune.stage import evaluate_file
from pretune.run.config import PipelineConfig, checkpoint_name
from pretune.run.stages import Runner, StageResult, file_hash
from pretune.run.steps import stage_finetune
from pretune.text.labeled import LabelMap, read_examples
from pretune.training.config import resolve_device
from pretune.use.embed import load_body

PRETUNE_METHODS = {"pretrained": "pretune pretrained", "baseline": "pretune from scratch"}


def pretune_method(model: str) -> str:
    """The comparison's name of one of pretune's fine-tunings ("pretrained", "sweep/baseline-0.1", ...)."""
    return PRETUNE_METHODS[model.removeprefix("sweep/").split("-")[0]]


def label_points(cfg: PipelineConfig) -> dict[float, int]:
    """{label fraction: label seed} of every fine-tuning: each sweep fraction (sweep seed) and the main run."""
    points = {f: cfg.sweep.label_seed for f in cfg.sweep.label_fractions}
    points.setdefault(cfg.finetune.label_fraction, cfg.finetune.label_seed)
    return dict(sorted(points.items()))


def folder_fp(path: str | Path) -> dict:
    """The hashes of every file of a checkpoint folder (pretune or Hugging Face)."""
    root = Path(path)
    return {str(f.relative_to(root)): file_hash(f) for f in sorted(root.rglob("*")) if f.is_file()}


def _slug(method: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", method).strip("-").lower()


def checkpoint_finetunes(runner: Runner, cfg: PipelineConfig, points: dict[float, int]
                         ) -> dict[str, tuple[StageResult, str]]:
    """Each [compare] checkpoint fine-tuned as published at every label point: {stage name: (result, method)}."""
    if not (cfg.compare.enabled and cfg.compare.finetune_checkpoints):
        return {}
    out = {}
    for path in cfg.compare.checkpoints:
        name, upstream = checkpoint_name(path), {"checkpoint": folder_fp(path)}
        for fraction, seed in points.items():
            stage = f"compare/{name}-{fraction:g}"
            out[stage] = (stage_finetune(runner, cfg, stage, Path(path), upstream, from_scratch=False,
                                         label_fraction=fraction, label_seed=seed, lr=cfg.compare.finetune_lr),
                          f"{name} fine-tuned")
    return out


def stage_compare(runner: Runner, cfg: PipelineConfig, points: dict[float, int]) -> StageResult:
    """The classic baseline and a linear probe of each checkpoint at every label point, in compare/fits/."""
    sec, cmp = cfg.finetune, cfg.compare
    probes = cmp.checkpoints if cmp.probe else []
    inputs = {"data": {s: file_hash(getattr(sec, s)) for s in ("train", "validation", "test")},
              "task": sec.task, "fields": sec.fields(), "points": {f"{f:g}": s for f, s in points.items()},
              "classic": cmp.classic, "probes": [folder_fp(p) for p in probes], "max_len": sec.max_len,
              "seed": cfg.run.seed}

    def work(d: Path, resume: bool) -> dict:
        d.mkdir(parents=True, exist_ok=True)
        train_all, val, test = (read_examples(getattr(sec, s), sec.task, **sec.fields())
                                for s in ("train", "validation", "test"))
        bodies = {checkpoint_name(p): load_body(p, cfg.run.device) for p in probes}
        # seqtag: the fine-tuned models' label order (its first label is the background of the segment scores)
        order = (LabelMap.from_examples(train_all, "seqtag", order=sec.label_order()).names
                 if sec.task == "seqtag" else None)
        rows = []
        for fraction, seed in points.items():
            train = subsample(train_all, fraction, seed)  # exactly the subset fine-tuning uses
            results = [fit_classic(sec.task, train, val, test, labels=order, seed=cfg.run.seed)] if cmp.classic else []
            for name, loaded in bodies.items():
                r = fit_probe(loaded, sec.task, train, val, test, seed=cfg.run.seed, max_len=sec.max_len)
                results.append({**r, "method": f"{name} probe"})
            for r in results:
                file = f"{_slug(r['method'])}-{fraction:g}.json"
                files.write_json(d / file, {**r, "fraction": fraction, "n_labels": len(train)})
                rows.append({"method": r["method"], "fraction": fraction, "n_labels": len(train),
                             "test": headline_metrics(r["report"]), "one_class": one_class(r["predictions"]),
                             "file": file, "fit_seconds": round(r["fit_seconds"], 2),
                             **({"note": r["note"]} if "note" in r else {})})
                runner.log(f"  {r['method']} with {len(train):,} labels: {r['metric']} {r['score']:.4f} "
                           f"({r['fit_seconds']:.1f}s)")
        return {"rows": rows}

    return runner.stage("compare/fits", inputs, work)


def blended_models(cfg: PipelineConfig, methods: dict[str, tuple[StageResult, str]]
                   ) -> dict[str, tuple[StageResult, float, int]]:
    """pretune's pretrained fine-tunes among `methods` with their label point: {name: (stage, fraction, seed)}."""
    out = {}
    for name, (stage, method) in methods.items():
        if method != PRETUNE_METHODS["pretrained"]:
            continue
        if name == "pretrained":
            out[name] = (stage, cfg.finetune.label_fraction, cfg.finetune.label_seed)
        else:  # sweep/pretrained-<fraction>
            out[name] = (stage, float(name.rsplit("-", 1)[1]), cfg.sweep.label_seed)
    return out


def stage_blend(runner: Runner, cfg: PipelineConfig, models: dict[str, tuple[StageResult, float, int]],
                evaluation: StageResult) -> StageResult:
    """classify / pair: each pretune pretrained model averaged with TF-IDF + LR trained on its label subset, the weight
    chosen on validation (`pretune.compare.blend`), in compare/blend/. Test predictions come from `evaluation`."""
    sec = cfg.finetune
    inputs = {"data": {s: file_hash(getattr(sec, s)) for s in ("train", "validation", "test")}, "task": sec.task,
              "fields": sec.fields(), "models": {n: st.fingerprint for n, (st, _, _) in models.items()},
              "points": {n: [f, s] for n, (_, f, s) in models.items()}, "weights": list(blend.WEIGHTS),
              "seed": cfg.run.seed, "served": blend.FORMAT}

    def work(d: Path, resume: bool) -> dict:
        d.mkdir(parents=True, exist_ok=True)
        train_all, val, test = (read_examples(getattr(sec, s), sec.task, **sec.fields())
                                for s in ("train", "validation", "test"))
        device, rows = resolve_device(cfg.run.device), []
        for name, (stage, fraction, seed) in models.items():
            train = subsample(train_all, fraction, seed)  # exactly the subset the model was fine-tuned on
            loaded = load_task_model(stage.directory / "model", device=device)
            model_val = evaluate_file(loaded, sec.validation, batch_size=max(32, cfg.finetune_trainer.batch_size * 2))
            model_test = files.read_json(evaluation.directory / f"{name.replace('/', '_')}.json")
            r, partner = blend.fit_blend(sec.task, train, val, test, model_val["predictions"],
                                         model_test["predictions"], seed=cfg.run.seed)
            if name == "pretrained":  # the main run's model, served: `pretune predict --model compare/blend/model`
                blend.write_blend_model(d / "model", stage.directory / "model", partner)
                runner.log(f"  the blend, to predict with: {d / 'model'}")
            file = f"{_slug(r['method'])}-{fraction:g}.json"
            files.write_json(d / file, {**r, "fraction": fraction, "n_labels": len(train)})
            rows.append({"method": r["method"], "fraction": fraction, "n_labels": len(train),
                         "test": headline_metrics(r["report"]), "one_class": one_class(r["predictions"]),
                         "file": file, "fit_seconds": round(r["fit_seconds"], 2), "weight": r["params"]["weight"]})
            runner.log(f"  {r['method']} with {len(train):,} labels: {r['metric']} {r['score']:.4f} "
                       f"(pretune's weight {r['params']['weight']:g}, chosen on validation)")
        return {"rows": rows}

    return runner.stage("compare/blend", inputs, work)


def predicted_classes(predictions: list) -> set[str]:
    """The classes a model predicted on the test set (labels; entity types of tag/span predictions)."""
    classes: set[str] = set()
    for p in predictions:
        if isinstance(p, str):
            classes.add(p)
        elif isinstance(p, dict) and "label" in p:
            classes.add(p["label"])
        elif isinstance(p, dict) and "labels" in p:  # seqtag: a label per character
            classes.update(p["labels"])
        elif isinstance(p, dict) and "tags" in p:
            classes.update(t.split("-", 1)[-1] for t in p["tags"] if t != "O")
        elif isinstance(p, dict):
            classes.update(s["label"] for s in p["spans"])
        else:  # classic / probe spans: [start, end, label]
            classes.update(str(s[2]) for s in p)
    return classes


def one_class(predictions: list) -> bool:
    return len(predicted_classes(predictions)) <= 1


def evaluated_rows(methods: dict[str, tuple[StageResult, str]], evaluation: StageResult) -> list[dict]:
    """Table rows of fine-tuned models (pretune's, checkpoints'): {stage name: (its stage, method)} scored in
    `evaluation` (evaluate/<name>.json)."""
    rows = []
    for name, (stage, method) in methods.items():
        report = files.read_json(evaluation.directory / f"{name.replace('/', '_')}.json")
        rows.append({"method": method, "n_labels": stage.result.get("n_train"), "test": headline_metrics(report),
                     "one_class": one_class(report.get("predictions", []))})
    return rows


def comparison(metric: str, rows: list[dict]) -> dict:
    """summary.json's "comparison": the table {method: {label count: test metric}}, the best per column, the
    winner sentence and the methods whose test predictions are a single class."""
    table: dict[str, dict[int, dict]] = {}
    for r in rows:
        if metric in r["test"]:
            table.setdefault(r["method"], {})[int(r["n_labels"])] = {metric: r["test"][metric]}
    alone = {m: row for m, row in table.items() if m != blend.METHOD}  # pretune's model alone against the rest
    without = winner_sentence(alone, metric)
    return {"metric": metric,
            "table": {m: {str(n): v[metric] for n, v in row.items()} for m, row in table.items()},
            "best": {str(n): ms for n, ms in best_per_column(table, metric).items()},
            "sentence": winner_sentence(table, metric),
            **({"without_blend": f"Without the blend row, {without[0].lower()}{without[1:]}"}
               if len(alone) < len(table) else {}),
            "one_class": sorted({f"{r['method']} ({int(r['n_labels']):,} labels)" for r in rows if r["one_class"]}),
            "notes": sorted({r["note"] for r in rows if r.get("note")})}

