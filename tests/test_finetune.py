"""Fine-tuning: freezing, learning rates, decoding, early stopping, bad input and the four tasks end to end."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pretune.cli import build_parser, main
from pretune.errors import InputError
from pretune.finetune import stage as ft
from pretune.finetune.config import FinetuneSection, FinetuneTrainConfig, load_finetune_sections
from pretune.finetune.data import merge_outputs
from pretune.finetune.encode import encode_examples, task_collate
from pretune.finetune.model import TaskModel, apply_freeze, build_param_groups, layer_scales, load_task_model
from pretune.model.transformer import PRESETS, ModelConfig
from pretune.text.labeled import Example, LabelMap
from pretune.text.tokenizer import PretuneTokenizer

WORDNET = Path(__file__).resolve().parent.parent / "pretune" / "resources" / "wordnet"



def tiny_model(task: str = "classify", labels=("a", "b", "c"), **head) -> TaskModel:
    torch.manual_seed(0)
    cfg = ModelConfig(**{**PRESETS["tiny"], "vocab_size": 60, "num_layers": 3})
    return TaskModel(cfg, task, list(labels), head)


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# ---- freezing and learning rates -------------------------------------------------------------------------------------
def _one_step(model: TaskModel) -> dict[str, torch.Tensor]:
    """Copy the weights, take one AdamW step on a classification loss, return the copies."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    groups = build_param_groups(model, lr=1e-2, head_lr=1e-2, weight_decay=0.01)
    opt = torch.optim.AdamW(groups)
    ids = torch.randint(5, 60, (4, 9))
    out = model(ids, labels=torch.tensor([0, 1, 2, 0]))
    out["loss"].backward()
    opt.step()
    return before


@pytest.mark.parametrize(
    "spec, frozen_prefixes",
    [
        ("none", ()),
        ("embeddings", ("body.embeddings.",)),
        ("body", ("body.",)),
        ("all-but-last-1", ("body.embeddings.", "body.blocks.0.", "body.blocks.1.")),
        ("all-but-last-3", ("body.embeddings.",)),
    ],
)
def test_freeze_really_freezes(spec, frozen_prefixes):
    model = tiny_model()
    names = apply_freeze(model, spec)
    before = _one_step(model)
    expect_frozen = {n for n, _ in model.named_parameters() if n.startswith(frozen_prefixes)}
    assert set(names) == expect_frozen
    for n, p in model.named_parameters():
        if n in expect_frozen:
            assert not p.requires_grad, n
            assert torch.equal(p, before[n]), f"{n} changed although frozen ({spec})"
        else:
            assert p.requires_grad, n
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert any(n.startswith("head.") for n in moved)
    if spec in ("none", "embeddings", "all-but-last-1"):
        assert any(n.startswith("body.blocks.2.") for n in moved)  # the top block trains unless the body is frozen


def test_freeze_rejects_bad_specs():
    with pytest.raises(InputError, match="only 3 layers"):
        apply_freeze(tiny_model(), "all-but-last-4")
    with pytest.raises(InputError, match="freeze must be"):
        apply_freeze(tiny_model(), "top")


def test_layer_lr_decay_values():
    assert layer_scales(3, 0.5) == [0.125, 0.25, 0.5, 1.0]
    model = tiny_model()
    groups = build_param_groups(model, lr=1e-4, head_lr=1e-3, weight_decay=0.01, layer_lr_decay=0.5)
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    params = dict(model.named_parameters())
    expected = {
        "head.classifier.weight": (1e-3, 0.01),
        "head.pooler.dense.bias": (1e-3, 0.0),
        "body.blocks.2.ffn.fc1.weight": (1e-4, 0.01),
        "body.blocks.1.attn.qkv.weight": (5e-5, 0.01),
        "body.blocks.0.norm1.weight": (2.5e-5, 0.0),
        "body.embeddings.word.weight": (1.25e-5, 0.01),
        "body.embeddings.norm.bias": (1.25e-5, 0.0),
    }
    for name, (lr, wd) in expected.items():
        got_lr, got_wd = lr_of[id(params[name])]
        assert got_lr == pytest.approx(lr), name
        assert got_wd == wd, name
    assert len(lr_of) == len(params)  # every trainable parameter is in exactly one group
    apply_freeze(model, "embeddings")
    groups = build_param_groups(model, lr=1e-4, head_lr=1e-3, weight_decay=0.0)
    in_groups = {id(p) for g in groups for p in g["params"]}
    assert id(params["body.embeddings.word.weight"]) not in in_groups


