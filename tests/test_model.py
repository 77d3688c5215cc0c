"""The Transformer: sizes, masks, pre/post-LN, the MLM head at selected positions."""

import pytest
import torch

from pretune.errors import InputError
from pretune.model.heads import MLMHead
from pretune.model.transformer import PRESETS, ModelConfig, Transformer
from pretune.pretrain.objectives import MaskedLM, PretrainModel, Specials


def tiny(**kw) -> ModelConfig:
    return ModelConfig(**{**PRESETS["tiny"], "vocab_size": 100, "dropout": 0.0, "attention_dropout": 0.0, **kw})


def test_bert_base_shapes_and_parameter_count():
    cfg = ModelConfig()
    specials = Specials(cfg.vocab_size, 0, 101, 102, 103, [0, 100, 101, 102, 103])
    model = PretrainModel(cfg, MaskedLM(specials).heads(cfg))
    n = sum(p.numel() for p in model.parameters())
    # BERT-base with the tied MLM head: 109.5M (the decoder weight is the embedding matrix, counted once)
    assert 109_000_000 < n < 110_500_000, n
    x = torch.randint(0, cfg.vocab_size, (2, 16))
    out = model.body(x)
    assert out.last_hidden_state.shape == (2, 16, 768)
    logits = model.heads["mlm"](out.last_hidden_state[:, :3].reshape(-1, 768), model.embedding_weight)
    assert logits.shape == (6, cfg.vocab_size)


@pytest.mark.parametrize("pre_ln", [False, True])
def test_padding_invariance(pre_ln):
    torch.manual_seed(0)
    model = Transformer(tiny(pre_ln=pre_ln, final_layer_norm=pre_ln)).eval()
    x = torch.randint(5, 100, (2, 10))
    plain = model(x).last_hidden_state
    padded = torch.cat([x, torch.zeros(2, 6, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(2, 10), torch.zeros(2, 6)], dim=1).bool()
    types = torch.zeros_like(padded)
    out = model(padded, attention_mask=mask, token_type_ids=types).last_hidden_state
    torch.testing.assert_close(out[:, :10], plain, atol=1e-5, rtol=1e-5)
    # without the mask the padding does leak into real positions: the mask is what makes this pass
    leaked = model(padded).last_hidden_state
    assert (leaked[:, :10] - plain).abs().max() > 1e-3


def test_causal_flag_blocks_the_future_and_bidirectional_does_not():
    torch.manual_seed(0)
    x = torch.randint(5, 100, (1, 12))
    y = x.clone()
    y[0, 7] = (x[0, 7] + 1) % 100
    for causal in (True, False):
        model = Transformer(tiny(causal=causal)).eval()
        a, b = model(x).last_hidden_state, model(y).last_hidden_state
        before = (a[:, :7] - b[:, :7]).abs().max()
        assert (before < 1e-6) if causal else (before > 1e-4)


def test_kv_cache_matches_full_forward():
    torch.manual_seed(0)
    model = Transformer(tiny(causal=True, pre_ln=True, final_layer_norm=True)).eval()
    x = torch.randint(5, 100, (2, 9))
    full = model(x).last_hidden_state
    out = model(x[:, :5], use_cache=True)
    step = model(x[:, 5:6], past_key_values=out.past_key_values, use_cache=True)
    torch.testing.assert_close(step.last_hidden_state[:, 0], full[:, 5], atol=1e-5, rtol=1e-5)
    rest = model(x[:, 6:], past_key_values=step.past_key_values)
    torch.testing.assert_close(rest.last_hidden_state, full[:, 6:], atol=1e-5, rtol=1e-5)


def test_hidden_states_and_segments():
    model = Transformer(tiny()).eval()
    x = torch.randint(5, 100, (1, 6))
    out = model(x, output_hidden_states=True)
    assert len(out.hidden_states) == 1 + model.config.num_layers
    seg = torch.tensor([[0, 0, 0, 1, 1, 1]])
    assert not torch.allclose(model(x, token_type_ids=seg).last_hidden_state, out.last_hidden_state)


def test_mlm_head_only_decodes_given_rows():
    cfg = tiny()
    head = MLMHead(cfg)
    emb = torch.randn(cfg.vocab_size, cfg.hidden_size)
    h = torch.randn(4, cfg.hidden_size)
    assert head(h, emb).shape == (4, cfg.vocab_size)


@pytest.mark.parametrize(
    "bad",
    [dict(hidden_size=65), dict(num_layers=0), dict(activation="swish"), dict(dropout=1.5), dict(pad_token_id=500),
     dict(position_init="learned")],
)
def test_invalid_configs_are_rejected(bad):
    with pytest.raises(InputError):
        tiny(**bad).validate()


def test_sinusoidal_position_init_changes_only_the_position_table():
    torch.manual_seed(0)
    plain = Transformer(tiny())
    torch.manual_seed(0)
    sin = Transformer(tiny(position_init="sinusoidal"))
    table = sin.embeddings.position.weight
    assert abs(table.std().item() - 0.02) < 1e-4
    # neighbouring positions start alike and distant ones not: the table's dot products fall with the distance
    sim = torch.nn.functional.cosine_similarity(table[10:11], table[[11, 14, 40]], dim=-1)
    assert sim[0] > sim[1] > sim[2]
    rand = plain.embeddings.position.weight
    assert sim[0] > 0.5 > torch.nn.functional.cosine_similarity(rand[10], rand[11], dim=0)  # random: unrelated
    for name, p in plain.state_dict().items():  # every other weight is the same random draw
        assert torch.equal(p, sin.state_dict()[name]) == (name != "embeddings.position.weight"), name


def test_unknown_config_key_is_named():
    with pytest.raises(InputError, match="hiden_size"):
        ModelConfig.from_dict({"hiden_size": 3})
