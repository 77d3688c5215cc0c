"""Hugging Face import / export (pretune.interop.hf): numerical parity with `transformers` on random-initialised models
of several small configs per family, tokenization parity on tricky strings, the CLI, and the full round trip
HF folder -> continue pretraining -> fine-tune -> HF folder."""

from __future__ import annotations

import csv
import json
import shutil
from functools import cache
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers  # noqa: E402

from pretune.cli import main  # noqa: E402
from pretune.errors import InputError  # noqa: E402
from pretune.interop.hf import import_folder, load_hf_tokenizer, open_checkpoint, supported  # noqa: E402
from pretune.interop.hf_export import export_hf  # noqa: E402
from pretune.model.heads import MLMHead  # noqa: E402
from pretune.model.transformer import PRESETS, ModelConfig  # noqa: E402
from pretune.pretrain.objectives import PretrainModel  # noqa: E402
from pretune.pretrain.stage import auto_objective  # noqa: E402
from pretune.text.tokenizer import KINDS, PretuneTokenizer, train_tokenizer  # noqa: E402
from pretune.training import checkpoint as ck  # noqa: E402

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

TOL = 1e-5
TRICKY = [
    "Café naïve résumé ÀÉÎÕÜ déjà vu",
    "日本語のテキストと中文，한국어",
    "emoji 😀👍🏽 family 👨‍👩‍👧 ok",
    "x" * 130,  # longer than WordPiece's 100 characters: [UNK]
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "multiple   spaces\t\ttabs\n\nnewlines",
    "  leading and trailing  ",
    "",
    "e\u0301 combining, a\u200bb zero width, ctrl\x00\x07chars",
    "[MASK] and [CLS] tokens, <s> and <mask>",
    "don't stop, e-mail 3.14! (test)",
    "ﬁ ligature Ǆ ǅ",
    "مرحبا नमस्ते",
    "\u00a0nbsp\u3000ideographic space",
]
CORPUS = TRICKY * 3 + ["the quick brown fox jumps over the lazy dog", "Hello World, hello world. The Cat sat."] * 30
ROBERTA_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")  # RoBERTa's ids 0..4
GPT2_SPECIALS = ("<|endoftext|>",)  # GPT-2's only special token: id 0 here


# ---- building Hugging Face folders ---------------------------------------------------------------------------------


@cache
def wordpiece_vocab() -> tuple[str, ...]:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=300, min_frequency=1,
                                        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tok.train_from_iterator(CORPUS, trainer)
    return tuple(t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1]))


