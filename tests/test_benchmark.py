"""benchmarks/vs_transformers.py runs on a tiny config and prints valid JSON lines (no timing assertions)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "vs_transformers.py"
TINY = ["--small-shape", "32,1,2,64", "--base-shape", "32,1,2,64", "--vocab-size", "400", "--corpus-lines", "400",
        "--seq-len", "16", "--batch-size", "4", "--base-batch-size", "2", "--warmup", "0", "--steps", "1",
        "--base-steps", "1", "--finetune-steps", "1", "--infer-texts", "8", "--repeats", "1", "--base-repeats", "1",
        "--quiet"]


def _load():
    spec = importlib.util.spec_from_file_location("vs_transformers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _records(text: str) -> dict[str, dict]:
    records = [json.loads(x) for x in text.splitlines() if x.startswith("{")]
    return {r["measure"]: r for r in records}


def _check_pair(rec: dict) -> None:
    assert rec["pretune"] > 0 and rec["transformers"] > 0
    assert rec["ratio"] == pytest.approx(rec["pretune"] / rec["transformers"], rel=0.01)
    assert len(rec["runs"]["pretune"]) == len(rec["runs"]["transformers"]) == 1


def test_every_measure_inline(tmp_path, capsys):
    bench = _load()
    bench.main([*TINY, "--inline", "--cache", str(tmp_path / "cache"),
                "--measures", "mlm_small,finetune,infer_classify,infer_embed"])
    got = _records(capsys.readouterr().out)
    peak = got.pop("matmul_peak_flops")
    assert peak["fp32"] > 0 and peak["bf16"] > 0
    for name in ("mlm_small_tokens_per_s", "finetune_examples_per_s", "infer_classify_tokens_per_s",
                 "infer_embed_tokens_per_s"):
        rec = got[name]
        _check_pair(rec)
        assert rec["better"] == "higher" and rec["ratio_cpu_time"] > 0
    for name in ("mlm_small", "finetune", "infer_classify", "infer_embed"):
        assert got[f"{name}_peak_rss_mb"]["better"] == "lower"
        _check_pair(got[f"{name}_peak_rss_mb"])
    # both tools saw exactly the same inference tokens
    assert got["infer_classify_tokens_per_s"]["config"]["same_tokens"] is True
    assert got["infer_embed_tokens_per_s"]["config"]["same_tokens"] is True
    flops = got["mlm_small_flops"]
    assert 0 < flops["pretune_fraction_of_fp32_peak"] and flops["pretune"] > 0
    # pretune decodes only the selected ~15% of positions, so it executes fewer FLOPs per token than the peer
    per_token_pt = flops["pretune"] / got["mlm_small_tokens_per_s"]["pretune"]
    per_token_hf = flops["transformers"] / got["mlm_small_tokens_per_s"]["transformers"]
    assert per_token_pt < per_token_hf


@pytest.mark.slow  # two fresh interpreters importing torch and transformers: ~12 s
def test_child_processes_and_cache_reuse(tmp_path):
    cache = tmp_path / "cache"
    cmd = [sys.executable, str(SCRIPT), *TINY, "--cache", str(cache), "--measures", "infer_embed"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    got = _records(out.stdout)
    assert set(got) == {"infer_embed_tokens_per_s", "infer_embed_peak_rss_mb"}
    _check_pair(got["infer_embed_tokens_per_s"])
    # each tool ran in its own process: its peak memory is its own (both at least the size of a torch import)
    assert got["infer_embed_peak_rss_mb"]["pretune"] > 50 and got["infer_embed_peak_rss_mb"]["transformers"] > 50
    (kept,) = cache.iterdir()  # one directory per vocabulary size and corpus cut
    assert {p.name for p in kept.iterdir()} >= {"tokenizer.json", "hf_tokenizer.json", "shards"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)  # reuses it
    assert out.returncode == 0, out.stderr
    assert [p.name for p in cache.iterdir()] == [kept.name]


def test_unknown_measure_is_refused():
    bench = _load()
    with pytest.raises(SystemExit, match="unknown measures"):
        bench.main(["--measures", "mlm_tiny"])


# ---- the speed-ups keep the maths ---------------------------------------------------------------------------------
def test_fast_dropout_keeps_the_expected_fraction_and_scales_exactly():
    import torch

    from pretune.model.transformer import Dropout, fast_dropout

    torch.manual_seed(0)
    x = torch.rand(1000, 1000) + 0.5
    for p in (0.1, 0.5):
        y = fast_dropout(x, p)
        kept = y != 0
        keep_rate = 1 - round(p * 65536) / 65536
        assert kept.float().mean().item() == pytest.approx(1 - p, abs=3e-3)
        torch.testing.assert_close(y[kept], x[kept] / keep_rate)
        assert y.mean().item() == pytest.approx(x.mean().item(), rel=5e-3)  # unbiased
    a = x.clone().requires_grad_()
    y = fast_dropout(a, 0.3)
    y.sum().backward()
    torch.testing.assert_close(a.grad, (y != 0).float() / (1 - round(0.3 * 65536) / 65536))
    assert fast_dropout(x, 0.0) is x
    layer = Dropout(0.3).eval()
    assert layer(x) is x  # evaluation: identity
    assert not (layer.train()(x) == x).all()


def test_attention_with_dropout_is_sdpa_without_dropout():
    import torch
    import torch.nn.functional as F

    from pretune.model.transformer import attention_with_dropout

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8) for _ in range(3))
    pad = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    pad[1, ..., 5:] = False
    for mask, causal in ((None, False), (None, True), (pad, False)):
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        torch.testing.assert_close(attention_with_dropout(q, k, v, mask, causal, 0.0), want, atol=1e-5, rtol=1e-5)
    # with dropout the probabilities are thinned and rescaled: each output row still averages to sum(p) * v = 1
    ones = torch.ones(4, 4, 64, 1)
    out = attention_with_dropout(torch.randn(4, 4, 64, 8), torch.randn(4, 4, 64, 8), ones, None, False, 0.25)
    assert out.mean().item() == pytest.approx(1.0, abs=0.05) and out.std().item() > 0.05


def test_training_speed_settings():
    import torch

    from pretune.training.config import TrainConfig, cpu_has_bf16, use_bf16
    from pretune.training.optim import adamw

    w = torch.nn.Parameter(torch.zeros(3))
    assert adamw([{"params": [w]}], TrainConfig(), torch.device("cpu")).defaults["fused"] is True
    assert adamw([{"params": [w]}], TrainConfig(), torch.device("cpu"), fused=False).defaults["foreach"] is True
    assert use_bf16("auto", torch.device("cpu")) == cpu_has_bf16()
    assert not use_bf16("fp32", torch.device("cpu")) and use_bf16("bf16", torch.device("cpu"))


def test_blocked_cross_entropy_matches_torch():
    import torch
    import torch.nn.functional as F

    from pretune.pretrain.objectives import SumCrossEntropy

    torch.manual_seed(0)
    targets = torch.randint(50, (13,))
    for dtype in (torch.float32, torch.bfloat16):
        base = (torch.randn(13, 50) * 3).to(dtype)
        for rows in (None, 4):  # one block / several blocks with a short last one
            a = base.clone().requires_grad_()
            loss, pred = SumCrossEntropy.apply(a, targets, rows)
            (loss / 13).backward()
            b = base.clone().requires_grad_()
            want = F.cross_entropy(b.float(), targets, reduction="sum")
            (want / 13).backward()
            torch.testing.assert_close(loss, want)
            assert torch.equal(pred, b.detach().float().argmax(-1))
            assert a.grad.dtype == dtype
            torch.testing.assert_close(a.grad.float(), b.grad.float())
    empty = torch.zeros(0, 50, requires_grad=True)
    loss, pred = SumCrossEntropy.apply(empty, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and pred.shape == (0,) and empty.grad.shape == (0, 50)
