"""Hostile conditions that cannot be a file of tests/bad_inputs/: FIFOs, a second writer, a full disk, kills, moved
run directories, and the silent wrong results of issue 15 (each now refused, or right).

Every error is one line `pretune: error: <path>: ...` with exit code 2; nothing already written is damaged.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from pretune import files
from pretune.cli import main
from pretune.errors import InputError
from pretune.run.stages import Runner
from pretune.training import checkpoint as ck

ARGS = ["--model-size", "tiny", "--max-len", "32", "--batch-size", "4", "--save-every", "2", "--eval-every", "2",
        "--eval-batches", "1", "--log-every", "1", "--no-progress", "--device", "cpu", "--seed", "3"]


@pytest.fixture(scope="module")
def shards(small_shards) -> Path:
    return small_shards


def error_line(capsys) -> str:
    err = [x for x in capsys.readouterr().err.strip().splitlines() if not x.startswith("tokenizing: ")]
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith("pretune: error: ")
    return err[0]


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging the suite) when the body blocks, e.g. on a FIFO nobody writes to."""
    def on_alarm(signum, frame):
        raise TimeoutError(f"blocked for {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# ---- FIFOs and devices: refused at once, never read ---------------------------------------------------------------
@pytest.mark.parametrize("name,command", [
    ("x.txt", ["prepare", "{f}", "--tokenizer", "{tok}", "--out", "{out}"]),
    ("x.txt", ["tokenizer", "train", "{f}", "--out", "{out}"]),
    ("x.csv", ["finetune", "--from", "{ckpt}", "--task", "classify", "--train", "{f}", "--validation", "{f}",
               "--out", "{out}"]),
    ("x.toml", ["pretrain", "--config", "{f}", "--shards", "{shards}", "--out", "{out}"]),
    ("x.json", ["prepare", "{corpus}", "--tokenizer", "{f}", "--out", "{out}"]),
    ("x.txt", ["vocab", "extend", "{tok}", "{f}", "--out", "{out}"]),
])
def test_a_fifo_is_refused_without_blocking(name, command, shards, tiny_ckpt, tmp_path, capsys):
    fifo = tmp_path / name
    os.mkfifo(fifo)
    corpus = tmp_path / "c.txt"
    corpus.write_text("some words here\n")
    values = {"f": fifo, "tok": shards / "tokenizer.json", "out": tmp_path / "out", "ckpt": tiny_ckpt,
              "shards": shards, "corpus": corpus}
    with deadline(60):
        code = main([a.format(**values) for a in command])
    assert code == 2
    line = error_line(capsys)
    assert f"{fifo}: is a FIFO (named pipe); expected a regular " in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_a_device_is_refused_as_a_corpus_and_a_labeled_file(device, shards, tiny_ckpt, tmp_path, capsys):
    with deadline(60):
        code = main(["prepare", device, "--format", "txt", "--tokenizer", str(shards / "tokenizer.json"),
                     "--out", str(tmp_path / "out")])
    assert code == 2 and f"{device}: is a device; expected a regular corpus file" in error_line(capsys)
    with deadline(60):
        code = main(["finetune", "--from", str(tiny_ckpt), "--task", "classify", "--train", device,
                     "--validation", device, "--out", str(tmp_path / "out")])
    assert code == 2 and f"{device}: is a device; expected a regular labeled file" in error_line(capsys)


def test_read_limits_are_bounded_and_named(tmp_path, monkeypatch):
    """A gzip bomb stops at the bound, long before memory grows: 64 MiB of zeros, a 1 MiB line bound."""
    import gzip

    bomb = tmp_path / "bomb.txt.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as f:
        for _ in range(64):
            f.write(b"\0" * (1 << 20))
    monkeypatch.setenv("PRETUNE_MAX_LINE_BYTES", str(1 << 20))
    with pytest.raises(InputError) as e:
        list(files.input_lines(bomb))
    assert str(e.value) == (f"{bomb}:1: line longer than 1 MiB (the limit on one line; raise it with "
                            "PRETUNE_MAX_LINE_BYTES): not a text file?")
    monkeypatch.setenv("PRETUNE_MAX_FILE_BYTES", str(8 << 20))
    with pytest.raises(InputError, match=r"more than 8 MiB of data \(the limit on a file read whole"):
        files.read_input(bomb)


# ---- one writer per output directory -------------------------------------------------------------------------------
@contextlib.contextmanager
def held_by_another_process(directory: Path):
    directory.mkdir(parents=True, exist_ok=True)
    code = ("import fcntl, os, sys, time\n"
            f"fd = os.open({str(directory / files.LOCK_FILE)!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.ftruncate(fd, 0); os.write(fd, str(os.getpid()).encode())\n"
            "print('locked', flush=True)\n"
            "time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_a_second_writer_is_refused_with_the_holders_pid(shards, tiny_ckpt, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["pretrain", "--shards", str(shards), "--out", str(run), *ARGS, "--max-steps", "2",
                 "--stop-after", "2"]) == 0
    before = {p.name: p.stat().st_mtime_ns for p in run.rglob("*") if p.name != files.LOCK_FILE}
    with held_by_another_process(run) as pid:
        for extra in (["--resume", "--max-steps", "4"], ["--overwrite", "--max-steps", "4"]):
            t0 = time.monotonic()
            assert main(["pretrain", "--shards", str(shards), "--out", str(run), *ARGS, *extra]) == 2
            assert time.monotonic() - t0 < 30  # refused at once, not after waiting
            assert error_line(capsys) == (f"pretune: error: {run}: another pretune process (pid {pid}) is writing "
                                          "this directory; wait for it to end or choose another --out")
        assert {p.name: p.stat().st_mtime_ns for p in run.rglob("*") if p.name != files.LOCK_FILE} == before
    # the holder gone, the same command continues the run
    assert main(["pretrain", "--shards", str(shards), "--out", str(run), *ARGS, "--resume", "--max-steps", "4"]) == 0
    assert json.loads((run / "last" / "trainer_state.json").read_text())["step"] == 4