# ---- decoding --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def word_tok(tmp_path_factory) -> PretuneTokenizer:
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "new", "york", "city", "is", "big", "the", "bank", "of",
             "america", "##s", "a", "b"]
    vocab = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    vocab.write_text("\n".join(words) + "\n", encoding="utf-8")
    return PretuneTokenizer.load(vocab, lowercase=True)


def test_span_decoding_keeps_nested_spans(word_tok):
    labels = LabelMap(["NULL", "CITY", "STATE"])
    ex = Example(line=1, tokens=["new", "york", "city", "is", "big"])
    feats, _ = encode_examples([ex], "span", word_tok, None, 32, max_span_width=3)
    model = TaskModel(ModelConfig(**{**PRESETS["tiny"], "vocab_size": 20}), "span", labels.names,
                         {"max_span_width": 3})
    batch = task_collate(feats, word_tok.specials.pad)
    cands = feats[0]["spans"]
    logits = torch.zeros(1, len(cands), 3)
    logits[..., 0] = 5.0  # NULL everywhere ...
    logits[0, cands.index((0, 3)), 1] = 9.0  # ... except "new york city" -> CITY
    logits[0, cands.index((0, 2)), 2] = 9.0  # and the nested "new york" -> STATE
    rows = model.decode(batch, {"logits": logits})
    merged = merge_outputs("span", labels.names, [ex], feats, rows)
    assert [(s, e, lab) for s, e, lab, _ in merged[0]] == [(0, 2, "STATE"), (0, 3, "CITY")]
    assert all(p > 0.9 for *_, p in merged[0])
    assert batch["span_width"][0, cands.index((0, 3))] == 3


def test_windows_are_merged_back_per_word(word_tok):
    labels = ["O", "B-LOC", "I-LOC"]
    words = ["the", "bank", "of", "america", "is", "big"] * 3
    ex = Example(line=1, tokens=words, tags=["O"] * len(words))
    feats, stats = encode_examples([ex], "tag", word_tok, LabelMap(labels), 8)
    assert stats.n_split == 1 and len(feats) >= 3
    model = tiny_model("tag", labels)
    batch = task_collate(feats, word_tok.specials.pad)
    assert batch["word_index"].shape[0] == len(feats)
    # emissions: B-LOC on every word whose id is "america", else O
    america = word_tok.token_to_id("america")
    logits = torch.zeros(*batch["input_ids"].shape, 3)
    logits[..., 0] = 1.0
    logits[batch["input_ids"] == america] = torch.tensor([0.0, 5.0, 0.0])
    rows = model.decode(batch, {"logits": logits})
    tags, probs = merge_outputs("tag", labels, [ex], feats, rows)[0]
    assert len(tags) == len(words) == len(probs)
    assert tags == ["B-LOC" if w == "america" else "O" for w in words]


def test_crf_decoding_never_yields_invalid_bio():
    labels = ["O", "B-X", "I-X"]
    model = tiny_model("tag", labels, crf=True)
    feats = [{"input_ids": [2, 7, 8, 9, 3], "token_type_ids": [0] * 5, "word_positions": [1, 2, 3],
              "labels": [-100, 0, 2, 0, -100], "word_offset": 0, "example": 0}]
    batch = task_collate(feats, 0)
    logits = torch.zeros(1, 5, 3)
    logits[0, 1:4] = torch.tensor([0.0, 0.0, 4.0])  # I-X wins everywhere without constraints
    (path, _), = model.decode(batch, {"logits": logits})
    assert path[0] != 2  # I-X cannot start
    for prev, cur in zip(path, path[1:], strict=False):
        assert not (cur == 2 and prev == 0)
    out = model(**batch)
    assert torch.isfinite(out["loss"]) and out["loss"] > 0


# ---- early stopping (through finetune, with scripted validation scores) ----------------------------------------------
def _classify_files(tmp_path: Path, n: int = 24) -> tuple[Path, Path]:
    rows = [("a fish that swims in the sea", "animal"), ("a tool for cutting wood", "artifact"),
            ("a person who teaches", "person")]
    lines = ["text,label"] + [f"{t} {i},{lab}" for i in range(n) for t, lab in [rows[i % 3]]]
    train = write(tmp_path / "train.csv", "\n".join(lines) + "\n")
    val = write(tmp_path / "val.csv", "\n".join(lines[:10]) + "\n")
    return train, val


