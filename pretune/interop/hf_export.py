"""Hugging Face export: write a pretune checkpoint as a folder that `transformers` loads with its Auto classes
(config.json, model.safetensors, tokenizer files)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, processors

from pretune import files
from pretune.errors import InputError
from pretune.interop.hf import check_target, open_checkpoint
from pretune.interop.hf_rules import ACTIVATIONS_OUT, BASE_PREFIX, body_rules, head_rules, to_theirs
from pretune.model.transformer import ModelConfig, Transformer
from pretune.text.tokenizer import PretuneTokenizer
from pretune.training import checkpoint as ck

EXPORT_FAMILIES = ("bert", "roberta", "gpt2")
ARCHITECTURES = {
    ("bert", "mlm"): "BertForMaskedLM", ("bert", "body"): "BertModel", ("bert", "pretraining"): "BertForPreTraining",
    ("bert", "classify"): "BertForSequenceClassification", ("bert", "tag"): "BertForTokenClassification",
    ("roberta", "mlm"): "RobertaForMaskedLM", ("roberta", "body"): "RobertaModel",
    ("roberta", "classify"): "RobertaForSequenceClassification", ("roberta", "tag"): "RobertaForTokenClassification",
    ("gpt2", "lm"): "GPT2LMHeadModel",
}


def _tokenizer_files(tok: PretuneTokenizer, cfg: ModelConfig, family: str, out: Path) -> None:
    """tokenizer.json (+ vocab.txt or vocab.json/merges.txt) and tokenizer_config.json for `transformers`.

    Encoders get a post-processor framing text as pretune does ([CLS] A [SEP] B [SEP]); GPT-2 adds nothing."""
    inner = Tokenizer.from_str(tok.inner.to_str())
    inner.no_truncation()
    inner.no_padding()
    data = json.loads(inner.to_str())
    s = tok.specials
    cls_t, sep_t, pad_t, unk_t = (tok.id_to_token(i) for i in (s.cls, s.sep, s.pad, s.unk))
    if family != "gpt2":
        second = 1 if cfg.type_vocab_size > 1 else 0
        template = processors.TemplateProcessing(
            single=f"{cls_t}:0 $A:0 {sep_t}:0", pair=f"{cls_t}:0 $A:0 {sep_t}:0 $B:{second} {sep_t}:{second}",
            special_tokens=[(cls_t, s.cls), (sep_t, s.sep)] if cls_t != sep_t else [(cls_t, s.cls)])
        trim = _offset_trimming(data.get("post_processor"))
        inner.post_processor = processors.Sequence([trim, template]) if trim is not None else template
    bert_like = family != "gpt2" and cfg.type_vocab_size > 1 and _bert_pipeline(data)
    config = {
        "tokenizer_class": "BertTokenizer" if bert_like else "PreTrainedTokenizerFast",
        "model_max_length": cfg.max_positions,
        "clean_up_tokenization_spaces": False,
        "unk_token": unk_t, "pad_token": pad_t, "cls_token": cls_t, "sep_token": sep_t,
        "model_input_names": ["input_ids", "token_type_ids", "attention_mask"]
        if family != "gpt2" and cfg.type_vocab_size > 1 else ["input_ids", "attention_mask"],
    }
    if s.mask is not None:
        config["mask_token"] = tok.id_to_token(s.mask)
    if family == "gpt2":
        config.update(bos_token=cls_t, eos_token=sep_t)
    if bert_like:
        norm = data["normalizer"]
        config.update(do_lower_case=bool(norm["lowercase"]), strip_accents=norm["strip_accents"],
                      tokenize_chinese_chars=bool(norm["handle_chinese_chars"]))
    inner.save(str(out / "tokenizer.json"))
    model = data.get("model", {})
    if model.get("type") == "WordPiece":
        inner.model.save(str(out))  # vocab.txt
    elif model.get("type") == "BPE" and (data.get("pre_tokenizer") or {}).get("type") == "ByteLevel":
        inner.model.save(str(out))  # vocab.json + merges.txt
    files.write_json(out / "tokenizer_config.json", config)
    specials_map = {k: v for k, v in config.items() if k.endswith("_token")}
    files.write_json(out / "special_tokens_map.json", specials_map)


def _offset_trimming(post):
    """The ByteLevel offset trimming of an existing post-processor, to keep offsets as they were."""
    if not post:
        return None
    if post.get("type") == "Sequence":
        for p in post.get("processors", []):
            found = _offset_trimming(p)
            if found is not None:
                return found
        return None
    if post.get("type") in ("ByteLevel", "RobertaProcessing") and post.get("trim_offsets"):
        return processors.ByteLevel(trim_offsets=True, add_prefix_space=bool(post.get("add_prefix_space", True)))
    return None


def _bert_pipeline(data: dict) -> bool:
    """Whether `transformers`' BertTokenizer rebuilds exactly this tokenizer from its vocabulary and flags."""
    model, norm = data.get("model") or {}, data.get("normalizer") or {}
    plain_added = [t for t in data.get("added_tokens", []) if not t.get("special")]
    return (model.get("type") == "WordPiece" and model.get("continuing_subword_prefix") == "##"
            and model.get("max_input_chars_per_word") == 100 and norm.get("type") == "BertNormalizer"
            and norm.get("clean_text") is True and (data.get("pre_tokenizer") or {}).get("type") == "BertPreTokenizer"
            and not plain_added)


