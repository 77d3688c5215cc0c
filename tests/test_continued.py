"""Continued pretraining: --init-from with any objective the model supports, and vocabulary extension."""

from __future__ import annotations

import collections
import json
import re

import pytest
import torch
from conftest import wordnet_shards

from pretune.cli import main
from pretune.errors import InputError
from pretune.model.transformer import ModelConfig
from pretune.pretrain.objectives import PretrainModel, Specials, build_objective
from pretune.pretrain.vocab import extend_vocabulary, read_word_list
from pretune.text.tokenizer import PretuneTokenizer
from pretune.training.checkpoint import load_checkpoint

COMMON = ["--model-size", "tiny", "--max-len", "64", "--batch-size", "16", "--no-progress", "--eval-batches", "8"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Shards of 2000 bundled lines and an mlm checkpoint trained on them for 150 steps."""
    root = tmp_path_factory.mktemp("continued")
    tok, lines, corpus = wordnet_shards(root, 2000, 1200)
    code = main(["pretrain", "--shards", str(root / "shards"), "--out", str(root / "mlm"), "--objective", "mlm",
                 "--max-steps", "150", "--lr", "3e-3", "--warmup-steps", "10", "--eval-every", "150", *COMMON])
    assert code == 0
    return {"root": root, "corpus": corpus, "shards": root / "shards", "ckpt": root / "mlm" / "model",
            "tok": PretuneTokenizer.load(root / "shards" / "tokenizer.json"), "lines": lines}


def step_one(shards, out, objective: str, *extra: str) -> dict:
    """Validation after one step at a negligible learning rate: the loss of the starting weights."""
    code = main(["pretrain", "--shards", str(shards), "--out", str(out), "--objective", objective, "--max-steps", "1",
                 "--lr", "1e-9", "--warmup-steps", "0", "--eval-every", "1", *COMMON, *extra])
    assert code == 0
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return next(r for r in records if r["split"] == "validation")


@pytest.mark.parametrize("objective", ["mlm", "wwm", "span", "mlm+nsp"])
def test_continuing_starts_far_below_a_fresh_model(trained, tmp_path, objective):
    fresh = step_one(trained["shards"], tmp_path / "fresh", objective)
    cont = step_one(trained["shards"], tmp_path / "cont", objective, "--init-from", str(trained["ckpt"]))
    print(f"{objective}: step-1 mlm_loss fresh {fresh['mlm_loss']:.3f}, from checkpoint {cont['mlm_loss']:.3f}")
    assert cont["mlm_loss"] < fresh["mlm_loss"] - 0.7, (cont, fresh)
    heads = json.loads((tmp_path / "cont" / "model" / "config.json").read_text())["heads"]
    assert "mlm" in heads and (objective not in ("span", "mlm+nsp") or len(heads) == 2)


def test_init_from_refuses_what_the_model_cannot_do(trained, tmp_path, capsys):
    capsys.readouterr()
    code = main(["pretrain", "--shards", str(trained["shards"]), "--out", str(tmp_path / "x"), "--objective", "clm",
                 "--init-from", str(trained["ckpt"]), "--max-steps", "1", *COMMON])
    assert code == 2
    assert "causal" in capsys.readouterr().err
    code = main(["pretrain", "--shards", str(trained["shards"]), "--out", str(tmp_path / "y"),
                 "--add-tokens", str(tmp_path / "w.txt"), "--max-steps", "1", *COMMON])
    assert code == 2
    assert "init_from" in capsys.readouterr().err


def test_head_warmup_trains_a_new_head_on_a_body_held_still(trained, tmp_path, capsys):
    """span adds an SBO head the mlm checkpoint lacks: with 4 warm-up steps of 4, the body stays the checkpoint's
    while the heads learn; with 2 of 4 the body moves too. Without init_from the option is refused."""
    pre = load_checkpoint(trained["ckpt"]).state_dict
    states = {}
    for hold in (4, 2):
        out = tmp_path / f"w{hold}"
        code = main(["pretrain", "--shards", str(trained["shards"]), "--out", str(out), "--objective", "span",
                     "--init-from", str(trained["ckpt"]), "--head-warmup-steps", str(hold), "--max-steps", "4",
                     "--lr", "3e-3", "--warmup-steps", "0", "--eval-every", "4", *COMMON])
        assert code == 0
        states[hold] = load_checkpoint(out / "model").state_dict
    body = [k for k in pre if k.startswith("body.")]
    assert body and all(torch.equal(states[4][k], pre[k]) for k in body)
    assert not torch.equal(states[4]["heads.mlm.bias"], pre["heads.mlm.bias"])  # the heads did train
    assert not torch.equal(states[2]["body.blocks.0.attn.qkv.weight"], pre["body.blocks.0.attn.qkv.weight"])
    capsys.readouterr()
    code = main(["pretrain", "--shards", str(trained["shards"]), "--out", str(tmp_path / "z"),
                 "--head-warmup-steps", "2", "--max-steps", "1", *COMMON])
    assert code == 2 and "init_from" in capsys.readouterr().err


def checkpoint_folder(path, objective: str, heads: list[str], causal: bool = False):
    """A folder whose config.json says what auto_objective reads (the architecture's causal flag, objective, heads)."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model": {"causal": causal}, "objective": objective,
                                                  "heads": heads}))
    return str(path)


