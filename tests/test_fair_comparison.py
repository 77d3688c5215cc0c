"""Issue 14, a fair comparison: a floor on optimizer steps (min_steps), a stratified label_fraction and a baseline
that inherits no setting made for a pretrained body."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

from pretune.finetune import stage as ft
from pretune.finetune.config import FinetuneSection, FinetuneTrainConfig
from pretune.finetune.data import subsample
from pretune.run import steps
from pretune.run.stages import Runner
from pretune.text.labeled import Example, read_examples

WORDNET = Path(__file__).resolve().parent.parent / "pretune" / "resources" / "wordnet"


# ---- stratified label_fraction ---------------------------------------------------------------------------------------
def _classify_examples() -> list[Example]:
    """200 examples: 60% a, 35% b, 5% c (10 examples), interleaved."""
    labels = ["a"] * 120 + ["b"] * 70 + ["c"] * 10
    order = sorted(range(200), key=lambda i: (i * 37) % 200)
    return [Example(line=i + 2, text=f"text {i}", label=labels[j]) for i, j in enumerate(order)]


def test_subsample_keeps_every_class_for_every_seed():
    examples = _classify_examples()
    for seed in range(20):
        kept = subsample(examples, 0.1, seed)
        assert Counter(e.label for e in kept) == {"a": 12, "b": 7, "c": 1}
        assert [e.line for e in kept] == sorted(e.line for e in kept)  # file order


def test_subsample_at_least_one_per_class_and_deterministic():
    examples = _classify_examples()
    assert Counter(e.label for e in subsample(examples, 0.01, 3)) == {"a": 1, "b": 1, "c": 1}
    assert subsample(examples, 0.3, 5) == subsample(examples, 0.3, 5)
    assert subsample(examples, 0.3, 5) != subsample(examples, 0.3, 6)
    assert subsample(examples, 1.0, 5) is examples


def test_subsample_tag_and_span_stratify_by_the_rarest_entity_type():
    tagged = [Example(line=i, tokens=["x", "y"], tags=["B-PER", "O"]) for i in range(50)]
    tagged += [Example(line=50 + i, tokens=["x", "y"], tags=["B-PER", "B-LOC"]) for i in range(3)]  # LOC: rare
    tagged += [Example(line=60 + i, tokens=["x", "y"], tags=["O", "O"]) for i in range(20)]
    kept = subsample(tagged, 0.1, 0)
    assert sum("B-LOC" in e.tags for e in kept) == 1 and sum("B-PER" in e.tags for e in kept) == 6
    assert sum(e.tags == ["O", "O"] for e in kept) == 2
    spans = [Example(line=i, tokens=["x"], spans=[(0, 1, "ORG" if i < 2 else "MISC")]) for i in range(40)]
    assert Counter(e.spans[0][2] for e in subsample(spans, 0.1, 1)) == {"ORG": 1, "MISC": 4}


def test_subsample_of_the_bundled_supersenses_keeps_all_26_classes():
    examples = read_examples(WORDNET / "supersense_train.csv", "classify")
    assert len({e.label for e in examples}) == 26
    assert len({e.label for e in subsample(examples, 0.1, 0)}) == 26


# ---- the floor on optimizer steps ------------------------------------------------------------------------------------
def test_epochs_are_raised_to_the_floor_and_max_steps_still_caps():
    assert FinetuneTrainConfig().resolve(2, 3, min_steps=11).max_steps == 12  # 6 epochs of 2 steps
    assert FinetuneTrainConfig().resolve(7, 3, min_steps=11).max_steps == 21  # already above the floor
    assert FinetuneTrainConfig(max_steps=5).resolve(2, 3, min_steps=11).max_steps == 5
    assert FinetuneSection().min_steps == 150


def test_short_epochs_are_evaluated_about_20_times_a_run_not_every_epoch():
    few = FinetuneTrainConfig().resolve(2, 12, min_steps=150)  # 5 labels per class: 75 epochs of 2 steps
    assert (few.max_steps, few.eval_every, few.save_every) == (150, 8, 8)  # 19 evaluations (and the last step)
    many = FinetuneTrainConfig().resolve(63, 12, min_steps=150)  # 2,000 labels: once an epoch, as before
    assert (many.max_steps, many.eval_every, many.save_every) == (756, 63, 63)
    mine = FinetuneTrainConfig(eval_every=2, save_every=50).resolve(2, 12, min_steps=150)  # explicit values stand
    assert (mine.eval_every, mine.save_every) == (2, 50)


def _fifty_labels(tmp_path: Path) -> tuple[Path, Path]:
    rows = ["a fish that swims in the sea,animal", "a tool for cutting wood,artifact"]
    lines = ["text,label"] + [f"{rows[i % 2].replace(',', f' {i},')}" for i in range(50)]
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "val.csv").write_text("\n".join(lines[:9]) + "\n")
    return tmp_path / "train.csv", tmp_path / "val.csv"


def test_early_stopping_waits_for_min_steps(tiny_ckpt, tmp_path, monkeypatch):
    train, val = _fifty_labels(tmp_path)
    evaluated: list[int] = []

    def flat_evaluate(model, tok, data, batch_size=32):  # validation never improves
        evaluated.append(1)
        return {"accuracy": 0.5, "macro_f1": 0.5, "micro_f1": 0.5}, None, 0.5

    monkeypatch.setattr(ft, "evaluate_data", flat_evaluate)
    sec = FinetuneSection(task="classify", checkpoint=str(tiny_ckpt), train=str(train), validation=str(val),
                          out=str(tmp_path / "run"), epochs=2, patience=1, max_len=16, min_steps=12)
    result = ft.finetune({"finetune": sec, "train": FinetuneTrainConfig(batch_size=32, lr=1e-3, progress=False)})
    assert result["steps"] == 12 and len(evaluated) == 6  # 2 steps an epoch: epochs raised from 2 to 6
    long = dataclasses.replace(sec, out=str(tmp_path / "long"), epochs=20)
    result = ft.finetune({"finetune": long, "train": FinetuneTrainConfig(batch_size=32, lr=1e-3, progress=False)})
    assert result["stopped_early"] and result["steps"] == 12  # the first evaluation that counts, at the floor
    evaluated.clear()
    short = dataclasses.replace(sec, out=str(tmp_path / "short"), epochs=1, patience=0, min_steps=60)
    result = ft.finetune({"finetune": short, "train": FinetuneTrainConfig(batch_size=32, lr=1e-3, progress=False)})
    assert result["steps"] == 60 and len(evaluated) == 20  # 30 epochs of 2 steps, evaluated every 3 steps


# ---- the fair baseline -----------------------------------------------------------------------------------------------
def test_baseline_never_inherits_freeze(tiny_ckpt, tmp_path, monkeypatch):
    train, val = _fifty_labels(tmp_path)
    frozen: list = []
    real_freeze = ft.apply_freeze

    def recording_freeze(model, spec):
        frozen.append((spec, real_freeze(model, spec), all(p.requires_grad for p in model.parameters())))
        return frozen[-1][1]

    monkeypatch.setattr(ft, "apply_freeze", recording_freeze)
    sec = FinetuneSection(task="classify", checkpoint="", train=str(train), validation=str(val), out="-",
                          epochs=1, max_len=16, min_steps=0, freeze="body", layer_lr_decay=0.5)
    cfg = SimpleNamespace(finetune=sec, finetune_trainer=FinetuneTrainConfig(batch_size=32, progress=False),
                          source=None)
    runner = Runner(tmp_path / "out", log=lambda *a: None)
    steps.stage_finetune(runner, cfg, "baseline", tiny_ckpt, {}, from_scratch=True)
    assert frozen == [("none", [], True)]  # every parameter trains
    steps.stage_finetune(runner, cfg, "finetune", tiny_ckpt, {}, from_scratch=False)
    assert frozen[1][0] == "body" and frozen[1][1] and not frozen[1][2]
