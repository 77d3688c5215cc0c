"""The training loop shared by pretraining and fine-tuning. Plain PyTorch; distributed through torch.distributed.

What the loop knows: a model, a resumable source of batches, a loss function returning (loss, stats), an
evaluation function, and how to save the model. What it does: AdamW (no decay on biases and norms), warm-up then
linear/cosine decay, gradient accumulation and clipping, bf16 autocast where the device supports it, periodic
evaluation, early stopping, a JSONL metrics log (and TensorBoard event files beside it), atomic checkpoints every
N steps, exact resume, clean exit on SIGINT/SIGTERM (checkpoint first), and a clear stop on a NaN/inf loss.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pretune.errors import InputError
from pretune.files import METRICS_LOG, read_metrics, recover_dir, write_dir_atomic, write_json, write_text
from pretune.training import distributed as dist
from pretune.training.batches import BatchSource, count_tokens, move, row_count
from pretune.training.checkpoint import OPTIMIZER, TRAINER_STATE, load_checkpoint, load_into
from pretune.training.config import TrainConfig, resolve_device, use_bf16
from pretune.training.optim import adamw, group_lambdas, param_groups
from pretune.training.tensorboard import event_log


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. a NaN loss); the message names the step."""


@dataclass
class EarlyStopping:
    metric: str
    greater_is_better: bool = True
    patience: int | None = None
    min_steps: int = 0  # evaluations before this step never count against patience


@dataclass
class Window:
    """What the train log averages over: the steps since the last train record."""

    totals: dict[str, list[float]] = field(default_factory=dict)  # stat -> [numerator, denominator]
    tokens: int = 0
    grad_norms: list[float] = field(default_factory=list)  # before clipping, of the steps not skipped
    start: float = field(default_factory=time.perf_counter)