@cache
def bytelevel_json(specials: tuple[str, ...]) -> str:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=400, min_frequency=1, special_tokens=list(specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    return tok.to_str()


def write_bert_tokenizer(d: Path, lower: bool = True) -> int:
    vocab = wordpiece_vocab()
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": lower}))
    return len(vocab)


def write_bytelevel_tokenizer(d: Path, cls: str, add_prefix_space: bool = False) -> int:
    tok = Tokenizer.from_str(bytelevel_json(GPT2_SPECIALS if cls == "GPT2Tokenizer" else ROBERTA_SPECIALS))
    tok.model.save(str(d))  # vocab.json + merges.txt
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": cls, "add_prefix_space": add_prefix_space}))
    return tok.get_vocab_size()


def randomize(model: torch.nn.Module, std: float = 0.2, seed: int = 0) -> None:
    """Every parameter random (LayerNorm and biases too), so a wrong mapping cannot hide."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)


BERT_CASES = {
    "bert-gelu": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
    "bert-relu-3types": dict(hidden_size=48, num_hidden_layers=3, num_attention_heads=3, intermediate_size=80,
                             hidden_act="relu", type_vocab_size=3, layer_norm_eps=1e-5),
    "bert-gelu_new": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48,
                          hidden_act="gelu_new"),
}
ROBERTA_CASES = {
    "roberta": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                    type_vocab_size=1),
    "roberta-2types": dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=6, intermediate_size=96,
                           type_vocab_size=2, layer_norm_eps=1e-5),
}
GPT2_CASES = {
    "gpt2": dict(n_embd=32, n_layer=2, n_head=4),
    "gpt2-inner-gelu": dict(n_embd=48, n_layer=3, n_head=3, n_inner=80, activation_function="gelu",
                            layer_norm_epsilon=1e-6),
}


def make_hf(kind: str, case: str, d: Path, task: str = "lm", seed: int = 0, **save_kw):
    """A random-initialised Hugging Face model of family `kind`, saved with its tokenizer to `d`."""
    d.mkdir(parents=True, exist_ok=True)
    T = transformers
    if kind == "bert":
        V = write_bert_tokenizer(d)
        cfg = T.BertConfig(vocab_size=V + 7, max_position_embeddings=64, **BERT_CASES[case])
        cls = {"lm": T.BertForMaskedLM, "classify": T.BertForSequenceClassification,
               "tag": T.BertForTokenClassification, "body": T.BertModel, "pretraining": T.BertForPreTraining}[task]
    elif kind in ("roberta", "xlm-roberta"):
        V = write_bytelevel_tokenizer(d, "RobertaTokenizer")
        Config = T.RobertaConfig if kind == "roberta" else T.XLMRobertaConfig
        cfg = Config(vocab_size=V, max_position_embeddings=66, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                     **ROBERTA_CASES[case])
        prefix = "Roberta" if kind == "roberta" else "XLMRoberta"
        cls = getattr(T, prefix + {"lm": "ForMaskedLM", "classify": "ForSequenceClassification",
                                   "tag": "ForTokenClassification"}[task])
    elif kind == "distilbert":
        V = write_bert_tokenizer(d)
        cfg = T.DistilBertConfig(vocab_size=V, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64,
                                 activation=case)
        cls = {"lm": T.DistilBertForMaskedLM, "classify": T.DistilBertForSequenceClassification}[task]
    else:
        V = write_bytelevel_tokenizer(d, "GPT2Tokenizer")
        cfg = T.GPT2Config(vocab_size=V, n_positions=64, bos_token_id=0, eos_token_id=0, **GPT2_CASES[case])
        cls = T.GPT2LMHeadModel
    if task in ("classify", "tag"):
        cfg.id2label = {0: "neg", 1: "neu", 2: "pos"}
        cfg.label2id = {v: k for k, v in cfg.id2label.items()}
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    randomize(model, seed=seed)
    model.save_pretrained(d, **save_kw)
    return model


def batch(vocab_size: int, type_vocab: int = 0, seed: int = 0, B: int = 3, T: int = 12, pad: int = 0):
    """Right-padded inputs; real tokens avoid the first ids (RoBERTa numbers positions by `!= pad`)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(6, vocab_size, (B, T), generator=gen)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, T - 4:] = 0
    mask[2, T - 1:] = 0
    ids = ids.masked_fill(mask == 0, pad)
    types = torch.randint(0, type_vocab, (B, T), generator=gen) * mask if type_vocab > 1 else None
    return ids, mask, types


def pretrain_model(ckpt: ck.Checkpoint) -> PretrainModel:
    cfg = ModelConfig.from_dict(ckpt.config["model"])
    heads = {"mlm": MLMHead(cfg), "lm": MLMHead(cfg, transform=False, bias=False)}
    model = PretrainModel(cfg, {h: heads[h] for h in ckpt.config["heads"]})
    ck.load_into(model, ckpt.state_dict, ckpt.path)  # strict: every key present, none left over
    return model.eval()


