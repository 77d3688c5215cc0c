"""The stage cache of a run directory: each stage runs in its own folder and records its fingerprint (a hash of
its config and of its inputs' contents) in stage.json; a stage whose fingerprint is unchanged is skipped, and an
interrupted one continues from its last checkpoint. Also the fingerprints that several stages share."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from pretune import files
from pretune.config import NEUTRAL_KEYS, config_diff
from pretune.errors import InputError
from pretune.training import checkpoint as ck

FORMAT_VERSION = 1  # of pipeline.json and summary.json
_HASHES: dict[tuple, str] = {}


def file_hash(path: str | Path) -> str:
    """sha256 of a file's bytes (cached per path, size and mtime within this process)."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise InputError("file not found", path=p) from None
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def fingerprint(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]


def trainer_fp(tcfg) -> dict:
    return {k: v for k, v in asdict(tcfg).items() if k not in NEUTRAL_KEYS}


@dataclass
class StageResult:
    name: str
    directory: Path
    fingerprint: str
    result: dict
    skipped: bool
    seconds: float


class Runner:
    """Runs stages in a run directory, skipping those whose fingerprint is unchanged and resuming interrupted ones."""
    def __init__(self, root: Path, force: bool = False, log=print, overwrite: bool = False):
        self.root, self.force, self.log = root, force, log
        self.overwrite = overwrite or force  # replace a training stage made with another config
        self.stages: dict[str, StageResult] = {}

    def _marker(self, name: str) -> Path:
        return self.root / ".running" / (name.replace("/", "__") + ".json")

    def stage(self, name: str, inputs: dict, work, can_continue: Callable[[Path], bool] | None = None
              ) -> StageResult:
        """Run `work(directory, resume) -> dict` unless `name`'s stage.json holds the same fingerprint.
        `can_continue(directory)`: whether an interrupted run of the stage left something to continue from
        (None: the stage always starts over)."""
        d = self.root / name
        fp = fingerprint({"stage": name, **inputs})
        record_file = d / "stage.json"
        if not self.force and record_file.is_file():
            record = read_record(record_file)
            if record.get("fingerprint") == fp and record.get("status") == "done":
                self.log(f"[{name}] up to date, skipped")
                res = StageResult(name, d, fp, record.get("result", {}), True, float(record.get("seconds", 0.0)))
                self.stages[name] = res
                return res
        marker = self._marker(name)
        if can_continue is not None and not self.overwrite:
            self._refuse_replacing(name, d, inputs, fp)
        resume = (can_continue is not None and not self.force and marker.is_file() and can_continue(d)
                  and read_record(marker).get("fingerprint") == fp)
        if not resume and d.exists():
            shutil.rmtree(d)
        marker.parent.mkdir(parents=True, exist_ok=True)
        files.write_json(marker, {"fingerprint": fp, "started": now(), "inputs": inputs})
        self.log(f"[{name}] {'continuing from its last checkpoint' if resume else 'running'}")
        t0 = time.perf_counter()
        result = work(d, resume)
        seconds = time.perf_counter() - t0
        d.mkdir(parents=True, exist_ok=True)
        if can_continue is not None and (d / "model").is_dir():
            shutil.rmtree(d / "last", ignore_errors=True)
        files.write_json(record_file, {"stage": name, "status": "done", "fingerprint": fp, "finished": now(),
                                    "seconds": round(seconds, 2), "inputs": inputs, "result": result})
        marker.unlink(missing_ok=True)
        self.log(f"[{name}] done in {seconds:.1f}s")
        res = StageResult(name, d, fp, result, False, seconds)
        self.stages[name] = res
        return res


    def _refuse_replacing(self, name: str, d: Path, inputs: dict, fp: str) -> None:
        """A training stage (finished, or interrupted with its folder left) made with another config is never
        replaced silently: say what differs and how to replace it."""
        done, marker = read_record(d / "stage.json"), read_record(self._marker(name))
        if done.get("status") == "done" and done.get("fingerprint") != fp:
            old = done.get("inputs", {})
        elif marker and marker.get("fingerprint") != fp and d.exists():
            old = marker.get("inputs", {})
        else:
            return
        diff = config_diff(old, inputs, limit=3) or ["its inputs"]
        raise InputError(f"stage {name}/ holds a model made with another config ({'; '.join(diff)}); pass "
                         "--overwrite to replace it and the stages after it, or choose another --out", path=d)


def read_record(path: Path) -> dict:
    try:
        return files.read_json(path)
    except InputError:
        return {}  # a damaged record only means the stage runs again


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def labeled_inputs(sec) -> dict:
    """The hashes of the labeled files a fine-tuning of [finetune] `sec` reads."""
    hashes = {"train": file_hash(sec.train), "validation": file_hash(sec.validation)}
    if sec.semi_supervised():  # the pool is read, and pool texts also in the test set are dropped
        hashes.update(unlabeled=[file_hash(f) for f in sec.unlabeled], test=file_hash(sec.test))
    return hashes


def finetune_fp(sec, tcfg) -> dict:
    """The fine-tuning settings a fingerprint holds: those that change the result, not paths or the data."""
    skip = ("checkpoint", "out", "test", "train", "validation", "from_scratch", "unlabeled", "pseudo_labels")
    if not sec.semi_supervised():  # e.g. the baseline: the pool settings change nothing
        skip += sec.SEMI_SUPERVISED_KEYS
    return {"finetune": {k: v for k, v in asdict(sec).items() if k not in skip}, "trainer": trainer_fp(tcfg)}


def architecture_fp(checkpoint: Path) -> dict:
    """What a from-scratch baseline depends on: the architecture and the tokenizer, not the weights."""
    conf = files.read_json(checkpoint / ck.CONFIG)
    return {"model": conf.get("model"), "tokenizer": file_hash(checkpoint / ck.TOKENIZER)}


def has_last_checkpoint(d: Path) -> bool:
    """A training run interrupted in `d` can continue: it left its last/ checkpoint."""
    return (d / "last").is_dir()