class Trainer:
    """Runs `cfg.max_steps` optimizer steps of `loss_fn` over `batches`, evaluating, logging and checkpointing.

    Files under `out_dir`: metrics.jsonl (and its TensorBoard copy, events.out.tfevents.*), last/ (resumable:
    weights + optimizer + trainer state), best/ (when early stopping tracks a metric) and model/ (the final model:
    best if tracked, else last).

    The loss of a step is the mean over its whole global batch (all micro-batches, all ranks): each micro-batch's
    loss is weighted by `loss_weight(batch)` / the global batch's total weight. With `loss_weight` counting what the
    loss averages over (masked tokens for MLM: `label_count`), N ranks compute exactly the gradient one process
    computes on the same global batch. `save_model(dir, model)` must read weights through `model.state_dict()`
    (as `checkpoint.save_weights` does): under FSDP it is handed a view holding the gathered full weights."""

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        out_dir: str | Path,
        *,
        batches: BatchSource,
        loss_fn: Callable[[nn.Module, dict], tuple[torch.Tensor, dict]],
        save_model: Callable[[Path, nn.Module], None],
        evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
        groups: list[dict] | None = None,
        early_stopping: EarlyStopping | None = None,
        summarize: Callable[[dict], dict] | None = None,
        loss_weight: Callable[[dict], float] = row_count,
        on_evaluate: Callable[[int, dict[str, float]], None] | None = None,
        run_record: dict | None = None,
    ):
        self.cfg, self.out = cfg, Path(out_dir)
        self.device = resolve_device(cfg.device)
        self.bf16 = use_bf16(cfg.precision, self.device)
        self.model = model.to(self.device)
        self.batches, self.save_model, self.evaluate_fn = batches, save_model, evaluate
        self.early, self.loss_weight = early_stopping, loss_weight
        self.on_evaluate = on_evaluate  # called as on_evaluate(step, metrics) after each evaluation; may raise to stop
        self.summarize = summarize or (lambda totals: {k: n / max(d, 1e-12) for k, (n, d) in totals.items()})
        groups = groups or param_groups(model, cfg.weight_decay, cfg.lr)
        names = {id(p): n for n, p in self.model.named_parameters()}
        self.loss_module = dist.LossModule(self.model, loss_fn)
        self.train_model = dist.wrap(self.loss_module, self.device, fsdp=cfg.fsdp)  # FSDP2 swaps the parameters
        params = dict(self.model.named_parameters())
        groups = [{**g, "params": [params[names[id(p)]] for p in g["params"]], "initial_lr": g["lr"]} for g in groups]
        self.optimizer = adamw(groups, cfg, self.device, fused=not dist.is_fsdp(self.train_model))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, group_lambdas(cfg, groups))
        if cfg.compile:
            self.train_model = torch.compile(self.train_model)
        if dist.world_size() > 1:  # decorrelated dropout per rank (the model is already initialised: DDP/FSDP sync it)
            torch.manual_seed(_rank_seed(cfg.seed, 0))
        self.step, self.best, self.bad_evals, self.skipped = 0, None, 0, 0
        self._stop_signal: int | None = None  # a signal this process received
        self._stopping = False  # some rank received one: every rank checkpoints and stops after this step
        self.events = None  # the TensorBoard EventLog of the main rank while fit() runs
        self.run_record = run_record  # written to run.json once a resume has checked the checkpoint

    # ---- the loop ----------------------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict:
        """Train until max_steps (or stop_after, or an early stop), then write model/."""
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        if resume:
            self.resume()
        if self.run_record is not None and dist.is_main():
            write_json(self.out / "run.json", self.run_record)
        end = min(cfg.max_steps, cfg.stop_after or cfg.max_steps)
        last_eval: dict | None = None
        stopped_early = False
        self.model.train()
        with self._catching_signals(), self._progress_bar() as bar, self._event_log(resume):
            window = Window()
            while self.step < end:
                loss_value, tokens, grad_norm = self._train_step(window.totals)
                window.tokens += tokens
                if grad_norm is not None:
                    window.grad_norms.append(grad_norm)
                self.step += 1
                if bar is not None:
                    bar.update(1)
                if self._due(cfg.log_every):
                    self._log_window(window, loss_value, bar)
                    window = Window()
                if self._due(cfg.eval_every):
                    last_eval = self.evaluate()
                    stopped_early = self._track(last_eval, bar)
                if self.step % cfg.save_every == 0 or self._stopping or stopped_early or self.step == end:
                    self.save("last", with_optimizer=True)
                if self._stopping:
                    self._exit_on_signal(bar)
                if stopped_early:
                    self._say(bar, f"early stop at step {self.step}: no {self.early.metric} gain in "
                              f"{self.early.patience} evaluations")
                    break
        self.finish()
        return {"step": self.step, "validation": last_eval, "best": self.best, "stopped_early": stopped_early}

    @contextlib.contextmanager
    def _catching_signals(self) -> Iterator[None]:
        """SIGINT / SIGTERM only set a flag: the step ends, every rank checkpoints, then the run stops."""
        old_handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old_handlers.items():
                signal.signal(s, h)

    def _on_signal(self, signum, frame) -> None:
        self._stop_signal = signum

    @contextlib.contextmanager
    def _progress_bar(self) -> Iterator:
        """A tqdm bar on the main rank when cfg.progress, else None."""
        if not (self.cfg.progress and dist.is_main()):
            yield None
            return
        from tqdm.auto import tqdm  # a terminal bar, or a notebook widget; only runs that show progress import it

        bar = tqdm(total=self.cfg.max_steps, initial=self.step, unit="step", dynamic_ncols=True, leave=True)
        try:
            yield bar
        finally:
            bar.close()

    @contextlib.contextmanager
    def _event_log(self, resumed: bool) -> Iterator[None]:
        """self.events: the main rank's TensorBoard log while training (None without the package)."""
        if not dist.is_main():
            yield
            return
        with event_log(self.out, self.step if resumed else None) as self.events:
            try:
                yield
            finally:
                self.events = None

    def _say(self, bar, message: str, file=None) -> None:
        """A line for the user on the main rank: above the progress bar, or (--no-progress) on `file` (stdout)."""
        if not dist.is_main():
            return
        if bar is not None:
            bar.write(message)
        else:
            print(message, file=file or sys.stdout, flush=True)

    def _due(self, every: int) -> bool:
        return self.step % every == 0 or self.step == self.cfg.max_steps

    def _log_window(self, window: Window, loss_value: float, bar) -> None:
        """The train record: window means of the stats, this step's loss, the learning rate and the throughput."""
        dt = time.perf_counter() - window.start
        summary = self.summarize(dist.all_reduce_totals(window.totals))
        tokens = dist.all_reduce_sum([window.tokens])[0]
        rec = {"step": self.step, "split": "train", **summary, "loss": loss_value,
               "lr": self.scheduler.get_last_lr()[0], "tokens_per_s": tokens / max(dt, 1e-9)}
        if window.grad_norms:
            rec["grad_norm"] = sum(window.grad_norms) / len(window.grad_norms)
        if self.skipped:
            rec["skipped_batches"] = self.skipped
        self.log(rec)
        if bar is not None:
            bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{rec['tokens_per_s']:.0f}")
        else:  # no bar (--no-progress): one line per log window instead
            self._say(None, f"step {self.step}/{self.cfg.max_steps}: loss {loss_value:.4g}, lr {rec['lr']:.3g}, "
                            f"{rec['tokens_per_s']:.0f} tokens/s")

    def log(self, record: dict) -> None:
        if dist.is_main():
            path = self.out / METRICS_LOG
            try:
                with open(path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            except OSError as e:
                raise InputError(f"cannot write the metrics log: {e.strerror or e}", path=path) from None
            if self.events is not None:
                self.events.write(record)

    def evaluate(self) -> dict[str, float] | None:
        if self.evaluate_fn is None:
            return None
        self.model.eval()
        with (torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16),
              dist.unsharded(self.train_model)):
            metrics = self.evaluate_fn(self.model)
        self.model.train()
        return metrics

    def _track(self, metrics: dict[str, float] | None, bar) -> bool:
        """Log an evaluation, keep best/ when early stopping tracks a metric; True when patience has run out."""
        if metrics is None:
            return False
        self.log({"step": self.step, "split": "validation", **metrics})
        self._say(bar, f"step {self.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        out_of_patience = False
        if self.early is not None:
            if self._improved(metrics):
                self.best, self.bad_evals = metrics[self.early.metric], 0
                self.save("best", with_optimizer=False)
            elif self.step >= self.early.min_steps:  # patience counts only from the floor on steps on
                self.bad_evals += 1
                out_of_patience = self.early.patience is not None and self.bad_evals >= self.early.patience
        if self.on_evaluate is not None:
            self.on_evaluate(self.step, metrics)
        return out_of_patience

    def _improved(self, metrics: dict) -> bool:
        value = metrics.get(self.early.metric)
        if value is None:
            raise InputError(f"early-stopping metric {self.early.metric!r} is not reported; have {sorted(metrics)}")
        if self.best is None:
            return True
        return value > self.best if self.early.greater_is_better else value < self.best

    def _exit_on_signal(self, bar) -> None:
        """After the checkpoint of a step that some rank was signalled in: say so and stop (KeyboardInterrupt)."""
        name = signal.Signals(self._stop_signal or signal.SIGTERM).name
        self._say(bar, f"{name}: checkpoint saved at step {self.step} in {self.out / 'last'}; exiting", sys.stderr)
        raise KeyboardInterrupt(name)

    # ---- one step ----------------------------------------------------------------------------------------------
    def _train_step(self, totals: dict[str, list[float]]) -> tuple[float, int, float | None]:
        """One optimizer step over grad_accum global micro-batches, adding its stats to `totals`; returns the step's
        loss over the global batch, the tokens this rank trained on and the gradient norm (None: step skipped)."""
        cfg, world = self.cfg, dist.world_size()
        self.optimizer.zero_grad(set_to_none=True)
        micro_batches = [self.batches.next_global() for _ in range(cfg.grad_accum)]
        total_weight = sum(self.loss_weight(b) for b in micro_batches) or 1.0
        loss_value, tokens = 0.0, 0
        for micro, global_batch in enumerate(micro_batches):
            local = self.batches.local(global_batch)
            weight = self.loss_weight(local) / total_weight  # this micro-batch's share of the global mean
            batch = move(local, self.device)
            tokens += count_tokens(batch)
            with dist.maybe_no_sync(self.train_model, micro == cfg.grad_accum - 1):
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                    loss, stats = self.train_model(batch)
                (loss * (weight * world)).backward()  # DDP / FSDP average over ranks: x world makes it a sum
            loss_value += float(loss.detach()) * weight
            for k, (num, den) in stats.items():
                acc = totals.setdefault(k, [0.0, 0.0])
                acc[0] += float(num)
                acc[1] += float(den)
        # summed over ranks: the global loss, and whether any rank got SIGINT/SIGTERM (all then stop at this step)
        loss_value, signals = dist.all_reduce_sum([loss_value, float(self._stop_signal is not None)])
        self._stopping = signals > 0
        problem = None if math.isfinite(loss_value) else f"loss is {loss_value}"
        if problem is None and cfg.clip_norm > 0:
            norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_norm))
            problem = None if math.isfinite(norm) else f"gradient norm is {norm}"
        elif problem is None:  # no clipping: the norm only for the log
            norm = float(torch.nn.utils.get_total_norm([p.grad for p in self.model.parameters() if p.grad is not None]))
        if problem is not None:
            if cfg.on_nan == "skip":
                self.skipped += 1
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                return loss_value, tokens, None
            raise TrainingError(f"{problem} at step {self.step + 1}; lower the learning rate, check the data, "
                                f"or set on_nan = \"skip\" to skip such batches")
        self.optimizer.step()
        self.scheduler.step()
        return loss_value, tokens, norm

    # ---- state and checkpoints ---------------------------------------------------------------------------------
    def trainer_state(self) -> dict:
        return {
            "step": self.step,
            "batches": self.batches.state_dict(),
            "best": self.best,
            "bad_evals": self.bad_evals,
            "skipped_batches": self.skipped,
            "world_size": dist.world_size(),
            "train_config": asdict(self.cfg),
        }

    def save(self, name: str, with_optimizer: bool) -> None:
        """Write out_dir/name atomically from rank 0. Every rank calls it (FSDP gathers the shards collectively)."""
        weights = dist.full_state_dict(self.loss_module)
        opt = None
        if with_optimizer:
            opt = {
                "optimizer": dist.optimizer_state(self.loss_module, self.optimizer),
                "scheduler": self.scheduler.state_dict(),
                "rng_torch": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            }
        if dist.is_main():
            state = self.trainer_state()
            model = dist.StateView(self.model, weights) if dist.is_fsdp(self.train_model) else self.model

            def fill(tmp: Path) -> None:
                self.save_model(tmp, model)
                (tmp / TRAINER_STATE).write_text(json.dumps(state, indent=2))
                if opt is not None:
                    torch.save(opt, tmp / OPTIMIZER)

            write_dir_atomic(self.out / name, fill)
        dist.barrier()  # no rank runs ahead (or exits) before the checkpoint is in place

    def resume(self) -> None:
        if dist.is_main():
            recover_dir(self.out / "last")
        dist.barrier()
        ckpt = load_checkpoint(self.out / "last")
        state, opt = ckpt.trainer_state(), ckpt.optimizer_state()
        if state is None or opt is None:
            raise InputError("cannot resume: the checkpoint has no trainer state", path=ckpt.path)
        state_file = ckpt.path / TRAINER_STATE
        step = state.get("step")
        if (isinstance(step, bool) or not isinstance(step, int) or step < 0
                or not isinstance(state.get("batches"), dict)):
            raise InputError('damaged trainer state: expected {"step": <int >= 0>, "batches": {...}, ...}',
                             path=state_file)
        if step > self.cfg.max_steps:
            raise InputError(f"cannot resume: the checkpoint is at step {step}, beyond max_steps "
                             f"{self.cfg.max_steps}; raise max_steps to continue it (its model is in model/)",
                             path=state_file)
        if not isinstance(opt, dict) or not {"optimizer", "scheduler", "rng_torch"} <= set(opt):
            raise InputError("damaged optimizer state: expected the optimizer, scheduler and RNG states",
                             path=ckpt.path / OPTIMIZER)
        load_into(self.model, ckpt.state_dict, ckpt.path, check_only=dist.is_fsdp(self.train_model))
        if dist.is_fsdp(self.train_model):
            dist.load_full_state_dict(self.loss_module, ckpt.state_dict)
        try:
            dist.load_optimizer_state(self.loss_module, self.optimizer, opt["optimizer"])
            self.scheduler.load_state_dict(opt["scheduler"])
        except (KeyError, ValueError, RuntimeError, TypeError) as e:
            raise InputError(f"cannot resume: the optimizer state does not fit this model ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''})", path=ckpt.path / OPTIMIZER) from None
        self.step = step
        try:
            if dist.world_size() == 1:
                torch.set_rng_state(opt["rng_torch"])
                if opt.get("rng_cuda") and torch.cuda.is_available() and state.get("world_size", 1) == 1:
                    torch.cuda.set_rng_state_all(opt["rng_cuda"])
            else:  # one saved generator cannot serve every rank: derive each rank's from the step
                torch.manual_seed(_rank_seed(self.cfg.seed, self.step))
            saved_batch = state["batches"].get("global_batch", self.batches.global_batch)
            if saved_batch != self.batches.global_batch and dist.is_main():
                print(f"pretune: note: the checkpoint was written with global batches of {saved_batch} sequences "
                      f"({state.get('world_size', 1)} ranks), this run uses {self.batches.global_batch} "
                      f"({dist.world_size()} ranks); the epoch goes on after the items already seen", file=sys.stderr)
            self.batches.load_state_dict(state["batches"])
            self.best, self.bad_evals = state.get("best"), int(state.get("bad_evals", 0))
            self.skipped = int(state.get("skipped_batches", 0))
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
            raise InputError(f"damaged trainer state ({type(e).__name__}: {e})", path=state_file) from None
        self._truncate_log()

    def _truncate_log(self) -> None:
        """Drop log lines written after the checkpoint we resume from, so the curve has no duplicate steps."""
        log = self.out / METRICS_LOG
        if not log.exists() or not dist.is_main():
            return
        kept = [rec for rec in read_metrics(log) if rec.get("step", 0) <= self.step]  # a line cut by a crash goes too
        write_text(log, "".join(json.dumps(rec) + "\n" for rec in kept))

    def finish(self) -> None:
        """model/ := best/ if early stopping tracked a metric, else the final weights."""
        source = self.out / "best" if self.early is not None and (self.out / "best").exists() else None
        weights = dist.full_state_dict(self.loss_module) if source is None else None
        if dist.is_main():
            model = dist.StateView(self.model, weights) if dist.is_fsdp(self.train_model) else self.model

            def fill(tmp: Path) -> None:
                if source is not None:
                    for f in source.iterdir():
                        if f.name != TRAINER_STATE:
                            (tmp / f.name).write_bytes(f.read_bytes())
                else:
                    self.save_model(tmp, model)

            write_dir_atomic(self.out / "model", fill)
        dist.barrier()


def _rank_seed(seed: int, step: int) -> int:
    """A torch seed per (seed, rank, step): dropout differs across ranks and stays reproducible on resume."""
    return int(np.random.SeedSequence([seed, dist.rank(), step]).generate_state(1)[0])
