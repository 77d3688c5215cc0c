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
from pretune.interop.hf_rules import ACTIVATIONS_OUT, BASE_PREFIX, ROBERTA_LIKE, body_rules, head_rules, to_theirs
from pretune.model.transformer import ModelConfig, Transformer
from pretune.text.tokenizer import PretuneTokenizer
from pretune.training import checkpoint as ck

EXPORT_FAMILIES = ("bert", "roberta", "roberta-prelayernorm", "gpt2")
ARCHITECTURES = {
    ("bert", "mlm"): "BertForMaskedLM", ("bert", "body"): "BertModel", ("bert", "pretraining"): "BertForPreTraining",
    ("bert", "classify"): "BertForSequenceClassification", ("bert", "tag"): "BertForTokenClassification",
    ("roberta", "mlm"): "RobertaForMaskedLM", ("roberta", "body"): "RobertaModel",
    ("roberta", "classify"): "RobertaForSequenceClassification", ("roberta", "tag"): "RobertaForTokenClassification",
    ("roberta-prelayernorm", "mlm"): "RobertaPreLayerNormForMaskedLM",
    ("roberta-prelayernorm", "body"): "RobertaPreLayerNormModel",
    ("roberta-prelayernorm", "classify"): "RobertaPreLayerNormForSequenceClassification",
    ("roberta-prelayernorm", "tag"): "RobertaPreLayerNormForTokenClassification",
    ("gpt2", "lm"): "GPT2LMHeadModel", ("gpt2", "body"): "GPT2Model",
}


def _tokenizer_files(tok: PretuneTokenizer, cfg: ModelConfig, family: str, out: Path) -> None:
    """tokenizer.json (+ vocab.txt or vocab.json/merges.txt) and tokenizer_config.json for `transformers`.

    Encoders get a post-processor framing text as pretune does ([CLS] A [SEP] B [SEP]); GPT-2 adds nothing."""
    if getattr(tok, "kmer_overlap", 0):
        raise InputError(f"an overlapping k-mer tokenizer (kmer{tok.kmer_overlap}-overlap) cannot be exported: "
                         "tokenizers has no model for overlapping pieces, so transformers would cut the text into "
                         "non-overlapping k-mers; split sequences into overlapping k-mers yourself (DNABERT-1 style)")
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


def auto_family(cfg: ModelConfig, tok: PretuneTokenizer) -> str:
    """The family an architecture exports to: gpt2 (causal), roberta-prelayernorm (pre-LN encoder), roberta (post-LN,
    <s> / </s> vocabulary) or bert."""
    if cfg.causal:
        return "gpt2"
    if cfg.pre_ln:
        return "roberta-prelayernorm"
    return "roberta" if tok.id_to_token(tok.specials.cls) == "<s>" else "bert"


def _flags(cfg: ModelConfig, keys: tuple[str, ...]) -> str:
    return ", ".join(f"{k} = {str(getattr(cfg, k)).lower()}" for k in keys)


