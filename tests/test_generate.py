"""Generation from causal models: KV cache = no cache, sampling filters, stopping, the CLI and its refusals."""

from __future__ import annotations

import pytest
import torch
from conftest import wordnet_shards

from pretune.cli import main
from pretune.errors import InputError
from pretune.model.transformer import PRESETS, ModelConfig
from pretune.pretrain.objectives import PretrainModel, Specials, build_objective
from pretune.use.generate import filter_logits, generate, generate_ids, load_causal_model


def causal_model(vocab: int = 60, seed: int = 0, **overrides) -> PretrainModel:
    torch.manual_seed(seed)
    values = {**PRESETS["tiny"], **overrides}
    cfg = ModelConfig(vocab_size=vocab, causal=True, pre_ln=True, final_layer_norm=True, **values)
    obj = build_objective("clm", Specials(vocab, 0, 2, 3, 4, [0, 1, 2, 3, 4]))
    return PretrainModel(cfg, obj.heads(cfg)).eval()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny clm run and a tiny mlm run (through the CLI) on 1500 lines of the bundled corpus."""
    root = tmp_path_factory.mktemp("gen")
    tok, lines, corpus = wordnet_shards(root, 1500, 1000)
    out = {}
    for objective in ("clm", "mlm"):
        out[objective] = root / objective
        code = main(["pretrain", "--shards", str(root / "shards"), "--out", str(out[objective]), "--objective",
                     objective, "--model-size", "tiny", "--max-len", "64", "--max-steps", "30", "--batch-size", "16",
                     "--lr", "3e-3", "--no-progress", "--eval-every", "30", "--eval-batches", "2"])
        assert code == 0
    return out


def test_cache_gives_the_same_tokens_as_recomputing():
    model = causal_model()
    prompt = [2, 11, 12, 13, 14]
    with_cache = generate_ids(model, prompt, max_new_tokens=25, greedy=True, use_cache=True)
    without = generate_ids(model, prompt, max_new_tokens=25, greedy=True, use_cache=False)
    assert len(with_cache) == 25
    assert with_cache == without
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    sampled = generate_ids(model, prompt, max_new_tokens=25, top_k=10, generator=g1, use_cache=True)
    assert sampled == generate_ids(model, prompt, max_new_tokens=25, top_k=10, generator=g2, use_cache=False)


def test_each_new_token_costs_one_position():
    model = causal_model()
    lengths = []
    forward = model.body.forward

    def spy(ids, *args, **kwargs):
        lengths.append(ids.shape[1])
        return forward(ids, *args, **kwargs)

    model.body.forward = spy
    generate_ids(model, [2, 7, 8, 9], max_new_tokens=6, greedy=True)
    assert lengths == [4, 1, 1, 1, 1, 1]
    lengths.clear()
    generate_ids(model, [2, 7, 8, 9], max_new_tokens=3, greedy=True, use_cache=False)
    assert lengths == [4, 5, 6]


def test_stops_at_the_end_token_and_the_last_position():
    model = causal_model()
    first = generate_ids(model, [2, 5, 6], max_new_tokens=10, greedy=True)
    stopped = generate_ids(model, [2, 5, 6], max_new_tokens=10, greedy=True, end_id=first[2])
    assert stopped == first[: first.index(first[2]) + 1]
    short = causal_model(max_positions=8)
    assert len(generate_ids(short, [2, 5, 6], max_new_tokens=50, greedy=True)) == 5
    with pytest.raises(InputError, match="positions"):
        generate_ids(short, list(range(2, 10)), max_new_tokens=1)
    banned = generate_ids(model, [2, 5, 6], max_new_tokens=10, greedy=True, banned_ids=[first[0]])
    assert banned[0] != first[0]


def test_filters_and_temperature():
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0, -1.0])
    assert torch.isfinite(filter_logits(logits, top_k=2)).tolist() == [True, True, False, False, False]
    p = logits.softmax(-1)  # [0.636, 0.234, 0.086, ...]
    assert torch.isfinite(filter_logits(logits, top_p=0.5)).tolist() == [True, False, False, False, False]
    assert torch.isfinite(filter_logits(logits, top_p=float(p[0] + 0.01))).tolist() == [True, True, False, False, False]
    assert torch.isfinite(filter_logits(logits, top_p=1.0)).all()
    model = causal_model()
    gen = torch.Generator().manual_seed(0)
    # top_k=1 is greedy whatever the temperature
    greedy = generate_ids(model, [2, 9], max_new_tokens=8, greedy=True)
    assert generate_ids(model, [2, 9], max_new_tokens=8, temperature=5.0, top_k=1, generator=gen) == greedy
    assert generate_ids(model, [2, 9], max_new_tokens=8, temperature=0.0) == greedy
    hot = {tuple(generate_ids(model, [2, 9], max_new_tokens=4, temperature=2.0, generator=gen)) for _ in range(5)}
    assert len(hot) > 1  # sampling does vary
    for bad in ({"temperature": -1.0}, {"top_k": 0}, {"top_p": 0.0}, {"top_p": 1.5}):
        with pytest.raises(InputError):
            generate_ids(model, [2, 9], max_new_tokens=2, **bad)


def test_generate_text_and_cli(runs, capsys):
    model, tok = load_causal_model(str(runs["clm"]))
    text = generate(model, tok, "a member of the", max_new_tokens=12, greedy=True)
    assert text.startswith("a member of the")
    assert generate(model, tok, "a member of the", max_new_tokens=12, greedy=True, use_cache=False) == text
    assert generate(model, tok, "the", max_new_tokens=10, seed=1) == generate(model, tok, "the", max_new_tokens=10,
                                                                             seed=1)
    capsys.readouterr()
    assert main(["generate", "--from", str(runs["clm"]), "--prompt", "a member of the", "--greedy",
                 "--max-new-tokens", "12"]) == 0
    assert capsys.readouterr().out.strip() == text
    assert main(["generate", "--from", str(runs["clm"]), "--prompt", "the", "--top-k", "20", "--top-p", "0.9",
                 "--temperature", "0.8", "--seed", "4"]) == 0
    assert capsys.readouterr().out.startswith("the")


def test_refuses_a_bidirectional_checkpoint(runs, capsys):
    capsys.readouterr()
    assert main(["generate", "--from", str(runs["mlm"]), "--prompt", "hello"]) == 2
    err = capsys.readouterr().err
    assert "bidirectional" in err and "clm" in err and len(err.strip().splitlines()) == 1
    assert main(["generate", "--from", str(runs["clm"]), "--prompt", "x", "--top-p", "2"]) == 2
    assert "top_p" in capsys.readouterr().err
