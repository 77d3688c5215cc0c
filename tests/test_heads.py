"""Fine-tuning heads: shapes, parameter names (the Hugging Face export relies on them), what each head looks at."""

from __future__ import annotations

import pytest
import torch

from pretune.model.crf import CRF
from pretune.model.heads import ClassificationHead, SpanHead, TokenClassificationHead
from pretune.model.transformer import PRESETS, ModelConfig

B, T, K = 3, 7, 5


@pytest.fixture()
def cfg() -> ModelConfig:
    return ModelConfig(**{**PRESETS["tiny"], "vocab_size": 50, "dropout": 0.0, "attention_dropout": 0.0})


def test_classification_head_shape_and_bert_names(cfg):
    torch.manual_seed(0)
    head = ClassificationHead(cfg, K).eval()
    hidden = torch.randn(B, T, cfg.hidden_size)
    assert head(hidden).shape == (B, K)
    assert sorted(n for n, _ in head.named_parameters()) == [
        "classifier.bias", "classifier.weight", "pooler.dense.bias", "pooler.dense.weight"]
    assert head.classifier.weight.shape == (K, cfg.hidden_size)
    # BERT's pooler: tanh(dense(h[CLS])) -> classifier
    expected = head.classifier(torch.tanh(head.pooler.dense(hidden[:, 0])))
    torch.testing.assert_close(head(hidden), expected)


def test_classification_head_reads_only_the_pooled_position(cfg):
    torch.manual_seed(0)
    head = ClassificationHead(cfg, K).eval()
    hidden = torch.randn(B, T, cfg.hidden_size)
    changed = hidden.clone()
    changed[:, 1:] += 1.0
    torch.testing.assert_close(head(hidden), head(changed))  # [CLS] only
    last = torch.tensor([T - 1, 3, 2])
    other = hidden.clone()
    other[0, 0] += 1.0  # row 0 pools position T-1, so its [CLS] does not matter
    torch.testing.assert_close(head(hidden, last)[0], head(other, last)[0])
    assert not torch.allclose(head(hidden, last), head(hidden))


def test_mean_pooling_head_averages_only_the_real_tokens(cfg):
    torch.manual_seed(0)
    head = ClassificationHead(cfg, K, pooling="mean").eval()
    hidden = torch.randn(B, T, cfg.hidden_size)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, 4:] = 0  # row 0 has 4 real tokens, the rest is padding
    expected = head.classifier(torch.tanh(head.pooler.dense(hidden[0, :4].mean(0))))
    torch.testing.assert_close(head(hidden, mask=mask)[0], expected)
    padded = hidden.clone()
    padded[0, 4:] += 5.0  # padding never counts
    torch.testing.assert_close(head(padded, mask=mask), head(hidden, mask=mask))
    changed = hidden.clone()
    changed[:, 2] += 1.0  # a real token other than [CLS] does count (the [CLS] head ignores it)
    assert not torch.allclose(head(changed, mask=mask), head(hidden, mask=mask))
    with pytest.raises(ValueError, match="pooling"):
        ClassificationHead(cfg, K, pooling="max")


def test_token_head_shape_names_and_crf_constraints(cfg):
    labels = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    plain = TokenClassificationHead(cfg, len(labels))
    assert plain.crf is None
    assert plain(torch.randn(B, T, cfg.hidden_size)).shape == (B, T, len(labels))
    assert sorted(n for n, _ in plain.named_parameters()) == ["classifier.bias", "classifier.weight"]
    with_crf = TokenClassificationHead(cfg, len(labels), crf=True, labels=labels)
    assert isinstance(with_crf.crf, CRF)
    names = {n for n, _ in with_crf.named_parameters()}
    assert {"crf.start", "crf.end", "crf.transitions", "classifier.weight"} <= names
    # I-X can neither start a sentence nor follow O or another type
    assert with_crf.crf.allowed_start.tolist() == [True, True, False, True, False]
    assert not with_crf.crf.allowed_transitions[0, 2]  # O -> I-LOC
    assert not with_crf.crf.allowed_transitions[3, 2]  # B-PER -> I-LOC
    assert with_crf.crf.allowed_transitions[1, 2] and with_crf.crf.allowed_transitions[2, 2]


def _spans() -> torch.Tensor:
    # [B, S, 2] first/last subword (inclusive); row 2 has one padded candidate (0, 0)
    return torch.tensor([
        [[1, 1], [1, 3], [2, 4]],
        [[1, 2], [3, 3], [5, 6]],
        [[2, 2], [2, 5], [0, 0]],
    ])


def test_span_head_shape_and_names(cfg):
    head = SpanHead(cfg, K, max_span_width=4).eval()
    out = head(torch.randn(B, T, cfg.hidden_size), _spans(), torch.tensor([[1, 3, 3], [2, 1, 2], [1, 4, 0]]))
    assert out.shape == (B, 3, K)
    assert torch.isfinite(out).all()  # the padded candidate too
    assert {"attention.weight", "width.weight", "dense.weight", "classifier.weight"} <= {
        n for n, _ in head.named_parameters()}


def test_span_head_looks_only_inside_its_span(cfg):
    torch.manual_seed(0)
    head = SpanHead(cfg, K, max_span_width=4).eval()
    hidden = torch.randn(B, T, cfg.hidden_size)
    spans = _spans()
    base = head(hidden, spans)
    changed = hidden.clone()
    changed[0, 5:] += 3.0  # outside every span of row 0 (they end at 4)
    torch.testing.assert_close(head(changed, spans)[0], base[0])
    inner = hidden.clone()
    inner[0, 2] += 3.0  # inside spans (1, 3) and (2, 4), not (1, 1): changes through the attention pooling
    out = head(inner, spans)
    torch.testing.assert_close(out[0, 0], base[0, 0])
    assert not torch.allclose(out[0, 1], base[0, 1])
    assert not torch.allclose(out[0, 2], base[0, 2])


def test_span_head_width_embedding_matters_and_is_clamped(cfg):
    torch.manual_seed(0)
    head = SpanHead(cfg, K, max_span_width=2).eval()
    hidden = torch.randn(1, T, cfg.hidden_size)
    spans = torch.tensor([[[1, 3]]])
    a = head(hidden, spans, torch.tensor([[1]]))
    b = head(hidden, spans, torch.tensor([[2]]))
    assert not torch.allclose(a, b)
    torch.testing.assert_close(head(hidden, spans, torch.tensor([[9]])), b)  # wider than the table: the last row
