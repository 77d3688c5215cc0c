"""Crash safety: SIGKILL at several moments (inside a checkpoint write too), SIGTERM, NaN/inf losses, a full disk.

Kills are real: `pretune pretrain` runs in a subprocess and gets SIGKILL. To hit the inside of a checkpoint write
reliably, the subprocess runs with PRETUNE_TEST_CHECKPOINT_PAUSE="stage=seconds", which makes write_dir_atomic
sleep at that stage (begin: empty temporary dir; filled: complete temporary dir; swap: the old checkpoint moved
aside, the new one not yet in place) while the test watches the files and kills it there. After every kill the
last complete checkpoint must load, and `--resume` must give the loss curve and final weights of an uninterrupted
run (the same process count and thread count: equal to 1e-6).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pretune import files
from pretune.cli import main
from pretune.training import checkpoint as ck

STEPS = 8
ARGS = ["--model-size", "tiny", "--max-len", "32", "--batch-size", "8", "--lr", "2e-3", "--max-steps", str(STEPS),
        "--warmup-steps", "2", "--log-every", "1", "--save-every", "2", "--eval-every", "6", "--eval-batches", "2",
        "--no-progress", "--seed", "11", "--device", "cpu"]



@pytest.fixture(scope="module")
def shards(small_shards) -> Path:
    return small_shards


@pytest.fixture(scope="module")
def reference(shards, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("reference") / "run"
    assert main(["pretrain", "--shards", str(shards), "--out", str(run), *ARGS]) == 0
    return run


def start(shards: Path, run: Path, pause: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}  # as the in-process runs (one_thread)
    env.pop(files.PAUSE_ENV, None)
    if pause:
        env[files.PAUSE_ENV] = pause
    return subprocess.Popen([sys.executable, "-m", "pretune.cli", "pretrain", "--shards", str(shards), "--out",
                             str(run), *ARGS], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(proc: subprocess.Popen, condition, timeout: float = 90) -> None:
    t0 = time.monotonic()
    while not condition():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (exit {proc.returncode}) before the moment to kill it:\n{out}\n{err}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail("timed out waiting for the moment to kill the run")
        time.sleep(0.005)


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def step_of(directory: Path) -> int | None:
    try:
        return json.loads((directory / "trainer_state.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return None


def log_lines(run: Path) -> int:
    try:
        return len((run / "metrics.jsonl").read_text().splitlines())
    except OSError:
        return 0


def curve(run: Path) -> list[tuple[int, str, float]]:
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        out.append((r["step"], r["split"], r["loss"] if r["split"] == "train" else r["mlm_loss"]))
    return out


def assert_resumes_like_reference(shards: Path, run: Path, reference: Path) -> int:
    """The last complete checkpoint loads; --resume finishes the run exactly as the uninterrupted one."""
    ckpt = ck.load_checkpoint(run / "last" if (run / "last").exists() else run)
    state, opt = ckpt.trainer_state(), ckpt.optimizer_state()
    assert state is not None and opt is not None and set(opt) >= {"optimizer", "scheduler", "rng_torch"}
    step = state["step"]
    assert 2 <= step < STEPS and step % 2 == 0
    assert main(["pretrain", "--shards", str(shards), "--out", str(run), *ARGS, "--resume"]) == 0
    got, want = curve(run), curve(reference)
    assert [(s, k) for s, k, _ in got] == [(s, k) for s, k, _ in want]  # no step missing or logged twice
    for (s, k, a), (_, _, b) in zip(got, want, strict=True):
        assert abs(a - b) < 1e-6, (s, k, a, b)
    wa, wb = load_file(run / "model" / "model.safetensors"), load_file(reference / "model" / "model.safetensors")
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wb) < 1e-6
    assert not any(p.name.startswith(".") for p in files.dir_entries(run))  # no .last.tmp / .last.old left behind
    return step


def test_sigkill_between_moving_the_old_checkpoint_aside_and_renaming_the_new(shards, reference, tmp_path):
    """The narrowest window: last/ is gone, .last.old holds step 2, .last.tmp the complete step 4."""
    run = tmp_path / "run"
    proc = start(shards, run, pause="swap=30")
    wait_for(proc, lambda: not (run / "last").exists() and step_of(run / ".last.old") == 2
             and step_of(run / ".last.tmp") == 4)
    kill(proc)
    assert ck.resolve(run) == run / ".last.old"  # readers find the complete previous checkpoint
    assert assert_resumes_like_reference(shards, run, reference) == 2


def test_sigkill_at_a_random_moment_of_training(shards, reference, tmp_path):
    run = tmp_path / "run"
    proc = start(shards, run)
    wait_for(proc, lambda: log_lines(run) >= 5)
    time.sleep(0.05)
    kill(proc)
    assert_resumes_like_reference(shards, run, reference)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["begin", "filled"])
def test_sigkill_while_the_new_checkpoint_is_being_written(shards, reference, tmp_path, stage):
    run = tmp_path / "run"
    proc = start(shards, run, pause=f"{stage}=30")
    if stage == "begin":  # an empty temporary dir beside the complete step-2 checkpoint
        wait_for(proc, lambda: step_of(run / "last") == 2 and (run / ".last.tmp").is_dir())
    else:
        wait_for(proc, lambda: step_of(run / "last") == 2 and step_of(run / ".last.tmp") == 4)
    kill(proc)
    assert assert_resumes_like_reference(shards, run, reference) == 2


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 0.03, 0.07, 0.12])  # the 5 steps after line 3 take ~0.15-0.25 s idle
def test_sigkill_at_more_random_moments(shards, reference, tmp_path, delay):
    run = tmp_path / "run"
    proc = start(shards, run)
    wait_for(proc, lambda: log_lines(run) >= 3)
    time.sleep(delay)
    if proc.poll() is None:
        kill(proc)
    if (run / "model").exists():
        pytest.skip("the run finished before the kill")
    assert_resumes_like_reference(shards, run, reference)


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(shards, reference, tmp_path):
    run = tmp_path / "run"
    proc = start(shards, run)
    wait_for(proc, lambda: log_lines(run) >= 3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    step = step_of(run / "last")
    assert step is not None and 3 <= step < STEPS
    assert f"SIGTERM: checkpoint saved at step {step} in {run / 'last'}; exiting" in err
    assert err.strip().splitlines()[-1] == "pretune: interrupted"
    assert not (run / "model").exists()  # the run did not pretend to be finished
    # a step that is not a multiple of save_every: the checkpoint came from the signal, and it resumes exactly
    assert main(["pretrain", "--shards", str(shards), "--out", str(run), *ARGS, "--resume"]) == 0
    assert [x[:2] for x in curve(run)] == [x[:2] for x in curve(reference)]
    for (s, k, a), (_, _, b) in zip(curve(run), curve(reference), strict=True):
        assert abs(a - b) < 1e-6, (s, k, a, b)


# ---- NaN / inf ----------------------------------------------------------------------------------------------------
def _poison_loss(monkeypatch, at_calls: set[int], value: float = float("nan")) -> None:
    """Make the objective's loss non-finite on the given (1-based) training calls."""
    from pretune.pretrain.objectives import MaskedLM

    original, calls = MaskedLM.loss, {"n": 0}

    def loss(self, model, batch):
        out, stats = original(self, model, batch)
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] in at_calls:
                out = out * value
        return out, stats

    monkeypatch.setattr(MaskedLM, "loss", loss)


