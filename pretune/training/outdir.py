"""Output directories of a training run: refuse to overwrite silently; continue a run only with its own config."""

from __future__ import annotations

import shutil
from pathlib import Path

from pretune import files
from pretune.config import RESUME_KEYS, without_keys
from pretune.errors import InputError
from pretune.training import distributed as dist


def prepare_out_dir(out: Path, run_record: dict, resume: bool, overwrite: bool) -> None:
    """Never silently overwrite: a directory holding a run is continued (--resume, same config) or replaced only with
    --overwrite."""
    record_file = out / "run.json"
    if resume:
        if dist.is_main():
            files.recover_dir(out / "last")  # a crash in the middle of a checkpoint swap
        dist.barrier()
        if not (out / "last").exists():
            raise InputError("--resume: no checkpoint to resume from (no last/ here)", path=out)
        if record_file.exists():
            old = files.read_json(record_file)
            def core(r):  # the run directory's own path is no part of its config: it may be moved or renamed
                return without_keys({s: v for s, v in r.items() if s != "launch"}, RESUME_KEYS + ("out",))
            # batch_size / grad_accum may change with the number of ranks; on as many ranks, the global batch may not
            launch_old, launch_new = old.get("launch", {}), run_record.get("launch", {})
            same_world = launch_old.get("world_size", 1) == launch_new.get("world_size", 1)
            batch_changed = launch_old.get("global_batch") not in (None, launch_new.get("global_batch"))
            if core(old) != core(run_record) or (same_world and batch_changed):
                raise InputError("--resume: this directory holds a run with a different config; "
                                 "use the same config (only max_steps and logging may change) or another --out",
                                 path=out)
        return
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise InputError("output directory already holds files; pass --resume to continue its run, "
                             "--overwrite to replace it, or choose another --out", path=out)
        dist.barrier()  # every rank has looked before rank 0 clears it
        if dist.is_main():
            shutil.rmtree(out)
    dist.barrier()
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
    dist.barrier()
