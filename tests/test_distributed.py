"""torch.distributed on CPU (gloo, 2 processes on 127.0.0.1): N ranks train exactly as one process with the same
global batch, under DDP and FSDP2; checkpoints move between world sizes; evaluation aggregates over ranks.

Each rank is started the way torchrun starts it (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT in the
environment, `python -m pretune.cli pretrain ...`). Dropout is 0 so that the only randomness is the masking, which
every rank draws for the whole global batch from the same generator.

Tolerance: the ranks' sums are added in another order than one process's, so losses agree to float32 rounding
(measured: ~1e-7 relative over 8 steps) and weights to ~1e-6 after 8 AdamW steps; asserted: 1e-5 relative on
losses, 2e-5 absolute on every weight.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pretune.cli import main

LOSS_RTOL, WEIGHT_ATOL = 1e-5, 2e-5
BASE = ["--model-size", "tiny", "--max-len", "32", "--lr", "3e-3", "--max-steps", "8", "--warmup-steps", "2",
        "--log-every", "1", "--eval-every", "4", "--eval-batches", "3", "--save-every", "4", "--no-progress",
        "--dropout", "0", "--attention-dropout", "0", "--seed", "3", "--precision", "fp32", "--device", "cpu"]


@pytest.fixture(scope="module")
def shards(small_shards) -> Path:
    return small_shards


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], world: int = 2, timeout: float = 240) -> None:
    """Run `pretune <args>` on `world` ranks as torchrun would (env:// rendezvous on localhost, gloo)."""
    port = free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
               "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world),
               "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
        procs.append(subprocess.Popen([sys.executable, "-m", "pretune.cli", *args], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=timeout))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    codes = [p.returncode for p in procs]
    logs = "\n".join(f"--- rank {r} exited {c}:\n{out[-2000:]}\n{err[-4000:]}"
                     for r, (c, (out, err)) in enumerate(zip(codes, outs, strict=True)))
    assert codes == [0] * world, logs


def records(run: Path, split: str) -> dict[int, dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r for r in map(json.loads, lines) if r["split"] == split}


def assert_same_curve(a: Path, b: Path, steps: range) -> float:
    """Train losses (and validation at the steps both logged) agree; returns the largest relative difference."""
    ta, tb = records(a, "train"), records(b, "train")
    worst = 0.0
    for s in steps:
        rel = abs(ta[s]["loss"] - tb[s]["loss"]) / abs(tb[s]["loss"])
        assert rel < LOSS_RTOL, (s, ta[s]["loss"], tb[s]["loss"])
        assert ta[s]["mlm_accuracy"] == pytest.approx(tb[s]["mlm_accuracy"], abs=1e-9)
        worst = max(worst, rel)
    va, vb = records(a, "validation"), records(b, "validation")
    for s in set(va) & set(vb) & set(steps):
        assert va[s]["mlm_loss"] == pytest.approx(vb[s]["mlm_loss"], rel=LOSS_RTOL)
    return worst


def assert_same_weights(a: Path, b: Path) -> float:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert worst < WEIGHT_ATOL, worst
    return worst


@pytest.fixture(scope="module")
def single(shards, tmp_path_factory) -> Path:
    """The reference: one process, batch 8 (= 2 ranks x 4)."""
    run = tmp_path_factory.mktemp("single") / "run"
    assert main(["pretrain", "--shards", str(shards), "--out", str(run), *BASE, "--batch-size", "8"]) == 0
    return run


def test_ddp_two_ranks_equal_one_process_with_the_global_batch(shards, single, tmp_path):
    run = tmp_path / "ddp"
    launch(["pretrain", "--shards", str(shards), "--out", str(run), *BASE, "--batch-size", "4"])
    assert_same_curve(run, single, range(1, 9))
    assert_same_weights(run / "model", single / "model")
    # a loss that only matches at step 1 would be weak evidence: the curve really moved
    train = records(single, "train")
    assert train[8]["loss"] < train[1]["loss"] - 0.05
    # evaluation over ranks: every validation batch counted once (3 batches of 4 sequences x 31 tokens x ~15%)
    val = records(run, "validation")
    assert set(val) == {4, 8}
    state = json.loads((run / "last" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["batches"]["global_batch"] == 8 and state["batches"]["items"] == 64


# Slow-marked: on a loaded 2-core machine a gloo rank has (rarely) aborted at process exit after finishing its work
# ("terminate called without an active exception", exit -6), even with the barrier before destroy_process_group.
@pytest.mark.slow
def test_fsdp_checkpoint_from_two_ranks_resumes_in_one_process(shards, single, tmp_path):
    """FSDP2 on 2 ranks for 4 steps (its checkpoint gathers the shards), then --resume as one process with the
    same global batch: the curve and the final weights are those of the uninterrupted single-process run."""
    run = tmp_path / "fsdp"
    launch(["pretrain", "--shards", str(shards), "--out", str(run), *BASE, "--batch-size", "4", "--fsdp",
            "--stop-after", "4"])
    weights = load_file(run / "last" / "model.safetensors")
    assert not any(k.startswith("model.") for k in weights)  # plain names, full shapes
    assert weights["body.embeddings.word.weight"].shape[1] == 64
    assert_same_curve(run, single, range(1, 5))
    assert main(["pretrain", "--shards", str(shards), "--out", str(run), *BASE, "--batch-size", "8", "--fsdp",
                 "--resume"]) == 0
    assert_same_curve(run, single, range(1, 9))
    assert_same_weights(run / "model", single / "model")


@pytest.mark.slow
def test_torchrun_one_process_checkpoint_resumes_on_two_fsdp_ranks(shards, single, tmp_path):
    """The other direction, through the real torchrun: 1 process -> 2 FSDP ranks (full weights loaded into shards,
    optimizer state re-sharded)."""
    run = tmp_path / "grow"
    assert main(["pretrain", "--shards", str(shards), "--out", str(run), *BASE, "--batch-size", "8",
                 "--stop-after", "4"]) == 0
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
                "127.0.0.1", "--master-port", str(free_port())]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([*torchrun, "-m", "pretune.cli", "pretrain", "--shards", str(shards), "--out", str(run),
                           *BASE, "--batch-size", "4", "--fsdp", "--resume"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_curve(run, single, range(1, 9))
    assert_same_weights(run / "model", single / "model")


def test_resume_with_another_global_batch_continues_after_the_items_seen(shards, tmp_path):
    """A world-size change with the same per-rank batch changes the global batch: the epoch goes on from the
    items already consumed (no item repeated or skipped), cut into the new batch size."""
    from pretune.training.batches import BatchSource

    data = list(range(100))
    collate = lambda items, gen: {"input_ids": torch.tensor(items)[:, None]}  # noqa: E731
    src = BatchSource(data, 8, collate, seed=1)
    seen = [int(x) for _ in range(3) for x in next(src)["input_ids"][:, 0]]
    state = src.state_dict()
    assert state["items"] == 24
    bigger = BatchSource(data, 12, collate, seed=1)
    bigger.load_state_dict(state)
    rest = [int(x) for _ in range(6) for x in next(bigger)["input_ids"][:, 0]]  # 24 + 72 = 96 of 100 items
    assert len(set(seen + rest)) == 96 and bigger.epoch == 0
    nxt = next(bigger)["input_ids"]
    assert bigger.epoch == 1 and nxt.shape[0] == 12  # the 4-item tail is dropped, the next epoch begins


def test_local_rows_partition_the_global_batch(monkeypatch):
    """Rank r keeps rows r, r + world, ...: together the ranks hold the global batch exactly once."""
    from pretune.training import distributed as dist
    from pretune.training.batches import BatchSource

    batch = {"input_ids": torch.arange(10).view(5, 2), "labels": torch.arange(5), "note": "kept"}
    parts = []
    for r in range(2):
        monkeypatch.setattr(dist, "rank", lambda r=r: r)
        monkeypatch.setattr(dist, "world_size", lambda: 2)
        src = BatchSource(list(range(40)), 4, lambda items, gen: batch)
        parts.append(src.local(batch))
    assert parts[0]["input_ids"].tolist() == [[0, 1], [4, 5], [8, 9]]
    assert sorted(parts[0]["labels"].tolist() + parts[1]["labels"].tolist()) == list(range(5))
    assert parts[1]["note"] == "kept"


@pytest.fixture(scope="module")
def no_dropout_ckpt(tmp_path_factory) -> Path:
    """A random `tiny` checkpoint without dropout (so fine-tuning is deterministic), WordPiece vocabulary of 600."""
    import csv

    from conftest import WORDNET

    from pretune.model.transformer import PRESETS, ModelConfig, Transformer
    from pretune.text.tokenizer import train_tokenizer
    from pretune.training.checkpoint import save_checkpoint

    with open(WORDNET / "supersense_train.csv", encoding="utf-8") as f:
        texts = [row["text"] for row in csv.DictReader(f)]
    tok = train_tokenizer(texts, vocab_size=600, lowercase=True)
    torch.manual_seed(5)
    cfg = ModelConfig(**{**PRESETS["tiny"], "vocab_size": tok.vocab_size, "pad_token_id": tok.specials.pad,
                         "dropout": 0.0, "attention_dropout": 0.0})
    holder = torch.nn.Module()
    holder.body = Transformer(cfg)
    out = tmp_path_factory.mktemp("nodrop") / "model"
    save_checkpoint(out, holder, {"model": cfg.to_dict(), "objective": "mlm", "heads": []}, tok)
    return out


def test_finetune_tagging_on_two_ranks_equals_one_process(no_dropout_ckpt, tmp_path):
    """Token tagging: ranks hold different numbers of labeled subwords, so the exact global mean needs the
    label-count weighting of the loss; validation (run on every rank) and the best model agree too."""
    from conftest import WORDNET

    lines = (WORDNET / "tagging_train.conll").read_text(encoding="utf-8").split("\n\n")
    (tmp_path / "train.conll").write_text("\n\n".join(lines[:48]) + "\n", encoding="utf-8")
    (tmp_path / "val.conll").write_text("\n\n".join(lines[:16]) + "\n", encoding="utf-8")  # labels seen in train
    common = ["finetune", "--from", str(no_dropout_ckpt), "--task", "tag", "--train", str(tmp_path / "train.conll"),
              "--validation", str(tmp_path / "val.conll"), "--max-steps", "6", "--eval-every", "3", "--save-every",
              "3", "--log-every", "1", "--lr", "1e-3", "--no-progress", "--device", "cpu", "--precision", "fp32"]
    assert main([*common, "--out", str(tmp_path / "one"), "--batch-size", "8"]) == 0
    launch([*common, "--out", str(tmp_path / "two"), "--batch-size", "4"])
    one, two = records(tmp_path / "one", "train"), records(tmp_path / "two", "train")
    assert sorted(one) == sorted(two) == list(range(1, 7))
    for s in one:
        assert two[s]["loss"] == pytest.approx(one[s]["loss"], rel=LOSS_RTOL)
    v1, v2 = records(tmp_path / "one", "validation"), records(tmp_path / "two", "validation")
    assert sorted(v1) == sorted(v2) == [3, 6]
    for s in v1:
        assert v2[s]["loss"] == pytest.approx(v1[s]["loss"], rel=LOSS_RTOL) and v2[s]["f1"] == v1[s]["f1"]
    assert_same_weights(tmp_path / "two" / "model", tmp_path / "one" / "model")
