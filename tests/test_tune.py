"""`pretune tune` and `[tune]` in `pretune run`: the search, pruning, the time bound, best.toml, the report."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest

from pretune.cli import main
from pretune.run.config import SPACE, TuneSection, load_config
from pretune.run.tune import config_values

pytest.importorskip("optuna")

from test_pipeline import make_tiny  # noqa: E402  (the 4-class supersense slice and its tiny run config)

FAST = ["--threads", "1", "--set", "sweep.label_fractions=[]", "--set", "finetune.min_steps=0"]
# a small space over short runs: epochs 1-2 (the config's own 2 is trial 0)
SMALL = [*FAST, "--set", "tune.epochs=[1, 2]"]


def expected_params(params: dict, stage: str) -> dict:
    """The tuned values a stage trains with: all of them, except that the from-scratch baseline never takes the
    settings that only make sense for a pretrained body (freeze, layer-wise lr decay)."""
    if stage != "baseline":
        return params
    return {**params, **{k: v for k, v in (("freeze", "none"), ("layer_lr_decay", 1.0)) if k in params}}


def tune(config: Path, out: Path, capsys, *extra: str) -> tuple[int, str, str]:
    code = main(["tune", str(config), "--out", str(out), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def trials_of(out: Path) -> dict:
    return json.loads((out / "tune" / "trials.json").read_text())


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("tune") / "data")


@pytest.fixture(scope="module")
def searched(data, tmp_path_factory):
    """`pretune tune` of the tiny config: 3 trials; returns (config, run directory, stdout)."""
    out = tmp_path_factory.mktemp("tune_run") / "run"
    code = main(["tune", str(data), "--out", str(out), "--trials", "3", "--no-progress", *SMALL])
    assert code == 0
    return data, out


# ---- config ------------------------------------------------------------------------------------------------------
def test_defaults_validate_and_search_nothing_in_a_plain_run():
    section = TuneSection().validate()
    assert section.trials == 0  # `pretune run` searches only when asked
    assert set(section.space()) == set(SPACE) - {"head_lr"}
    assert section.space()["lr"] == ("log", [1e-5, 1e-3])
    cfg = load_config()
    assert cfg.tune == TuneSection()
    assert "[tune]" in cfg.to_toml()


@pytest.mark.parametrize("item, message", [
    ("tune.lr=[1e-3]", "[tune] lr must be [] (not searched) or a range [low, high]"),
    ("tune.lr=[1e-3, 1e-5]", "[tune] lr must be"),
    ("tune.warmup_ratio=[0.0, 1.0]", "0 <= low <= high < 1"),
    ("tune.epochs=[0, 3]", "[tune] epochs"),
    ("tune.batch_size=[16, 16]", "distinct choices"),
    ('tune.freeze=["none", "everything"]', "all-but-last-N"),
    ('tune.pruner="hyperband"', "pruner must be one of median, none"),
    ("tune.trials=-1", "[tune] trials must be >= 0"),
    ("tune.prune_warmup=0", "prune_warmup must be >= 1"),
    ("tune.warmup_ration=[0.0, 0.1]", "did you mean 'warmup_ratio'"),
    ('tune.lr="fast"', "[tune] lr must be of type float"),
])
def test_bad_tune_config_is_one_line_exit_2(data, tmp_path, capsys, item, message):
    out = tmp_path / "never"
    code, _, err = tune(data, out, capsys, "--set", item)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_empty_space_and_bad_flags(data, tmp_path, capsys):
    empty = [f"--set=tune.{name}=[]" for name in SPACE]
    code, _, err = tune(data, tmp_path / "never", capsys, *empty)
    assert code == 2 and "the search space is empty" in err
    code, _, err = tune(data, tmp_path / "never", capsys, "--trials", "0")
    assert code == 2 and "--trials must be >= 1" in err
    code, _, err = tune(data, tmp_path / "never", capsys, "--timeout", "-1")
    assert code == 2 and "[tune] timeout must be >= 0" in err
    assert not (tmp_path / "never").exists()


# ---- the search --------------------------------------------------------------------------------------------------
def test_search_writes_trials_and_a_loadable_best_config(searched):
    config, out = searched
    search = trials_of(out)
    assert search["metric"] == "accuracy" and search["direction"] == "maximize"
    trials = search["trials"]
    assert [t["number"] for t in trials] == [0, 1, 2]
    assert all(t["state"] == "complete" and len(t["evaluations"]) == t["params"]["epochs"] for t in trials)
    # trial 0 runs the config's own values (they lie inside the space)
    original = load_config(config)
    assert trials[0]["params"] == {k: v for k, v in config_values(original).items() if k in trials[0]["params"]}
    for t in trials:  # each trial's value is its best validation accuracy, as logged by its fine-tuning
        log = [json.loads(line) for line in (out / "tune" / f"trial_{t['number']:03d}" / "metrics.jsonl")
               .read_text().splitlines()]
        logged = [r["accuracy"] for r in log if r["split"] == "validation"]
        assert logged == pytest.approx(t["evaluations"]) and t["value"] == pytest.approx(max(logged))
    best = max(trials, key=lambda t: t["value"])
    assert search["best"]["value"] == best["value"]
    best_trial = search["best"]["number"]
    # only the best trial keeps a model, and no trial keeps resumable state
    for d in (out / "tune").glob("trial_*"):
        assert (d / "model").is_dir() == (d.name == f"trial_{best_trial:03d}"), d
        assert not (d / "last").exists() and not (d / "best").exists()

    cfg = load_config(out / "tune" / "best.toml")
    values = config_values(cfg)
    assert {k: values[k] for k in search["best"]["params"]} == search["best"]["params"]
    assert cfg.tune.trials == 0 and Path(cfg.run.out) == out.resolve()
    assert cfg.finetune.train == original.finetune.train and Path(cfg.finetune.train).is_absolute()
    assert cfg.corpus.files == original.corpus.files
    record = json.loads((out / "tune" / "stage.json").read_text())
    assert record["status"] == "done" and record["result"]["best_params"] == search["best"]["params"]


def test_search_is_skipped_when_nothing_changed(searched, capsys):
    config, out = searched
    before = (out / "tune" / "trials.json").read_text()
    code, log, _ = tune(config, out, capsys, "--trials", "3", *SMALL)
    assert code == 0
    assert "[pretrain] up to date, skipped" in log and "[tune] up to date, skipped" in log
    assert (out / "tune" / "trials.json").read_text() == before
    assert re.search(r"^\s+0\*?\s+complete", log, flags=re.M)  # the trials table is printed again


def test_run_of_best_config_reuses_pretraining_and_reports_the_search(searched, capsys):
    _, out = searched
    search = trials_of(out)
    code = main(["run", str(out / "tune" / "best.toml"), "--threads", "1"])
    log = capsys.readouterr().out
    assert code == 0
    for stage in ("tokenizer", "shards", "pretrain"):
        assert f"[{stage}] up to date, skipped" in log
    assert "[finetune] running" in log and "[baseline] running" in log and "[tune] running" not in log
    for stage in ("finetune", "baseline"):
        used = json.loads((out / stage / "run.json").read_text())
        merged = {**used["finetune"], **used["train"]}
        assert {k: merged[k] for k in search["best"]["params"]} == expected_params(search["best"]["params"], stage)
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert summary["tune"]["trials"] == 3 and summary["tune"]["best"] == search["best"]
    assert summary["tune"]["states"] == {"complete": 3, "pruned": 0, "failed": 0}
    html = (out / "report" / "report.html").read_text(encoding="utf-8")
    section = html[html.index('<section id="tuning">'):]
    section = section[: section.index("</section>")]
    assert "Hyperparameter search" in section and "data:image/png;base64," in section
    assert section.count("<tr>") == 1 + 3  # header + the three trials


def test_pruning_stops_trials_behind_the_median(data, tmp_path, capsys):
    # trial 0 = the config's good learning rates; the sampler's others mostly far lower; an eager pruner
    out = tmp_path / "run"
    code, log, _ = tune(data, out, capsys, "--trials", "5", *FAST, "--set", 'finetune.metric="loss"',
                        "--set", "finetune.epochs=3", "--set", "finetune.head_lr=3e-3",
                        "--set", "tune.lr=[1e-7, 1e-3]", "--set", "tune.head_lr=[1e-7, 3e-3]",
                        *[f"--set=tune.{k}=[]" for k in ("batch_size", "epochs", "warmup_ratio", "freeze")],
                        "--set", "tune.prune_startup_trials=1", "--set", "tune.prune_warmup=1")
    assert code == 0
    search = trials_of(out)
    assert search["direction"] == "minimize"
    trials = search["trials"]
    first = trials[0]
    assert first["params"] == {"lr": 1e-3, "head_lr": 3e-3} and first["state"] == "complete"
    pruned = [t for t in trials if t["state"] == "pruned"]
    assert pruned, [(t["state"], t["evaluations"]) for t in trials]
    for t in pruned:
        assert 1 <= len(t["evaluations"]) < 3 and t["value"] == t["evaluations"][-1]  # Optuna: its last value
        k = len(t["evaluations"]) - 1  # pruned at evaluation k + 1: behind the median of the earlier trials there
        earlier = [c["evaluations"][k] for c in trials if c["state"] == "complete" and c["number"] < t["number"]]
        assert earlier and min(t["evaluations"]) > statistics.median(earlier)
        assert not (out / "tune" / f"trial_{t['number']:03d}" / "model").exists()
    assert re.search(r"trial \d+: pruned \(1 evaluation\)", log)


def test_timeout_starts_no_trial_after_the_limit(data, tmp_path, capsys):
    out = tmp_path / "run"
    code, log, _ = tune(data, out, capsys, "--trials", "10", "--timeout", "0.001", *SMALL)
    assert code == 0
    search = trials_of(out)
    assert len(search["trials"]) == 1 and search["budget"] == {"trials": 10, "timeout": 0.001}
    assert (out / "tune" / "best.toml").is_file()


def test_run_with_tune_searches_then_fine_tunes_both_models(data, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", str(data), "--out", str(out), *SMALL, "--set", "tune.trials=2", "--no-progress"])
    log = capsys.readouterr().out
    assert code == 0
    order = re.findall(r"^\[([^\]]+)\] running", log, flags=re.M)
    assert order.index("tune") == order.index("pretrain") + 1 < order.index("finetune")
    search = trials_of(out)
    assert len(search["trials"]) == 2
    for stage in ("finetune", "baseline"):
        used = json.loads((out / stage / "run.json").read_text())
        merged = {**used["finetune"], **used["train"]}
        assert {k: merged[k] for k in search["best"]["params"]} == expected_params(search["best"]["params"], stage)
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert summary["tune"]["best"] == search["best"] and "tune" in summary["stages"]
    assert '<section id="tuning">' in (out / "report" / "report.html").read_text(encoding="utf-8")
    assert load_config(out / "tune" / "best.toml").tune.trials == 0
    # a plain run with values no trial had, in the same directory: no search, so no tuning section (its fine-tunings
    # replace the tuned ones, so only with --overwrite)
    plain = ["run", str(data), "--out", str(out), *FAST, "--set", "finetune.trainer.lr=5e-4", "--no-progress"]
    assert main(plain) == 2
    assert "stage finetune/ holds a model made with another config" in capsys.readouterr().err
    code = main([*plain, "--overwrite"])
    log = capsys.readouterr().out
    assert code == 0 and "[tune]" not in log
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert summary["tune"] is None


def test_a_failed_trial_is_recorded_and_the_search_goes_on(data, tmp_path, capsys, monkeypatch):
    import pretune.run.tune
    from pretune.training.trainer import TrainingError

    real, calls = pretune.run.tune.finetune, []

    def fail_second(sections, **kw):
        calls.append(sections["train"].lr)
        if len(calls) == 2:
            raise TrainingError("loss is nan at step 3")
        return real(sections, **kw)

    monkeypatch.setattr(pretune.run.tune, "finetune", fail_second)
    out = tmp_path / "run"
    code, log, _ = tune(data, out, capsys, "--trials", "3", *SMALL)
    assert code == 0 and len(calls) == 3
    states = [(t["state"], t.get("error")) for t in trials_of(out)["trials"]]
    assert states == [("complete", None), ("failed", "loss is nan at step 3"), ("complete", None)]
    assert trials_of(out)["best"]["number"] in (0, 2)
    assert "trial 1: failed" in log

    def always_fail(sections, **kw):
        raise TrainingError("loss is nan at step 1")

    monkeypatch.setattr(pretune.run.tune, "finetune", always_fail)
    code, _, err = tune(data, tmp_path / "all_fail", capsys, "--trials", "2", *SMALL)
    assert code == 3 and "no trial of the search finished (2 ran)" in err and "loss is nan" in err
    assert err.count("\n") == 1


def test_an_interrupted_search_continues_with_its_finished_trials(data, tmp_path, capsys, monkeypatch):
    """Ctrl-C during the third of four trials: the re-run keeps the two finished trials (same parameters, not run
    again) and runs only what is left of the budget."""
    import pretune.run.tune

    real, calls = pretune.run.tune.finetune, []

    def interrupt_third(sections, **kw):
        calls.append(sections["finetune"].out)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated Ctrl-C")
        return real(sections, **kw)

    monkeypatch.setattr(pretune.run.tune, "finetune", interrupt_third)
    out = tmp_path / "run"
    code, _, _ = tune(data, out, capsys, "--trials", "4", *SMALL)
    assert code == 130
    before = trials_of(out)["trials"]
    assert [t["state"] for t in before] == ["complete", "complete"]
    monkeypatch.setattr(pretune.run.tune, "finetune", real)
    code, log, err = tune(data, out, capsys, "--trials", "4", *SMALL)
    assert code == 0, err
    assert "[tune] continuing from its last checkpoint" in log and "continuing the search: " in log
    after = trials_of(out)["trials"]
    finished = [t for t in after if t["state"] in ("complete", "pruned")]
    assert len(finished) == 4 and finished[:2] == before  # the first two kept as they were
    assert not any(f"trial {t['number']}:" in log for t in before)  # and not run again
    assert not (out / "tune" / "trial_002").exists()  # the interrupted trial's folder is gone