def _export_family(cfg: ModelConfig, tok: PretuneTokenizer, family: str, path: Path) -> str:
    if family == "auto":
        if cfg.causal:
            family = "gpt2"
        else:
            family = "roberta" if tok.id_to_token(tok.specials.cls) == "<s>" else "bert"
    if family not in EXPORT_FAMILIES:
        raise InputError(f"unknown family {family!r}; expected auto or one of {', '.join(EXPORT_FAMILIES)}")
    if family == "gpt2":
        if not (cfg.causal and cfg.pre_ln and cfg.final_layer_norm and not cfg.embedding_layer_norm
                and cfg.type_vocab_size == 0):
            raise InputError("GPT-2 export needs a causal pre-LN model with a final LayerNorm, no embedding "
                             "LayerNorm and no segment embeddings", path=path)
    elif cfg.causal or cfg.pre_ln or not cfg.embedding_layer_norm or cfg.final_layer_norm:
        raise InputError(f"{family} export needs a bidirectional post-LN model with an embedding LayerNorm "
                         "(as BERT); causal pre-LN models export as gpt2", path=path)
    return family


def hf_config(cfg: ModelConfig, family: str, architecture: str, tok: PretuneTokenizer,
              labels: list[str] | None) -> dict:
    """config.json for `transformers`."""
    s = tok.specials
    if family == "gpt2":
        out = {
            "model_type": "gpt2", "vocab_size": cfg.vocab_size, "n_embd": cfg.hidden_size, "n_layer": cfg.num_layers,
            "n_head": cfg.num_heads, "n_inner": cfg.ffn_size, "n_positions": cfg.max_positions,
            "activation_function": ACTIVATIONS_OUT[cfg.activation], "resid_pdrop": cfg.dropout,
            "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.attention_dropout, "layer_norm_epsilon": cfg.layer_norm_eps,
            "bos_token_id": s.cls, "eos_token_id": s.sep, "scale_attn_weights": True,
        }
    else:
        offset = cfg.pad_token_id + 1 if family == "roberta" else 0
        out = {
            "model_type": family, "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
            "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
            "intermediate_size": cfg.ffn_size, "hidden_act": ACTIVATIONS_OUT[cfg.activation],
            "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.attention_dropout,
            "max_position_embeddings": cfg.max_positions + offset, "type_vocab_size": max(cfg.type_vocab_size, 1),
            "layer_norm_eps": cfg.layer_norm_eps, "position_embedding_type": "absolute",
        }
        if family == "roberta":
            out.update(bos_token_id=s.cls, eos_token_id=s.sep)
    out.update(architectures=[architecture], pad_token_id=cfg.pad_token_id, initializer_range=0.02,
               tie_word_embeddings=True, torch_dtype="float32")
    if labels is not None:
        out["id2label"] = {str(i): name for i, name in enumerate(labels)}
        out["label2id"] = {name: i for i, name in enumerate(labels)}
    return out