def pretune_logits(model: PretrainModel, ids, mask, types=None) -> torch.Tensor:
    head = next(iter(model.heads))
    with torch.no_grad():
        hidden = model.body(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        return model.heads[head](hidden, model.embedding_weight)


def max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    return (a - b)[mask.bool()].abs().max().item()


# ---- import parity -------------------------------------------------------------------------------------------------


IMPORT_CASES = ([("bert", c) for c in BERT_CASES] + [("roberta", c) for c in ROBERTA_CASES]
                + [("xlm-roberta", "roberta"), ("distilbert", "gelu"), ("distilbert", "relu")]
                + [("gpt2", c) for c in GPT2_CASES])


@pytest.mark.parametrize("kind,case", IMPORT_CASES, ids=[f"{k}:{c}" for k, c in IMPORT_CASES])
def test_import_lm_logits_match(tmp_path, kind, case):
    hf = make_hf(kind, case, tmp_path / "hf")
    ckpt = open_checkpoint(tmp_path / "hf")  # a Hugging Face folder is imported on the fly
    assert ckpt.config["heads"] == (["lm"] if kind == "gpt2" else ["mlm"])
    assert ckpt.config["model"]["causal"] is (kind == "gpt2")
    assert auto_objective(str(tmp_path / "hf")) == ("clm" if kind == "gpt2" else "mlm")
    model = pretrain_model(ckpt)
    pad = 1 if "roberta" in kind else 0
    types = hf.config.type_vocab_size if kind in ("bert", "roberta") else 0
    ids, mask, tt = batch(hf.config.vocab_size, types, pad=pad)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, **({"token_type_ids": tt} if tt is not None else {})).logits
    diff = max_diff(ref, pretune_logits(model, ids, mask, tt), mask)
    assert diff < TOL, f"{kind}:{case}: max abs diff {diff:.2e}"


def test_import_reads_pytorch_bin_and_legacy_names(tmp_path):
    hf = make_hf("bert", "bert-gelu", tmp_path / "hf")
    d = tmp_path / "hf"
    (d / "model.safetensors").unlink()  # an old-style folder: a pickled state dict, LayerNorm weights named gamma
    state = {(k[: -len("weight")] + "gamma" if "LayerNorm.weight" in k else k): v for k, v in hf.state_dict().items()}
    torch.save(state, d / "pytorch_model.bin")
    model = pretrain_model(open_checkpoint(d))
    ids, mask, _ = batch(hf.config.vocab_size)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).logits
    assert max_diff(ref, pretune_logits(model, ids, mask), mask) < TOL


def test_import_base_model_has_no_head(tmp_path):
    hf = make_hf("bert", "bert-gelu", tmp_path / "hf", task="body")
    imported = import_folder(tmp_path / "hf", tmp_path / "ckpt")
    assert imported.config["heads"] == []
    assert auto_objective(str(tmp_path / "hf")) == "simcse"  # objective = "auto": no random MLM head on the body
    assert any("random" in n for n in imported.notes) and not any("pooler" in n for n in imported.notes)
    ckpt = open_checkpoint(tmp_path / "ckpt")
    assert sorted(k for k in ckpt.state_dict if not k.startswith("body.")) == ["pooler.dense.bias",
                                                                               "pooler.dense.weight"]
    cfg = ModelConfig.from_dict(ckpt.config["model"])
    model = PretrainModel(cfg, {}).eval()
    ck.load_into(model, {k: v for k, v in ckpt.state_dict.items() if k.startswith("body.")}, ckpt.path)
    ids, mask, _ = batch(hf.config.vocab_size)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        ours = model.body(ids, attention_mask=mask).last_hidden_state
    assert max_diff(ref, ours, mask) < TOL


