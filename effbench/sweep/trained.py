"""Trained-checkpoint evaluation (`scale --checkpoint`): the run's spec with this command's
`[scale]`, a scorer on its test split, and the scale grid with its weights loaded."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from effbench.config.load import parse_spec
from effbench.config.spec import BenchSpec
from effbench.errors import RunError, SpecError
from effbench.measure import OnStep
from effbench.model import ViT
from effbench.results import Env, ScaleRecord
from effbench.runs import TrainedRun
from effbench.sweep.scale import Evaluate, Trained, scale_sweep


def checkpoint_spec(run: TrainedRun, current: BenchSpec, data_dir: str | None) -> BenchSpec:
    """The trained run's spec with this command's `[scale]` section and only its model.

    Raises:
        RunError: when the scale patch differs from the trained one, or a resolution does
            not divide into the trained patches.
    """
    trained = run.spec.backbone.patch_size
    if current.scale.patch_size not in (None, trained):
        raise RunError(
            f"--patch {current.scale.patch_size}: {run.directory} was trained with patch "
            f"{trained}; a trained model keeps its patch size (drop --patch)"
        )
    data = run.spec.model_dump(mode="json")
    data["models"] = [run.entry.model_dump(mode="json")]
    data["scale"] = {**current.scale.model_dump(mode="json"), "patch_size": trained}
    if data_dir is not None:
        data["train"]["data_dir"] = data_dir
    source = f"{run.directory}/spec.json with [scale]"
    try:
        spec = parse_spec(data, source=source)
    except SpecError as err:
        raise RunError("\n".join(err.lines())) from None
    if spec.scale_problems():
        raise RunError("\n".join(SpecError(spec.scale_problems(), source).lines()))
    return spec


def scorer_on_test_split(spec: BenchSpec, device: torch.device) -> Evaluate:
    """A scorer: test loss, top-1 and top-5 of a model on the trained run's test split,
    resized to the model's input size."""
    from effbench.data import eval_loader
    from effbench.train.evaluate import accuracy, evaluation_sums

    bb = spec.backbone

    def evaluate(
        model: ViT, amp: Callable[[], contextlib.AbstractContextManager[Any]]
    ) -> dict[str, Any]:
        loader = eval_loader(spec, device=device, image_size=model.image_size)
        acc = accuracy(evaluation_sums(model, loader, autocast=amp, num_classes=bb.num_classes))
        return {
            "test_loss": acc["loss"],
            "test_top1": acc["top1"],
            "test_top5": acc["top5"],
            "n_test": int(acc["n"]),
        }

    return evaluate


def checkpoint_sweep(
    spec: BenchSpec,
    run: TrainedRun,
    state: dict[str, torch.Tensor],
    *,
    device: torch.device,
    env: Env,
    run_id: str,
    on_step: OnStep | None = None,
) -> Iterator[ScaleRecord]:
    """The trained model (`state`, from `load_state`) at every resolution of `spec` (from
    `checkpoint_spec`): accuracy on the test split beside the cost figures."""
    trained = Trained(
        state=state,
        grid=run.spec.backbone.grid(),
        evaluate=scorer_on_test_split(spec, device),
    )
    extra = {"checkpoint": str(run.directory), "trained_image_size": spec.backbone.image_size}
    yield from scale_sweep(
        spec,
        device=device,
        env=env,
        run_id=run_id,
        trained=trained,
        checkpoint=extra,
        on_step=on_step,
    )
