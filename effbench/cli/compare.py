"""`effbench compare`: the whole study in one resumable command (`effbench.study`): train,
analyze, accuracy across resolutions, scale, profile and the report, each unit a child
`effbench` process here (one at a time, or one training per GPU with --devices) or a SLURM job
(--executor slurm), with a line per unit as it starts, is submitted and ends."""

from __future__ import annotations

import os
from pathlib import Path

from effbench.cli.app import ListOptionCommand, app
from effbench.cli.compare_view import (
    AccountOpt,
    BudgetOpt,
    CpusOpt,
    DataDirOpt,
    DatasetOpt,
    DevicesOpt,
    DryRunOpt,
    ExecutorOpt,
    FreshOpt,
    GpusOpt,
    MemOpt,
    OutputOpt,
    PartitionOpt,
    QuickOpt,
    SeedsOpt,
    SlurmArgOpt,
    StatusOpt,
    TimeOpt,
    cluster_options,
    make_executor,
    print_status,
    print_verdict,
    run_study,
)
from effbench.cli.options import (
    DEFAULT_SPEC_PATH,
    AttentionOpt,
    DeviceOpt,
    RecipeOpt,
    SetOpt,
    SpecOpt,
    spec_source,
)


@app.command(cls=ListOptionCommand)
def compare(
    spec: SpecOpt = DEFAULT_SPEC_PATH,
    recipe: RecipeOpt = None,
    quick: QuickOpt = False,
    attention: AttentionOpt = None,
    seeds: SeedsOpt = None,
    budget: BudgetOpt = None,
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = None,
    output: OutputOpt = Path("study"),
    fresh: FreshOpt = False,
    sets: SetOpt = None,
    executor: ExecutorOpt = "local",
    devices: DevicesOpt = None,
    slurm_partition: PartitionOpt = None,
    slurm_time: TimeOpt = None,
    slurm_gpus_per_run: GpusOpt = None,
    slurm_cpus_per_run: CpusOpt = None,
    slurm_mem: MemOpt = None,
    slurm_account: AccountOpt = None,
    slurm_arg: SlurmArgOpt = None,
    dry_run: DryRunOpt = False,
    status: StatusOpt = False,
) -> None:
    """The whole comparison in one command: train every model x seed, analyze the runs,
    their accuracy across resolutions, scale and profile every model, then the report.

    Everything goes under --output (runs/, results/, report.html, report.md, study.json).
    Run it again and it goes on where it stopped: finished units are skipped (checked from
    their records), jobs still queued or running are attached to, failed or lost ones run
    again, training resumes from its checkpoints. A changed spec is refused with the keys
    that differ, unless --fresh. With --executor slurm, the spec's cluster table and the
    --slurm-* options say what each job asks for.
    """
    from effbench.study import open_study, study_sets

    spec_path = spec_source(spec, recipe, quick=quick)
    items = study_sets(
        seeds=seeds, budget=budget, dataset=dataset, data_dir=data_dir, device=device,
        sets=sets or [],
    )  # fmt: skip
    if executor == "slurm":  # jobs start elsewhere: every path they get is absolute
        output, spec_path = Path(os.path.abspath(output)), Path(os.path.abspath(spec_path))
    study = open_study(output, spec_path, items, attention, fresh=fresh and not status)
    if status:
        return print_status(study)
    given = {"partition": slurm_partition, "time_min": slurm_time, "mem": slurm_mem,
             "gpus_per_run": slurm_gpus_per_run, "cpus_per_run": slurm_cpus_per_run,
             "account": slurm_account, "args": slurm_arg}  # fmt: skip
    options = cluster_options(study.spec.cluster, given)
    runner = make_executor(study, executor, devices, options, dry_run=dry_run)
    if runner is not None:  # (a dry run printed its plan)
        run_study(study, runner)
        print_verdict(output / "report.md")
