"""The training loop: one model, one seed, the `[train]` budget. Yields one record per epoch and
a final record; checkpoints atomically; resumes exactly; runs under torchrun as DDP (the run
directory's layout is `effbench.runs`)."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from effbench import contention
from effbench.config.spec import BenchSpec, ModelEntry
from effbench.data import Loaders, batch_seed, class_count, mix_batch
from effbench.env import environment
from effbench.measure import autocast, cpu_check, reset_peak_memory
from effbench.results import JsonlWriter, Record, TrainEpochRecord
from effbench.runs import (
    BEST,
    CHECKPOINT,
    FINAL,
    TENSORBOARD,
    discard_empty_run,
    fingerprint,
    load_weights,
    open_records,
    resume_checkpoint,
    run_dir,
    save_weights,
)
from effbench.signals import Interrupted, StopFlag
from effbench.train.checkpoint import (
    RunState,
    load_matching,
    restore,
    save_checkpoint,
    seed_everything,
    zero_acc,
)
from effbench.train.distributed import Dist
from effbench.train.evaluate import accuracy, evaluation_sums, keep_predictions
from effbench.train.optim import optimizer_step, resolve_precision
from effbench.train.records import epoch_record, final_record, record_base, run_facts
from effbench.train.setup import build_parts, compile_parts
from effbench.train.tensorboard import summary_writer, write_scalars


class NonFiniteLoss(RuntimeError):
    """The loss or gradient norm of a step is NaN or Inf: the run ends with a `nan` record."""

    def __init__(self, epoch: int, step: int, what: str) -> None:
        super().__init__(
            f"{what} is NaN or Inf at epoch {epoch}, step {step}; lower train.lr, keep "
            "train.grad_clip on, or use precision fp32/bf16 instead of fp16"
        )


def checks_cpu(device: torch.device, dist: Dist, loaders: Loaders) -> bool:
    """Whether epochs are checked for CPU contention: not when the process shares the machine
    by design (several CPU processes, DataLoader worker processes), whose load would read as
    other work."""
    cpu_ranks = device.type == "cpu" and dist.world > 1
    return not cpu_ranks and not loaders.uses_workers


@dataclass
class TrainProgress:
    """Callbacks for a caller that draws progress: batches (phase, done, total) and messages."""

    on_batch: Callable[[str, int, int], None] = lambda phase, done, total: None
    on_message: Callable[[str], None] = lambda text: None


class Trainer:
    """One model, one seed. `run()` yields a `TrainEpochRecord` per epoch and a `TrainRecord`.
    `resume`: None (fresh; refused where a run is), "auto" (the run directory's checkpoint,
    else fresh), or the path of a checkpoint or run directory."""

    def __init__(
        self,
        bench: BenchSpec,
        entry: ModelEntry,
        seed: int,
        *,
        dist: Dist,
        run_id: str,
        resume: str | None = None,
        stop: StopFlag | None = None,
        progress: TrainProgress | None = None,
    ) -> None:
        self.cfg = bench.train
        self.dist = dist
        self.device = dist.device
        self.entry = entry
        self.seed = seed
        self.run_id = run_id
        self.stop = stop or StopFlag()
        self.progress = progress or TrainProgress()
        self.dir = run_dir(self.cfg, entry.name, seed)
        self.precision = resolve_precision(self.cfg.precision, self.device)
        classes = class_count(self.cfg, num_classes=bench.backbone.num_classes)
        if classes != bench.backbone.num_classes:
            self.progress.on_message(
                f"{self.cfg.dataset} has {classes} classes: backbone.num_classes set to {classes}"
            )
            bb = bench.backbone.model_copy(update={"num_classes": classes})
            bench = bench.model_copy(update={"backbone": bb})
        self.bench = bench.model_copy(update={"models": [entry]})
        self.fingerprint = fingerprint(self.bench, entry, seed)
        self.resume_path = resume_checkpoint(self.dir, resume)
        if resume == "auto" and self.resume_path is None:
            self.progress.on_message(f"--resume auto: no checkpoint in {self.dir}, starting anew")
        if self.cfg.tensorboard:
            summary_writer()  # fail before anything is written when it is missing

    # -- setup

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        return autocast(self.device, self.precision)

    def _setup(self) -> None:
        """Data, model, optimizer, schedule and scaler; the checkpoint's state when resuming."""
        path = self.resume_path
        ckpt = load_matching(path, self.fingerprint) if path else None
        seed_everything(self.seed)
        self.parts = build_parts(
            self.bench, self.entry, seed=self.seed, dist=self.dist, precision=self.precision
        )
        if self.parts.loaders.warning:
            self.progress.on_message(self.parts.loaders.warning)
        self._cpus = contention.usable_cpus()
        self._t_epoch = time.perf_counter()
        self.state = RunState(acc=zero_acc(self.device))
        if ckpt is not None:
            self.state = restore(ckpt, self.parts.modules(), self.device)
            self.progress.on_message(
                f"resuming {self.entry.name} seed {self.seed} from {path} at epoch "
                f"{self.state.epoch + 1}, batch {self.state.step_in_epoch} of "
                f"{self.parts.steps_per_epoch}"
            )
        if self.cfg.compile:
            t0 = time.perf_counter()
            compile_parts(self.parts, self.bench, autocast=self._autocast, device=self.device)
            if self.state.compile_s is None:
                self.state.compile_s = time.perf_counter() - t0

    def checkpoint(self) -> Path:
        """Write the checkpoint (rank 0) atomically; every process waits for it."""
        path = self.dir / CHECKPOINT
        self.dist.barrier()
        if self.dist.main:
            save_checkpoint(
                path, fingerprint=self.fingerprint, modules=self.parts.modules(), state=self.state
            )
        self.dist.barrier()
        return path

    # -- the loop

    def run(self) -> Iterator[Record]:
        self._setup()
        try:
            yield from self._run()
        except Exception:
            if self.dist.main:
                discard_empty_run(self.dir)  # failed before its first epoch: nothing to keep
            raise

    def _run(self) -> Iterator[Record]:
        with contextlib.ExitStack() as files:
            writer, tb = self._open_files(files)
            env = environment(str(self.device), self.precision)
            base = record_base(self.bench, self.entry, seed=self.seed, run_id=self.run_id, env=env)
            status, error = "ok", None
            start = time.perf_counter() - self.state.total_s
            try:
                for rec in self._epochs(base, start):
                    if writer is not None:
                        writer.write(rec)
                    if tb is not None:
                        write_scalars(tb, rec)
                    yield rec
            except NonFiniteLoss as err:
                status, error = "nan", str(err)
            except torch.OutOfMemoryError as err:
                status = "oom"
                error = (
                    f"out of memory at batch size {self.cfg.batch_size} "
                    f"({str(err).splitlines()[0][:160]}); lower --batch-size, or use "
                    "--precision bf16"
                )
            final = self._final(base, status, error, start)
            if writer is not None:
                writer.write(final)
            yield final

    def _open_files(self, files: contextlib.ExitStack) -> tuple[JsonlWriter | None, Any]:
        """The records writer and TensorBoard writer (rank 0 only; None elsewhere)."""
        if not self.dist.main:
            return None, None
        spec = self.bench.model_dump(mode="json")
        writer = files.enter_context(open_records(self.dir, spec=spec, history=self.state.history))
        tb = None
        if self.cfg.tensorboard:
            tb = summary_writer()(str(self.dir / TENSORBOARD))
            files.callback(tb.close)
        return writer, tb

    def _epochs(self, base: dict[str, Any], start: float) -> Iterator[TrainEpochRecord]:
        st = self.state
        while not self.parts.budget.spent(st.global_step, st.train_s):
            rec = self._epoch(base, start)
            self._end_epoch(rec, start)
            yield rec
            if st.stopped_early:
                self.progress.on_message(
                    f"early stop after epoch {st.epoch}: no validation improvement for "
                    f"{self.cfg.patience} epochs"
                )
                return
            if self._stop_requested():
                raise Interrupted(self.stop.signum or signal.SIGTERM, self.checkpoint())

    def _epoch(self, base: dict[str, Any], start: float) -> TrainEpochRecord:
        """Train the rest of the current epoch and validate; its record."""
        dev, st, parts = self.device, self.state, self.parts
        parts.loaders.train.set_epoch(st.epoch)
        parts.net.train()
        reset_peak_memory(dev)  # tens of ms on the CPU: bookkeeping, not training time
        checked = checks_cpu(self.device, self.dist, self.parts.loaders)
        before = contention.read_counters(self._cpus) if checked else None
        t_epoch = self._t_epoch = time.perf_counter()
        for x, y in parts.loaders.train.iterate(st.step_in_epoch):
            self._step(x, y)
            st.step_in_epoch += 1
            st.global_step += 1
            self.progress.on_batch("train", st.step_in_epoch, parts.steps_per_epoch)
            if self._budget_spent():
                break
            if self._stop_requested():
                elapsed = time.perf_counter() - t_epoch
                st.train_s += elapsed
                st.epoch_train_s += elapsed
                st.total_s = time.perf_counter() - start
                raise Interrupted(self.stop.signum or signal.SIGTERM, self.checkpoint())
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        elapsed = time.perf_counter() - t_epoch
        st.train_s += elapsed
        train_s = st.epoch_train_s + elapsed  # the whole epoch's, across a resume
        check = None if before is None else cpu_check(before, device=dev, cpus=self._cpus)
        sums = self.dist.all_sum(torch.stack(list(st.acc.values()))).tolist()
        val = self.evaluate(parts.loaders.val, "val") if parts.loaders.val else None
        return epoch_record(
            base,
            st,
            epochs=parts.budget.epochs,
            sums=sums,
            val=val,
            lr=parts.opt.param_groups[0]["lr"],
            times=(st.epoch_train_s + time.perf_counter() - t_epoch, train_s),
            check=check,
            device=dev,
        )

    def _end_epoch(self, rec: TrainEpochRecord, start: float) -> None:
        """Move on past the epoch of `rec`: model selection on the validation split (the
        training accuracy without one), early stopping, and the checkpoint when one is due."""
        cfg, st = self.cfg, self.state
        st.epoch += 1
        st.step_in_epoch, st.epoch_train_s = 0, 0.0
        st.acc = zero_acc(self.device)
        score = rec.val_top1 if rec.val_top1 is not None else rec.train_top1
        if score > st.best_score:
            st.best_epoch, st.best_score, st.bad_epochs = st.epoch, score, 0
            if self.dist.main:
                save_weights(self.parts.model, self.dir / BEST)
        else:
            st.bad_epochs += 1
        st.history.append(rec.model_dump(mode="json"))
        st.total_s = time.perf_counter() - start
        st.stopped_early = cfg.patience > 0 and st.bad_epochs >= cfg.patience
        last = self.parts.budget.spent(st.global_step, st.train_s) or st.stopped_early
        if st.epoch % cfg.checkpoint_every == 0 or last:
            self.checkpoint()

    def _train_s(self) -> float:
        """Seconds of training steps so far, the current epoch's included."""
        return self.state.train_s + time.perf_counter() - self._t_epoch

    def _budget_spent(self) -> bool:
        """Whether the budget ends the run after this step (under DDP: in any process, so
        that all stop at the same step)."""
        budget = self.parts.budget
        if budget.steps is not None:
            return budget.spent(self.state.global_step, 0.0)
        return self.dist.any_rank(budget.spent(self.state.global_step, self._train_s()))

    def _stop_requested(self) -> bool:
        """Whether a signal arrived, here or (under DDP) in any process: all stop together."""
        if not self.dist.any_rank(self.stop.signum is not None):
            return False
        if self.stop.signum is None:
            self.stop.signum = signal.SIGTERM
        return True

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        cfg, st, p = self.cfg, self.state, self.parts
        target: torch.Tensor = y
        if cfg.mixup > 0 or cfg.cutmix > 0:
            g = torch.Generator().manual_seed(batch_seed(self.seed, st.global_step, 3))
            x, target = mix_batch(
                x, y, len(p.loaders.classes), mixup=cfg.mixup, cutmix=cfg.cutmix, g=g
            )
        p.budget.elapsed = self._train_s()  # where a time budget's schedule stands
        with self._autocast():
            logits = p.net(x)
        loss = F.cross_entropy(logits.float(), target, label_smoothing=cfg.label_smoothing)
        what = optimizer_step(
            loss, opt=p.opt, scaler=p.scaler, sched=p.sched, model=p.model, grad_clip=cfg.grad_clip
        )
        if what is not None:
            raise NonFiniteLoss(st.epoch + 1, st.global_step + 1, what)
        with torch.no_grad():
            n = y.shape[0]
            st.acc["loss_sum"] += loss.detach().double() * n
            st.acc["correct"] += (logits.argmax(-1) == y).sum()
            st.acc["seen"] += n

    def evaluate(
        self, loader: Any, phase: str, *, predictions: list[torch.Tensor] | None = None
    ) -> dict[str, float]:
        """Loss (no smoothing), top-1 and top-5 over the whole split, summed across processes;
        `predictions` receives this process's (top-1 class, label) per batch."""
        self.parts.net.eval()
        sums = evaluation_sums(
            self.parts.net,
            loader,
            autocast=self._autocast,
            num_classes=self.bench.backbone.num_classes,
            on_batch=lambda i, n: self.progress.on_batch(phase, i, n),
            predictions=predictions,
        )
        self.parts.net.train()
        return accuracy(self.dist.all_sum(sums))

    # -- the end

    def _final(self, base: dict[str, Any], status: str, error: str | None, start: float) -> Record:
        """Test accuracy of the selected weights (best validation epoch), once, at the end."""
        test = None
        if status == "ok":
            if self.state.best_epoch is not None:
                self.dist.barrier()
                load_weights(self.parts.model, self.dir / BEST)
            batches: list[torch.Tensor] = []
            test = self.evaluate(self.parts.loaders.test, "test", predictions=batches)
            keep_predictions(batches, dist=self.dist, directory=self.dir)
            if self.dist.main:
                save_weights(self.parts.model, self.dir / FINAL)
        return final_record(
            base,
            self.state,
            facts=run_facts(
                self.bench, self.parts, precision=self.precision, world=self.dist.world
            ),
            status=status,
            error=error,
            test=test,
            total_s=time.perf_counter() - start,
            device=self.device,
        )