def test_auto_objective_reads_weight_names_not_values(tmp_path, monkeypatch):
    """objective = "auto" decides from config.json and the weights' names (safetensors header, shard index): no
    tensor is loaded before pretrain() opens the folder; a lone pytorch_model.bin is still read whole."""
    import pretune.interop.hf as hf_module

    make_hf("bert", "bert-gelu", tmp_path / "mlm")
    make_hf("bert", "bert-gelu", tmp_path / "body", task="body")
    make_hf("gpt2", "gpt2", tmp_path / "gpt2")

    def no_values(*args, **kwargs):
        raise AssertionError("weights loaded")

    with monkeypatch.context() as m:
        m.setattr(hf_module, "load_file", no_values)
        m.setattr(hf_module, "read_hf_weights", no_values)
        assert [auto_objective(str(tmp_path / d)) for d in ("mlm", "body", "gpt2")] == ["mlm", "simcse", "clm"]
    from safetensors import safe_open

    with safe_open(str(tmp_path / "mlm" / "model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    (tmp_path / "mlm" / "model.safetensors").rename(tmp_path / "mlm" / "model-00001-of-00001.safetensors")
    (tmp_path / "mlm" / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: "model-00001-of-00001.safetensors" for k in keys}}))
    with monkeypatch.context() as m:  # sharded: the index names the weights
        m.setattr(hf_module, "load_file", no_values)
        assert auto_objective(str(tmp_path / "mlm")) == "mlm"
    (tmp_path / "body" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(InputError, match="cannot read weights"):
        auto_objective(str(tmp_path / "body"))


def test_bert_pretraining_heads_mlm_and_nsp(tmp_path):
    """BertForPreTraining (as bert-base-uncased ships): the NSP head comes along, and goes back."""
    from pretune.model.heads import NSPHead

    hf = make_hf("bert", "bert-gelu", tmp_path / "hf", task="pretraining")
    ckpt = open_checkpoint(tmp_path / "hf")
    assert ckpt.config["objective"] == "mlm+nsp" and ckpt.config["heads"] == ["mlm", "nsp"]
    assert auto_objective(str(tmp_path / "hf")) == "mlm"
    cfg = ModelConfig.from_dict(ckpt.config["model"])
    model = PretrainModel(cfg, {"mlm": MLMHead(cfg), "nsp": NSPHead(cfg)}).eval()
    ck.load_into(model, ckpt.state_dict, ckpt.path)
    ids, mask, tt = batch(hf.config.vocab_size, 2)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=tt)
        hidden = model.body(ids, attention_mask=mask, token_type_ids=tt).last_hidden_state
        mlm, nsp = model.heads["mlm"](hidden, model.embedding_weight), model.heads["nsp"](hidden)
    assert max_diff(ref.prediction_logits, mlm, mask) < TOL
    assert (ref.seq_relationship_logits - nsp).abs().max().item() < TOL
    import_folder(tmp_path / "hf", tmp_path / "ckpt")
    export_hf(tmp_path / "ckpt", tmp_path / "back")
    back = load_exported(tmp_path / "back", transformers.BertForPreTraining)
    with torch.no_grad():
        out = back(input_ids=ids, attention_mask=mask, token_type_ids=tt)
    assert (ref.seq_relationship_logits - out.seq_relationship_logits).abs().max().item() < TOL


def test_distilbert_classifier_imports_its_body(tmp_path):
    """DistilBERT's classification head (pre_classifier + ReLU) has no pretune counterpart: body only, said so."""
    make_hf("distilbert", "gelu", tmp_path / "hf", task="classify")
    imported = import_folder(tmp_path / "hf", tmp_path / "ckpt")
    assert imported.config["heads"] == [] and "task" not in imported.config
    assert any("pre_classifier" in n for n in imported.notes)


TASK_CASES = [("bert", "bert-gelu", "classify"), ("bert", "bert-relu-3types", "classify"),
              ("roberta", "roberta", "classify"), ("bert", "bert-gelu", "tag"), ("roberta", "roberta-2types", "tag")]


@pytest.mark.parametrize("kind,case,task", TASK_CASES, ids=["-".join(c) for c in TASK_CASES])
def test_import_task_model_logits_match(tmp_path, kind, case, task):
    finetune = pytest.importorskip("pretune.finetune.model")
    hf = make_hf(kind, case, tmp_path / "hf", task=task)
    model, _, conf = finetune.load_task_model(tmp_path / "hf")  # through the on-the-fly import
    assert conf["task"] == task and conf["labels"] == ["neg", "neu", "pos"]
    ids, mask, tt = batch(hf.config.vocab_size, hf.config.type_vocab_size, pad=hf.config.pad_token_id)
    kw = {"token_type_ids": tt} if tt is not None else {}
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, **kw).logits
        ours = model(ids, attention_mask=mask, **kw)["logits"]
    diff = (ref - ours).abs().max().item() if task == "classify" else max_diff(ref, ours, mask)
    assert diff < TOL