def export_hf(checkpoint: str | Path, out: str | Path, family: str = "auto", overwrite: bool = False) -> list[str]:
    """Write a pretune checkpoint as a Hugging Face folder; returns notes on what was left out."""
    ckpt = open_checkpoint(checkpoint)
    out = Path(out)
    check_target(out, overwrite)
    if "model" not in ckpt.config:
        raise InputError("config.json has no 'model' section: not a pretune checkpoint", path=ckpt.path)
    cfg = ModelConfig.from_dict(ckpt.config["model"], str(ckpt.path / ck.CONFIG))
    tok = ckpt.tokenizer()
    body = ckpt.weights("body.")
    if body:  # the body's kinds and shapes against its config, as loading it would check (int64 weights: refused)
        with torch.device("meta"):
            ck.load_into(Transformer(cfg), body, ckpt.path, strict=False, check_only=True)
    family = _export_family(cfg, tok, family, ckpt.path)
    state, notes = ckpt.state_dict, []
    task = ckpt.config.get("task")
    labels = None
    if task is not None:
        kind = {"classify": "classify", "pair": "classify", "tag": "tag"}.get(task)
        if kind is None:
            raise InputError(f"task {task!r} has no Hugging Face counterpart; export supports classify, pair, tag "
                             "and pretrained (MLM / causal LM) checkpoints", path=ckpt.path)
        if family == "gpt2":
            raise InputError("task models on a causal body have no Hugging Face counterpart with the same head; "
                             "export supports classify / pair / tag on BERT and RoBERTa bodies", path=ckpt.path)
        if (ckpt.config.get("head") or {}).get("pooling", "cls") != "cls":
            raise InputError("a classifier on the mean of the tokens' states has no Hugging Face counterpart "
                             "(*ForSequenceClassification reads [CLS] through the pooler); fine-tune with "
                             "--pooling cls to export it, or export the pretrained checkpoint", path=ckpt.path)
        if any(k.startswith("head.crf.") for k in state):
            raise InputError("a CRF tag head has no Hugging Face counterpart (AutoModelForTokenClassification); "
                             "fine-tune without --crf to export", path=ckpt.path)
        labels = [str(x) for x in ckpt.config.get("labels", [])]
    elif family == "gpt2":
        kind = "lm"
    else:
        kind = "mlm" if "heads.mlm.bias" in state else "body"
        if kind == "mlm" and family == "bert" and "heads.nsp.classifier.weight" in state:
            kind = "pretraining"  # BertForPreTraining: MLM + NSP
        if family == "roberta" and kind == "mlm" and cfg.activation != "gelu":
            raise InputError("RoBERTa's MLM head always uses erf GELU; export this model with --family bert",
                             path=ckpt.path)
    p = "" if kind == "body" else BASE_PREFIX[family]  # base models are saved without the prefix
    offset = cfg.pad_token_id + 1 if family == "roberta" else 0
    heads = ("mlm", "nsp") if kind == "pretraining" else (kind,)
    rules = body_rules(family, cfg, p, offset) + [r for h in heads for r in head_rules(family, h, p)]
    missing = [r.ours for r in rules if r.ours not in state]
    if missing:
        raise InputError(f"checkpoint lacks {missing[0]!r}: it does not match its config", path=ckpt.path)
    theirs = to_theirs(rules, state)
    if family != "gpt2" and cfg.type_vocab_size == 0:  # BERT always adds a segment embedding: make it zero
        theirs[f"{p}embeddings.token_type_embeddings.weight"] = torch.zeros(1, cfg.hidden_size)
    used = {r.ours for r in rules}
    left = sorted(k for k in state if k not in used)
    if left:
        notes.append(f"not exported (no Hugging Face counterpart): {', '.join(left[:4])}"
                     + (f" and {len(left) - 4} more" if len(left) > 4 else ""))
    if kind == "body":
        notes.append("the pooler of the base model is not part of a pretune checkpoint: transformers initialises it "
                     "(last_hidden_state is unaffected)")
    config = hf_config(cfg, family, ARCHITECTURES[(family, kind)], tok, labels)

    def fill(tmp: Path) -> None:
        files.write_json(tmp / ck.CONFIG, config)
        save_file(theirs, str(tmp / ck.WEIGHTS), metadata={"format": "pt"})
        _tokenizer_files(tok, cfg, family, tmp)

    files.write_dir_atomic(out, fill)
    return notes
