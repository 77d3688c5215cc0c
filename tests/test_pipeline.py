"""`pretune run`: the whole pipeline on a tiny config through the CLI, stage skipping, continuing, the config."""

from __future__ import annotations

import csv
import gzip
import json
import re
import shutil
import tomllib
from pathlib import Path

import pytest

from pretune.cli import main
from pretune.run.config import default_config_path, load_config, parse_override
from pretune.run.summary import pick_examples

DATA = Path(__file__).resolve().parents[1] / "pretune" / "resources" / "wordnet"
CLASSES = ("noun.animal", "noun.artifact", "noun.person", "noun.plant")
STAGES = ("tokenizer", "shards", "pretrain", "finetune", "baseline", "sweep/pretrained-0.25", "sweep/baseline-0.25",
          "evaluate", "compare/fits", "compare/blend", "report")
TRAINING = ("pretrain", "finetune", "baseline", "sweep/pretrained-0.25", "sweep/baseline-0.25")
TINY = """
[run]
progress = false
examples = 3

[corpus]
files = ["corpus.txt.gz"]

[tokenizer]
vocab_size = 600
lowercase = true

[pretrain]
model_size = "tiny"
max_len = 32

[pretrain.trainer]
max_steps = 20
batch_size = 16
lr = 1e-3
eval_every = 10
eval_batches = 2
save_every = 10
log_every = 5

[finetune]
task = "classify"
train = "train.csv"
validation = "validation.csv"
test = "test.csv"
max_len = 32
epochs = 2

[finetune.trainer]
batch_size = 32
lr = 1e-3

[sweep]
label_fractions = [0.25, 1.0]
"""


def make_tiny(root: Path) -> Path:
    """A 1,500-gloss corpus and a 4-class slice of the supersense task; returns the config path."""
    root.mkdir(parents=True, exist_ok=True)
    with gzip.open(DATA / "corpus.txt.gz", "rt", encoding="utf-8") as f:
        lines = [next(f) for _ in range(1500)]
    with gzip.open(root / "corpus.txt.gz", "wt", encoding="utf-8") as f:
        f.writelines(lines)
    for split, n in (("train", 120), ("validation", 40), ("test", 60)):
        with open(DATA / f"supersense_{split}.csv", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if r["label"] in CLASSES][:n]
        write_csv(root / f"{split}.csv", rows)
    (root / "tiny.toml").write_text(TINY, encoding="utf-8")
    return root / "tiny.toml"


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, ["text", "label"])
        w.writeheader()
        w.writerows(rows)


