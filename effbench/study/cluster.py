"""The cluster executor: a study's units as SLURM jobs through submitit (the training runs as
one job array, the accuracy units as another, the timing units one job at a time), or as
submitit's local jobs (the same logic on one machine, for tests).

study.json records each unit's job before and after it is submitted (the submission's name
and the unit's place in it first, then the job id), and a rerun asks the scheduler which of
them still live: it attaches to those, never submitting a second copy, resubmits units whose
job ended without their records, and skips finished units. `sacct` is not needed: the
scheduler's queue (`squeue`) says what lives, and the records say what finished.
Torch-free; submitit is imported only here and in the job.
"""

from __future__ import annotations

import shlex
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from effbench.config.spec import ClusterSection
from effbench.errors import UsageError
from effbench.results import replace_atomically
from effbench.study.machine import Failure, OnEvent, StudyInterrupted
from effbench.study.runner import command
from effbench.study.state import LIVE, now
from effbench.study.units import ACCURACY, TIMING, TRAIN, Study, Unit, finished

JOBS = "jobs"
QUEUED = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING",
                    "RESIZING", "SUSPENDED", "SUBMITTED"})  # fmt: skip
RUNNING = frozenset({"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"})


def check_slurm(partition: str | None) -> None:
    """The SLURM commands are here and the partition exists.

    Raises:
        UsageError: naming what is missing and the fix.
    """
    for tool in ("sbatch", "squeue", "sinfo"):
        if shutil.which(tool) is None:
            raise UsageError(
                f"--executor slurm: no {tool} on this machine; run compare on a SLURM login "
                "node, or use --executor local"
            )
    if partition is None:
        return
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True,
                             timeout=60, check=True).stdout  # fmt: skip
    except (subprocess.SubprocessError, OSError) as err:
        raise UsageError(f"--executor slurm: sinfo failed ({err}); is slurmctld up?") from None
    names = sorted({p.strip().rstrip("*") for p in out.split() if p.strip()})
    if partition not in names:
        raise UsageError(
            f"--slurm-partition {partition}: no such partition; choose one of {', '.join(names)}"
        )


def squeue() -> dict[str, tuple[str, str]]:
    """Every job in the queue: id -> (name, state); array tasks one by one (`123_4`)."""
    try:
        argv = ["squeue", "-h", "-r", "-t", "all", "-o", "%i|%j|%T"]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True).stdout
    except (subprocess.SubprocessError, OSError) as err:
        raise UsageError(f"squeue failed ({err}); is slurmctld up? run compare again") from None
    jobs = {}
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            jobs[parts[0]] = (parts[1], parts[2])
    return jobs


def resources(options: ClusterSection, unit: Unit) -> dict[str, Any]:
    """submitit's SLURM parameters for a unit's job."""
    gpus = options.gpus_per_run if unit.phase == TRAIN else min(options.gpus_per_run, 1)
    cpus = options.cpus_per_run or (8 if gpus else 1)
    params: dict[str, Any] = {
        "time": options.time_min, "cpus_per_task": cpus, "array_parallelism":
        options.array_parallelism, "additional_parameters": dict(options.args),
    }  # fmt: skip
    for key, value in (("partition", options.partition), ("mem", options.mem),
                       ("account", options.account), ("gpus_per_node", gpus or None)):  # fmt: skip
        if value is not None:
            params[key] = value
    return params


def unit_argv(study: Study, options: ClusterSection, unit: Unit) -> list[str]:
    """The command a unit's job runs: a training run gets the job's CPUs as its threads
    (unless the spec sets them) and torchrun when it has several GPUs."""
    extra: list[str] = []
    if unit.phase == TRAIN and study.spec.train.threads is None:
        extra = ["--threads", str(resources(options, unit)["cpus_per_task"])]
    gpus = options.gpus_per_run if unit.phase == TRAIN else 0
    return command(unit, extra, torchrun=gpus)