def test_nan_loss_stops_with_a_message_naming_the_step(shards, tmp_path, monkeypatch, capsys):
    _poison_loss(monkeypatch, {3})
    run = tmp_path / "run"
    assert main(["pretrain", "--shards", str(shards), "--out", str(run), *ARGS]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["pretune: training stopped: loss is nan at step 3; lower the learning rate, check the data, or "
                   "set on_nan = \"skip\" to skip such batches"]
    assert step_of(run / "last") == 2  # the checkpoint before the bad step is intact


def test_inf_loss_with_on_nan_skip_skips_the_batch_and_counts_it(shards, tmp_path, monkeypatch):
    _poison_loss(monkeypatch, {3, 7}, float("inf"))
    run = tmp_path / "run"
    assert main(["pretrain", "--shards", str(shards), "--out", str(run), *ARGS, "--on-nan", "skip"]) == 0
    assert json.loads((run / "last" / "trainer_state.json").read_text())["skipped_batches"] == 2
    train = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in train if r["split"] == "train"}
    assert train[3]["loss"] == float("inf") and train[3]["skipped_batches"] == 1
    assert train[STEPS]["skipped_batches"] == 2 and all(torch.isfinite(torch.tensor(train[s]["loss"]))
                                                        for s in train if s not in (3, 7))