# ---- export round trips --------------------------------------------------------------------------------------------


def load_exported(d: Path, auto):
    model, info = auto.from_pretrained(str(d), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return model.eval()


@pytest.mark.parametrize("kind,case", [("bert", "bert-relu-3types"), ("roberta", "roberta"), ("gpt2", "gpt2")])
def test_hf_to_pretune_to_hf(tmp_path, kind, case):
    hf = make_hf(kind, case, tmp_path / "hf")
    import_folder(tmp_path / "hf", tmp_path / "ckpt")
    notes = export_hf(tmp_path / "ckpt", tmp_path / "back")
    assert notes == []
    config = json.loads((tmp_path / "back" / "config.json").read_text())
    assert config["model_type"] == kind  # auto: causal -> gpt2, <s> vocabulary -> roberta, else bert
    auto = transformers.AutoModelForCausalLM if kind == "gpt2" else transformers.AutoModelForMaskedLM
    back = load_exported(tmp_path / "back", auto)
    types = getattr(hf.config, "type_vocab_size", 0)
    ids, mask, tt = batch(hf.config.vocab_size, types, pad=hf.config.pad_token_id or 0)
    kw = {"token_type_ids": tt} if tt is not None else {}
    with torch.no_grad():
        assert max_diff(hf(input_ids=ids, attention_mask=mask, **kw).logits,
                        back(input_ids=ids, attention_mask=mask, **kw).logits, mask) < TOL
    ours = load_hf_tokenizer(tmp_path / "hf")
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "back"))
    for text in TRICKY:
        assert theirs(text, add_special_tokens=False)["input_ids"] == ours.encode(text).ids


def native_checkpoint(d: Path, kind: str, causal: bool, seed: int = 0):
    tok = train_tokenizer(CORPUS, kind=kind, vocab_size=300, min_frequency=1)
    values = dict(PRESETS["tiny"], vocab_size=tok.vocab_size + 3, pad_token_id=tok.specials.pad, causal=causal)
    if causal:
        values.update(pre_ln=True, final_layer_norm=True, embedding_layer_norm=False, type_vocab_size=0,
                      activation="gelu_tanh")
    cfg = ModelConfig.from_dict(values)
    heads = {"lm": MLMHead(cfg, transform=False, bias=False)} if causal else {"mlm": MLMHead(cfg)}
    model = PretrainModel(cfg, heads).eval()
    randomize(model, seed=seed)
    ck.save_checkpoint(d, model, {"model": cfg.to_dict(), "objective": "clm" if causal else "mlm",
                                  "heads": list(heads)}, tok)
    return model, tok


NATIVE = [(kind, False) for kind in KINDS] + [("bytelevel-bpe", True), ("wordpiece", True)]


@pytest.mark.parametrize("kind,causal", NATIVE, ids=[f"{k}-{'clm' if c else 'mlm'}" for k, c in NATIVE])
def test_export_native_checkpoint(tmp_path, kind, causal):
    model, tok = native_checkpoint(tmp_path / "ckpt", kind, causal)
    export_hf(tmp_path / "ckpt", tmp_path / "hf")
    auto = transformers.AutoModelForCausalLM if causal else transformers.AutoModelForMaskedLM
    hf = load_exported(tmp_path / "hf", auto)
    ids, mask, _ = batch(model.config.vocab_size, pad=tok.specials.pad)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).logits
    assert max_diff(ref, pretune_logits(model, ids, mask), mask) < TOL
    # the tokenizer: same ids and offsets; encoders frame text as pretune does ([CLS] A [SEP] B [SEP])
    htok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    if kind == "wordpiece" and not causal:
        assert type(htok).__name__ == "BertTokenizer"
    s = tok.specials
    for text in TRICKY:
        enc, mine = htok(text, add_special_tokens=False, return_offsets_mapping=True), tok.encode(text)
        assert enc["input_ids"] == mine.ids, text
        assert [tuple(o) for o in enc["offset_mapping"]] == [tuple(o) for o in mine.offsets], text
        if not causal:
            pair = htok(text, "the cat")
            assert pair["input_ids"] == [s.cls, *mine.ids, s.sep, *tok.encode("the cat").ids, s.sep]
            assert pair["token_type_ids"] == [0] * (len(mine.ids) + 2) + [1] * (len(tok.encode("the cat").ids) + 1)