def test_early_stopping_stops_and_keeps_the_best(tiny_ckpt, tmp_path, monkeypatch):
    train, val = _classify_files(tmp_path)
    scripted = iter([0.2, 0.5, 0.4, 0.3, 0.9, 0.9])
    snapshots: list[dict] = []

    def fake_evaluate(model, tok, data, batch_size=32):
        snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        value = next(scripted)
        return {"accuracy": value, "macro_f1": value, "micro_f1": value}, None, 1.0 - value

    monkeypatch.setattr(ft, "evaluate_data", fake_evaluate)
    sections = {
        "finetune": FinetuneSection(task="classify", checkpoint=str(tiny_ckpt), train=str(train),
                                       validation=str(val), out=str(tmp_path / "run"), epochs=6, patience=2,
                                       max_len=16, min_steps=0),
        "train": FinetuneTrainConfig(batch_size=8, lr=1e-3, progress=False),
    }
    result = ft.finetune(sections)
    assert result["stopped_early"] and len(snapshots) == 4  # 0.4 and 0.3 after the best 0.5: two bad epochs
    assert result["steps"] == 4 * 3  # 24 examples / batch 8 = 3 steps per epoch
    assert result["best"] == 0.5 and result["metric"] == "accuracy"
    assert result["validation"]["accuracy"] == 0.5 and result["validation"]["step"] == 6
    saved = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    assert all(torch.equal(saved[k], snapshots[1][k]) for k in saved)  # epoch 2's weights, not the last ones
    assert not all(torch.equal(saved[k], snapshots[3][k]) for k in saved)
    log = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["accuracy"] for r in log if r["split"] == "validation"] == [0.2, 0.5, 0.4, 0.3]
    conf = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert conf["task"] == "classify" and conf["labels"] == ["animal", "artifact", "person"]
    assert conf["max_len"] == 16 and conf["model"]["hidden_size"] == PRESETS["tiny"]["hidden_size"]


def test_finetune_loads_the_pretrained_body(tiny_ckpt, tmp_path):
    from pretune.training.checkpoint import load_checkpoint

    train, val = _classify_files(tmp_path)
    sec = FinetuneSection(task="classify", checkpoint=str(tiny_ckpt), train=str(train), validation=str(val),
                             out=str(tmp_path / "run"), epochs=1, max_len=16, freeze="body", min_steps=0)
    ft.finetune({"finetune": sec, "train": FinetuneTrainConfig(batch_size=8, progress=False)})
    pre = load_checkpoint(tiny_ckpt).state_dict
    model, _, _ = load_task_model(tmp_path / "run")
    body = {k: v for k, v in model.state_dict().items() if k.startswith("body.")}
    assert body and all(torch.equal(v, pre[k]) for k, v in body.items())  # frozen body == the pretrained one
    scratch = FinetuneSection(**{**sec.__dict__, "out": str(tmp_path / "scratch"), "from_scratch": True})
    ft.finetune({"finetune": scratch, "train": FinetuneTrainConfig(batch_size=8, progress=False)})
    model2, _, conf = load_task_model(tmp_path / "scratch")
    assert conf["from_scratch"] is True
    assert not torch.equal(model2.state_dict()["body.blocks.0.attn.qkv.weight"], pre["body.blocks.0.attn.qkv.weight"])


def test_head_warmup_holds_the_body_still_then_trains_it(tiny_ckpt, tmp_path):
    """24 examples at batch 8: 3 steps per epoch, 2 epochs. A warm-up of 6 steps (all of them) trains only the head;
    one of 3 steps trains the head alone first, then everything; mean pooling is recorded in the head options."""
    from pretune.training.checkpoint import load_checkpoint

    train, val = _classify_files(tmp_path)
    pre = load_checkpoint(tiny_ckpt).state_dict
    bodies = {}
    for hold in (6, 3):
        sec = FinetuneSection(task="classify", checkpoint=str(tiny_ckpt), train=str(train), validation=str(val),
                              out=str(tmp_path / f"run{hold}"), epochs=2, max_len=16, min_steps=0,
                              head_warmup_steps=hold, pooling="mean")
        ft.finetune({"finetune": sec, "train": FinetuneTrainConfig(batch_size=8, lr=1e-2, warmup_steps=0,
                                                                   progress=False)})
        model, _, conf = load_task_model(tmp_path / f"run{hold}" / "last")
        assert conf["head"] == {"pooling": "mean", "truncate": "head+tail"} and model.head.pooling == "mean"
        bodies[hold] = {k: v for k, v in model.state_dict().items() if k.startswith("body.")}
        log = [json.loads(x) for x in (tmp_path / f"run{hold}" / "metrics.jsonl").read_text().splitlines()]
        losses = [r["loss"] for r in log if r["split"] == "validation"]
        assert len(losses) == 2 and losses[1] < losses[0]  # the head learns while the body waits
    assert all(torch.equal(v, pre[k]) for k, v in bodies[6].items())  # held for every step
    assert not torch.equal(bodies[3]["body.blocks.0.attn.qkv.weight"], pre["body.blocks.0.attn.qkv.weight"])