def _mismatch(cfg: ModelConfig, family: str) -> str | None:
    """Why `family` cannot hold this architecture exactly (None when it can), with the advice that fits."""
    if family == "gpt2":
        if not cfg.causal:
            other = "roberta-prelayernorm" if cfg.pre_ln else "bert or roberta"
            return f"gpt2 is a causal family and this model is bidirectional: export it as {other} (or auto)"
        want = dict(pre_ln=True, final_layer_norm=True, embedding_layer_norm=False, type_vocab_size=0)
        bad = tuple(k for k, v in want.items() if getattr(cfg, k) != v)
        if bad:
            return (f"GPT-2 export needs a causal model with pre_ln = true, final_layer_norm = true, "
                    f"embedding_layer_norm = false and type_vocab_size = 0; this one has {_flags(cfg, bad)}, which no "
                    "transformers family holds (pretrain with --objective clm's defaults to export)")
        return None
    if cfg.causal:
        return f"a causal model exports as gpt2, not {family}"
    if family == "roberta-prelayernorm":
        if not cfg.pre_ln:
            return "this post-LN encoder exports as bert or roberta, not roberta-prelayernorm"
        bad = tuple(k for k in ("embedding_layer_norm", "final_layer_norm") if not getattr(cfg, k))
        if bad:
            return (f"a pre-LN encoder exports as roberta-prelayernorm, which has an embedding LayerNorm and a final "
                    f"LayerNorm; this one has {_flags(cfg, bad)}, which no transformers family holds (pretrain with "
                    "embedding_layer_norm = true and final_layer_norm = true to export)")
        return None
    if cfg.pre_ln:
        return f"a pre-LN encoder exports as roberta-prelayernorm (--family roberta-prelayernorm or auto), not {family}"
    if not cfg.embedding_layer_norm or cfg.final_layer_norm:
        return (f"{family} is post-LN with an embedding LayerNorm and no final LayerNorm; this model has "
                f"{_flags(cfg, ('embedding_layer_norm', 'final_layer_norm'))}, which no transformers family holds "
                "(pretrain with embedding_layer_norm = true and final_layer_norm = false to export)")
    return None


def _export_family(cfg: ModelConfig, tok: PretuneTokenizer, family: str, path: Path) -> str:
    if family == "auto":
        family = auto_family(cfg, tok)
    if family not in EXPORT_FAMILIES:
        raise InputError(f"unknown family {family!r}; expected auto or one of {', '.join(EXPORT_FAMILIES)}")
    problem = _mismatch(cfg, family)
    if problem:
        raise InputError(problem, path=path)
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
        offset = cfg.pad_token_id + 1 if family in ROBERTA_LIKE else 0
        out = {
            "model_type": family, "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
            "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
            "intermediate_size": cfg.ffn_size, "hidden_act": ACTIVATIONS_OUT[cfg.activation],
            "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.attention_dropout,
            "max_position_embeddings": cfg.max_positions + offset, "type_vocab_size": max(cfg.type_vocab_size, 1),
            "layer_norm_eps": cfg.layer_norm_eps, "position_embedding_type": "absolute",
        }
        if family in ROBERTA_LIKE:
            out.update(bos_token_id=s.cls, eos_token_id=s.sep)
    out.update(architectures=[architecture], pad_token_id=cfg.pad_token_id, initializer_range=0.02,
               tie_word_embeddings=True, torch_dtype="float32")
    if labels is not None:
        out["id2label"] = {str(i): name for i, name in enumerate(labels)}
        out["label2id"] = {name: i for i, name in enumerate(labels)}
    return out


def _task_kind(ckpt: ck.Checkpoint, family: str) -> tuple[str, str | None]:
    """(kind, note) of a fine-tuned checkpoint: classify / tag when transformers has the head, else body with a note
    saying why the head was left out."""
    task = ckpt.config["task"]
    head = ckpt.config.get("head") or {}
    why = None
    if family == "gpt2":
        why = f"the {task} head on a causal body"
    elif task in ("classify", "pair") and head.get("pooling", "cls") != "cls":
        why = f"the {task} head on the mean of the tokens' states (pooling {head.get('pooling')!r})"
    elif task == "tag" and any(k.startswith("head.crf.") for k in ckpt.state_dict):
        why = "the CRF tag head"
    elif task not in ("classify", "pair", "tag"):
        why = f"the {task} head"
    if why is None:
        return ("tag" if task == "tag" else "classify"), None
    return "body", why


