"""The training loop: one model, one seed, the `[train]` budget. Yields one record per epoch and
a final record; checkpoints atomically; resumes exactly; runs under torchrun as DDP.

Layout of a run directory (`<output_dir>/<model>/seed<seed>/`):

    train.jsonl        one `train_epoch` record per epoch, then one `train` record
    spec.json          the resolved spec the run was trained with
    checkpoint.pt      the latest checkpoint (every `checkpoint_every` epochs, and on SIGTERM)
    best.safetensors   the weights with the best validation accuracy so far
    model.safetensors  the selected weights, written at the end
    tb/                TensorBoard scalars, when asked for
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from effbench import contention
from effbench.config.spec import BenchSpec, ModelEntry
from effbench.data import batch_seed, build_loaders, class_count, mix_batch
from effbench.device import resolve_device
from effbench.env import environment
from effbench.errors import CheckpointError, TrainError
from effbench.measure import cpu_check
from effbench.model import build_model
from effbench.results import (
    CpuCheck,
    Env,
    JsonlWriter,
    Record,
    TrainEpochRecord,
    TrainRecord,
    replace_atomically,
    write_json_atomic,
    write_jsonl_atomic,
)
from effbench.runs import (
    BEST,
    CHECKPOINT,
    FINAL,
    RECORDS,
    holds_run,
    load_weights,
    run_dir,
    save_weights,
)

CHECKPOINT_FORMAT = 1
MIB = 2**20
# `[train]` keys that do not change what a run computes: a resume may differ in these.
NEUTRAL_KEYS = frozenset(
    {
        "data_dir",
        "download",
        "seeds",
        "device",
        "threads",
        "workers",
        "checkpoint_every",
        "output_dir",
        "tensorboard",
        "eval_batch_size",
    }
)
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Interrupted(Exception):
    """SIGTERM or SIGINT arrived; a checkpoint was written (when the run had started)."""

    def __init__(self, signum: int, checkpoint: Path | None) -> None:
        self.signum = signum
        self.checkpoint = checkpoint
        super().__init__(f"stopped by signal {signum}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class NonFiniteLoss(RuntimeError):
    def __init__(self, epoch: int, step: int, what: str) -> None:
        super().__init__(
            f"{what} is NaN or Inf at epoch {epoch}, step {step}; lower train.lr, keep "
            "train.grad_clip on, or use precision fp32/bf16 instead of fp16"
        )


# ---------------------------------------------------------------------------- signals


class StopFlag:
    """Set by SIGTERM/SIGINT; the loop checks it between steps. A second signal stops at once."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopFlag]:
        old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)


# ---------------------------------------------------------------------------- distributed


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            torch.distributed.all_reduce(t)
        return t

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def init_distributed(device_name: str) -> Dist:
    """A single process, or DDP under torchrun (WORLD_SIZE > 1): gloo on CPU, nccl on CUDA."""
    device = resolve_device(device_name)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(0, 1, device)
    rank = int(os.environ["RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, device)


# ---------------------------------------------------------------------------- helpers


def fingerprint(bench: BenchSpec, entry: ModelEntry, seed: int) -> dict[str, Any]:
    """The settings that determine what a run computes; a resume must match them."""
    train = bench.train.model_dump(mode="json")
    return {
        "backbone": bench.backbone.model_dump(mode="json"),
        "attention": entry.attention.model_dump(mode="json"),
        "train": {k: v for k, v in train.items() if k not in NEUTRAL_KEYS},
        "seed": seed,
    }


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def fingerprint_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    a, b = _flat(old), _flat(new)
    return [
        f"{k}: checkpoint {a.get(k)!r}, now {b.get(k)!r}"
        for k in sorted(a.keys() | b.keys())
        if a.get(k) != b.get(k)
    ]


def resolve_precision(name: str, device: torch.device) -> str:
    if name == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return name


def lr_factor(step: int, *, warmup: int, total: int, floor: float) -> float:
    """Linear warm-up to 1 over `warmup` steps, then cosine down to `floor` at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only: not on biases, norms, the CLS token or position embedding."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or name.endswith(("pos_embed", "cls_token"))
        (no_decay if skip else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def peak_memory(device: torch.device) -> tuple[float | None, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / MIB, "cuda_max_memory_allocated"
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_max_rss"
    except (ImportError, OSError):
        return None, "unavailable"


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint loaded with `weights_only=True`.

    Raises:
        CheckpointError: when it is missing, unreadable or not an effbench checkpoint.
    """
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, garbage bytes, foreign pickle: all unusable
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not an effbench checkpoint "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
            "delete it to start over, or pass --resume with another checkpoint"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path} is not an effbench training checkpoint")
    return ckpt


# ---------------------------------------------------------------------------- the run


@dataclass
class RunState:
    """Where a run stands: everything a checkpoint carries besides modules and RNG states."""

    acc: dict[str, torch.Tensor]  # this epoch so far: loss sum, correct, seen (float64)
    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # batches of the current epoch completed
    epoch_train_s: float = 0.0  # training time of those batches (before an interruption)
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # epoch records so far
    best_epoch: int | None = None
    best_score: float = -1.0
    bad_epochs: int = 0
    stopped_early: bool = False
    train_s: float = 0.0
    total_s: float = 0.0
    compile_s: float | None = None

    def to_checkpoint(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "acc"}
        out["acc"] = {k: v.detach().cpu() for k, v in self.acc.items()}
        return out

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any], device: torch.device) -> RunState:
        try:
            fields = {k: ckpt[k] for k in cls.__dataclass_fields__ if k != "acc"}
            acc = {k: v.to(device) for k, v in ckpt["acc"].items()}
        except (KeyError, AttributeError) as err:
            raise CheckpointError(
                f"checkpoint lacks {err}; it is not a complete checkpoint"
            ) from None
        return cls(acc=acc, **fields)


