"""`effbench compare`: the whole study, as units of work that an executor runs.

    recipes.py   the spec: a file or a shipped recipe
    units.py     the study's units (train per model x seed, analyze, resolutions, scale,
                 profile, report) in phases, and whether each is finished (its records)
    state.py     study.json: each unit's state and job, a pydantic model
    runner.py    one unit run as a child `effbench` process; its records committed whole
    machine.py   the local executor: here, one unit at a time or one per GPU (--devices)
    cluster.py   the cluster executor: SLURM jobs through submitit, attach, resubmit, plan
    job.py       what a job runs (submitit's Checkpointable: requeued on time limits)

Torch-free, and submitit is imported only when jobs are submitted.
"""

from effbench.study.recipes import (
    QUICK_RECIPE,
    compare_spec_file,
    recipe_names,
    recipe_path,
    spec_file,
)
from effbench.study.units import Study, Unit, open_study, study_sets

__all__ = [
    "QUICK_RECIPE",
    "Study",
    "Unit",
    "compare_spec_file",
    "open_study",
    "recipe_names",
    "recipe_path",
    "spec_file",
    "study_sets",
]