def test_skipped_step_leaves_the_weights_alone():
    """Loop level: the poisoned step changes no parameter, the others do; the schedule still advances."""
    from pretune.training.batches import BatchSource
    from pretune.training.config import TrainConfig
    from pretune.training.trainer import Trainer

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    data = [torch.randn(4) for _ in range(64)]
    collate = lambda items, gen: {"input_ids": torch.stack(items)}  # noqa: E731
    calls = {"n": 0}

    def loss_fn(m, batch):
        calls["n"] += 1
        loss = m(batch["input_ids"]).pow(2).mean()
        return (loss * float("nan") if calls["n"] == 2 else loss), {}

    snapshots = []
    cfg = TrainConfig(max_steps=3, batch_size=8, lr=0.1, warmup_steps=0, on_nan="skip", progress=False,
                      device="cpu", save_every=100, eval_every=100)
    trainer = Trainer(model, cfg, Path("/nonexistent-never-written"), batches=BatchSource(data, 8, collate),
                      loss_fn=loss_fn, save_model=lambda d, m: None)
    for _ in range(3):
        trainer._train_step({})
        snapshots.append(model.weight.detach().clone())
        trainer.step += 1
    assert not torch.equal(snapshots[0], model.weight.new_zeros(1)) and trainer.skipped == 1
    assert torch.equal(snapshots[0], snapshots[1]) and not torch.equal(snapshots[1], snapshots[2])
    assert trainer.scheduler.last_epoch == 3


# ---- full disk ----------------------------------------------------------------------------------------------------
def test_out_of_disk_space_while_writing_a_checkpoint(shards, tmp_path, monkeypatch, capsys):
    """The second checkpoint write fails with ENOSPC: one line naming last/ and the reason, exit 2, the step-2
    checkpoint intact and loadable, no temporary directory left behind."""
    real, calls = ck.save_file, {"n": 0}

    def full_disk(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)

    monkeypatch.setattr(ck, "save_file", full_disk)
    run = tmp_path / "run"
    assert main(["pretrain", "--shards", str(shards), "--out", str(run), *ARGS]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert err[0] == (f"pretune: error: {run / 'last'}: cannot write last/: No space left on device; the previous "
                      "last/ (if any) is left as it was")
    assert step_of(run / "last") == 2
    ckpt = ck.load_checkpoint(run / "last")
    assert ckpt.optimizer_state() is not None and "body.embeddings.word.weight" in ckpt.state_dict
    left = sorted(p.name for p in files.dir_entries(run) if not p.name.startswith("events.out.tfevents"))
    assert left == ["last", "metrics.jsonl", "run.json"]


def test_write_dir_atomic_keeps_the_old_directory_on_any_oserror(tmp_path):
    target = tmp_path / "ckpt"
    files.write_dir_atomic(target, lambda d: (d / "a.txt").write_text("old"))

    def failing(d: Path) -> None:
        (d / "a.txt").write_text("new")
        raise PermissionError(errno.EACCES, "Permission denied")

    with pytest.raises(ck.InputError, match="cannot write ckpt/: Permission denied"):
        files.write_dir_atomic(target, failing)
    assert (target / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    # a swap cut short by a crash (target moved aside, not replaced) is undone by the next reader / writer
    os.replace(target, tmp_path / ".ckpt.old")
    files.recover_dir(target)
    assert (target / "a.txt").read_text() == "old" and not (tmp_path / ".ckpt.old").exists()