@dataclass
class ClusterExecutor:
    """Units as jobs of `cluster` ("slurm", or submitit's "local" for tests)."""

    study: Study
    options: ClusterSection
    cluster: str = "slurm"
    poll_s: float = 10.0
    handles: dict[str, Any] = field(default_factory=dict)  # job id -> submitit job (local)

    @property
    def name(self) -> str:
        return self.cluster

    @property
    def folder(self) -> Path:
        return self.study.out / JOBS

    def _executor(self, unit: Unit, job_name: str) -> Any:
        import submitit

        if self.cluster == "local":
            requeues = self.options.max_requeues
            ex = submitit.LocalExecutor(folder=self.folder, max_num_timeout=requeues)
            ex.update_parameters(timeout_min=self.options.time_min)
            return ex
        ex = submitit.SlurmExecutor(folder=self.folder, max_num_timeout=self.options.max_requeues)
        ex.update_parameters(job_name=job_name, **resources(self.options, unit))
        return ex

    # ------------------------------------------------------------------ the scheduler's view

    def _states(self) -> dict[str, str]:
        """Job id -> scheduler state, for the jobs still known to the scheduler."""
        if self.cluster == "local":
            return {jid: ("RUNNING" if not job.done() else "DONE")
                    for jid, job in self.handles.items()}  # fmt: skip
        return {jid: st for jid, (_name, st) in squeue().items()}

    def _by_name(self) -> dict[str, list[str]]:
        if self.cluster == "local":
            return {}
        names: dict[str, list[str]] = {}
        for jid, (name, _state) in squeue().items():
            names.setdefault(name, []).append(jid)
        return names

    def attach(self, units: Iterable[Unit], on: OnEvent) -> dict[str, str]:
        """The units whose job still lives (unit key -> job id); what study.json says was
        submitted is looked up, by job id or by the submission's name."""
        states, names = self._states(), self._by_name()
        batch_sizes: dict[str, int] = {}
        for rec in self.study.state.units.values():
            if rec.batch:
                batch_sizes[rec.batch] = batch_sizes.get(rec.batch, 0) + 1
        live = {}
        for unit in units:
            rec = self.study.record(unit)
            if rec.state not in LIVE:
                continue
            jid = rec.job_id
            if jid is None and rec.batch in names:  # killed between sbatch and writing the id
                base = names[rec.batch][0].split("_")[0]
                jid = base if batch_sizes.get(rec.batch, 1) == 1 else f"{base}_{rec.index}"
            state = states.get(jid or "")
            if jid and state is not None and (state in QUEUED or state in RUNNING):
                live[unit.key] = jid
                self.study.update(unit, job_id=jid, state="running" if state in RUNNING
                                  else "submitted")  # fmt: skip
                on("attached", unit, f"job {jid} ({state.lower()})")
        return live

    # ---------------------------------------------------------------------- submitting

    def submit(self, units: list[Unit], on: OnEvent) -> dict[str, str]:
        """Submit units as one job (one unit) or one array; study.json names each unit's
        submission before sbatch runs and its job id right after."""
        from effbench.study.job import UnitJob

        tag = self.study.spec.hash()[:6]
        batch = f"effbench-{tag}-{units[0].slug if len(units) == 1 else units[0].phase}" \
                f"-{uuid.uuid4().hex[:6]}"  # fmt: skip
        for i, unit in enumerate(units):
            self.study.update(unit, state="submitting", executor=self.cluster, batch=batch,
                              index=i, job_id=None, reason=None)  # fmt: skip
        ex = self._executor(units[0], batch)
        jobs_in = [UnitJob(u, unit_argv(self.study, self.options, u), self.options.max_requeues)
                   for u in units]  # fmt: skip
        try:
            with ex.batch():
                jobs = [ex.submit(j) for j in jobs_in]
        except Exception as err:  # submitit raises its own errors with sbatch's words
            first = (str(err).strip().splitlines() or [type(err).__name__])[-1][:300]
            for unit in units:
                self.study.update(unit, state="failed", reason=f"not submitted: {first}")
            raise UsageError(f"sbatch refused the jobs: {first}") from None
        ids = {}
        for unit, job in zip(units, jobs, strict=True):
            rec = self.study.record(unit)
            self.study.update(unit, state="submitted", job_id=str(job.job_id),
                              attempts=rec.attempts + 1, since=now())  # fmt: skip
            self.handles[str(job.job_id)] = job
            ids[unit.key] = str(job.job_id)
            on("submitted", unit, f"job {job.job_id}")
        return ids

    # ------------------------------------------------------------------------- waiting

    def run(self, study: Study, units: list[Unit], on: OnEvent) -> list[Failure]:
        """Run one phase: attach to its live jobs, submit the rest (training and accuracy
        units at once, timing units one after another), wait for all.

        Raises:
            StudyInterrupted: SIGINT or SIGTERM reached `compare`; its jobs go on in the queue,
                and a rerun attaches to them.
        """

        def stop(signum: int, _frame: Any) -> None:
            raise StudyInterrupted(signum, "waiting for the jobs")

        before = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            return self._run(units, on)
        finally:
            for s, handler in before.items():
                signal.signal(s, handler)

    def _run(self, units: list[Unit], on: OnEvent) -> list[Failure]:
        live = self.attach(units, on)
        todo = [u for u in units if u.key not in live]
        failures: list[Failure] = []
        if units and units[0].phase in (TRAIN, ACCURACY):
            if todo:
                live |= self.submit(todo, on)
            return self.wait(units, live, on)
        for unit in units:  # timing: alone, one at a time
            ids = {unit.key: live[unit.key]} if unit.key in live else self.submit([unit], on)
            failures += self.wait([unit], ids, on)
            if failures:
                break
        return failures

    def wait(self, units: list[Unit], live: dict[str, str], on: OnEvent) -> list[Failure]:
        """Poll the queue until every job of `live` has ended; a unit is done when its
        records are there, else failed with the job's last words."""
        by_key = {u.key: u for u in units}
        failures: list[Failure] = []
        seen = {key: self.study.record(by_key[key]).state for key in live}
        while live:
            states = self._states()
            for key, jid in list(live.items()):
                unit, state = by_key[key], states.get(jid)
                if state in QUEUED or state in RUNNING:
                    now_state = "running" if state in RUNNING else "submitted"
                    if seen.get(key) != now_state:
                        seen[key] = now_state
                        self.study.update(unit, state=now_state)
                        on(now_state, unit, f"job {jid}")
                    continue
                del live[key]
                failures += self._ended(unit, jid, state, on)
            if live:
                time.sleep(self.poll_s)
        return failures

    def _ended(self, unit: Unit, jid: str, state: str | None, on: OnEvent) -> list[Failure]:
        if finished(unit):
            self.study.update(unit, state="done", reason=None)
            on("done", unit, f"job {jid}")
            return []
        reason = self.reason(jid, state)
        self.study.update(unit, state="failed", reason=reason)
        on("failed", unit, reason)
        return [Failure(unit.key, reason)]

    def reason(self, jid: str, state: str | None) -> str:
        """Why a job ended without its unit's records, in one line: the unit command's own
        last words (what effbench printed before the job's wrapper reported it), the exit."""
        from submitit.core.utils import JobPaths

        paths = JobPaths(self.folder, job_id=jid, task_id=0)
        how = f"job {jid} ended" + (f" {state.lower()}" if state and state != "DONE" else "")
        if not paths.stdout.exists() and not paths.stderr.exists():
            return (f"{how} without a log in {self.folder}: is {self.study.out} on a "
                    "filesystem the nodes share?")  # fmt: skip
        return f"{how}: {job_words(paths.stderr)} (log: {paths.stderr})"