def export_hf(checkpoint: str | Path, out: str | Path, family: str = "auto", overwrite: bool = False) -> list[str]:
    """Write a pretune checkpoint as a Hugging Face folder; returns notes on what was left out.

    A head transformers has no class for (mean pooling, CRF, span, a task head on a causal body) is left out: the
    body is written as the family's base model (BertModel, RobertaPreLayerNormModel, GPT2Model, ...) and a note
    says so."""
    ckpt = open_checkpoint(checkpoint)
    out = Path(out)
    check_target(out, overwrite)
    if ckpt.config.get("ensemble", 1) != 1:
        raise InputError(f"an ensemble of {ckpt.config['ensemble']} fine-tuned models has no Hugging Face counterpart; "
                         "export one of its members (members/member-0/model in its run directory)", path=ckpt.path)
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
    labels, why = None, None
    if ckpt.config.get("task") is not None:
        kind, why = _task_kind(ckpt, family)
        if kind != "body":
            labels = [str(x) for x in ckpt.config.get("labels", [])]
    elif family == "gpt2":
        kind = "lm"  # the causal LM head is the tied embeddings: every causal body has it
    else:
        kind = "mlm" if "heads.mlm.bias" in state else "body"
        if kind == "mlm" and family == "bert" and "heads.nsp.classifier.weight" in state:
            kind = "pretraining"  # BertForPreTraining: MLM + NSP
        if family == "roberta" and kind == "mlm" and cfg.activation != "gelu":
            raise InputError("RoBERTa's MLM head always uses erf GELU; export this model with --family bert",
                             path=ckpt.path)
        if family == "roberta-prelayernorm" and kind == "mlm" and cfg.activation != "gelu":
            kind, why = "body", f"the MLM head with activation {cfg.activation!r} (RoBERTa-PreLayerNorm's is erf GELU)"
    p = "" if kind == "body" else BASE_PREFIX[family]  # base models are saved without the prefix
    offset = cfg.pad_token_id + 1 if family in ROBERTA_LIKE else 0
    heads = ("mlm", "nsp") if kind == "pretraining" else () if kind == "body" else (kind,)
    rules = body_rules(family, cfg, p, offset) + [r for h in heads for r in head_rules(family, h, p)]
    pooler = kind == "body" and family != "gpt2" and "pooler.dense.weight" in state  # imported with the base model
    if pooler:
        rules += head_rules(family, "pooler", p)
    missing = [r.ours for r in rules if r.ours not in state]
    if missing:
        raise InputError(f"checkpoint lacks {missing[0]!r}: it does not match its config", path=ckpt.path)
    theirs = to_theirs(rules, state)
    if family != "gpt2" and cfg.type_vocab_size == 0:  # BERT always adds a segment embedding: make it zero
        theirs[f"{p}embeddings.token_type_embeddings.weight"] = torch.zeros(1, cfg.hidden_size)
    architecture = ARCHITECTURES[(family, kind)]
    random_pooler = kind == "body" and family != "gpt2" and not pooler
    if why is not None:
        notes.append(f"{why} has no transformers counterpart: exported the body only, as {architecture}"
                     + (" (its pooler left to transformers' random init)" if random_pooler else ""))
    elif random_pooler:
        notes.append(f"this checkpoint has no pooler for {architecture}: transformers initialises it at random "
                     "(last_hidden_state is unaffected)")
    if labels is not None and (ckpt.config.get("head") or {}).get("truncate") == "head+tail":
        notes.append("this classifier read texts longer than max_len by their first quarter and last three quarters "
                     "(truncate head+tail); a transformers tokenizer truncates their end instead")
    used = {r.ours for r in rules}
    left = sorted(k for k in state if k not in used and not (why is not None and k.startswith(("head.", "heads."))))
    if left:
        notes.append(f"not exported (no place in {architecture}): {', '.join(left[:4])}"
                     + (f" and {len(left) - 4} more" if len(left) > 4 else ""))
    config = hf_config(cfg, family, architecture, tok, labels)

    def fill(tmp: Path) -> None:
        files.write_json(tmp / ck.CONFIG, config)
        save_file(theirs, str(tmp / ck.WEIGHTS), metadata={"format": "pt"})
        _tokenizer_files(tok, cfg, family, tmp)

    files.write_dir_atomic(out, fill)
    return notes