def run(config: Path, out: Path, capsys, *extra: str) -> tuple[int, str, str]:
    code = main(["run", str(config), "--out", str(out), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def stage_record(out: Path, stage: str) -> dict:
    return json.loads((out / stage / "stage.json").read_text())


def ran(log: str) -> set[str]:
    return set(re.findall(r"^\[([^\]]+)\] (?:running|continuing)", log, flags=re.M))


def skipped(log: str) -> set[str]:
    return set(re.findall(r"^\[([^\]]+)\] up to date, skipped", log, flags=re.M))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One complete run of the tiny config; tests that change things work on copies."""
    root = tmp_path_factory.mktemp("pipeline")
    config = make_tiny(root / "data")
    out = root / "run"
    code = main(["run", str(config), "--out", str(out)])
    assert code == 0
    return config, out


def copy_run(tiny_run, tmp_path) -> tuple[Path, Path]:
    config, out = tiny_run
    shutil.copytree(config.parent, tmp_path / "data")
    shutil.copytree(out, tmp_path / "run")
    return tmp_path / "data" / config.name, tmp_path / "run"


def test_every_stage_leaves_its_output(tiny_run):
    _, out = tiny_run
    for stage in STAGES:
        record = stage_record(out, stage)
        assert record["status"] == "done" and len(record["fingerprint"]) == 16
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    assert (out / "shards" / "meta.json").is_file() and (out / "shards" / "train.tokens.bin").is_file()
    for stage in TRAINING:
        assert (out / stage / "model" / "model.safetensors").is_file(), stage
        assert (out / stage / "metrics.jsonl").is_file(), stage
        assert not (out / stage / "last").exists(), "a finished stage keeps no resumable checkpoint"
    pre_config = json.loads((out / "pretrain" / "model" / "config.json").read_text())
    assert pre_config["heads"] == ["mlm"] and pre_config["model"]["hidden_size"] == 64
    baseline_config = json.loads((out / "baseline" / "model" / "config.json").read_text())
    assert baseline_config["from_scratch"] is True and baseline_config["task"] == "classify"
    for name in ("pretrained", "baseline", "sweep_pretrained-0.25", "sweep_baseline-0.25"):
        report = json.loads((out / "evaluate" / f"{name}.json").read_text())
        assert report["support"] == 60 and len(report["predictions"]) == 60
        assert len(report["confusion"]) == 4
    assert not (out / ".running").exists() or not any((out / ".running").iterdir())
    assert tomllib.loads((out / "config.toml").read_text())["finetune"]["task"] == "classify"


def test_summary_and_report(tiny_run):
    _, out = tiny_run
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert summary["task"] == "classify" and summary["test_size"] == 60
    for model in ("pretrained", "baseline"):
        test = summary["models"][model]["test"]
        evaluated = json.loads((out / "evaluate" / f"{model}.json").read_text())
        assert test["accuracy"] == pytest.approx(evaluated["accuracy"])
        assert summary["models"][model]["n_train"] == 120
    assert summary["gain"]["accuracy"] == pytest.approx(
        summary["models"]["pretrained"]["test"]["accuracy"] - summary["models"]["baseline"]["test"]["accuracy"])
    assert [p["fraction"] for p in summary["sweep"]] == [0.25, 1.0]
    assert [p["n_train"] for p in summary["sweep"]] == [30, 120]
    assert summary["sweep"][1]["pretrained"] == summary["models"]["pretrained"]["test"]
    assert summary["corpus"]["splits"]["train"]["documents"] + summary["corpus"]["splits"]["validation"][
        "documents"] == 1500
    assert sum(summary["labels"]["counts"]["train"].values()) == 120
    html = (out / "report" / "report.html").read_text(encoding="utf-8")
    for section in ("results", "data", "pretraining", "finetuning", "label-efficiency", "errors", "examples",
                    "config"):
        assert f'<section id="{section}">' in html, section
    assert html.count("data:image/png;base64,") == 4
    assert html.count('class="example"') == 3
    assert html.count('class="pretune-explain"') == 3  # per-token contributions of the pretrained model
    assert "integrated-gradients" in html


def test_second_run_trains_nothing(tiny_run, tmp_path, capsys):
    config, out = copy_run(tiny_run, tmp_path)
    before = {s: stage_record(out, s)["finished"] for s in STAGES}
    mtimes = {s: (out / s / "model" / "model.safetensors").stat().st_mtime_ns for s in TRAINING}
    code, log, _ = run(config, out, capsys)
    assert code == 0
    assert ran(log) == {"report"}  # the copy moved the data files, and the report shows their paths
    assert skipped(log) == set(STAGES) - {"report"}
    assert {s: stage_record(out, s)["finished"] for s in STAGES if s != "report"} == {
        s: v for s, v in before.items() if s != "report"}
    assert {s: (out / s / "model" / "model.safetensors").stat().st_mtime_ns for s in TRAINING} == mtimes
    code, log, _ = run(config, out, capsys)
    assert ran(log) == set() and skipped(log) == set(STAGES)
    assert "pretrained" in log and "gain" in log and "report.html" in log  # the summary table is printed again


def test_changed_labels_rerun_finetuning_only(tiny_run, tmp_path, capsys):
    config, out = copy_run(tiny_run, tmp_path)
    with open(config.parent / "train.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    write_csv(config.parent / "train.csv", rows[:100])
    code, _, err = run(config, out, capsys)  # the trained stages are not replaced without --overwrite
    assert code == 2 and "stage finetune/ holds a model made with another config (data.train: " in err
    assert "pass --overwrite to replace it" in err and len(err.strip().splitlines()) == 1
    code, log, _ = run(config, out, capsys, "--overwrite")
    assert code == 0
    assert skipped(log) == {"tokenizer", "shards", "pretrain"}
    assert ran(log) == {"finetune", "baseline", "sweep/pretrained-0.25", "sweep/baseline-0.25", "evaluate",
                        "compare/fits", "compare/blend", "report"}
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert summary["models"]["pretrained"]["n_train"] == 100
    # a new test file re-runs the evaluation, the comparison (scored on it) and the report only
    with open(config.parent / "test.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    write_csv(config.parent / "test.csv", rows[:50])
    code, log, _ = run(config, out, capsys)
    assert ran(log) == {"evaluate", "compare/fits", "compare/blend", "report"}
    assert json.loads((out / "report" / "summary.json").read_text())["test_size"] == 50


def test_tokenizer_file_is_used_instead_of_training(tiny_run, tmp_path, capsys):
    """[tokenizer] file: the stage takes the given tokenizer; the same vocabulary as before leaves the shards and
    the pretraining up to date (they depend on the tokenizer's content, not on how it was made)."""
    config, out = copy_run(tiny_run, tmp_path)
    given = tmp_path / "given.json"
    shutil.copy(out / "tokenizer" / "tokenizer.json", given)
    before = stage_record(out, "tokenizer")["result"]
    code, log, err = run(config, out, capsys, "--set", f"tokenizer.file={given}")
    assert code == 0, err
    assert "tokenizer" in ran(log) and {"shards", "pretrain"} <= skipped(log)
    after = stage_record(out, "tokenizer")["result"]
    assert after["sha256"] == before["sha256"] and after["kind"] == "from given.json"
    code, _, err = run(config, out, capsys, "--set", f"tokenizer.file={tmp_path / 'missing.json'}")
    assert code == 2 and "missing.json" in err and "[tokenizer] file not found" in err


def test_contrastive_stage_trains_the_checkpoint_fine_tuning_starts_from(tiny_run, tmp_path, capsys):
    """[pretrain.contrastive] steps > 0: simcse steps on pretrain/model in contrastive/; fine-tuning starts from its
    model (the pretraining and the from-scratch baseline, which depends on the architecture only, are kept)."""
    from pretune.run.stages import file_hash

    config, out = copy_run(tiny_run, tmp_path)
    pretrained = file_hash(out / "pretrain" / "model" / "model.safetensors")
    steps = ["--set", "pretrain.contrastive.steps=6", "--set", "pretrain.contrastive.batch_size=8"]
    code, log, err = run(config, out, capsys, *steps, "--overwrite")
    assert code == 0, err
    assert {"tokenizer", "shards", "pretrain", "baseline", "sweep/baseline-0.25"} <= skipped(log)
    assert {"contrastive", "finetune", "sweep/pretrained-0.25", "evaluate", "report"} <= ran(log)
    record = json.loads((out / "contrastive" / "run.json").read_text())
    assert record["pretrain"]["objective"] == "simcse" and record["train"]["max_steps"] == 6
    assert record["pretrain"]["init_from"] == str(out / "pretrain" / "model")
    assert file_hash(out / "pretrain" / "model" / "model.safetensors") == pretrained  # pretrain/ is kept as it was
    contrasted = file_hash(out / "contrastive" / "model" / "model.safetensors")
    assert contrasted != pretrained
    assert stage_record(out, "finetune")["inputs"]["init"]["weights"] == contrasted
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert summary["contrastive"]["steps"] == 6 and "contrastive_loss" in summary["contrastive"]["validation"]
    code, log, err = run(config, out, capsys, *steps)  # the same config again: nothing trains
    assert code == 0, err
    assert "contrastive" in skipped(log) and ran(log) <= {"report"}
    # an objective that is simcse already gets no second contrastive stage; the log says why
    code, log, err = run(config, tmp_path / "simcse", capsys, *steps, "--set", "pretrain.objective=simcse",
                         "--set", "pretrain.trainer.max_steps=4", "--set", "sweep.label_fractions=[]",
                         "--set", "compare.enabled=false")
    assert code == 0, err
    assert "[contrastive] not run: the pretraining objective is simcse already" in log
    assert not (tmp_path / "simcse" / "contrastive").exists()
    code, _, err = run(config, tmp_path / "bad", capsys, "--set", "pretrain.contrastive.views=crop")
    assert code == 2 and "[pretrain.contrastive] views must be one of split, dropout" in err


def test_interrupted_stage_continues(tmp_path, capsys, monkeypatch):
    from pretune.training.trainer import Trainer

    config = make_tiny(tmp_path / "data")
    out = tmp_path / "run"
    real_save = Trainer.save

    def save_then_stop(self, name, with_optimizer):
        real_save(self, name, with_optimizer)
        if name == "last" and self.step == 10 and self.out.name == "pretrain":
            raise KeyboardInterrupt("simulated Ctrl-C")

    monkeypatch.setattr(Trainer, "save", save_then_stop)
    code, log, _ = run(config, out, capsys, "--set", "sweep.label_fractions=[]")
    assert code == 130
    assert (out / "pretrain" / "last").is_dir() and not (out / "pretrain" / "stage.json").exists()
    monkeypatch.setattr(Trainer, "save", real_save)
    code, log, _ = run(config, out, capsys, "--set", "sweep.label_fractions=[]")
    assert code == 0
    assert "[pretrain] continuing from its last checkpoint" in log
    assert skipped(log) == {"tokenizer", "shards"}
    steps = [json.loads(line)["step"] for line in (out / "pretrain" / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["split"] == "train"]
    assert steps == [5, 10, 15, 20]  # one run's worth of log lines: continued, not restarted
    assert stage_record(out, "pretrain")["result"]["steps"] == 20


def test_report_renders_in_chromium(tiny_run, tmp_path):
    from test_report import _chromium, load_in_chromium

    if _chromium() is None:
        pytest.skip("no headless browser: install Debian's `chromium` package (apt-get install -y chromium)")
    _, out = tiny_run
    widths = load_in_chromium(out / "report" / "report.html", tmp_path)
    assert len(widths) == 4 and all(w > 300 for w in widths), widths


# ---- config ------------------------------------------------------------------------------------------------------
def test_default_config_uses_bundled_data():
    cfg = load_config()
    assert default_config_path().is_file()
    assert cfg.finetune.task == "classify" and cfg.run.out == "pretune-run"
    for path in [*cfg.corpus.files, cfg.finetune.train, cfg.finetune.validation, cfg.finetune.test]:
        assert Path(path).is_file(), path
    assert Path(cfg.corpus.files[0]).name == "corpus.txt.gz"


def test_untrained_positions_are_warned_of():
    """The default pretrains at the fine-tuning length; a longer fine-tuning length gets a warning, a checkpoint
    given by init_from (whose positions were trained elsewhere) does not."""
    from pretune.run.pipeline import untrained_positions_warning

    assert untrained_positions_warning(load_config()) is None
    warning = untrained_positions_warning(load_config(overrides=["pretrain.max_len=32"]))
    assert warning is not None and "positions 32-63 are never pretrained" in warning
    assert untrained_positions_warning(load_config(overrides=["finetune.max_len=32"])) is None
    from_checkpoint = load_config(overrides=["pretrain.max_len=32", "pretrain.objective=mlm",  # auto opens it
                                             f"pretrain.init_from={default_config_path()}"])
    assert untrained_positions_warning(from_checkpoint) is None


def test_published_checkpoint_at_a_from_scratch_rate_is_warned_of():
    """init_from with the bundled default's rates (2e-3 pretraining, 1e-3 contrastive stage and fine-tuning) gets a
    warning naming each stage that runs; at a published checkpoint's rates, or from scratch, none."""
    from pretune.run.pipeline import published_lr_warning

    assert published_lr_warning(load_config()) is None  # from scratch
    init = ["pretrain.objective=mlm", f"pretrain.init_from={default_config_path()}"]
    warning = published_lr_warning(load_config(overrides=init))
    assert warning is not None and ("[pretrain.trainer] lr 0.002 and [pretrain.contrastive] lr 0.001 and "
                                    "[finetune.trainer] lr 0.001") in warning
    skip = published_lr_warning(load_config(overrides=[*init, "run.skip_pretraining=true"]))
    assert skip is not None and "pretrain.trainer" not in skip  # no pretraining: only fine-tuning's rate
    assert skip is not None and "pretrain.contrastive" not in skip
    assert published_lr_warning(load_config(overrides=[*init, "pretrain.trainer.lr=5e-5",
                                                       "pretrain.contrastive.lr=5e-5",
                                                       "finetune.trainer.lr=5e-5"])) is None
    no_stage = published_lr_warning(load_config(overrides=[*init, "pretrain.contrastive.steps=0"]))
    assert no_stage is not None and "pretrain.contrastive" not in no_stage  # a stage that does not run


def test_print_config_round_trips(tmp_path, capsys):
    assert main(["run", "--print-config", "--set", "finetune.epochs=3", "--seed", "7"]) == 0
    text = capsys.readouterr().out
    (tmp_path / "resolved.toml").write_text(text)
    again = load_config(tmp_path / "resolved.toml")
    assert again.finetune.epochs == 3 and again.run.seed == 7
    assert again.pretrain_trainer.seed == 7 and again.finetune_trainer.seed == 7
    assert again.to_toml().split("\n", 1)[1] == text.split("\n", 1)[1]


def test_overrides_and_bad_config(tmp_path, capsys):
    assert parse_override("pretrain.trainer.lr=3e-4") == (["pretrain", "trainer", "lr"], 3e-4)
    assert parse_override("corpus.files=[\"a.txt\", \"b.txt\"]")[1] == ["a.txt", "b.txt"]
    assert parse_override("run.title=my run") == (["run", "title"], "my run")
    bad = {
        "[fintune]\ntask = 'classify'\n": "did you mean 'finetune'",
        "[finetune]\nepoch = 3\n": "did you mean 'epochs'",
        "[pretrain]\nout = 'x'\n": "set by `pretune run`",
        "[pretrain.trainer]\nstop_after = 3\n": "stop_after",
        "[run]\nskip_pretraining = true\n": "init_from",
        "[sweep]\nlabel_fractions = [0.0]\n": "(0, 1]",
        "[finetune.trainer]\ndevice = 'cpu'\n": "set it once for every stage in [run]",
    }
    base = (default_config_path()).read_text()
    for i, (extra, message) in enumerate(bad.items()):
        path = tmp_path / f"bad{i}.toml"
        path.write_text(_merge_toml(base, extra))
        code = main(["run", str(path), "--out", str(tmp_path / "never"), "--print-config"])
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, (extra, err)
    assert main(["run", "--set", "nonsense"]) == 2
    assert "TABLE.KEY=VALUE" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def _merge_toml(base: str, extra: str) -> str:
    """The bundled default with the tables of `extra` replacing its own (simple text surgery for tests)."""
    header = extra.split("\n", 1)[0]
    if (match := re.search(rf"^{re.escape(header)}$", base, flags=re.MULTILINE)):  # the table, not a comment naming it
        start = match.start()
        end = base.find("\n[", start + 1)
        base = base[:start] + base[end + 1:] if end != -1 else base[:start]
    return base + "\n" + extra


def test_refuses_a_directory_that_is_not_a_run(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code = main(["run", "--out", str(out), "--no-progress"])
    assert code == 2 and "no pretune run" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "keep me" and len(list(out.iterdir())) == 1


def test_pick_examples_prefers_wins_then_spreads():
    gold = list("aaaaaaaaaa")
    pre = list("aaaaabbbbb")  # right on 0-4
    base = list("bbaaabbbbb")  # right on 2-4
    chosen = pick_examples(gold, {"pretrained": pre, "baseline": base}, 4)
    assert len(chosen) == 4 and chosen == sorted(chosen)
    assert {0, 1} <= set(chosen)  # where pretraining made the difference
    assert any(i in (2, 3, 4) for i in chosen) and any(i >= 5 for i in chosen)
    assert pick_examples(gold, {"pretrained": pre, "baseline": base}, 0) == []
    assert len(pick_examples(gold[:2], {"pretrained": pre[:2], "baseline": base[:2]}, 6)) == 2


def test_highlight_marks_right_and_wrong_entities():
    from pretune.run.summary import _highlight

    html = _highlight(["the", "red", "fox", "<ran>"], {(1, 3, "animal"), (3, 4, "motion")}, {(1, 3, "animal")})
    assert html.count("<span") == 2
    right, wrong = html.split("</span>")[:2]
    assert "40, 160, 60" in right and "red fox" in right and "animal" in right
    assert "210, 50, 50" in wrong and "&lt;ran&gt;" in wrong
    assert html.startswith("the ")


def test_label_statistics_count_entities_for_tagging(tmp_path):
    from pretune.run.summary import label_statistics

    conll = "a B-x\nb I-x\nc O\nd B-y\n\ne B-x\nf O\n"
    for split in ("train", "validation", "test"):
        (tmp_path / f"{split}.conll").write_text(conll)
    paths = [f"finetune.{s}=\"{tmp_path / (s + '.conll')}\"" for s in ("train", "validation", "test")]
    cfg = load_config(None, ["finetune.task=\"tag\"", "finetune.ensemble=1", *paths])
    stats = label_statistics(cfg.finetune)
    assert stats["unit"] == "entities"
    assert stats["counts"]["train"] == {"x": 2, "y": 1}
    assert "train: 2 sentences" in stats["note"]


def test_bad_labeled_data_fails_before_any_stage(tmp_path, capsys):
    config = make_tiny(tmp_path / "data")
    with open(config.parent / "validation.csv", "a", encoding="utf-8") as f:
        f.write("a gloss of a class training never saw,noun.bogus\n")
    code, _, err = run(config, tmp_path / "run", capsys)
    assert code == 2
    assert "validation.csv:42:" in err and "noun.bogus" in err
    assert not (tmp_path / "run").exists()