def job_words(log: Path) -> str:
    """The unit command's last line in a job's stderr, and how it exited."""
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "no log"
    own, _, wrapper = text.partition("submitit ERROR")
    lines = [ln.strip() for ln in own.splitlines() if ln.strip()]
    exits = [ln.split(": ", 1)[1] for ln in wrapper.splitlines() if "UnitFailed: " in ln]
    words = lines[-1][:300] if lines else "nothing on stderr"
    return f"{words}; {exits[-1]}" if exits else words


def plan_lines(study: Study, options: ClusterSection, units: list[Unit]) -> list[str]:
    """--dry-run: the jobs, their resources and GPU-hours, one line each, and the sbatch
    script of each submission written under <output>/jobs/plan/ (nothing submitted)."""
    from submitit.slurm.slurm import _make_sbatch_string

    plan = study.out / JOBS / "plan"
    plan.mkdir(parents=True, exist_ok=True)
    groups = [[u for u in units if u.phase == TRAIN], [u for u in units if u.phase == ACCURACY]]
    groups += [[u] for u in units if u.phase == TIMING]
    lines, gpu_hours = [], 0.0
    for group in (g for g in groups if g):
        first = group[0]
        params = resources(options, first)
        gpus = params.get("gpus_per_node", 0)
        name = "train" if first.phase == TRAIN else "accuracy" if first.phase == ACCURACY \
            else first.slug  # fmt: skip
        header = _make_sbatch_string(
            command="true", folder=str(study.out / JOBS), job_name=f"effbench-{name}",
            map_count=len(group) if len(group) > 1 else None, **params,
        ).split("\n# command\n")[0]  # fmt: skip
        with replace_atomically(plan / f"{name}.sh") as tmp:  # never through a link
            tmp.write_text(header + _commands(study, options, group), "utf-8")
        hours = len(group) * options.time_min / 60
        gpu_hours += hours * gpus
        lines.append(
            f"{name}: {len(group)} job(s){' as an array' if len(group) > 1 else ''}, each "
            f"{params['cpus_per_task']} CPU(s), {gpus} GPU(s), at most {options.time_min} min "
            f"-> {hours * max(gpus, 1):.1f} {'GPU' if gpus else 'CPU-job'}-hours at most"
        )
    lines.append(budget_line(study, options, gpu_hours))
    lines.append(f"scripts: {plan}")
    return lines