def test_pretune_run_takes_the_run_directory_lock(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "pipeline.json").write_text(json.dumps({"format_version": 1}))
    with held_by_another_process(out) as pid:
        assert main(["run", "--out", str(out), "--no-progress", "--set", "pretrain.trainer.max_steps=1"]) == 2
        assert f"{out}: another pretune process (pid {pid}) is writing this directory" in error_line(capsys)


def test_locks_are_released_after_each_command(tmp_path):
    d = tmp_path / "d"
    assert files.lock_dir(d) is True
    files.lock_dir(d)  # re-entrant
    files.release_locks()
    code = ("import fcntl, os, sys\n"
            f"fd = os.open({str(d / files.LOCK_FILE)!r}, os.O_RDWR)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# ---- a full disk, or any failing write, during a checkpoint ---------------------------------------------------------
@pytest.mark.parametrize("failure", [
    OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
    SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })"),
])
def test_a_failing_weights_write_keeps_the_previous_checkpoint(failure, shards, tmp_path, monkeypatch, capsys):
    real, calls = ck.save_file, {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the step-4 checkpoint
            raise failure
        return real(*args, **kwargs)

    monkeypatch.setattr(ck, "save_file", failing)
    run = tmp_path / "run"
    assert main(["pretrain", "--shards", str(shards), "--out", str(run), *ARGS, "--max-steps", "6"]) == 2
    line = error_line(capsys)
    assert line.startswith(f"pretune: error: {run / 'last'}: cannot write last/: ")
    assert line.endswith("the previous last/ (if any) is left as it was")
    assert json.loads((run / "last" / "trainer_state.json").read_text())["step"] == 2
    assert ck.load_checkpoint(run / "last").optimizer_state() is not None
    assert not [p for p in files.dir_entries(run) if p.name.startswith(".")]  # no half directory left


def test_torch_save_runtime_error_keeps_the_previous_checkpoint(shards, tmp_path, monkeypatch, capsys):
    """torch.save reports a full disk as RuntimeError('... file write failed'), not OSError."""
    from pretune.training import trainer as trainer_module

    real, calls = torch.save, {"n": 0}

    def failing(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                               "data/3: file write failed")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(trainer_module.torch, "save", failing)
    run = tmp_path / "run"
    assert main(["pretrain", "--shards", str(shards), "--out", str(run), *ARGS, "--max-steps", "6"]) == 2
    line = error_line(capsys)
    assert line.startswith(f"pretune: error: {run / 'last'}: cannot write last/: [enforce fail")
    assert json.loads((run / "last" / "trainer_state.json").read_text())["step"] == 2
    monkeypatch.setattr(trainer_module.torch, "save", real)
    assert main(["pretrain", "--shards", str(shards), "--out", str(run), *ARGS, "--max-steps", "6",
                 "--resume"]) == 0  # and the run goes on from it


def test_a_failing_metrics_write_is_one_line(shards, tmp_path, monkeypatch, capsys):
    import builtins

    real_open = builtins.open

    def full(path, mode="r", *args, **kwargs):
        if str(path).endswith(files.METRICS_LOG) and "a" in mode:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", full)
    run = tmp_path / "run"
    assert main(["pretrain", "--shards", str(shards), "--out", str(run), *ARGS, "--max-steps", "2"]) == 2
    assert error_line(capsys) == (f"pretune: error: {run / files.METRICS_LOG}: cannot write the metrics log: "
                                  "No space left on device")


def test_a_really_full_disk(shards, tmp_path, capsys):
    """On a tmpfs that holds one checkpoint but not two (when this machine lets us mount one): the second write
    fails with one line, and the first checkpoint stays whole and loadable."""
    probe = tmp_path / "probe"
    assert main(["pretrain", "--shards", str(shards), "--out", str(probe), *ARGS, "--max-steps", "2"]) == 0
    one = sum(f.stat().st_size for f in (probe / "last").iterdir())
    mnt = tmp_path / "small"
    mnt.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    size = f"{int(one * 1.5) // 1024 + 64}k"  # a checkpoint and its log, not a second one beside it
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                      capture_output=True).returncode:
        pytest.skip("this machine does not allow mounting a tmpfs (a container without CAP_SYS_ADMIN)")
    try:
        run = mnt / "run"
        assert main(["pretrain", "--shards", str(shards), "--out", str(run), *ARGS, "--max-steps", "6"]) == 2
        line = error_line(capsys)
        assert line.startswith(f"pretune: error: {run / 'last'}: cannot write last/: ")
        assert "free on its disk)" in line or "No space left on device" in line
        assert json.loads((run / "last" / "trainer_state.json").read_text())["step"] == 2
        assert ck.load_checkpoint(run / "last").optimizer_state() is not None
        assert not [p for p in files.dir_entries(run) if p.name.startswith(".")]
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# ---- kills: whatever the moment, a plain rerun or --resume goes on -------------------------------------------------
def test_sigkill_before_the_first_checkpoint_then_rerun_and_resume(shards, tmp_path):
    run = tmp_path / "run"
    args = ["pretrain", "--shards", str(shards), "--out", str(run), *ARGS, "--max-steps", "400",
            "--save-every", "400", "--eval-every", "400"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pretune.cli", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    while not (run / files.METRICS_LOG).is_file():  # training has begun: run.json written, no checkpoint yet
        assert proc.poll() is None and time.monotonic() - t0 < 120
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "last").exists() and (run / "run.json").is_file()
    short = [a if a != "400" else "2" for a in args]
    assert main([*short, "--resume"]) == 0  # nothing to resume from: it starts again
    assert json.loads((run / "last" / "trainer_state.json").read_text())["step"] == 2
    # the same once more, with a plain rerun
    shutil.rmtree(run / "last")
    shutil.rmtree(run / "model")
    assert main(short) == 0
    assert (run / "model" / "model.safetensors").is_file()


