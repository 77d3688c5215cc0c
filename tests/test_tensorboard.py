"""TensorBoard event files beside metrics.jsonl (read back with tensorboard's EventAccumulator), the one-line hint
without the package, and the log lines that replace the progress bar with --no-progress."""

from __future__ import annotations

import sys

import pytest
import torch

from pretune.files import read_metrics, write_json
from pretune.training import checkpoint as ck
from pretune.training import tensorboard as tb
from pretune.training.batches import BatchSource
from pretune.training.config import TrainConfig
from pretune.training.trainer import EarlyStopping, Trainer


def _fit(out, max_steps=6, resume=False, crash_at=None) -> None:
    """A linear model trained on random vectors: train records every 2 steps, validation every 3 (then, at step
    `crash_at`, a crash before that step's checkpoint)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    data = [torch.randn(4) for _ in range(64)]

    def collate(items, gen):
        return {"input_ids": torch.stack(items)}

    def loss_fn(m, batch):
        sq = m(batch["input_ids"]).pow(2)
        return sq.mean(), {"sq": (float(sq.detach().sum()), len(sq))}

    def evaluate(m):
        x = torch.stack(data[:16])
        return {"loss": float(m(x).pow(2).mean()), "score": float(-m(x).abs().mean())}

    def on_evaluate(step, metrics):
        if step == crash_at:
            raise RuntimeError("crash")

    def save_model(directory, m):  # what resuming reads: config.json and the weights
        write_json(directory / ck.CONFIG, {})
        ck.save_weights(directory / ck.WEIGHTS, m)

    cfg = TrainConfig(max_steps=max_steps, batch_size=8, lr=0.05, warmup_steps=0, progress=False, device="cpu",
                      log_every=2, eval_every=3, save_every=3)
    Trainer(model, cfg, out, batches=BatchSource(data, 8, collate), loss_fn=loss_fn,
            save_model=save_model, evaluate=evaluate,
            early_stopping=EarlyStopping("score"), on_evaluate=on_evaluate).fit(resume=resume)


def _scalars(out) -> dict[str, list[tuple[int, float]]]:
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator",
        reason="the tensorboard package is not installed (pip install 'pretune[tensorboard]')")
    acc = event_accumulator.EventAccumulator(str(out))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_every_logged_number_is_in_the_event_files(tmp_path, capsys):
    pytest.importorskip("tensorboard", reason="the tensorboard package is not installed (pip install "
                        "'pretune[tensorboard]')")
    _fit(tmp_path / "run")
    scalars = _scalars(tmp_path / "run")
    records = read_metrics(tmp_path / "run")
    assert {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "train/sq", "validation/loss",
            "validation/score"} <= set(scalars)
    for rec in records:  # the same values at the same steps as metrics.jsonl
        for name, value in rec.items():
            if name not in ("step", "split"):
                assert (rec["step"], pytest.approx(value, rel=1e-6)) in scalars[f"{rec['split']}/{name}"]
    assert [s for s, _ in scalars["train/loss"]] == [2, 4, 6] and [s for s, _ in scalars["validation/score"]] == [3, 6]
    assert all(v > 0 for _, v in scalars["train/grad_norm"])
    # no progress bar: a line per train record and per evaluation instead of nothing
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["step 2/6", "step 3", "step 4/6", "step 6/6", "step 6"]


def test_a_resumed_run_hides_the_events_after_its_checkpoint(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard package is not installed")
    with pytest.raises(RuntimeError):  # checkpoint at step 3; steps 4 and 6 logged, then the crash
        _fit(tmp_path / "run", crash_at=6)
    _fit(tmp_path / "run", resume=True)
    scalars = _scalars(tmp_path / "run")
    assert [s for s, _ in scalars["train/loss"]] == [2, 4, 6]  # once each: what the crashed run wrote after 3 is gone
    assert [s for s, _ in scalars["validation/score"]] == [3, 6]


def test_without_the_package_training_goes_on_and_says_how_to_enable_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if tensorboard were missing
    monkeypatch.setattr(tb, "_hinted", False)
    _fit(tmp_path / "a", max_steps=2)
    _fit(tmp_path / "b", max_steps=2)
    err = capsys.readouterr().err
    assert err.count(tb.ENABLE_HINT) == 1 and 'pip install "pretune[tensorboard]"' in err
    assert not list(tmp_path.rglob("events.out.tfevents*")) and read_metrics(tmp_path / "b")
