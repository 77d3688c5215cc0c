"""predict, embed and explain: batching keeps order, shapes, file formats, attribution properties, CLI errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from pretune.cli import main
from pretune.errors import InputError
from pretune.finetune import stage as ft
from pretune.finetune.config import FinetuneSection, FinetuneTrainConfig
from pretune.finetune.model import load_task_model
from pretune.use.embed import embed, load_body
from pretune.use.explain import PAIR_SEPARATOR, explain, explain_ansi, explain_full, explain_html
from pretune.use.predict import predict

TEXTS = ["a fish that swims in the sea", "a tool", "a person who teaches children to read and write well",
         "a large tree with hard wood", "the sea"]



def _finetune(task: str, ckpt: Path, root: Path, train_text: str, suffix: str, max_len: int = 32,
              epochs: int = 2, pooling: str = "auto", eval_every: int | None = None) -> Path:
    """Fine-tune on `train_text` (validation = the training file; no early stopping: the tests need the model to
    have fit its few examples, whatever the first epochs' plateau)."""
    train = root / f"{task}_train{suffix}"
    train.write_text(train_text, encoding="utf-8")
    sec = FinetuneSection(task=task, checkpoint=str(ckpt), train=str(train), validation=str(train),
                             out=str(root / task), epochs=epochs, max_len=max_len, max_span_width=3,
                             patience=0, pooling=pooling)
    ft.finetune({"finetune": sec, "train": FinetuneTrainConfig(batch_size=4, lr=3e-3, progress=False,
                                                              eval_every=eval_every)})
    return root / task / "model"


@pytest.fixture(scope="module")
def models(tiny_ckpt, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("task_models")
    classify = "text,label\n" + "".join(f"{t},{'animal' if 'fish' in t or 'sea' in t else 'other'}\n"
                                        for t in TEXTS * 2)
    pair = "text_a,text_b,label\n" + "".join(f"{a},{b},{'same' if a == b else 'diff'}\n"
                                             for a in TEXTS[:3] for b in TEXTS[:3])
    tag = "".join("a O\nfish B-ANI\nswims O\n\nthe O\nsea B-LOC\n\n" for _ in range(4))
    span = "".join(json.dumps({"tokens": ["a", "big", "fish"], "spans": [{"start": 1, "end": 3, "label": "ANI"},
                                                                        {"start": 2, "end": 3, "label": "ANI"}]})
                   + "\n" for _ in range(6))
    return {
        # learns fish/sea: animal. The [CLS] head: the explanation tests need texts that move the probability far
        # from the all-[PAD] baseline, which the 100-step fixture's mean-pooled head does not do for every text;
        # evaluated every epoch of 3 steps (the default, 8 steps, keeps a checkpoint saturated on "other")
        "classify": _finetune("classify", tiny_ckpt, root, classify, ".csv", epochs=15, pooling="cls", eval_every=3),
        "pair": _finetune("pair", tiny_ckpt, root, pair, ".csv"),
        "tag": _finetune("tag", tiny_ckpt, root, tag, ".conll", max_len=8),  # long sentences get split
        "span": _finetune("span", tiny_ckpt, root, span, ".jsonl"),
    }


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# ---- predict ---------------------------------------------------------------------------------------------------------
def test_predict_classify_probabilities_and_order(models):
    loaded = load_task_model(models["classify"])
    batched = predict(loaded, TEXTS, batch_size=2)  # length-grouped batches, padded
    one_by_one = [predict(loaded, [t], batch_size=1)[0] for t in TEXTS]
    assert [p["label"] for p in batched] == [p["label"] for p in one_by_one]
    for a, b in zip(batched, one_by_one, strict=True):
        assert set(a["probs"]) == {"animal", "other"}
        assert sum(a["probs"].values()) == pytest.approx(1.0, abs=1e-5)
        assert a["label"] == max(a["probs"], key=a["probs"].get)
        for k in a["probs"]:
            assert a["probs"][k] == pytest.approx(b["probs"][k], abs=1e-4)  # padding does not change the result


def test_predict_pair_and_bad_pair_input(models):
    preds = predict(models["pair"], [("a tool", "a tool"), {"text_a": "the sea", "text_b": "a tool"}])
    assert len(preds) == 2 and all(set(p["probs"]) == {"diff", "same"} for p in preds)
    with pytest.raises(InputError, match="expected two texts"):
        predict(models["pair"], ["only one text"])


def test_predict_tag_merges_windows_per_word(models):
    words = "a fish swims and the sea is a sea and a fish".split()
    (pred,) = predict(models["tag"], [words])
    assert len(pred["tags"]) == len(words) == len(pred["probs"])  # max_len 8: the sentence spans several windows
    assert all(t in ("O", "B-ANI", "I-ANI", "B-LOC", "I-LOC") for t in pred["tags"])
    assert all(0.0 < p <= 1.0 for p in pred["probs"])
    (from_text,) = predict(models["tag"], ["a fish swims, and the sea."])
    assert len(from_text["tags"]) == 8  # split_words: a fish swims , and the sea .


def test_predict_span_format(models):
    (pred,) = predict(models["span"], [{"tokens": ["a", "big", "fish", "and", "a", "fish"]}])
    for s in pred["spans"]:
        assert 0 <= s["start"] < s["end"] <= 6 and s["end"] - s["start"] <= 3
        assert s["label"] == "ANI" and 0 < s["prob"] <= 1


def test_predict_cli_jsonl_roundtrip_and_guards(models, tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(TEXTS)), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    code, stdout, err = run_cli(["predict", "--from", models["classify"], "--input", src, "--output", out], capsys)
    assert code == 0, err
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(len(TEXTS)))  # the input records, in order
    assert [r["text"] for r in rows] == TEXTS
    assert all(r["prediction"]["label"] in ("animal", "other") for r in rows)
    code, _, err = run_cli(["predict", "--from", models["classify"], "--input", src, "--output", out], capsys)
    assert code == 2 and "already exists" in err
    code, _, err = run_cli(["predict", "--from", models["classify"], "--input", src, "--output", src, "--overwrite"],
                           capsys)
    assert code == 2 and "overwrite the input" in err
    txt = tmp_path / "words.txt"
    txt.write_text("a fish swims\n\nthe sea\n", encoding="utf-8")
    code, _, err = run_cli(["predict", "--from", models["tag"], "--input", txt, "--output", tmp_path / "t.jsonl"],
                           capsys)
    assert code == 0, err
    rows = [json.loads(x) for x in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert [r["tokens"] for r in rows] == [["a", "fish", "swims"], ["the", "sea"]]
    assert [len(r["prediction"]["tags"]) for r in rows] == [3, 2]
    code, _, err = run_cli(["predict", "--from", models["tag"].parent.parent.parent / "nowhere", "--input", txt,
                            "--output", tmp_path / "x.jsonl"], capsys)
    assert code == 2 and "checkpoint not found" in err


# ---- embed -----------------------------------------------------------------------------------------------------------
def test_embed_pooling_matches_the_body(tiny_ckpt):
    body, tok, conf = loaded = load_body(tiny_ckpt)  # a plain pretrained (MLM) checkpoint
    cls = embed(loaded, TEXTS, pool="cls", batch_size=2)
    mean = embed(loaded, TEXTS, pool="mean", batch_size=2)
    tokens4 = embed(loaded, TEXTS, pool="none", layers="last4", batch_size=2)
    H = body.config.hidden_size
    assert cls.shape == mean.shape == (len(TEXTS), H) and cls.dtype == np.float32
    for i, text in enumerate(TEXTS):  # one at a time, no padding: same numbers
        ids = torch.tensor([[tok.specials.cls, *tok.encode(text).ids, tok.specials.sep]])
        with torch.no_grad():
            out = body(ids, output_hidden_states=True)
        np.testing.assert_allclose(cls[i], out.last_hidden_state[0, 0].numpy(), atol=1e-5)
        np.testing.assert_allclose(mean[i], out.last_hidden_state[0].mean(0).numpy(), atol=1e-5)
        layers = torch.stack(out.hidden_states[1:]).mean(0)[0]  # tiny has 2 layers: last4 = mean of both
        assert tokens4[i].shape == (ids.shape[1], H)
        np.testing.assert_allclose(tokens4[i], layers.numpy(), atol=1e-5)


def test_embed_works_on_a_task_checkpoint_and_rejects_bad_options(models):
    arr = embed(models["classify"], ["a fish", "the sea"], pool="mean")
    assert arr.shape[0] == 2 and np.isfinite(arr).all()
    with pytest.raises(InputError, match="pool must be"):
        embed(models["classify"], ["x"], pool="max")
    with pytest.raises(InputError, match="layers must be"):
        embed(models["classify"], ["x"], layers="first")


def test_embed_cli_files(tiny_ckpt, tmp_path, capsys):
    src = tmp_path / "texts.txt"
    src.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    out = tmp_path / "x.npy"
    code, stdout, err = run_cli(["embed", "--from", tiny_ckpt, "--input", src, "--output", out, "--pool", "none"],
                                capsys)
    assert code == 0, err
    arr = np.load(out)
    tokens = [json.loads(x) for x in (tmp_path / "x.tokens.jsonl").read_text().splitlines()]
    assert arr.shape[0] == len(TEXTS) and arr.shape[1] == max(len(t) for t in tokens)
    assert tokens[1][0] == "[CLS]" and tokens[1][-1] == "[SEP]"
    assert np.all(arr[1, len(tokens[1]):] == 0) and np.any(arr[1, : len(tokens[1])] != 0)  # zero padding
    code, _, err = run_cli(["embed", "--from", tiny_ckpt, "--input", src, "--output", out], capsys)
    assert code == 2 and "already exists" in err
    code, _, err = run_cli(["embed", "--from", tiny_ckpt, "--input", src, "--output", tmp_path / "x.txt"], capsys)
    assert code == 2 and ".npy" in err
    code, _, _ = run_cli(["embed", "--from", tiny_ckpt, "--input", src, "--output", out, "--overwrite",
                          "--layers", "last4", "--pool", "cls"], capsys)
    assert code == 0 and np.load(out).shape == (len(TEXTS), arr.shape[2])


# ---- explain ---------------------------------------------------------------------------------------------------------
def test_predictions_of_the_trained_fixture(models):
    assert [p["label"] for p in predict(models["classify"], TEXTS)] == ["animal", "other", "other", "other",
                                                                            "animal"]


@pytest.mark.parametrize("text", TEXTS[:3])
def test_integrated_gradients_add_up_to_the_probability_change(models, text):
    model, tok, _ = load_task_model(models["classify"])
    with torch.no_grad():  # sharpen the classifier so that the text moves the probability far from the baseline
        model.head.classifier.weight.mul_(40.0)
    ex = explain_full(model, tok, text, steps=64)
    assert ex.label in model.labels and ex.method == "integrated-gradients"
    assert abs(ex.prob - ex.baseline_prob) > 0.05
    total = sum(score for *_, score in ex.items)
    assert total == pytest.approx(ex.prob - ex.baseline_prob, abs=2e-3)  # completeness
    # offsets point at the tokens in the text
    for token, start, end, _ in ex.items:
        assert text[start:end].lower() == token.removeprefix("##")
    label, items = explain(model, tok, text, target="other", steps=8)
    assert label == "other" and len(items) == len(ex.items)


def test_gradient_x_input_equals_a_manual_computation(models):
    model, tok, _ = load_task_model(models["classify"])
    text = "a fish that swims"
    label, items = explain(model, tok, text, method="gradient-x-input")
    ids = torch.tensor([[tok.specials.cls, *tok.encode(text).ids, tok.specials.sep]])
    emb = model.body.embeddings.word(ids).detach().requires_grad_(True)
    handle = model.body.embeddings.word.register_forward_hook(lambda m, a, o: emb)
    try:
        p = model(ids)["logits"].softmax(-1)[0, model.labels.index(label)]
        (grad,) = torch.autograd.grad(p, emb)
    finally:
        handle.remove()
    manual = (grad * emb).sum(-1)[0, 1:-1]
    np.testing.assert_allclose([s for *_, s in items], manual.detach().numpy(), atol=1e-6)


def test_explain_truncates_a_long_text_as_training_and_predict_do(models):
    """The classify fixture was fine-tuned with truncate auto (head+tail): explain keeps the same pieces of a text
    longer than max_len, so its probability is the one predict gives."""
    loaded = load_task_model(models["classify"])
    model, tok, conf = loaded
    assert conf["head"]["truncate"] == "head+tail" and conf["max_len"] == 32
    text = " ".join(TEXTS * 3) + " a fish"
    ids = tok.encode(text).ids
    assert len(ids) > 30
    ex = explain_full(model, tok, text, steps=4, max_len=32)
    assert [text[s:e].lower() for _, s, e, _ in ex.items] == [tok.id_to_token(i).removeprefix("##")
                                                             for i in ids[:7] + ids[-23:]]
    (pred,) = predict(loaded, [text])
    assert pred["probs"][ex.label] == pytest.approx(ex.prob, abs=1e-5)


def test_explain_pair_offsets_and_unsupported_models(models):
    model, tok, _ = load_task_model(models["pair"])
    ex = explain_full(model, tok, "a tool", "the sea", steps=4)
    assert ex.text == "a tool" + PAIR_SEPARATOR + "the sea"
    assert [ex.text[s:e] for tok_, s, e, _ in ex.items] == [tok_.removeprefix("##") for tok_, *_ in ex.items]
    assert "".join(ex.text[s:e] for _, s, e, _ in ex.items) == "atoolthesea"
    assert ex.items[-1][2] == len(ex.text)  # the last token of text_b ends the shown text
    tag_model, tag_tok, _ = load_task_model(models["tag"])
    with pytest.raises(InputError, match="classify or pair"):
        explain(tag_model, tag_tok, "a fish")
    with pytest.raises(InputError, match="two texts"):
        explain(model, tok, "one text only")


def test_explain_html_and_ansi_rendering():
    text = "cats <b> & dogs"
    items = [("cats", 0, 4, 0.5), ("<", 5, 6, -0.25), ("b", 6, 7, 0.0), (">", 7, 8, 0.1), ("dogs", 11, 15, -1.0)]
    snippet = explain_html(text, items, label="x<y", method="integrated-gradients")
    assert "<b>" not in snippet.replace("label: <b>", "")  # the text's markup is escaped ...
    assert "&lt;" in snippet and "&amp;" in snippet and "x&lt;y" in snippet
    assert snippet.count("<span") == 5 and 'title="-1.0000"' in snippet and "rgba(210, 50, 50, 1.000)" in snippet
    plain = re.sub(r"<[^>]+>", "", snippet.split("</div>", 1)[1])
    assert plain.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&") == text
    coloured = explain_ansi(text, items)
    assert "\x1b[48;2;" in coloured
    assert re.sub(r"\x1b\[[0-9;]*m", "", coloured) == text


def test_explain_cli(models, tiny_ckpt, tmp_path, capsys):
    html_out = tmp_path / "e.html"
    code, stdout, err = run_cli(["explain", "--from", models["classify"], "--text", "a fish that swims",
                                 "--html", html_out, "--steps", "8", "--color"], capsys)
    assert code == 0, err
    assert "integrated-gradients" in stdout and "\x1b[48;2;" in stdout
    assert html_out.read_text().startswith('<div class="pretune-explain">')
    code, _, err = run_cli(["explain", "--from", tiny_ckpt, "--text", "a fish"], capsys)
    assert code == 2 and "not a fine-tuned checkpoint" in err