def test_export_encoder_without_segment_embeddings(tmp_path):
    """type_vocab_size 0 has no BERT counterpart: a zero segment table of one row stands in, outputs unchanged."""
    tok = train_tokenizer(CORPUS, kind="wordpiece", vocab_size=200, min_frequency=1)
    cfg = ModelConfig.from_dict(dict(PRESETS["tiny"], vocab_size=tok.vocab_size, type_vocab_size=0))
    model = PretrainModel(cfg, {"mlm": MLMHead(cfg)}).eval()
    randomize(model)
    ck.save_checkpoint(tmp_path / "ckpt", model, {"model": cfg.to_dict(), "objective": "mlm", "heads": ["mlm"]}, tok)
    export_hf(tmp_path / "ckpt", tmp_path / "hf")
    hf = load_exported(tmp_path / "hf", transformers.AutoModelForMaskedLM)
    assert hf.config.type_vocab_size == 1
    htok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert "token_type_ids" not in htok("the cat", "a dog")
    ids, mask, _ = batch(cfg.vocab_size)
    with torch.no_grad():
        assert max_diff(hf(input_ids=ids, attention_mask=mask).logits, pretune_logits(model, ids, mask), mask) < TOL


TASKS_OUT = [("classify", "wordpiece", "auto"), ("pair", "bytelevel-bpe", "roberta"), ("tag", "wordpiece", "auto")]


@pytest.mark.parametrize("task,kind,family", TASKS_OUT, ids=[t for t, _, _ in TASKS_OUT])
def test_export_task_checkpoint(tmp_path, task, kind, family):
    finetune = pytest.importorskip("pretune.finetune.model")
    tok = train_tokenizer(CORPUS, kind=kind, vocab_size=300, min_frequency=1)
    cfg = ModelConfig.from_dict(dict(PRESETS["tiny"], vocab_size=tok.vocab_size, pad_token_id=tok.specials.pad))
    labels = ["O", "B-X", "I-X"] if task == "tag" else ["a", "b", "c", "d"]
    model = finetune.TaskModel(cfg, task, labels, {"crf": False, "all_subwords": False} if task == "tag" else {})
    randomize(model.eval())
    ck.save_checkpoint(tmp_path / "ckpt", model, finetune.task_config(model, 64), tok)
    export_hf(tmp_path / "ckpt", tmp_path / "hf", family=family)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == ("bert" if family == "auto" else family)
    assert config["id2label"] == {str(i): name for i, name in enumerate(labels)}
    auto = (transformers.AutoModelForTokenClassification if task == "tag"
            else transformers.AutoModelForSequenceClassification)
    hf = load_exported(tmp_path / "hf", auto)
    ids, mask, tt = batch(cfg.vocab_size, 2, pad=tok.specials.pad)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=tt).logits
        ours = model(ids, attention_mask=mask, token_type_ids=tt)["logits"]
    diff = max_diff(ref, ours, mask) if task == "tag" else (ref - ours).abs().max().item()
    assert diff < TOL


# heads without a transformers class, refusals and pre-LN encoders: tests/test_hf_export.py


# ---- tokenizers ----------------------------------------------------------------------------------------------------