def _commands(study: Study, options: ClusterSection, group: list[Unit]) -> str:
    """The script's body: each unit's command, the array task picking its own."""
    lines = "\n".join(f"  {shlex.quote(shlex.join(unit_argv(study, options, u)))}" for u in group)
    return (
        "\n# command: what compare submits through submitit, which adds the requeue on a time\n"
        "# limit and moves a unit's results from .attempts/ into results/ once it succeeded;\n"
        "# sbatch runs this script by hand (array task i runs command i)\n"
        f"COMMANDS=(\n{lines}\n)\n"
        'srun --unbuffered bash -c "${COMMANDS[${SLURM_ARRAY_TASK_ID:-0}]}"\n'
    )


def budget_line(study: Study, options: ClusterSection, upper: float) -> str:
    """GPU-hours from the training budget where it is time, beside the time limits' bound."""
    budget = study.spec.train.run_budget()
    runs = len(study.spec.models) * len(study.spec.train.seeds)
    gpus = options.gpus_per_run
    if budget.seconds is not None and gpus:
        spent = runs * budget.seconds / 3600 * gpus
        return (
            f"training budget {budget}: {runs} runs x {gpus} GPU(s) = {spent:.1f} GPU-hours of "
            f"training steps; the time limits allow {upper:.1f} GPU-hours in all"
        )
    return (
        f"training budget {budget} x {runs} runs: the time limits allow {upper:.1f} "
        "GPU-hours in all (an upper bound; epochs and FLOPs take what the GPU needs)"
    )
