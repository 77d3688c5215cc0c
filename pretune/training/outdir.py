"""Output directories of a training run: refuse to overwrite silently; continue a run only with its own config.

Whoever writes a run directory holds its lock (`files.lock_dir`): a second process on the same --out is refused at
once. A run killed before its first checkpoint left nothing to lose: a plain rerun or --resume starts it again.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from pretune import files
from pretune.config import RESUME_KEYS, config_diff, without_keys
from pretune.errors import InputError
from pretune.training import distributed as dist


def _core(record: dict) -> dict:
    """What must match to continue a run: every setting but budgets, logging and the run directory's own path
    (it may be moved or renamed)."""
    return without_keys({s: v for s, v in record.items() if s != "launch"}, RESUME_KEYS + ("out",))


def _root(record: dict) -> str | None:
    """The folder holding an absolute `out`: `pretune run` keeps shards/ and pretrain/model/ there, beside it."""
    out = next((v["out"] for v in record.values() if isinstance(v, dict) and isinstance(v.get("out"), str)), "")
    return str(Path(out).parent) + os.sep if out and Path(out).is_absolute() else None


def _relative(value, root: str | None):
    if isinstance(value, list):
        return [_relative(v, root) for v in value]
    return "<run>/" + value[len(root):] if root and isinstance(value, str) and value.startswith(root) else value


def _differences(old: dict, new: dict) -> list[str]:
    """Why `new` may not continue the run recorded as `old` (empty: it may). A path that moved with the run
    directory (the same path relative to it) is no difference."""
    old_core, new_core = _core(old), _core(new)
    old_root, new_root = _root(old), _root(new)
    for section, values in old_core.items():
        other = new_core.get(section)
        if isinstance(values, dict) and isinstance(other, dict):
            for key, value in values.items():
                if key in other and _relative(value, old_root) == _relative(other[key], new_root):
                    values[key] = other[key]
    diff = config_diff(old_core, new_core)
    # batch_size / grad_accum may change with the number of ranks; on as many ranks, the global batch may not
    launch_old, launch_new = old.get("launch", {}), new.get("launch", {})
    if (launch_old.get("world_size", 1) == launch_new.get("world_size", 1)
            and launch_old.get("global_batch") not in (None, launch_new.get("global_batch"))):
        diff.append(f"global batch: {launch_old.get('global_batch')} -> {launch_new.get('global_batch')}")
    return diff


def _never_checkpointed(out: Path, run_record: dict) -> bool:
    """A run of this config killed before its first checkpoint: it holds only its run.json, its log and maybe a
    checkpoint cut short (.last.tmp); nothing to lose."""
    early = ("run.json", files.METRICS_LOG, ".last.tmp", ".best.tmp", ".model.tmp")
    if any(p.name not in early and not p.name.startswith("events.out.tfevents") for p in files.dir_entries(out)):
        return False
    try:
        return run_differences(out, run_record) == []  # None: no run.json
    except InputError:  # a damaged run.json
        return False


def _clear(out: Path) -> None:
    for p in files.dir_entries(out):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def prepare_out_dir(out: Path, run_record: dict, resume: bool, overwrite: bool) -> bool:
    """Never silently overwrite: a directory holding a run is continued (--resume, same config) or replaced only with
    --overwrite. Takes the directory's lock. Returns whether to resume from its last/ checkpoint (False for a run
    that never got to one: it starts again)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError("exists and is not a directory; choose another --out", path=out)
    created = dist.is_main() and out.is_dir() and files.lock_dir(out)
    try:
        return _prepare(out, run_record, resume, overwrite)
    except InputError:
        files.unlock_dir(out, remove=created)  # a refused directory is left as it was
        raise


def _prepare(out: Path, run_record: dict, resume: bool, overwrite: bool) -> bool:
    record_file = out / "run.json"
    if resume:
        if dist.is_main():
            files.recover_dir(out / "last")  # a crash in the middle of a checkpoint swap
        dist.barrier()
        if record_file.exists():
            diff = _differences(files.read_json(record_file), run_record)
            if diff:
                raise InputError("--resume: this directory holds a run with a different config ("
                                 + "; ".join(diff) + "); use the same config (only max_steps and logging may "
                                 "change) or another --out", path=out)
        if (out / "last").exists():
            return True
        if not _never_checkpointed(out, run_record):
            raise InputError("--resume: no checkpoint to resume from (no last/ here)", path=out)
        resume = False  # killed before its first checkpoint: start again
        if dist.is_main():
            print(f"pretune: note: {out} has no checkpoint yet (the run stopped before its first one): starting at "
                  "step 0", file=sys.stderr)
    if out.is_dir() and files.dir_entries(out):
        if not overwrite and not _never_checkpointed(out, run_record):
            raise InputError("output directory already holds files; pass --resume to continue its run, "
                             "--overwrite to replace it, or choose another --out", path=out)
        dist.barrier()  # every rank has looked before rank 0 clears it
        if dist.is_main():
            _clear(out)
    dist.barrier()
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        files.lock_dir(out)
    dist.barrier()
    return False


def run_differences(out: Path, run_record: dict) -> list[str] | None:
    """Why `run_record` may not continue the run recorded in out/run.json (empty: it may; None: no record there)."""
    record_file = Path(out) / "run.json"
    if not record_file.is_file():
        return None
    return _differences(files.read_json(record_file), run_record)