def assert_same_tokens(folder: Path) -> None:
    theirs = transformers.AutoTokenizer.from_pretrained(str(folder))
    ours = load_hf_tokenizer(folder)
    assert ours.inner.to_str() == PretuneTokenizer.load(folder).inner.to_str()  # `--tokenizer DIR` gives the same
    n_tokens = 0
    for text in TRICKY:
        enc, mine = theirs(text, add_special_tokens=False, return_offsets_mapping=True), ours.encode(text)
        assert enc["input_ids"] == mine.ids, (folder.name, text)
        assert [tuple(o) for o in enc["offset_mapping"]] == [tuple(o) for o in mine.offsets], (folder.name, text)
        n_tokens += len(mine.ids)
    assert n_tokens > 100


@pytest.mark.parametrize("lower", [True, False], ids=["uncased", "cased"])
def test_bert_vocab_txt_tokenization(tmp_path, lower):
    d = tmp_path / "vocab"
    d.mkdir()
    write_bert_tokenizer(d, lower)
    (d / "config.json").write_text('{"model_type": "bert"}')
    assert_same_tokens(d)
    transformers.AutoTokenizer.from_pretrained(str(d)).save_pretrained(str(tmp_path / "json"))  # tokenizer.json
    shutil.copy(d / "config.json", tmp_path / "json")
    assert_same_tokens(tmp_path / "json")
    normalized = load_hf_tokenizer(d).inner.normalizer.normalize_str("Café")
    assert normalized == ("cafe" if lower else "Café")  # uncased BERT lowercases and strips accents


@pytest.mark.parametrize("model_type,cls", [("gpt2", "GPT2Tokenizer"), ("roberta", "RobertaTokenizer")])
@pytest.mark.parametrize("prefix_space", [False, True], ids=["", "add_prefix_space"])
def test_bytelevel_tokenization(tmp_path, model_type, cls, prefix_space):
    d = tmp_path / "files"
    d.mkdir()
    write_bytelevel_tokenizer(d, cls, prefix_space)
    (d / "config.json").write_text(json.dumps({"model_type": model_type}))
    assert not (d / "tokenizer.json").exists()
    assert_same_tokens(d)
    transformers.AutoTokenizer.from_pretrained(str(d)).save_pretrained(str(tmp_path / "json"))
    shutil.copy(d / "config.json", tmp_path / "json")
    assert (tmp_path / "json" / "tokenizer.json").is_file()
    assert_same_tokens(tmp_path / "json")


def test_tokenizer_json_truncation_and_padding_are_dropped(tmp_path):
    d = tmp_path / "hf"
    d.mkdir()
    write_bert_tokenizer(d)
    (d / "config.json").write_text('{"model_type": "bert"}')
    tok = transformers.AutoTokenizer.from_pretrained(str(d))
    tok.backend_tokenizer.enable_truncation(max_length=8)
    tok.backend_tokenizer.enable_padding(length=8)
    tok.backend_tokenizer.save(str(d / "tokenizer.json"))
    text = "the quick brown fox jumps over the lazy dog the quick brown fox"
    for loaded in (load_hf_tokenizer(d), PretuneTokenizer.load(d / "tokenizer.json")):
        assert len(loaded.encode(text).ids) > 8
        assert loaded.specials.pad not in loaded.encode("the cat").ids


# ---- command line and errors ---------------------------------------------------------------------------------------