@pytest.mark.parametrize("objective,heads,causal,expected", [
    ("mlm", ["mlm"], False, "mlm"),
    ("wwm", ["mlm"], False, "wwm"),
    ("span", ["mlm", "sbo"], False, "span"),
    ("mlm+nsp", ["mlm", "nsp"], False, "mlm"),  # continued without NSP's document pairs
    ("rtd", ["generator", "rtd"], False, "rtd"),
    ("clm", ["lm"], True, "clm"),
    ("simcse", [], False, "simcse"),
    ("mlm", [], False, "simcse"),  # a body imported without its MLM head (a sentence-embedding model)
])
def test_auto_objective_continues_what_the_checkpoint_has_heads_for(tmp_path, objective, heads, causal, expected):
    from pretune.pretrain.stage import PretrainSection, auto_objective

    folder = checkpoint_folder(tmp_path / "ck", objective, heads, causal)
    assert auto_objective(folder) == expected
    assert auto_objective(None) == "mlm"
    sec = PretrainSection(shards="s", out="o", init_from=folder).validate()  # objective = "auto" by default
    assert sec.objective == expected


def test_auto_objective_through_the_cli_trains_the_checkpoints_objective(trained, tmp_path, capsys):
    """No --objective: an mlm checkpoint is continued with mlm (its head kept), and a missing checkpoint is named."""
    assert main(["pretrain", "--shards", str(trained["shards"]), "--out", str(tmp_path / "a"), "--init-from",
                 str(trained["ckpt"]), "--max-steps", "1", "--eval-every", "1", *COMMON]) == 0
    saved = json.loads((tmp_path / "a" / "model" / "config.json").read_text())
    assert saved["objective"] == "mlm" and saved["heads"] == ["mlm"]
    capsys.readouterr()
    assert main(["pretrain", "--shards", str(trained["shards"]), "--out", str(tmp_path / "b"),
                 "--init-from", str(tmp_path / "missing"), "--max-steps", "1", *COMMON]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def domain_words(trained, n: int = 6) -> list[str]:
    """Frequent long corpus words that the tokenizer splits into several pieces."""
    counts = collections.Counter(w for line in trained["lines"] for w in re.findall(r"[a-z]{7,}", line.lower()))
    tok = trained["tok"]
    split = [w for w, _ in counts.most_common() if len(tok.encode(w).ids) >= 2]
    assert len(split) >= n
    return split[:n]


def test_extend_vocabulary_keeps_old_rows_and_averages_pieces(trained):
    ckpt = load_checkpoint(trained["ckpt"])
    tok = ckpt.tokenizer()
    cfg = ModelConfig.from_dict(ckpt.config["model"])
    obj = build_objective("span", Specials.from_tokenizer(tok))
    model = PretrainModel(cfg, obj.heads(cfg))
    model.load_state_dict({**model.state_dict(), **ckpt.state_dict})
    model.eval()
    old_emb = model.embedding_weight.detach().clone()
    old_bias = {name: model.heads[name].bias.detach().clone() for name in ("mlm", "sbo")}
    words = domain_words(trained)
    pieces = {w: tok.encode(w).ids for w in words}
    text_ids = torch.tensor([[tok.specials.cls, *tok.encode("a small piece of land").ids, tok.specials.sep]])
    with torch.no_grad():
        before = model.heads["mlm"](model.body(text_ids).last_hidden_state, model.embedding_weight)

    new_cfg = extend_vocabulary(model, tok, [*words, words[0].upper()])  # the upper-case one normalizes to a dupe
    assert new_cfg.vocab_size == cfg.vocab_size + len(words) == tok.vocab_size
    assert model.config.vocab_size == model.body.config.vocab_size == new_cfg.vocab_size
    emb = model.embedding_weight.detach()
    assert torch.equal(emb[: cfg.vocab_size], old_emb)
    for w in words:
        (new_id,) = tok.encode(w).ids  # one token now
        assert new_id >= cfg.vocab_size
        assert torch.allclose(emb[new_id], old_emb[pieces[w]].mean(0))
        for name in ("mlm", "sbo"):
            bias = model.heads[name].bias.detach()
            assert torch.equal(bias[: cfg.vocab_size], old_bias[name])
            assert torch.allclose(bias[new_id], old_bias[name][pieces[w]].mean())
    with torch.no_grad():
        after = model.heads["mlm"](model.body(text_ids).last_hidden_state, model.embedding_weight)
    assert torch.allclose(after[..., : cfg.vocab_size], before, atol=1e-5)  # old text: same predictions
    assert extend_vocabulary(model, tok, words) == new_cfg  # already there: nothing changes


def test_read_word_list(tmp_path):
    f = tmp_path / "words.txt"
    f.write_text("# domain words\nbiopsy\n\nbiopsy\n  angina  \n", encoding="utf-8")
    assert read_word_list(f) == ["biopsy", "angina"]
    f.write_text("biopsy\nheart attack\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"words.txt:2: 'heart attack' holds whitespace"):
        read_word_list(f)
    f.write_text("# nothing\n\n", encoding="utf-8")
    with pytest.raises(InputError, match="empty"):
        read_word_list(f)
    with pytest.raises(InputError, match="not found"):
        read_word_list(tmp_path / "missing.txt")
    f.write_bytes(b"caf\xe9\n")
    with pytest.raises(InputError, match="UTF-8"):
        read_word_list(f)


def test_add_tokens_through_the_cli(trained, tmp_path, capsys):
    words = domain_words(trained)
    word_file = tmp_path / "words.txt"
    word_file.write_text("\n".join(words) + "\n", encoding="utf-8")
    # shards made with the checkpoint's own tokenizer do not hold the new tokens: refused, with the way out
    capsys.readouterr()
    code = main(["pretrain", "--shards", str(trained["shards"]), "--out", str(tmp_path / "bad"), "--init-from",
                 str(trained["ckpt"]), "--add-tokens", str(word_file), "--max-steps", "1", *COMMON])
    assert code == 2
    assert "pretune vocab extend" in capsys.readouterr().err

    ext = tmp_path / "tok_ext.json"
    assert main(["vocab", "extend", str(trained["root"] / "mlm"), str(word_file), "--out", str(ext)]) == 0
    assert main(["vocab", "extend", str(trained["ckpt"]), str(word_file), "--out", str(ext)]) == 2  # no overwrite
    assert main(["prepare", str(trained["corpus"]), "--tokenizer", str(ext), "--out", str(tmp_path / "shards"),
                 "--validation-fraction", "0.1"]) == 0
    fresh = step_one(trained["shards"], tmp_path / "fresh", "mlm")
    cont = step_one(tmp_path / "shards", tmp_path / "cont", "mlm", "--init-from", str(trained["ckpt"]),
                    "--add-tokens", str(word_file))
    assert cont["mlm_loss"] < fresh["mlm_loss"] - 0.5, (cont, fresh)
    out = load_checkpoint(tmp_path / "cont")
    old_size = trained["tok"].vocab_size
    assert out.config["model"]["vocab_size"] == old_size + len(words)
    assert out.state_dict["body.embeddings.word.weight"].shape[0] == old_size + len(words)
    assert out.state_dict["heads.mlm.bias"].shape[0] == old_size + len(words)
    assert len(out.tokenizer().encode(words[0]).ids) == 1
