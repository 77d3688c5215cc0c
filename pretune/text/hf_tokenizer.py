"""Read Hugging Face tokenizer files into a `tokenizers.Tokenizer`: a tokenizer.json, and the tokenizer of a model
folder built the way `transformers`' AutoTokenizer builds it.

`pretune.text.tokenizer` wraps what these return in a PretuneTokenizer; nothing here knows about models.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from pretune.errors import InputError
from pretune.files import read_input, read_json

MODEL_CONFIG = "config.json"  # a model folder's config (pretune's checkpoints use the same name)
BERT_TOKENIZERS = ("BertTokenizer", "DistilBertTokenizer")
BYTE_LEVEL_TOKENIZERS = ("GPT2Tokenizer", "RobertaTokenizer")
DEFAULT_TOKENIZER = {  # by model_type, for folders whose tokenizer_config.json names no class
    "bert": "BertTokenizer", "distilbert": "BertTokenizer", "roberta": "RobertaTokenizer",
    "xlm-roberta": "RobertaTokenizer", "roberta-prelayernorm": "RobertaTokenizer", "gpt2": "GPT2Tokenizer",
}


def is_hf_folder(path: str | Path) -> bool:
    """True for a directory whose config.json names a `model_type` (pretune's own configs never do)."""
    config = Path(path) / MODEL_CONFIG
    if not config.is_file():
        return False
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and "model_type" in data and "model" not in data


def read_text(path: Path) -> str:
    """A UTF-8 text file (a leading byte-order mark dropped), through `files.read_input`: regular, bounded."""
    try:
        return read_input(path).decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text ({e.reason} at byte {e.start})", path=path) from None


def read_tokenizer_json(path: Path) -> Tokenizer:
    """A `tokenizers` tokenizer.json, without the truncation and fixed padding Hugging Face files may carry
    (pretune frames and pads sequences itself)."""
    text = read_text(path)
    try:
        json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(
            f"invalid JSON ({e.msg}); expected a tokenizers tokenizer.json", path=path, line=e.lineno
        ) from e
    try:
        tok = Tokenizer.from_str(text)
    except Exception as e:  # the Rust side raises a bare Exception
        raise InputError(f"not a tokenizers tokenizer.json: {e}", path=path) from None
    if tok.get_vocab_size(with_added_tokens=False) == 0:
        raise InputError("empty vocabulary (\"model\": {\"vocab\": ...} holds no tokens); expected a trained "
                         "tokenizer", path=path)
    tok.no_truncation()
    tok.no_padding()
    return tok


def read_hf_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer of a Hugging Face folder, built the way `transformers`' AutoTokenizer builds it.

    tokenizer.json is used when present; BERT-family classes take their normalizer from tokenizer_config.json
    (do_lower_case, strip_accents, tokenize_chinese_chars) and GPT-2 / RoBERTa their add_prefix_space, as
    `transformers` does. Without tokenizer.json: vocab.txt (WordPiece) or vocab.json + merges.txt (byte-level BPE).
    Truncation and padding stored in tokenizer.json are dropped: pretune frames and pads sequences itself."""
    path = Path(path)
    hf = _optional_json(path / MODEL_CONFIG)
    tcfg = _optional_json(path / "tokenizer_config.json")
    cls = str(tcfg.get("tokenizer_class") or DEFAULT_TOKENIZER.get(hf.get("model_type"), ""))
    cls = cls.removesuffix("Fast")
    specials = {k: _token_text(tcfg.get(k)) for k in ("unk_token", "cls_token", "sep_token", "pad_token")}
    from_json = (path / "tokenizer.json").is_file()
    if from_json:
        inner = read_tokenizer_json(path / "tokenizer.json")
    elif (path / "vocab.txt").is_file() and cls in BERT_TOKENIZERS:
        vocab = _read_vocab_lines(path / "vocab.txt")
        inner = Tokenizer(models.WordPiece(vocab, unk_token=specials["unk_token"] or "[UNK]"))
    elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        vocab, merges = models.BPE.read_file(str(path / "vocab.json"), str(path / "merges.txt"))
        inner = Tokenizer(models.BPE(vocab, merges, dropout=None, continuing_subword_prefix="", end_of_word_suffix="",
                                     fuse_unk=False))
        cls = cls if cls in BYTE_LEVEL_TOKENIZERS else "GPT2Tokenizer"
    else:
        raise InputError("no tokenizer in the folder: expected tokenizer.json, vocab.txt (BERT) or vocab.json + "
                         "merges.txt (GPT-2 / RoBERTa)", path=path)
    if cls in BERT_TOKENIZERS:
        inner.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=bool(tcfg.get("tokenize_chinese_chars", True)),
            strip_accents=tcfg.get("strip_accents"), lowercase=bool(tcfg.get("do_lower_case", True)))
        inner.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        inner.decoder = decoders.WordPiece(prefix="##")
    elif cls in BYTE_LEVEL_TOKENIZERS:
        prefix_space = bool(tcfg.get("add_prefix_space", False))
        inner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix_space)
        inner.decoder = decoders.ByteLevel()
        if not from_json and cls == "RobertaTokenizer":
            sep, cls_tok = specials["sep_token"] or "</s>", specials["cls_token"] or "<s>"
            inner.post_processor = processors.RobertaProcessing(
                (sep, inner.token_to_id(sep) or 0), (cls_tok, inner.token_to_id(cls_tok) or 0),
                trim_offsets=bool(tcfg.get("trim_offsets", True)), add_prefix_space=prefix_space)
    _add_declared_specials(inner, tcfg)
    return inner


def _token_text(value) -> str | None:
    """A special token as tokenizer_config.json gives it: a string or a serialized AddedToken."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _optional_json(path: Path) -> dict:
    return read_json(path) if path.is_file() else {}


def _read_vocab_lines(path: Path) -> dict[str, int]:
    """vocab.txt as `transformers` reads it: line i (newline stripped) is token i; later duplicates win."""
    lines = read_text(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return {token: i for i, token in enumerate(lines)}


def _add_declared_specials(inner: Tokenizer, tcfg: dict) -> None:
    """Special tokens named in tokenizer_config.json but not yet registered (folders without tokenizer.json)."""
    known = {t.content for t in inner.get_added_tokens_decoder().values()}
    names = {_token_text(tcfg.get(k)) for k in ("unk_token", "cls_token", "sep_token", "pad_token", "mask_token",
                                                "bos_token", "eos_token")}
    new = sorted(n for n in names if n and n not in known and inner.token_to_id(n) is not None)
    if new:
        inner.add_special_tokens([AddedToken(n, special=True, normalized=False) for n in new])