def test_cli_import_export(tmp_path, capsys):
    make_hf("roberta", "roberta", tmp_path / "hf")
    assert main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "ckpt")]) == 0
    assert "imported roberta" in capsys.readouterr().out
    saved = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert saved["objective"] == "mlm" and saved["heads"] == ["mlm"] and saved["model"]["pad_token_id"] == 1
    assert main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "ckpt")]) == 2  # never overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "ckpt"), "--overwrite"]) == 0
    assert main(["export", str(tmp_path / "ckpt"), "--format", "onnx", "--out", str(tmp_path / "x")]) == 2
    assert main(["export", str(tmp_path / "ckpt"), "--format", "hf", "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file() and (tmp_path / "out" / "vocab.json").is_file()
    assert main(["export", str(tmp_path / "ckpt"), "--format", "hf", "--out", str(tmp_path / "out")]) == 2


def test_import_errors(tmp_path, capsys):
    d = tmp_path / "llama"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "llama"}')
    assert main(["import", str(d), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "llama" in err and supported() in err
    with pytest.raises(InputError, match="not a Hugging Face model folder"):
        import_folder(tmp_path, tmp_path / "y")
    make_hf("bert", "bert-gelu", tmp_path / "hf")
    (tmp_path / "hf" / "model.safetensors").rename(tmp_path / "weights.bak")
    with pytest.raises(InputError, match="no PyTorch weights"):
        open_checkpoint(tmp_path / "hf")
    # an untied output layer cannot be represented: refuse rather than silently tie it
    from safetensors.torch import load_file, save_file

    state = load_file(str(tmp_path / "weights.bak"))
    state["cls.predictions.decoder.weight"] = torch.randn_like(state["bert.embeddings.word_embeddings.weight"])
    save_file(state, str(tmp_path / "hf" / "model.safetensors"))
    with pytest.raises(InputError, match="untied"):
        open_checkpoint(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config["position_embedding_type"] = "relative_key"
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="absolute"):
        open_checkpoint(tmp_path / "hf")
    for f in ("vocab.txt", "tokenizer_config.json"):
        (tmp_path / "hf" / f).unlink()
    with pytest.raises(InputError, match="no tokenizer"):
        open_checkpoint(tmp_path / "hf")


# ---- the whole story: HF folder -> continue pretraining -> fine-tune -> HF folder -----------------------------------


def test_continue_pretraining_and_finetuning_from_hf_folder(tmp_path, capsys):
    pytest.importorskip("pretune.finetune.model")
    from pretune.finetune.model import load_task_model

    make_hf("bert", "bert-gelu", tmp_path / "hf")  # vocab.txt only, as many published folders
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS * 3) + "\n")
    assert main(["prepare", str(corpus), "--tokenizer", str(tmp_path / "hf"), "--out", str(tmp_path / "shards"),
                 "--validation-fraction", "0.2"]) == 0
    assert main(["pretrain", "--shards", str(tmp_path / "shards"), "--init-from", str(tmp_path / "hf"),
                 "--out", str(tmp_path / "run"), "--max-len", "32", "--max-steps", "3", "--batch-size", "4",
                 "--eval-every", "3", "--eval-batches", "1", "--no-progress", "--device", "cpu"]) == 0
    before = open_checkpoint(tmp_path / "hf").state_dict
    after = open_checkpoint(tmp_path / "run").state_dict
    assert not torch.equal(before["heads.mlm.dense.weight"], after["heads.mlm.dense.weight"])  # it trained
    rows = [("the cat sat", "a"), ("the quick brown fox", "b"), ("hello world", "a"), ("lazy dog", "b")] * 4
    for name in ("train", "validation"):
        with open(tmp_path / f"{name}.csv", "w", newline="") as f:
            csv.writer(f).writerows([("text", "label"), *rows])
    assert main(["finetune", "--task", "classify", "--from", str(tmp_path / "run"), "--train",
                 str(tmp_path / "train.csv"), "--validation", str(tmp_path / "validation.csv"), "--out",
                 str(tmp_path / "ft"), "--epochs", "1", "--batch-size", "8", "--max-len", "32", "--no-progress",
                 "--device", "cpu", "--pooling", "cls"]) == 0  # BertForSequenceClassification reads [CLS]
    assert main(["export", str(tmp_path / "ft"), "--out", str(tmp_path / "final")]) == 0
    capsys.readouterr()
    model, tok, _ = load_task_model(tmp_path / "ft")
    hf = load_exported(tmp_path / "final", transformers.AutoModelForSequenceClassification)
    htok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "final"))
    enc = htok(["the cat sat on the mat", "hello"], padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = hf(**enc).logits
        ours = model(enc["input_ids"], attention_mask=enc["attention_mask"],
                     token_type_ids=enc["token_type_ids"])["logits"]
    assert enc["input_ids"][0].tolist()[:1] == [tok.specials.cls]
    assert (ref - ours).abs().max().item() < TOL