def test_a_moved_run_directory_resumes(shards, tmp_path, monkeypatch):
    """The run directory's path is no part of its config: a moved, copied or differently named --out resumes."""
    first = tmp_path / "a" / "run"
    assert main(["pretrain", "--shards", str(shards), "--out", str(first), *ARGS, "--max-steps", "4",
                 "--stop-after", "2"]) == 0
    moved = tmp_path / "b" / "moved"
    moved.parent.mkdir()
    shutil.move(str(first), str(moved))
    monkeypatch.chdir(tmp_path / "b")
    assert main(["pretrain", "--shards", str(shards), "--out", "moved", *ARGS, "--max-steps", "6",
                 "--stop-after", "4", "--resume"]) == 0  # relative --out
    assert main(["pretrain", "--shards", str(shards), "--out", str(moved.resolve()), *ARGS, "--max-steps", "6",
                 "--resume"]) == 0  # absolute --out of the same directory
    assert json.loads((moved / "last" / "trainer_state.json").read_text())["step"] == 6


# ---- silent wrong results, now right -------------------------------------------------------------------------------
def test_run_json_records_the_architecture_trained(shards, tmp_path):
    """--model-size tiny --hidden-size 80: validated against tiny's 2 heads, and run.json says what was trained."""
    run = tmp_path / "run"
    assert main(["pretrain", "--shards", str(shards), "--out", str(run), *ARGS, "--max-steps", "1",
                 "--hidden-size", "80"]) == 0
    model = json.loads((run / "run.json").read_text())["model"]
    vocab = json.loads((shards / "meta.json").read_text())["vocab_size"]
    assert (model["hidden_size"], model["num_heads"], model["num_layers"], model["vocab_size"]) == (80, 2, 2, vocab)
    assert json.loads((run / "model" / "config.json").read_text())["tokenizer_vocab_size"] == vocab