@dataclass
class TrainProgress:
    """Callbacks for a caller that draws progress: batches (phase, done, total) and messages."""

    on_batch: Callable[[str, int, int], None] = lambda phase, done, total: None
    on_message: Callable[[str], None] = lambda text: None


class Trainer:
    """One model, one seed. `run()` yields a `TrainEpochRecord` per epoch and a `TrainRecord`.

    `resume`: None (a fresh run; refused when the run directory already holds one), "auto"
    (continue from the run directory's checkpoint, or start fresh when there is none), or a
    path to a checkpoint or run directory.
    """

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
        self.resume_path = self._resume_path(resume)
        if self.cfg.tensorboard:
            _tensorboard_writer()  # fail before anything is written when it is missing

    # -- setup

    def _resume_path(self, resume: str | None) -> Path | None:
        own = self.dir / CHECKPOINT
        if resume is None:
            if holds_run(self.dir):
                raise TrainError(
                    f"{self.dir} already holds a run; pass --resume auto to continue it, or "
                    "--output DIR to train a new one elsewhere"
                )
            return None
        if resume == "auto":
            if own.exists():
                return own
            self.progress.on_message(f"--resume auto: no checkpoint in {self.dir}, starting anew")
            return None
        path = Path(resume).expanduser()
        if path.is_dir():
            path = path / CHECKPOINT
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} not found (from --resume {resume})")
        return path

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def _env(self) -> Env:
        return environment(str(self.device), self.precision)

    def _record_base(self, env: Env) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "spec_hash": self.bench.hash(),
            "model": self.entry.name,
            "attention": self.entry.attention.model_dump(mode="json"),
            "env": env,
            "seed": self.seed,
        }

    # -- the loop

    def _setup(self) -> None:
        """Data, model, optimizer, schedule and scaler; the checkpoint's state when resuming."""
        cfg, dev, dist = self.cfg, self.device, self.dist
        ckpt = load_checkpoint(self.resume_path) if self.resume_path else None
        if ckpt is not None:
            diff = fingerprint_diff(ckpt["fingerprint"], self.fingerprint)
            if diff:
                raise CheckpointError(
                    f"checkpoint {self.resume_path} was trained with other settings; "
                    "resume with the same ones, or train a new run with --output DIR:\n  "
                    + "\n  ".join(diff)
                )
        seed_everything(self.seed)
        bb = self.bench.backbone
        self.loaders = build_loaders(
            cfg,
            image_size=bb.image_size,
            channels=bb.channels,
            num_classes=bb.num_classes,
            device=dev,
            seed=self.seed,
            rank=dist.rank,
            world=dist.world,
        )
        if self.loaders.warning:
            self.progress.on_message(self.loaders.warning)
        self._cpus = contention.usable_cpus()
        self.model = build_model(bb, self.entry.attention).to(dev)
        self.net: nn.Module = self.model
        if dist.world > 1:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[dev.index] if dev.type == "cuda" else None
            )
        self.opt = torch.optim.AdamW(
            param_groups(self.model, cfg.weight_decay),
            lr=cfg.lr,
            betas=cfg.betas,
            fused=dev.type == "cuda",
        )
        self.steps_per_epoch = len(self.loaders.train)
        total = self.steps_per_epoch * cfg.epochs
        warmup = min(round(cfg.warmup_epochs * self.steps_per_epoch), total)  # a short run
        floor = cfg.min_lr / cfg.lr
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, partial(lr_factor, warmup=warmup, total=total, floor=floor)
        )
        self.scaler = torch.amp.GradScaler(dev.type, enabled=self.precision == "fp16")
        self.state = RunState(acc=self._zero_acc())
        if ckpt is not None:
            self.model.load_state_dict(ckpt["model"])
            self.opt.load_state_dict(ckpt["optimizer"])
            self.sched.load_state_dict(ckpt["scheduler"])
            self.scaler.load_state_dict(ckpt["scaler"])
            set_rng_state(ckpt["rng"])
            self.state = RunState.from_checkpoint(ckpt, dev)
            self.progress.on_message(
                f"resuming {self.entry.name} seed {self.seed} from {self.resume_path} at epoch "
                f"{self.state.epoch + 1}, batch {self.state.step_in_epoch} of "
                f"{self.steps_per_epoch}"
            )
        if cfg.compile:
            t0 = time.perf_counter()
            self.net = torch.compile(self.net)
            self._warm_compile()
            if self.state.compile_s is None:
                self.state.compile_s = time.perf_counter() - t0

    def checkpoint(self) -> Path:
        """Write the checkpoint (rank 0) atomically; every process waits for it."""
        path = self.dir / CHECKPOINT
        self.dist.barrier()
        if self.dist.main:
            state = {
                "format": CHECKPOINT_FORMAT,
                "fingerprint": self.fingerprint,
                "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": rng_state(),
                **self.state.to_checkpoint(),
            }
            with replace_atomically(path) as tmp:
                torch.save(state, tmp)
        self.dist.barrier()
        return path

    def run(self) -> Iterator[Record]:
        self._setup()
        with contextlib.ExitStack() as files:
            writer, tb = None, None
            if self.dist.main:
                self.dir.mkdir(parents=True, exist_ok=True)
                write_json_atomic(self.dir / "spec.json", self.bench.model_dump(mode="json"))
                # The records file holds exactly the checkpoint's history: epochs after it
                # (computed again, identically) are dropped rather than duplicated.
                write_jsonl_atomic(self.dir / RECORDS, self.state.history)
                writer = files.enter_context(JsonlWriter(self.dir / RECORDS))
                if self.cfg.tensorboard:
                    tb = _tensorboard_writer()(str(self.dir / "tb"))
                    files.callback(tb.close)
            base = self._record_base(self._env())
            status, error = "ok", None
            start = time.perf_counter() - self.state.total_s
            try:
                for rec in self._epochs(base, start):
                    if writer is not None:
                        writer.write(rec)
                    if tb is not None:
                        _tb_scalars(tb, rec)
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

    def _epochs(self, base: dict[str, Any], start: float) -> Iterator[TrainEpochRecord]:
        cfg, dev, st = self.cfg, self.device, self.state
        while st.epoch < cfg.epochs:
            self.loaders.train.set_epoch(st.epoch)
            self.net.train()
            t_epoch = time.perf_counter()
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            before = contention.read_counters(self._cpus) if self._check_cpu else None
            for x, y in self.loaders.train.iterate(st.step_in_epoch):
                self._step(x, y)
                st.step_in_epoch += 1
                st.global_step += 1
                self.progress.on_batch("train", st.step_in_epoch, self.steps_per_epoch)
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
            check = self._cpu_check(before)
            sums = self.dist.all_sum(torch.stack(list(st.acc.values())))
            loss_sum, correct, seen = sums.tolist()
            val = self.evaluate(self.loaders.val, "val") if self.loaders.val else None
            peak, mem_source = peak_memory(dev)
            rec = TrainEpochRecord(
                **base,
                epoch=st.epoch + 1,
                epochs=cfg.epochs,
                step=st.global_step,
                train_loss=loss_sum / seen,
                train_top1=correct / seen,
                val_loss=val["loss"] if val else None,
                val_top1=val["top1"] if val else None,
                val_top5=val["top5"] if val else None,
                lr=self.opt.param_groups[0]["lr"],
                epoch_s=st.epoch_train_s + time.perf_counter() - t_epoch,
                train_s=train_s,
                images_per_s=seen / train_s,
                peak_mib=peak,
                mem_source=mem_source,
                contended=None if check is None else check.disturbed,
                cpu_checks=None if check is None else {"train": check},
            )
            st.epoch += 1
            st.step_in_epoch, st.epoch_train_s = 0, 0.0
            st.acc = self._zero_acc()
            # Model selection on the validation split (the training accuracy without one).
            score = val["top1"] if val else rec.train_top1
            if score > st.best_score:
                st.best_epoch, st.best_score, st.bad_epochs = st.epoch, score, 0
                if self.dist.main:
                    save_weights(self.model, self.dir / BEST)
            else:
                st.bad_epochs += 1
            st.history.append(rec.model_dump(mode="json"))
            st.total_s = time.perf_counter() - start
            st.stopped_early = cfg.patience > 0 and st.bad_epochs >= cfg.patience
            last = st.epoch == cfg.epochs or st.stopped_early
            if st.epoch % cfg.checkpoint_every == 0 or last:
                self.checkpoint()
            yield rec
            if st.stopped_early:
                self.progress.on_message(
                    f"early stop after epoch {st.epoch}: no validation improvement for "
                    f"{cfg.patience} epochs"
                )
                return
            if self._stop_requested():
                raise Interrupted(self.stop.signum or signal.SIGTERM, self.checkpoint())

    @property
    def _check_cpu(self) -> bool:
        """Whether epochs are checked for CPU contention: not when the process shares the
        machine by design (several CPU processes, DataLoader worker processes), whose load
        would read as other work."""
        cpu_ranks = self.device.type == "cpu" and self.dist.world > 1
        return not cpu_ranks and not self.loaders.uses_workers

    def _cpu_check(self, before: contention.Counters | None) -> CpuCheck | None:
        """Whether the epoch's training steps had the CPU to themselves (since `before`)."""
        return None if before is None else cpu_check(before, device=self.device, cpus=self._cpus)

    def _final(self, base: dict[str, Any], status: str, error: str | None, start: float) -> Record:
        """Test accuracy of the selected weights (best validation epoch), once, at the end."""
        st, cfg = self.state, self.cfg
        test = None
        if status == "ok":
            if st.best_epoch is not None:
                self.dist.barrier()
                load_weights(self.model, self.dir / BEST)
            test = self.evaluate(self.loaders.test, "test")
            if self.dist.main:
                save_weights(self.model, self.dir / FINAL)
        peak, mem_source = peak_memory(self.device)
        return TrainRecord(
            **base,
            status=status,
            error=error,
            dataset=cfg.dataset,
            image_size=self.bench.backbone.image_size,
            seq_len=self.model.seq_len,
            epochs=cfg.epochs,
            epochs_run=len(st.history),
            steps=st.global_step,
            best_epoch=st.best_epoch,
            best_val_top1=st.best_score if st.best_epoch is not None else None,
            test_loss=test["loss"] if test else None,
            test_top1=test["top1"] if test else None,
            test_top5=test["top5"] if test else None,
            params=sum(p.numel() for p in self.model.parameters()),
            flops_per_image=self.model.flops(),
            precision=self.precision,
            compiled=cfg.compile,
            compile_s=st.compile_s,
            world_size=self.dist.world,
            batch_size=cfg.batch_size,
            n_train=self.loaders.n_train,
            n_val=self.loaders.n_val,
            n_test=self.loaders.n_test,
            train_s=st.train_s,
            total_s=time.perf_counter() - start,
            images_per_s=(  # all training images over all training time
                sum(h["images_per_s"] * h["train_s"] for h in st.history)
                / sum(h["train_s"] for h in st.history)
                if st.history
                else None
            ),
            contended_epochs=(
                sum(bool(h.get("contended")) for h in st.history)
                if any(h.get("contended") is not None for h in st.history)
                else None
            ),
            peak_mib=peak,
            mem_source=mem_source,
            stopped_early=st.stopped_early,
            weights=FINAL if status == "ok" else None,
        )

    def _zero_acc(self) -> dict[str, torch.Tensor]:
        z = torch.zeros((), dtype=torch.float64, device=self.device)
        return {"loss_sum": z.clone(), "correct": z.clone(), "seen": z.clone()}

    def _stop_requested(self) -> bool:
        """Whether a signal arrived, here or (under DDP) in any process: all stop together."""
        if self.dist.world == 1:
            return self.stop.signum is not None
        flag = torch.tensor(float(self.stop.signum is not None), device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() and self.stop.signum is None:
            self.stop.signum = signal.SIGTERM
        return bool(flag.item())

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        cfg, st = self.cfg, self.state
        target: torch.Tensor = y
        if cfg.mixup > 0 or cfg.cutmix > 0:
            g = torch.Generator().manual_seed(batch_seed(self.seed, st.global_step, 3))
            x, target = mix_batch(
                x, y, len(self.loaders.classes), mixup=cfg.mixup, cutmix=cfg.cutmix, g=g
            )
        with self._autocast():
            logits = self.net(x)
        loss = F.cross_entropy(logits.float(), target, label_smoothing=cfg.label_smoothing)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        # fp16's scaler skips steps with Inf gradients by design; only the loss must be finite.
        checks = [loss.detach()] if self.scaler.is_enabled() else [loss.detach(), grad_norm]
        if not bool(torch.isfinite(torch.stack(checks)).all()):
            what = "the loss" if not torch.isfinite(loss).item() else "the gradient norm"
            raise NonFiniteLoss(st.epoch + 1, st.global_step + 1, what)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        with torch.no_grad():
            n = y.shape[0]
            st.acc["loss_sum"] += loss.detach().double() * n
            st.acc["correct"] += (logits.argmax(-1) == y).sum()
            st.acc["seen"] += n

    def evaluate(self, loader: Any, phase: str) -> dict[str, float]:
        """Loss (no smoothing), top-1 and top-5 over the whole split, summed across processes."""
        self.net.eval()
        sums = evaluation_sums(
            self.net,
            loader,
            autocast=self._autocast,
            num_classes=self.bench.backbone.num_classes,
            on_batch=lambda i, n: self.progress.on_batch(phase, i, n),
        )
        self.net.train()
        return accuracy(self.dist.all_sum(sums))

    def _warm_compile(self) -> None:
        """Compile the training and evaluation graphs before the clock starts, leaving weights
        and random state as they were."""
        bb = self.bench.backbone
        x = torch.zeros(
            self.loaders.train.batch_size,
            bb.channels,
            bb.image_size,
            bb.image_size,
            device=self.device,
        )
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            with self._autocast():
                self.net(x).float().sum().backward()
            for p in self.model.parameters():
                p.grad = None
            self.net.eval()
            with torch.no_grad(), self._autocast():
                self.net(x)
            self.net.train()


@torch.no_grad()
def evaluation_sums(
    net: nn.Module,
    loader: Any,
    *,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
    num_classes: int,
    on_batch: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """(loss sum without smoothing, top-1 hits, top-5 hits, images) of `net` over a loader,
    as one float64 tensor on the loader's device (so that processes can add theirs)."""
    sums: torch.Tensor | None = None
    total = len(loader)
    k = min(5, num_classes)
    for i, (x, y) in enumerate(loader.iterate(), start=1):
        with autocast():
            logits = net(x).float()
        if sums is None:
            sums = torch.zeros(4, dtype=torch.float64, device=logits.device)
        top = logits.topk(k, dim=-1).indices
        sums[0] += F.cross_entropy(logits, y, reduction="sum").double()
        sums[1] += (top[:, 0] == y).sum()
        sums[2] += (top == y[:, None]).any(-1).sum()
        sums[3] += y.shape[0]
        if on_batch is not None:
            on_batch(i, total)
    assert sums is not None, "evaluation on an empty split"
    return sums


def accuracy(sums: torch.Tensor) -> dict[str, float]:
    """`evaluation_sums` as mean loss, top-1 and top-5."""
    loss, top1, top5, n = sums.tolist()
    return {"loss": loss / n, "top1": top1 / n, "top5": top5 / n, "n": n}


def _tensorboard_writer() -> Any:
    """TensorBoard's SummaryWriter class.

    Raises:
        TrainError: when TensorBoard is not installed.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise TrainError(
            "train.tensorboard is on but TensorBoard is not installed: pip install "
            "'effbench[tb]', or turn it off"
        ) from None
    return SummaryWriter


def _tb_scalars(tb: Any, rec: TrainEpochRecord) -> None:
    for name in ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr"):
        value = getattr(rec, name)
        if value is not None:
            tb.add_scalar(name.replace("_", "/", 1), value, rec.epoch)
    tb.add_scalar("speed/images_per_s", rec.images_per_s, rec.epoch)
    tb.flush()
