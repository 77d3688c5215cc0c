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
    assert {p.name for p in cache.iterdir()} >= {"tokenizer.json", "hf_tokenizer.json", "shards"}


def test_unknown_measure_is_refused():
    bench = _load()
    with pytest.raises(SystemExit, match="unknown measures"):
        bench.main(["--measures", "mlm_tiny"])