def test_resume_gives_the_uninterrupted_weights(tiny_ckpt, tmp_path):
    train, val = _classify_files(tmp_path)

    def sections(out: str, **train_kw):
        sec = FinetuneSection(task="classify", checkpoint=str(tiny_ckpt), train=str(train), validation=str(val),
                                 out=str(tmp_path / out), epochs=3, max_len=16, patience=0, min_steps=0)
        return {"finetune": sec, "train": FinetuneTrainConfig(batch_size=8, lr=1e-3, progress=False, **train_kw)}

    ft.finetune(sections("full"))
    first = ft.finetune(sections("cut", stop_after=4))
    assert first["steps"] == 4
    second = ft.finetune(sections("cut", stop_after=4), resume=True)  # stop_after may change on resume: it is 4 < 9
    assert second["steps"] == 4  # nothing left to do before step 4
    final = ft.finetune(sections("cut"), resume=True)
    assert final["steps"] == 9
    a = load_file(str(tmp_path / "full" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "last" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- config ----------------------------------------------------------------------------------------------------------
def test_config_file_flags_and_finetuning_defaults(tmp_path):
    cfg = write(tmp_path / "ft.toml", '[finetune]\ntask = "tag"\ncheckpoint = "ck"\ntrain = "t.conll"\n'
                'validation = "v.conll"\nout = "o"\ncrf = true\n[train]\nbatch_size = 4\n')
    args = build_parser().parse_args(["finetune", "--config", str(cfg), "--from", "other", "--epochs", "3"])
    sections = load_finetune_sections(args.config, args)
    sec, train = sections["finetune"], sections["train"]
    assert (sec.task, sec.checkpoint, sec.crf, sec.epochs) == ("tag", "other", True, 3)
    assert train.batch_size == 4 and train.lr == 2e-5  # fine-tuning default for the body
    resolved = train.resolve(steps_per_epoch=7, epochs=3)
    assert (resolved.max_steps, resolved.eval_every, resolved.save_every) == (21, 7, 7)
    capped = FinetuneTrainConfig(max_steps=10).resolve(7, 3)
    assert capped.max_steps == 10
    args = build_parser().parse_args(["finetune", "--checkpoint", "x", "--task", "span", "--crf", "--train", "t",
                                      "--validation", "v", "--out", "o"])
    with pytest.raises(InputError, match="crf applies to task tag only"):
        load_finetune_sections(None, args)


# ---- bad input through the CLI ---------------------------------------------------------------------------------------
def _bad_cases(tmp_path: Path, ckpt: Path) -> list[tuple[str, list, str]]:
    """(name, extra args, expected message part); every case must fail before anything is written."""
    good_csv = write(tmp_path / "good.csv", "text,label\na fish,animal\na saw,artifact\n")
    good_conll = write(tmp_path / "good.conll", "a B-X\nfish I-X\n\nthe O\nsaw B-Y\n")
    good_spans = write(tmp_path / "good.jsonl", '{"tokens": ["a", "fish"], "spans": [{"start": 0, "end": 2, '
                       '"label": "X"}]}\n')
    no_tok = tmp_path / "no_tok"
    no_tok.mkdir()
    for f in ("config.json", "model.safetensors"):
        (no_tok / f).write_bytes((ckpt / f).read_bytes())
    cases = [
        ("empty", ["--task", "classify", "--train", write(tmp_path / "empty.csv", ""), "--validation", good_csv],
         "empty.csv: file is empty"),
        ("ragged conll", ["--task", "tag", "--train", write(tmp_path / "r.conll", "a O\nfish B-X extra\n"),
                          "--validation", good_conll], "r.conll:2: expected 2 columns"),
        ("missing label column", ["--task", "classify", "--train", write(tmp_path / "m.csv", "text\nhello\n"),
                                  "--validation", good_csv], "m.csv:1: missing column 'label'"),
        ("span out of range", ["--task", "span", "--train", good_spans, "--validation", write(
            tmp_path / "o.jsonl", '{"tokens": ["a"], "spans": [{"start": 0, "end": 3, "label": "X"}]}\n')],
         "o.jsonl:1: span (0, 3) out of range"),
        ("span end <= start", ["--task", "span", "--train", write(
            tmp_path / "e.jsonl", '\n{"tokens": ["a", "b"], "spans": [{"start": 1, "end": 1, "label": "X"}]}\n'),
            "--validation", good_spans], "e.jsonl:2: span (1, 1) out of range"),
        ("non-utf8", ["--task", "classify", "--train", write(tmp_path / "b.csv", b"text,label\ncaf\xe9,x\n"),
                      "--validation", good_csv], "b.csv:2: expected UTF-8"),
        ("duplicate header", ["--task", "classify", "--train", write(tmp_path / "d.csv", "text,label,text\na,b,c\n"),
                              "--validation", good_csv], "d.csv:1: duplicate column 'text'"),
        ("unseen validation label", ["--task", "classify", "--train", good_csv, "--validation", write(
            tmp_path / "u.csv", "text,label\na,animal\nb,plant\n")], "u.csv:3: label 'plant' never appears"),
        ("checkpoint without tokenizer", ["--task", "classify", "--train", good_csv, "--validation", good_csv,
                                          "--from", no_tok], "has no tokenizer.json"),
        ("max_len beyond positions", ["--task", "classify", "--train", good_csv, "--validation", good_csv,
                                      "--max-len", "4096"], "beyond the checkpoint's 128 positions"),
        ("out holds the checkpoint", ["--task", "classify", "--train", good_csv, "--validation", good_csv,
                                      "--from", tmp_path / "out" / "ckpt"], "holds the checkpoint being fine-tuned"),
    ]
    return cases


def test_bad_input_fails_cleanly_and_leaves_the_out_dir(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("an earlier run")
    (out / "ckpt").mkdir()
    for f in tiny_ckpt.iterdir():
        (out / "ckpt" / f.name).write_bytes(f.read_bytes())
    kept = sorted(p.name for p in out.iterdir())
    for name, extra, expected in _bad_cases(tmp_path, tiny_ckpt):
        args = ["finetune", "--from", tiny_ckpt, "--out", out, "--overwrite", "--epochs", "1", "--no-progress",
                *extra]
        code, stdout, err = run_cli(args, capsys)
        assert code == 2, name
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("pretune: error: "), (name, err)
        assert expected in lines[0], (name, lines[0])
        assert sorted(p.name for p in out.iterdir()) == kept, name  # --overwrite did not wipe it
    code, _, err = run_cli(["finetune", "--from", tiny_ckpt, "--out", out, "--task", "classify", "--train",
                            tmp_path / "good.csv", "--validation", tmp_path / "good.csv"], capsys)
    assert code == 2 and "already holds files" in err


def test_long_texts_are_truncated_with_a_counted_warning(tiny_ckpt, tmp_path, capsys):
    long = " ".join(["word"] * 40)
    train = write(tmp_path / "t.csv", f"text,label\n{long},x\nshort,y\n{long} two,y\nok,x\n")
    code, stdout, err = run_cli(["finetune", "--from", tiny_ckpt, "--task", "classify", "--train", train,
                                 "--validation", train, "--out", tmp_path / "run", "--max-len", "16", "--epochs", "1",
                                 "--batch-size", "2", "--no-progress"], capsys)
    assert code == 0, err
    assert f"{train}: 2 of 4 texts are longer than max_len 16 subwords and were truncated" in err
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()


def test_head_tail_truncation_is_kept_with_the_model_and_used_by_predict(tiny_ckpt, tmp_path, capsys, monkeypatch):
    """--truncate head+tail keeps a long text's first quarter and last three quarters, and the fine-tuned model's
    config carries it, so `pretune predict` reads a long text as training did."""
    from pretune.finetune.tasks import get_task
    from pretune.use import predict as use_predict

    long = " ".join(["word"] * 30 + ["fish"] * 10)
    train = write(tmp_path / "t.csv", f"text,label\n{long},x\nshort,y\n{long} two,y\nok,x\n")
    code, _, err = run_cli(["finetune", "--from", tiny_ckpt, "--task", "classify", "--train", train,
                            "--validation", train, "--out", tmp_path / "run", "--max-len", "16", "--epochs", "1",
                            "--batch-size", "2", "--no-progress", "--truncate", "head+tail"], capsys)
    assert code == 0, err
    model, tok, conf = load_task_model(tmp_path / "run" / "model")
    assert conf["head"]["truncate"] == "head+tail"
    (f,), _ = get_task("classify").encode([Example(1, text=long)], tok, None, conf["max_len"], conf["head"])
    ids, fish = tok.encode(long).ids, tok.encode("fish").ids
    assert f["input_ids"][1:-1] == ids[:3] + ids[-11:]  # 14 pieces: 3 from the head, 11 from the tail
    assert f["input_ids"][-1 - len(fish):-1] == fish and len(ids) > 14
    (g,), _ = get_task("classify").encode([Example(1, text=long)], tok, None, conf["max_len"], {})
    assert g["input_ids"][1:-1] == ids[:14] and fish[0] not in g["input_ids"]
    seen = []
    real = use_predict.encode_split
    monkeypatch.setattr(use_predict, "encode_split", lambda *a: seen.append(a[-1]) or real(*a))
    assert len(use_predict.predict(tmp_path / "run" / "model", [long, "short"])) == 2
    assert seen[0]["truncate"] == "head+tail"
    code, _, err = run_cli(["finetune", "--from", tiny_ckpt, "--task", "tag", "--train", train, "--validation", train,
                            "--out", tmp_path / "tag", "--truncate", "head+tail"], capsys)
    assert code == 2 and "truncate applies to task classify only" in err
    code, _, err = run_cli(["finetune", "--from", tiny_ckpt, "--task", "classify", "--train", train, "--validation",
                            train, "--out", tmp_path / "mid", "--truncate", "middle"], capsys)
    assert code == 2 and "truncate must be auto, head or head+tail, got 'middle'" in err


def test_evaluate_cli_writes_json_and_never_overwrites(tiny_ckpt, tmp_path, capsys):
    train, val = _classify_files(tmp_path)
    sec = FinetuneSection(task="classify", checkpoint=str(tiny_ckpt), train=str(train), validation=str(val),
                             out=str(tmp_path / "run"), epochs=1, max_len=16)
    ft.finetune({"finetune": sec, "train": FinetuneTrainConfig(batch_size=8, progress=False)})
    capsys.readouterr()
    report_path = tmp_path / "report.json"
    code, stdout, err = run_cli(["evaluate", "--from", tmp_path / "run", "--data", val, "--out", report_path], capsys)
    assert code == 0, err
    report = json.loads(report_path.read_text())
    assert report["support"] == 9 and len(report["predictions"]) == 9
    assert {"accuracy", "macro_f1", "per_class", "confusion"} <= set(report)
    assert "accuracy" in stdout and "true \\ pred" in stdout
    code, _, err = run_cli(["evaluate", "--from", tmp_path / "run", "--data", val, "--out", report_path], capsys)
    assert code == 2 and "already exists" in err
    code, _, err = run_cli(["evaluate", "--from", tiny_ckpt, "--data", val], capsys)
    assert code == 2 and "not a fine-tuned checkpoint" in err


# ---- the four tasks end to end on the bundled WordNet data -----------------------------------------------------------
def _known_label_subset(src: Path, dst: Path, task: str, allowed: set[str], limit: int) -> Path:
    """The first `limit` items of a bundled file whose labels all occur in `allowed` (the training labels)."""
    if task in ("classify", "pair"):
        with open(src, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
        kept = [r for r in rows[1:] if r[-1] in allowed][:limit]
        with open(dst, "w", encoding="utf-8", newline="") as f:
            csv.writer(f).writerows([rows[0], *kept])
    elif task == "span":
        recs = [json.loads(x) for x in src.read_text(encoding="utf-8").splitlines()]
        kept = [r for r in recs if all(s["label"] in allowed for s in r["spans"])][:limit]
        dst.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    else:
        sents = src.read_text(encoding="utf-8").strip("\n").split("\n\n")
        kept = [s for s in sents if all(ln.split()[-1] in allowed for ln in s.splitlines())][:limit]
        dst.write_text("\n\n".join(kept) + "\n", encoding="utf-8")
    return dst


def _labels_of(src: Path, task: str) -> list[str]:
    if task in ("classify", "pair"):
        with open(src, encoding="utf-8", newline="") as f:
            return [r[-1] for r in list(csv.reader(f))[1:]]
    if task == "span":
        return [s["label"] for x in src.read_text().splitlines() for s in json.loads(x)["spans"]]
    return [ln.split()[-1] for ln in src.read_text().splitlines() if ln.strip()]


TASK_FILES = {
    "classify": ("supersense_{}.csv", 2000, 200, 500),
    "pair": ("pairs_{}.csv", 1000, 150, 300),
    "tag": ("tagging_{}.conll", 2000, 250, 500),
    "span": ("spans_{}.jsonl", 2000, 250, 500),
}
TASK_ARGS = {
    "classify": ["--epochs", "5", "--max-len", "64"],
    # a pair needs cross-segment matching, which a barely pretrained body learns slowly: gentler body lr, more epochs
    "pair": ["--epochs", "15", "--patience", "15", "--max-len", "96"],
    "tag": ["--epochs", "5", "--max-len", "48"],
    "span": ["--epochs", "8", "--max-len", "48", "--max-span-width", "4"],
}


def _end_to_end(task: str, pretrained: Path, tmp_path: Path, capsys, *extra: str) -> tuple[dict, float]:
    pattern, n_train, n_val, n_test = TASK_FILES[task]
    tmp_path.mkdir(parents=True, exist_ok=True)
    train = _known_label_subset(WORDNET / pattern.format("train"), tmp_path / pattern.format("train"), task,
                                set(_labels_of(WORDNET / pattern.format("train"), task)), n_train)
    allowed = set(_labels_of(train, task)) | {"O"}
    val = _known_label_subset(WORDNET / pattern.format("validation"), tmp_path / pattern.format("validation"), task,
                              allowed, n_val)
    test = _known_label_subset(WORDNET / pattern.format("test"), tmp_path / pattern.format("test"), task, allowed,
                               n_test)
    out = tmp_path / "run"
    code, stdout, err = run_cli(["finetune", "--task", task, "--from", pretrained, "--train", train, "--validation",
                                 val, "--test", test, "--out", out, "--lr", "1e-3", "--head-lr", "3e-3",
                                 "--batch-size", "16", "--no-progress", *TASK_ARGS[task], *extra], capsys)
    assert code == 0, err
    report = json.loads((out / "test_report.json").read_text())
    if task in ("classify", "pair"):
        counts = Counter(_labels_of(test, task))
        baseline = max(counts.values()) / sum(counts.values())  # always the most frequent test label
    else:
        baseline = 0.0  # the majority label (O / NULL everywhere) finds no entity: F1 0
    return report, baseline


@pytest.mark.parametrize("task", ["classify", "tag"])
def test_task_learns_and_beats_the_majority_baseline(task, pretrained_ckpt, tmp_path, capsys):
    report, baseline = _end_to_end(task, pretrained_ckpt, tmp_path, capsys)
    metric = "accuracy" if task in ("classify", "pair") else "f1"
    print(f"{task}: test {metric} {report[metric]:.3f} vs majority baseline {baseline:.3f}")
    assert report[metric] > baseline + 0.02


@pytest.mark.slow
@pytest.mark.parametrize("task", ["pair", "span"])
def test_task_learns_and_beats_the_majority_baseline_slow(task, pretrained_ckpt, tmp_path, capsys):
    """pair: relatedness of two glosses is hard for the 100-step `tiny` fixture, and one seed can stay at the
    majority answer (seen: test accuracy 0.513, 0.543, 0.587 for seeds 2, 0, 1 against a majority of 0.513), so the
    mean of three seeds must beat it."""
    metric = "accuracy" if task in ("classify", "pair") else "f1"
    scores = []
    for seed in (0, 1, 2) if task == "pair" else (0,):
        report, baseline = _end_to_end(task, pretrained_ckpt, tmp_path / f"seed{seed}", capsys, "--seed", str(seed))
        scores.append(report[metric])
    print(f"{task}: test {metric} {scores} vs majority baseline {baseline:.3f}")
    assert sum(scores) / len(scores) > baseline + 0.02
