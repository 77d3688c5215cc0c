"""Fine-tuning ensembles: K fine-tunes of one pretrained model that differ only in their seed (head initialisation,
batch order), whose class probabilities are averaged. Averaging a few seeds is a cheap, reliable gain with few labels
(measured on the bundled task: README "What made the default better").

A run directory of an ensemble:

    out/members/member-<k>/   one plain fine-tune each (seed + k), with its own metrics.jsonl and model/
    out/model/                the ensemble checkpoint: config.json ("ensemble": K), weights members.<k>.body|head.*
    out/metrics.jsonl         member 0's curves, then one record of the ensemble's validation metrics
    out/test_report.json      the ensemble on the test file

A member that finished is kept when the run is resumed; one cut short continues from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from pretune import files
from pretune.errors import InputError
from pretune.finetune.model import EnsembleTaskModel, load_task_model
from pretune.finetune.tasks import get_task
from pretune.training import checkpoint as ck
from pretune.training import distributed as dist
from pretune.training.outdir import prepare_out_dir, run_differences

RESULT = "result.json"  # written into a member's directory when it finished


def _prepare(out: Path, run_record: dict, resume: bool, overwrite: bool) -> bool:
    """Lock and check `out` as `prepare_out_dir` does; with --resume, an ensemble of the same config continues."""
    if resume:
        diff = run_differences(out, run_record)
        if diff:
            raise InputError("--resume: this directory holds a run with a different config (" + "; ".join(diff)
                             + "); use the same config or another --out", path=out)
        if diff is not None:
            files.lock_dir(out)
            return True
    prepare_out_dir(out, run_record, False, overwrite)
    files.write_json(out / "run.json", run_record)
    return False


def finetune_ensemble(sections: dict, run_one: Callable[..., dict], evaluate: Callable[..., dict],
                      resume: bool = False, overwrite: bool = False, source=None, **kwargs) -> dict:
    """Fine-tune [finetune] ensemble members with `run_one` (`pretune.finetune.stage.finetune`), then write the
    ensemble and score it with `evaluate(loaded model, labeled file)` (`stage.evaluate_file`). Returns what
    `finetune()` returns, for the ensemble, plus "members" (each member's result)."""
    if dist.world_size() > 1:
        raise InputError("ensemble fine-tuning runs on one process; run it without torchrun")
    sec, tcfg = sections["finetune"], sections["train"]
    out = Path(sec.out)
    run_record = {"finetune": asdict(sec), "train": asdict(tcfg)}
    resume = _prepare(out, run_record, resume, overwrite)
    members = []
    for k in range(sec.ensemble):
        where = out / "members" / f"member-{k}"
        if resume and (where / RESULT).is_file() and (where / "model").is_dir():
            members.append(files.read_json(where / RESULT))
            continue
        print(f"ensemble member {k + 1} of {sec.ensemble} (seed {tcfg.seed + k})")
        member_sections = {"finetune": dataclasses.replace(sec, ensemble=1, out=str(where), test=None),
                           "train": dataclasses.replace(tcfg, seed=tcfg.seed + k)}
        again = resume and (where / "last").is_dir()
        res = run_one(member_sections, resume=again, overwrite=not again, source=source, **kwargs)
        files.write_json(where / RESULT, res)
        members.append(res)

    loaded = [load_task_model(out / "members" / f"member-{k}" / "model") for k in range(sec.ensemble)]
    tok, conf = loaded[0][1], {**loaded[0][2], "ensemble": sec.ensemble,
                               "member_seeds": [tcfg.seed + k for k in range(sec.ensemble)]}
    model = EnsembleTaskModel([m for m, _, _ in loaded])
    files.write_dir_atomic(out / "model", lambda tmp: ck.write_model_files(tmp, model, conf, tok))

    scored = (model, tok, conf)
    kind, metric = get_task(sec.task), members[0]["metric"]
    val = kind.scalar_metrics(evaluate(scored, sec.validation), float("nan"))
    val.pop("loss", None)
    steps = sum(int(m["steps"]) for m in members)
    curves = files.read_metrics(out / "members" / "member-0")
    lines = [*curves, {"step": members[0]["steps"], "split": "validation", "ensemble": sec.ensemble, **val}]
    files.write_text(out / files.METRICS_LOG, "".join(json.dumps(r) + "\n" for r in lines))
    test_report = None
    if sec.test:
        test_report = evaluate(scored, sec.test)
        files.write_json(out / "test_report.json", test_report)
    print(f"ensemble of {sec.ensemble}: validation {metric} {val.get(metric, float('nan')):.4f} (members: "
          + ", ".join(f"{m['best']:.4f}" for m in members) + ")")
    return {"out": str(out), "metric": metric, "best": val.get(metric), "validation": val, "test": test_report,
            "steps": steps, "n_train": members[0]["n_train"], "stopped_early": all(m["stopped_early"] for m in members),
            "warnings": members[0]["warnings"], "members": members}

