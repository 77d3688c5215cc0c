"""The hyperparameter search (`pretune tune`, `[tune]` in `pretune run`): the fine-tuning hyperparameters, searched
with Optuna on the validation metric.

The search space is the `[tune]` table of a `pretune run` config: the body's learning rate, the head's, the batch
size, the number of epochs, the warm-up and what to freeze. Each trial is one `pretune.finetune.stage.finetune()` of the
pretrained checkpoint in `tune/trial_NNN/` (no test evaluation); it reports the validation metric (`[finetune]
metric`) after every evaluation, and Optuna's median pruner stops trials that fall behind the others at the same
evaluation. The search ends after `trials` trials, or at the first trial end after `timeout` seconds.

`pretune tune CONFIG` brings the run's tokenizer, shards and pretraining up to date with the same stage machinery
as `pretune run` (same run directory, same fingerprints), runs the search as the stage `tune/` and writes
`tune/trials.json` and `tune/best.toml`: the full run config with the best values, ready for `pretune run`.
In a `pretune run` config, `[tune] trials > 0` makes the search a stage before fine-tuning; the pretrained model,
the baseline and the sweep are then all fine-tuned with the best values found for the pretrained model. A trial is
one plain fine-tune (with UDA when `[finetune] uda_weight` is on); self-training rounds are not part of a trial.

Optuna is imported only when a search runs.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pretune import files
from pretune.errors import InputError
from pretune.finetune.stage import finetune
from pretune.run.config import SPACE
from pretune.run.stages import StageResult, finetune_fp, labeled_inputs, read_record
from pretune.semisup import consistency
from pretune.training.trainer import TrainingError

FORMAT_VERSION = 1
STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}
STUDY_DB = "study.db"  # the Optuna study (SQLite): what lets an interrupted search continue


# ---- configs in and out -----------------------------------------------------------------------------------------
def config_values(cfg) -> dict[str, Any]:
    """The values the searched keys have in a pipeline config."""
    return {name: getattr(getattr(cfg, owner), name) for name, (owner, _) in SPACE.items()}


def apply_params(cfg, params: dict[str, Any]):
    """The pipeline config with a trial's values in [finetune] / [finetune.trainer] (a searched warm-up ratio
    replaces a fixed warmup_steps)."""
    changes: dict[str, dict] = {"finetune": {}, "finetune_trainer": {}}
    for name, value in params.items():
        changes[SPACE[name][0]][name] = value
    if "warmup_ratio" in params:
        changes["finetune_trainer"]["warmup_steps"] = None
    return dataclasses.replace(
        cfg, finetune=dataclasses.replace(cfg.finetune, **changes["finetune"]),
        finetune_trainer=dataclasses.replace(cfg.finetune_trainer, **changes["finetune_trainer"]))


def write_best_config(cfg, search_dir: Path) -> Path:
    """search_dir/best.toml: the run config with the best values, [tune] trials = 0 (running it fine-tunes with
    these values and does not search again) and an absolute [run] out, so `pretune run best.toml` reuses this run's
    tokenizer, shards and pretraining. Data paths are already absolute in a resolved config."""
    search = read_search(search_dir)
    best = search["best"]
    tuned = apply_params(cfg, best["params"])
    tuned = dataclasses.replace(tuned, run=dataclasses.replace(tuned.run, out=str(Path(cfg.run.out).resolve())),
                                tune=dataclasses.replace(cfg.tune, trials=0))
    path = search_dir / "best.toml"
    header = (f"# pretune tune: the best of {len(search['trials'])} trials (trial {best['number']}, validation "
              f"{search['metric']} {best['value']:.4f}); its values are in [finetune] and [finetune.trainer].\n"
              f"# Run it with: pretune run {path}\n# The search is in {search_dir / 'trials.json'}; "
              "[tune] trials = 0, so running this config does not search again.\n")
    files.write_text(path, header + tuned.to_toml())
    return path


def read_search(search_dir: Path) -> dict | None:
    """trials.json of a search directory, or None."""
    path = Path(search_dir) / "trials.json"
    return files.read_json(path) if path.is_file() else None


def search_summary(search: dict) -> dict:
    """The "tune" entry of summary.json: budget used, trial states, the best trial."""
    states = {s: 0 for s in STATES.values()}
    for t in search["trials"]:
        states[t["state"]] = states.get(t["state"], 0) + 1
    return {"metric": search["metric"], "direction": search["direction"], "trials": len(search["trials"]),
            "states": states, "best": search["best"], "space": search["space"], "seconds": search["seconds"]}


# ---- the search -------------------------------------------------------------------------------------------------
def _inside(kind: str, values: list, value) -> bool:
    return value in values if kind == "choice" else values[0] <= value <= values[1]


def _suggest(trial, space: dict[str, tuple[str, list]]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name, (kind, values) in space.items():
        if kind == "choice":
            params[name] = trial.suggest_categorical(name, values)
        elif kind == "int":
            params[name] = trial.suggest_int(name, values[0], values[1])
        else:
            params[name] = trial.suggest_float(name, values[0], values[1], log=kind == "log")
    return params


def _trial_record(t) -> dict:
    record = {"number": t.number, "state": STATES.get(t.state.name, t.state.name.lower()), "params": t.params,
              "value": t.value, "evaluations": [t.intermediate_values[k] for k in sorted(t.intermediate_values)],
              "seconds": round(t.duration.total_seconds(), 2) if t.duration is not None else None}
    if "error" in t.user_attrs:
        record["error"] = t.user_attrs["error"]
    return record


def search(cfg, base: Path, directory: Path, log=print, resume: bool = False) -> dict:
    """Search cfg's [tune] space by fine-tuning checkpoint `base` in directory/trial_NNN; write directory/trials.json
    (after every trial). Only the best trial keeps its model/. The study lives in directory/study.db (SQLite), so
    with `resume` an interrupted search keeps its finished trials and runs only the rest. Returns the stage result
    (best params and value)."""
    try:
        import optuna
    except ModuleNotFoundError:
        raise InputError("the hyperparameter search needs Optuna: pip install 'optuna>=4'") from None

    tune = cfg.tune
    if tune.trials < 1:
        raise InputError(f"the search needs [tune] trials >= 1, got {tune.trials}", path=cfg.source)
    space, metric = tune.space(), cfg.finetune.metric_name()
    direction = "minimize" if metric == "loss" else "maximize"
    directory.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    def objective(trial) -> float:
        params = _suggest(trial, space)
        tuned = apply_params(cfg, params)
        out = directory / f"trial_{trial.number:03d}"
        evaluations = 0

        def on_evaluate(step: int, metrics: dict[str, float]) -> None:
            nonlocal evaluations
            evaluations += 1  # Optuna's step: the evaluation's number (an epoch with the default eval_every)
            trial.report(metrics[metric], evaluations)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at evaluation {evaluations} (step {step})")

        sections = {"finetune": dataclasses.replace(tuned.finetune, checkpoint=str(base), out=str(out),
                                                    from_scratch=False, test=None),
                    "train": dataclasses.replace(tuned.finetune_trainer)}
        log(f"[tune] trial {trial.number}: " + params_text(params))
        try:
            return finetune(sections, overwrite=True, source=cfg.source, on_evaluate=on_evaluate,
                            consistency=consistency.from_section)["best"]
        except TrainingError as e:
            trial.set_user_attr("error", str(e))
            raise
        except KeyboardInterrupt:  # Optuna records the trial as failed: mark it, so a re-run does not count it
            trial.set_user_attr("interrupted", True)
            raise
        finally:
            for name in ("last", "best"):  # resumable state and a copy of model/: not needed after the trial
                shutil.rmtree(out / name, ignore_errors=True)

    def after_trial(study, trial) -> None:
        best = _best_number(study)
        for d in directory.glob("trial_*"):
            if best is None or d.name != f"trial_{best:03d}":
                shutil.rmtree(d / "model", ignore_errors=True)  # disk stays bounded: one model, the best
        seconds = time.perf_counter() - t0
        files.write_json(directory / "trials.json", _search_record(study, cfg, metric, direction, seconds))
        r = _trial_record(trial)
        value = r["value"] if r["value"] is not None else (r["evaluations"] or [None])[-1]
        shown = f"{value:.4f}" if isinstance(value, float) else "-"
        n = len(r["evaluations"])
        log(f"[tune] trial {trial.number}: {r['state']} ({n} evaluation{'' if n == 1 else 's'}), {metric} {shown}"
            + (f" ({r['error']})" if "error" in r else "") + (" (best so far)" if best == trial.number else ""))

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # each trial is logged above, in pretune's words
    try:
        pruner = (optuna.pruners.MedianPruner(n_startup_trials=tune.prune_startup_trials,
                                              n_warmup_steps=tune.prune_warmup)
                  if tune.pruner == "median" else optuna.pruners.NopPruner())
        storage = f"sqlite:///{(directory / STUDY_DB).resolve()}"
        if not resume:
            (directory / STUDY_DB).unlink(missing_ok=True)
        study = optuna.create_study(storage=storage, study_name="pretune", load_if_exists=True, direction=direction,
                                    sampler=optuna.samplers.TPESampler(seed=tune.seed), pruner=pruner)
        done = _finished(study)
        finished = {t.number for t in done}
        for t in study.trials:  # what an interrupted trial left behind
            if t.number not in finished:
                shutil.rmtree(directory / f"trial_{t.number:03d}", ignore_errors=True)
        if done:
            log(f"[tune] continuing the search: {len(done)} of {tune.trials} trials done")
        start = {k: v for k, v in config_values(cfg).items() if k in space and _inside(*space[k], v)}
        if tune.start_from_config and start and not study.trials:
            study.enqueue_trial(start)
        if len(done) < tune.trials:
            study.optimize(objective, n_trials=tune.trials - len(done), timeout=tune.timeout or None,
                           catch=(TrainingError,), callbacks=[after_trial])
    finally:
        optuna.logging.set_verbosity(verbosity)
    record = files.read_json(directory / "trials.json")
    if record["best"] is None:
        errors = [t["error"] for t in record["trials"] if t.get("error")]
        raise TrainingError(f"no trial of the search finished ({len(record['trials'])} ran)"
                            + (f"; the first error: {errors[0]}" if errors else ""))
    best = record["best"]
    return {"metric": metric, "direction": direction, "best_params": best["params"], "best_value": best["value"],
            "best_trial": best["number"], "trials": len(record["trials"]),
            "states": search_summary(record)["states"]}


def _finished(study) -> list:
    """The trials that ran to an end: complete, pruned or failed, not interrupted (by Ctrl-C, or a killed process
    that left its trial running)."""
    return [t for t in study.trials if t.state.name in STATES and not t.user_attrs.get("interrupted")]


def _best_number(study) -> int | None:
    try:
        return study.best_trial.number
    except ValueError:  # no complete trial yet
        return None


def _search_record(study, cfg, metric: str, direction: str, seconds: float) -> dict:
    """trials.json: what was searched, every trial, the best one."""
    trials = [_trial_record(t) for t in _finished(study)]
    best_n = _best_number(study)
    best = next(({"number": t["number"], "value": t["value"], "params": t["params"]} for t in trials
                 if t["number"] == best_n), None)
    tune = cfg.tune
    return {"format_version": FORMAT_VERSION, "metric": metric, "direction": direction,
            "space": {name: {"kind": kind, "values": values} for name, (kind, values) in tune.space().items()},
            "budget": {"trials": tune.trials, "timeout": tune.timeout},
            "pruner": {"kind": tune.pruner, "startup_trials": tune.prune_startup_trials,
                       "warmup_evaluations": tune.prune_warmup},
            "seconds": round(seconds, 1), "best": best, "trials": trials}


def _value_text(v) -> str:
    return "-" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)


def params_text(params: dict) -> str:
    return ", ".join(f"{k}={_value_text(v)}" for k, v in params.items())


# ---- as a stage of the run --------------------------------------------------------------------------------------
def stage_tune(runner, cfg, base: Path, base_fp: dict):
    """The search as the run's `tune` stage: skipped when the pretrained model, the labeled data, the fine-tuning
    config and [tune] are unchanged since it last completed."""
    sec = dataclasses.replace(cfg.finetune, checkpoint=str(base), from_scratch=False, test=None)
    inputs = {"init": base_fp, "data": labeled_inputs(cfg.finetune), **finetune_fp(sec, cfg.finetune_trainer),
              "tune": asdict(cfg.tune)}
    return runner.stage("tune", inputs, lambda d, resume: search(cfg, base, d, log=runner.log, resume=resume),
                        can_continue=lambda d: (d / STUDY_DB).is_file())


def tuned_config(runner, cfg, base: Path, base_fp: dict):
    """For `pretune run`: with [tune] trials > 0, run (or reuse) the search and return cfg with its best values
    (for the pretrained model, the baseline and the sweep alike). Otherwise cfg unchanged; a search already in the
    run directory whose best values this config holds (a best.toml) is registered so the report shows it."""
    if cfg.tune is None:
        return cfg
    if cfg.tune.trials > 0:
        stage = stage_tune(runner, cfg, base, base_fp)
        write_best_config(cfg, stage.directory)
        return apply_params(cfg, stage.result["best_params"])
    _adopt_search(runner, cfg, base_fp)
    return cfg


def _adopt_search(runner, cfg, base_fp: dict) -> None:
    d = runner.root / "tune"
    record = read_record(d / "stage.json") if (d / "stage.json").is_file() else {}
    inputs, result = record.get("inputs") or {}, record.get("result") or {}
    params = result.get("best_params")
    if record.get("status") != "done" or not params or not (d / "trials.json").is_file():
        return
    same_model = inputs.get("init") == json.loads(json.dumps(base_fp))
    same_data = inputs.get("data") == labeled_inputs(cfg.finetune)
    values = config_values(cfg)
    if same_model and same_data and all(values.get(k) == v for k, v in params.items()):
        runner.stages["tune"] = StageResult("tune", d, record.get("fingerprint", ""), result, True,
                                            float(record.get("seconds", 0.0)))
        runner.log("[tune] this config holds the best values of the search in tune/; the report shows it")


# ---- terminal output ------------------------------------------------------------------------------------------
def format_search(search: dict) -> str:
    """The trials as a terminal table, the best marked with *."""
    best = (search.get("best") or {}).get("number")
    header = ["trial", "state", search["metric"], "evals", "seconds", *search["space"]]
    rows = [[f"{t['number']}{'*' if t['number'] == best else ''}", t["state"],
             "-" if t["value"] is None else f"{t['value']:.4f}", str(len(t["evaluations"])),
             _value_text(t["seconds"]), *[_value_text(t["params"].get(n)) for n in search["space"]]]
            for t in search["trials"]]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