def test_a_vocab_txt_with_a_byte_order_mark_loads(tmp_path):
    from pretune.text.tokenizer import PretuneTokenizer

    vocab = tmp_path / "vocab.txt"
    vocab.write_bytes("\ufeff[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\n".encode())
    tok = PretuneTokenizer.load(vocab)
    assert tok.specials.pad == 0 and tok.vocab_size == 6


def test_tokenizer_train_overwrite_never_writes_into_a_directory(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("a few words of text\n" * 20)
    out = tmp_path / "tok"
    out.mkdir()
    assert main(["tokenizer", "train", str(corpus), "--vocab-size", "60", "--out", str(out), "--overwrite"]) == 2
    assert "expected a file path, found a directory" in error_line(capsys)
    assert list(out.iterdir()) == []


def test_runner_never_replaces_a_training_stage_of_another_config(tmp_path):
    """`pretune run`: a trained stage made with other inputs is refused (naming what differs) unless overwrite."""
    root = tmp_path / "run"
    runs = []

    def work(d: Path, resume: bool) -> dict:
        d.mkdir(parents=True, exist_ok=True)
        (d / "model").mkdir(exist_ok=True)
        runs.append(resume)
        return {"ok": True}

    quiet = {"log": lambda *a: None}
    Runner(root, **quiet).stage("pretrain", {"trainer": {"lr": 1e-3}}, work, can_continue=lambda d: True)
    Runner(root, **quiet).stage("pretrain", {"trainer": {"lr": 1e-3}}, work, can_continue=lambda d: True)
    assert runs == [False]  # up to date: skipped
    with pytest.raises(InputError) as e:
        Runner(root, **quiet).stage("pretrain", {"trainer": {"lr": 2e-3}}, work, can_continue=lambda d: True)
    assert str(e.value) == (f"{root / 'pretrain'}: stage pretrain/ holds a model made with another config "
                            "(trainer.lr: 0.001 -> 0.002); pass --overwrite to replace it and the stages after it, "
                            "or choose another --out")
    assert (root / "pretrain" / "model").is_dir() and runs == [False]
    Runner(root, overwrite=True, **quiet).stage("pretrain", {"trainer": {"lr": 2e-3}}, work,
                                                can_continue=lambda d: True)
    assert runs == [False, False]
    # a stage that trains nothing (a report) is recomputed as before
    Runner(root, **quiet).stage("report", {"x": 1}, work)
    Runner(root, **quiet).stage("report", {"x": 2}, work)
    assert len(runs) == 4


def test_write_dir_atomic_turns_a_runtime_error_into_one_line(tmp_path):
    target = tmp_path / "ckpt"
    files.write_dir_atomic(target, lambda d: (d / "a.txt").write_text("old"))

    def failing(d: Path) -> None:
        (d / "a.txt").write_text("new")
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    with pytest.raises(InputError) as e:
        files.write_dir_atomic(target, failing)
    assert re.fullmatch(rf"{re.escape(str(target))}: cannot write ckpt/: PytorchStreamWriter failed writing file "
                        r"data/0: file write failed \([0-9.]+ [KMG]iB free on its disk\); the previous ckpt/ "
                        r"\(if any\) is left as it was", str(e.value)), str(e.value)
    assert (target / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_a_moved_run_directory_with_its_shards_inside_resumes(shards, tmp_path):
    """As `pretune run` lays a run out: shards/ beside pretrain/ in one folder, absolute paths. Moved, it resumes;
    other shards (a path that did not move with it) are a different config."""
    root = tmp_path / "one"
    shutil.copytree(shards, root / "shards")
    assert main(["pretrain", "--shards", str(root / "shards"), "--out", str(root / "pretrain"), *ARGS,
                 "--max-steps", "4", "--stop-after", "2"]) == 0
    moved = tmp_path / "two"
    shutil.move(str(root), str(moved))
    assert main(["pretrain", "--shards", str(shards), "--out", str(moved / "pretrain"), *ARGS, "--max-steps", "4",
                 "--resume"]) == 2
    assert main(["pretrain", "--shards", str(moved / "shards"), "--out", str(moved / "pretrain"), *ARGS,
                 "--max-steps", "4", "--resume"]) == 0
    assert json.loads((moved / "pretrain" / "last" / "trainer_state.json").read_text())["step"] == 4
