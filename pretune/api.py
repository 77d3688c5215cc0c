"""The Python API, for notebooks: a thin layer over what the subcommands run.

    import pretune
    summary = pretune.run_pipeline("my.toml", out="runs/demo")  # `pretune run`; or a dict of tables; overrides
    model = pretune.load("runs/demo/finetune")  # a pretune checkpoint (or a run folder holding one), or a HF folder
    model.predict(["some text"])                # [{"label": ..., "probs": {...}}]
    model.embed(["some text"])                  # numpy [1, H]
    model.explain("some text")                  # which subwords drove the prediction

Progress bars are tqdm.auto's: a widget in a notebook, a text bar in a terminal.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pretune.config import toml_value
from pretune.finetune.model import load_task_model
from pretune.run import pipeline
from pretune.run.config import load_config
from pretune.training.config import resolve_device
from pretune.use.embed import embed, load_body
from pretune.use.explain import METHODS, Explanation, explain_full
from pretune.use.predict import predict


def run_pipeline(config: str | Path | dict | None = None, *, out: str | Path | None = None,
                 overrides: dict[str, Any] | None = None, force: bool = False, overwrite: bool = False) -> dict:
    """Run (or bring up to date) `pretune run` and return its summary (report/summary.json).

    config: a TOML path, the same tables as a dict ({"corpus": {"files": [...]}, ...}; relative paths from the
    working directory), or None for the bundled default. overrides: {"table.key": value} as `--set` takes them,
    e.g. {"pretrain.trainer.max_steps": 200}."""
    sets = [f"{key}={toml_value(value)}" for key, value in (overrides or {}).items()]
    cfg = load_config(config, overrides=sets, out=str(out) if out is not None else None)
    return pipeline.run_pipeline(cfg, force=force, overwrite=overwrite)


class Model:
    """A checkpoint ready to use: `predict` and `explain` need a fine-tuned one, `embed` takes any. The weights are
    loaded on first use (a fine-tuned checkpoint once for all three)."""

    def __init__(self, path: str | Path, device: str = "auto"):
        self.path, self.device = Path(path), resolve_device(device)
        self._task: tuple | None = None  # (TaskModel, tokenizer, config)
        self._body: tuple | None = None  # (Transformer, tokenizer, config)

    def _task_parts(self) -> tuple:
        if self._task is None:
            self._task = load_task_model(self.path, device=self.device)
        return self._task

    def predict(self, inputs: Sequence, batch_size: int = 32) -> list[dict]:
        """One prediction per input, in order. classify: texts; pair: (a, b) tuples; tag / span: texts (split into
        words) or word lists; seqtag: sequences. Each: {"label", "probs"} / {"tags", "probs"} / {"spans": [{"start",
        "end", ...}]} / {"labels" (one per character), "segments", "mean_prob"}."""
        return predict(self._task_parts(), inputs, batch_size=batch_size)

    def embed(self, texts: Sequence[str], pool: str = "cls", layers: str = "last", batch_size: int = 32,
              max_len: int | None = None) -> np.ndarray | list[np.ndarray]:
        """Contextual embeddings: float32 [N, H] pooled ("cls" or "mean"), or one [T_i, H] array per text ("none")."""
        if self._task is None and self._body is None:
            self._body = load_body(self.path, str(self.device))
        parts = self._task or self._body
        return embed(parts, texts, layers=layers, pool=pool, batch_size=batch_size, max_len=max_len)

    def explain(self, text: str, text_b: str | None = None, label: str | None = None,
                method: str = METHODS[0], steps: int = 32) -> Explanation:
        """Each subword's contribution to the probability of `label` (default: the predicted one): `.label`,
        `.prob`, `.items` as (token, start, end, score) with offsets into `.text`."""
        model, tok, conf = self._task_parts()
        return explain_full(model, tok, text, text_b, label, method, steps, conf.get("max_len"))


def load(path: str | Path, device: str = "auto") -> Model:
    """A checkpoint to predict / embed / explain with: a pretune checkpoint, a run folder holding one (its model/),
    or a Hugging Face model folder."""
    return Model(path, device)
