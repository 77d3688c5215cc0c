"""Hugging Face export of every pretune architecture (issue 16): one family per architecture (post-LN BERT / RoBERTa,
pre-LN encoders as RoBERTa-PreLayerNorm, causal models as GPT-2), the default run's model, heads without a
transformers class exported as the body with a note, the base model's pooler kept on import, and the causal
defaults that make `--objective clm` export as GPT-2. Parity: logits within 1e-5 of pretune's own forward."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
finetune = pytest.importorskip("pretune.finetune.model")

from test_hf import (  # noqa: E402
    CORPUS,
    TOL,
    batch,
    load_exported,
    make_hf,
    max_diff,
    pretrain_model,
    pretune_logits,
    randomize,
)

from pretune.cli import main  # noqa: E402
from pretune.errors import InputError  # noqa: E402
from pretune.finetune.config import FinetuneSection  # noqa: E402
from pretune.interop.hf import import_folder, open_checkpoint  # noqa: E402
from pretune.interop.hf_export import export_hf  # noqa: E402
from pretune.model.heads import MLMHead  # noqa: E402
from pretune.model.transformer import ModelConfig  # noqa: E402
from pretune.pretrain.objectives import PretrainModel, Specials, build_objective  # noqa: E402
from pretune.pretrain.stage import PretrainSection, auto_objective, build_model_config  # noqa: E402
from pretune.text.tokenizer import train_tokenizer  # noqa: E402
from pretune.training import checkpoint as ck  # noqa: E402

DEFAULT_TOML = Path(__file__).resolve().parent.parent / "pretune" / "resources" / "default.toml"
TEXTS = ["the quick brown fox", "Hello World, hello world. The Cat sat.", "Café déjà vu 3.14!"]
PRE_LN = dict(pre_ln=True, final_layer_norm=True)  # the default run's encoder (embedding LayerNorm on, as default)


def tokenizer(kind: str, lowercase: bool = False):
    return train_tokenizer(CORPUS, kind=kind, vocab_size=300, min_frequency=1, lowercase=lowercase)


def config_for(objective: str, tok, model_size: str = "tiny", **model) -> ModelConfig:
    """The model config `pretune pretrain` builds for an objective, preset and [model] keys."""
    sec = PretrainSection(shards="-", out="-", model_size=model_size, objective=objective, max_len=16)
    return build_model_config(sec, model, tok, build_objective(objective, Specials.from_tokenizer(tok)))


def save_pretrained(d: Path, cfg: ModelConfig, tok, seed: int = 0) -> PretrainModel:
    heads = {"lm": MLMHead(cfg, transform=False, bias=False)} if cfg.causal else {"mlm": MLMHead(cfg)}
    model = PretrainModel(cfg, heads).eval()
    randomize(model, seed=seed)
    ck.save_checkpoint(d, model, {"model": cfg.to_dict(), "objective": "clm" if cfg.causal else "mlm",
                                  "heads": list(heads)}, tok)
    return model


def save_task(d: Path, cfg: ModelConfig, tok, task: str, options: dict, seed: int = 0):
    labels = {"tag": ["O", "B-X", "I-X"], "span": ["NULL", "X"]}.get(task, ["a", "b", "c"])
    model = finetune.TaskModel(cfg, task, labels, options)
    randomize(model.eval(), seed=seed)
    ck.save_checkpoint(d, model, finetune.task_config(model, 64), tok)
    return model, labels


def load_base(d: Path):
    """AutoModel of an exported body: everything loaded but, at most, the pooler (the notes say so)."""
    model, info = transformers.AutoModel.from_pretrained(str(d), output_loading_info=True)
    assert not info["unexpected_keys"] and all("pooler" in k for k in info["missing_keys"]), info
    return model.eval()


def model_type(d: Path) -> tuple[str, str]:
    config = json.loads((d / "config.json").read_text())
    return config["model_type"], config["architectures"][0]


def assert_same_ids(d: Path, tok) -> None:
    htok = transformers.AutoTokenizer.from_pretrained(str(d))
    for text in TEXTS:
        assert htok(text, add_special_tokens=False)["input_ids"] == tok.encode(text).ids, text


# ---- one family per architecture ------------------------------------------------------------------------------------


FAMILIES = [  # (family, tokenizer, objective, [model] keys); auto picks each but roberta (pretune's specials: bert)
    ("bert", "wordpiece", "mlm", {}),
    ("roberta", "bytelevel-bpe", "mlm", {}),
    ("roberta-prelayernorm", "wordpiece", "mlm", PRE_LN),
    ("roberta-prelayernorm", "bytelevel-bpe", "mlm", dict(PRE_LN, type_vocab_size=0, activation="gelu")),
    ("gpt2", "bytelevel-bpe", "clm", {}),  # clm's defaults alone make it GPT-2's architecture
]


@pytest.mark.parametrize("family,kind,objective,model", FAMILIES, ids=[f"{f}-{k}" for f, k, _, _ in FAMILIES])
def test_each_architecture_exports_to_its_family(tmp_path, family, kind, objective, model):
    tok = tokenizer(kind)
    cfg = config_for(objective, tok, **model)
    ours = save_pretrained(tmp_path / "ckpt", cfg, tok)
    assert export_hf(tmp_path / "ckpt", tmp_path / "hf", family="roberta" if family == "roberta" else "auto") == []
    assert model_type(tmp_path / "hf")[0] == family
    auto = transformers.AutoModelForCausalLM if cfg.causal else transformers.AutoModelForMaskedLM
    hf = load_exported(tmp_path / "hf", auto)
    ids, mask, tt = batch(cfg.vocab_size, cfg.type_vocab_size, pad=tok.specials.pad)  # padded rows included
    kw = {"token_type_ids": tt} if tt is not None else {}
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, **kw).logits
    assert max_diff(ref, pretune_logits(ours, ids, mask, tt), mask) < TOL
    assert_same_ids(tmp_path / "hf", tok)


def test_the_default_runs_model_exports_as_roberta_prelayernorm(tmp_path):
    """default.toml's [pretrain] model (preset + [pretrain.model]) as MLM; its fine-tuned classifier (pooling auto =
    mean) has no transformers class: the body goes out as RobertaPreLayerNormModel, with a note."""
    conf = tomllib.loads(DEFAULT_TOML.read_text())
    pre, tcfg = conf["pretrain"], conf["tokenizer"]
    tok = tokenizer(tcfg["kind"], lowercase=tcfg.get("lowercase", False))
    objective = auto_objective(None) if pre["objective"] == "auto" else pre["objective"]  # from scratch: mlm
    cfg = config_for(objective, tok, pre["model_size"], **pre.get("model", {}))
    assert cfg.pre_ln and not cfg.causal  # what this test is about: if the default changes, look again
    ours = save_pretrained(tmp_path / "ckpt", cfg, tok)
    assert export_hf(tmp_path / "ckpt", tmp_path / "hf") == []
    assert model_type(tmp_path / "hf") == ("roberta-prelayernorm", "RobertaPreLayerNormForMaskedLM")
    hf = load_exported(tmp_path / "hf", transformers.AutoModelForMaskedLM)
    htok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    enc = htok(TEXTS, padding=True, return_tensors="pt")  # the exported tokenizer frames and pads as pretune does
    for row, text in zip(enc["input_ids"].tolist(), TEXTS, strict=True):
        assert row[: len(tok.encode(text).ids) + 2] == [tok.specials.cls, *tok.encode(text).ids, tok.specials.sep]
    with torch.no_grad():
        ref = hf(**enc).logits
        mine = pretune_logits(ours, enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    assert max_diff(ref, mine, enc["attention_mask"]) < TOL

    sec = FinetuneSection(task=conf["finetune"]["task"], pooling=conf["finetune"].get("pooling", "auto"))
    options = sec.resolve_pooling(cfg.causal).head_options()
    assert options == {"pooling": "mean", "truncate": "head+tail"}
    clf, _ = save_task(tmp_path / "ft", cfg, tok, sec.task, options)
    notes = export_hf(tmp_path / "ft", tmp_path / "ft-hf")
    assert model_type(tmp_path / "ft-hf") == ("roberta-prelayernorm", "RobertaPreLayerNormModel")
    assert len(notes) == 1 and "mean" in notes[0] and "body only" in notes[0], notes
    body = load_base(tmp_path / "ft-hf")
    ids, mask, tt = batch(cfg.vocab_size, cfg.type_vocab_size, pad=tok.specials.pad)
    with torch.no_grad():
        ref = body(input_ids=ids, attention_mask=mask, token_type_ids=tt).last_hidden_state
        mine = clf.body(ids, attention_mask=mask, token_type_ids=tt).last_hidden_state
    assert max_diff(ref, mine, mask) < TOL


# ---- task heads -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["classify", "pair", "tag"])
def test_prelayernorm_task_heads(tmp_path, task):
    tok = tokenizer("wordpiece")
    cfg = config_for("mlm", tok, **PRE_LN)
    options = {"crf": False, "all_subwords": False} if task == "tag" else {}  # classify / pair: [CLS] pooling
    model, labels = save_task(tmp_path / "ckpt", cfg, tok, task, options)
    assert export_hf(tmp_path / "ckpt", tmp_path / "hf") == []
    name = "TokenClassification" if task == "tag" else "SequenceClassification"
    assert model_type(tmp_path / "hf") == ("roberta-prelayernorm", f"RobertaPreLayerNormFor{name}")
    hf = load_exported(tmp_path / "hf", getattr(transformers, f"AutoModelFor{name}"))
    assert hf.config.id2label == dict(enumerate(labels))
    ids, mask, tt = batch(cfg.vocab_size, 2, pad=tok.specials.pad)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=tt).logits
        mine = model(ids, attention_mask=mask, token_type_ids=tt)["logits"]
    assert (max_diff(ref, mine, mask) if task == "tag" else (ref - mine).abs().max().item()) < TOL


def test_a_head_tail_classifier_exports_with_a_note(tmp_path):
    """A [CLS] classifier trained with truncate head+tail exports whole, with a note that transformers' tokenizer
    truncates long texts at their end instead."""
    tok = tokenizer("wordpiece")
    cfg = config_for("mlm", tok, **PRE_LN)
    save_task(tmp_path / "ckpt", cfg, tok, "classify", {"truncate": "head+tail"})
    notes = export_hf(tmp_path / "ckpt", tmp_path / "hf")
    assert model_type(tmp_path / "hf")[1] == "RobertaPreLayerNormForSequenceClassification"
    assert len(notes) == 1 and "head+tail" in notes[0] and "truncates" in notes[0], notes


HEADLESS = [  # (task, head options, tokenizer, [model] keys / causal, words of the note, base class)
    ("classify", {"pooling": "mean"}, "wordpiece", {}, "mean", "BertModel"),
    ("pair", {"pooling": "mean"}, "wordpiece", PRE_LN, "mean", "RobertaPreLayerNormModel"),
    ("tag", {"crf": True, "all_subwords": False}, "wordpiece", {}, "CRF", "BertModel"),
    ("span", {"max_span_width": 4}, "wordpiece", {}, "span", "BertModel"),
    ("classify", {}, "bytelevel-bpe", None, "causal", "GPT2Model"),
]


@pytest.mark.parametrize("task,options,kind,model,words,base", HEADLESS,
                         ids=[f"{t}-{w}" for t, _, _, _, w, _ in HEADLESS])
def test_heads_without_a_transformers_class_export_the_body(tmp_path, task, options, kind, model, words, base):
    tok = tokenizer(kind)
    cfg = config_for("clm", tok) if model is None else config_for("mlm", tok, **model)
    ours, _ = save_task(tmp_path / "ckpt", cfg, tok, task, options)
    notes = export_hf(tmp_path / "ckpt", tmp_path / "hf")
    assert len(notes) == 1 and "body only" in notes[0] and words in notes[0] and base in notes[0], notes
    assert model_type(tmp_path / "hf")[1] == base
    hf = load_base(tmp_path / "hf")
    ids, mask, _ = batch(cfg.vocab_size, pad=tok.specials.pad)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        mine = ours.body(ids, attention_mask=mask).last_hidden_state
    assert max_diff(ref, mine, mask) < TOL


# ---- what cannot be represented: refused, with the advice that fits -------------------------------------------------


REFUSED = {  # id: (objective, [model] keys, --family, words of the message)
    "pre-LN-as-bert": ("mlm", PRE_LN, "bert", "exports as roberta-prelayernorm"),
    "pre-LN-as-gpt2": ("mlm", PRE_LN, "gpt2", "bidirectional: export it as roberta-prelayernorm"),
    "post-LN-as-gpt2": ("mlm", {}, "gpt2", "bidirectional: export it as bert or roberta"),
    "post-LN-as-prelayernorm": ("mlm", {}, "roberta-prelayernorm", "post-LN encoder exports as bert or roberta"),
    "pre-LN-no-final-LN": ("mlm", dict(pre_ln=True, final_layer_norm=False), "auto", "final_layer_norm = false"),
    "pre-LN-no-embedding-LN": ("mlm", dict(PRE_LN, embedding_layer_norm=False), "auto",
                               "embedding_layer_norm = false"),
    "post-LN-final-LN": ("mlm", dict(final_layer_norm=True), "bert", "final_layer_norm = true"),
    "causal-as-bert": ("clm", {}, "bert", "causal model exports as gpt2"),
    "causal-not-gpt2": ("clm", dict(embedding_layer_norm=True, type_vocab_size=2), "auto",
                        "embedding_layer_norm = true, type_vocab_size = 2"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refusals_give_the_right_advice(tmp_path, capsys, case):
    objective, model, family, words = REFUSED[case]
    tok = tokenizer("wordpiece")
    save_pretrained(tmp_path / "ckpt", config_for(objective, tok, **model), tok)
    with pytest.raises(InputError, match=words):
        export_hf(tmp_path / "ckpt", tmp_path / "hf", family=family)
    assert not (tmp_path / "hf").exists()
    assert main(["export", str(tmp_path / "ckpt"), "--family", family, "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path / "ckpt") in err and words in err


# ---- the pooler of an imported base model ---------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["body", "classify"])
def test_imported_pooler_is_kept_and_exported_back(tmp_path, task):
    hf = make_hf("bert", "bert-gelu", tmp_path / "hf", task=task)
    imported = import_folder(tmp_path / "hf", tmp_path / "ckpt")
    assert not any("pooler" in n for n in imported.notes), imported.notes
    key = "pooler.dense.weight" if task == "body" else "head.pooler.dense.weight"
    assert torch.equal(open_checkpoint(tmp_path / "ckpt").state_dict[key], hf.state_dict()[
        "pooler.dense.weight" if task == "body" else "bert.pooler.dense.weight"])
    assert export_hf(tmp_path / "ckpt", tmp_path / "back") == []
    auto = transformers.AutoModel if task == "body" else transformers.AutoModelForSequenceClassification
    back = load_exported(tmp_path / "back", auto)
    ids, mask, tt = batch(hf.config.vocab_size, 2)
    with torch.no_grad():
        a = hf(input_ids=ids, attention_mask=mask, token_type_ids=tt, output_hidden_states=True)
        b = back(input_ids=ids, attention_mask=mask, token_type_ids=tt, output_hidden_states=True)
        if task == "body":
            assert (a.pooler_output - b.pooler_output).abs().max().item() < TOL
        else:
            assert (a.logits - b.logits).abs().max().item() < TOL
            pooled = [m.bert.pooler(h.hidden_states[-1]) for m, h in ((hf, a), (back, b))]
            assert (pooled[0] - pooled[1]).abs().max().item() < TOL
    assert max_diff(a.hidden_states[-1], b.hidden_states[-1], mask) < TOL


def test_imported_pooler_starts_a_cls_classifier(tmp_path):
    hf = make_hf("bert", "bert-gelu", tmp_path / "hf", task="body")
    ckpt = open_checkpoint(tmp_path / "hf")
    assert ckpt.config["heads"] == [] and "pooler.dense.bias" in ckpt.state_dict
    cfg = ckpt.model_config()
    cls = finetune.TaskModel(cfg, "classify", ["a", "b"], {}).eval()
    assert finetune.load_initial_weights(cls, ckpt, {}) == "body and pooler"
    assert torch.equal(cls.head.pooler.dense.weight, hf.pooler.dense.weight)
    assert torch.equal(cls.head.pooler.dense.bias, hf.pooler.dense.bias)
    ids, mask, tt = batch(hf.config.vocab_size, 2)
    with torch.no_grad():
        hidden = cls.body(ids, attention_mask=mask, token_type_ids=tt).last_hidden_state
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=tt).pooler_output
    assert (cls.head.pooler(hidden) - ref).abs().max().item() < TOL
    mean = finetune.TaskModel(cfg, "classify", ["a", "b"], {"pooling": "mean"})  # trained on [CLS]: not for a mean
    assert finetune.load_initial_weights(mean, ckpt, {"pooling": "mean"}) == "body"
    assert not torch.equal(mean.head.pooler.dense.weight, hf.pooler.dense.weight)


# ---- RoBERTa-PreLayerNorm folders import too ------------------------------------------------------------------------


def test_import_roberta_prelayernorm_and_back(tmp_path):
    T = transformers
    d = tmp_path / "hf"
    d.mkdir()
    from test_hf import write_bytelevel_tokenizer

    V = write_bytelevel_tokenizer(d, "RobertaTokenizer")
    (d / "tokenizer_config.json").write_text("{}")  # no class named: the model_type's default (RobertaTokenizer)
    config = T.RobertaPreLayerNormConfig(vocab_size=V, max_position_embeddings=66, pad_token_id=1, bos_token_id=0,
                                         eos_token_id=2, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=64, type_vocab_size=1)
    torch.manual_seed(0)
    hf = T.RobertaPreLayerNormForMaskedLM(config).eval()
    randomize(hf)
    hf.save_pretrained(d)
    ckpt = open_checkpoint(d)
    assert ckpt.config["model"]["pre_ln"] and ckpt.config["model"]["final_layer_norm"]
    inner = json.loads(ckpt.tokenizer().inner.to_str())  # read as RobertaTokenizer: RoBERTa's offset trimming
    assert ckpt.tokenizer().specials.pad == 1 and inner["post_processor"]["type"] == "RobertaProcessing"
    ids, mask, _ = batch(V, pad=1)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).logits
    assert max_diff(ref, pretune_logits(pretrain_model(ckpt), ids, mask), mask) < TOL
    import_folder(d, tmp_path / "ckpt")
    assert export_hf(tmp_path / "ckpt", tmp_path / "back") == []
    back = load_exported(tmp_path / "back", T.AutoModelForMaskedLM)
    with torch.no_grad():
        assert max_diff(ref, back(input_ids=ids, attention_mask=mask).logits, mask) < TOL


# ---- causal models default to GPT-2's architecture ------------------------------------------------------------------


def test_clm_defaults_to_gpt2_architecture_unless_overridden():
    tok = tokenizer("bytelevel-bpe")
    cfg = config_for("clm", tok, "small")
    assert (cfg.causal, cfg.pre_ln, cfg.final_layer_norm, cfg.embedding_layer_norm, cfg.type_vocab_size) == \
        (True, True, True, False, 0)
    custom = config_for("clm", tok, "small", embedding_layer_norm=True, type_vocab_size=2)
    assert custom.embedding_layer_norm and custom.type_vocab_size == 2 and custom.pre_ln
    post = config_for("clm", tok, "small", pre_ln=False)  # a post-LN decoder keeps BERT's LayerNorms
    assert post.embedding_layer_norm and not post.final_layer_norm
    mlm = config_for("mlm", tok, "small")  # encoders are unchanged
    assert not mlm.pre_ln and mlm.embedding_layer_norm and mlm.type_vocab_size == 2


def test_cli_clm_pretrain_then_export_is_gpt2(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS * 3) + "\n")
    tokenizer("bytelevel-bpe").save(tmp_path / "tokenizer.json")
    assert main(["prepare", str(corpus), "--tokenizer", str(tmp_path / "tokenizer.json"), "--out",
                 str(tmp_path / "shards"), "--validation-fraction", "0.2"]) == 0
    assert main(["pretrain", "--shards", str(tmp_path / "shards"), "--objective", "clm", "--model-size", "tiny",
                 "--out", str(tmp_path / "run"), "--max-len", "32", "--max-steps", "2", "--batch-size", "4",
                 "--eval-every", "2", "--eval-batches", "1", "--no-progress", "--device", "cpu"]) == 0
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) == 0
    assert "note:" not in capsys.readouterr().out
    assert model_type(tmp_path / "hf") == ("gpt2", "GPT2LMHeadModel")
    ckpt = open_checkpoint(tmp_path / "run")
    model = pretrain_model(ckpt)
    hf = load_exported(tmp_path / "hf", transformers.AutoModelForCausalLM)
    ids, mask, _ = batch(model.config.vocab_size, pad=ckpt.tokenizer().specials.pad)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).logits
    assert max_diff(ref, pretune_logits(model, ids, mask), mask) < TOL
