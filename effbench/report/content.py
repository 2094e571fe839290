"""ReportData: what every section reads, derived once from the collected records: environment
ids, each model's kind and order, the accuracy rows, the scale series and the fidelity rows."""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from effbench.config.attention import BASELINE_KIND, EXACT_KINDS, KINDS
from effbench.convergence import still_learning
from effbench.report.comparison import RowStats, budget_of, row_stats, with_baseline
from effbench.report.figures import DASHES, MARKERS, colour_of, literal
from effbench.report.inputs import Results

Record = dict[str, Any]


def env_key(r: Mapping[str, Any]) -> tuple[str, ...]:
    """What makes two records comparable: device, torch, threads, allocator, and whether the
    timed calls ran eager or `torch.compile`d (and in which mode)."""
    e = r.get("env") or {}
    return (
        str(e.get("device_name", "?")),
        str(e.get("torch", "?")),
        str(e.get("threads", "?")),
        str(e.get("allocator", "?")),
        f"compiled {r.get('compile_mode') or 'default'}" if r.get("compiled") else "eager",
    )


UNTIMED = frozenset({"analyze"})  # record kinds that time nothing: no environment of their own


def measures(r: Mapping[str, Any]) -> bool:
    """Whether a record's figures depend on where it ran (timings, memory, training speed):
    an `analyze` record's errors and maps do not, so it adds no environment to the list."""
    return r.get("kind") not in UNTIMED


def env_label(key: tuple[str, ...]) -> str:
    """'device, torch X, N threads, allocator' (and ', compiled MODE' when compiled)."""
    device, torch_version, threads, allocator, execution = key
    label = f"{device}, torch {torch_version}, {threads} threads, {allocator}"
    return label if execution == "eager" else f"{label}, {execution}"


@dataclass
class Envs:
    """Environment ids (E1, E2, ...) in the order they were first seen."""

    keys: dict[tuple[str, ...], str] = field(default_factory=dict)

    def id(self, r: Mapping[str, Any]) -> str:
        key = env_key(r)
        return self.keys.setdefault(key, f"E{len(self.keys) + 1}")


def model_order(models: Iterable[str], kinds: Mapping[str, str]) -> list[str]:
    """Models by their kind's order in the configs (KINDS), then by name, numbers in a name
    by value (an option sweep's `lin-k8` before `lin-k16`)."""

    def key(m: str) -> tuple[int, list[tuple[int, int, str]]]:
        k = kinds.get(m, "")
        # a run of digits by its value: by length without leading zeros, then its digits
        # (never int(), which refuses names of thousands of digits)
        parts = [
            (0, len(p.lstrip("0")), p) if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", m)
        ]
        return (KINDS.index(k) if k in KINDS else len(KINDS), parts)

    return sorted(set(models), key=key)


@dataclass(frozen=True)
class ModelRow:
    """One model trained on one dataset and resolution in one environment, over its seeds."""

    model: str
    runs: list[Record]  # every final training record (one per seed)
    ok: list[Record]  # those that finished with a test accuracy
    top1: list[float]
    top5: list[float]
    params: int | None
    flops: float | None  # per image
    latency: Record | None  # the scale point of the trained size, if any
    epoch_s: float | None  # mean training seconds per epoch
    epochs_contended: int
    peak_mib: float | None
    dataset: str | None
    image_size: int | None
    env: str
    budget: str | None = None  # what each run could spend ("80ep", "5min", ...)
    stats: RowStats | None = None  # interval, and paired difference from the baseline
    learning: int = 0  # runs still learning when the budget ended (`effbench.convergence`)

    @property
    def comparison(self) -> tuple[Any, ...]:
        """Rows compared with each other: same dataset, resolution and budget."""
        return (self.dataset, self.image_size, self.budget)


@dataclass(frozen=True)
class Series:
    """Scale points of one environment, patch, batch, precision and mode (newest per point)."""

    env: str
    patch: Any
    batch: Any
    precision: Any
    mode: Any
    points: list[Record]


@dataclass(frozen=True)
class FidelityRow:
    """A model's latest `analyze` record and its numbers over layers."""

    model: str
    mean_error: float  # mean relative output error
    worst_error: float
    mean_tv: float | None  # None where the maps are not distributions over the keys
    max_row_dev: float | None  # max |row sum - 1|; None: the mechanism has no map
    pinv_residual: float | None  # mean, Nystrom only
    images: int
    record: Record
    row_stochastic: bool = True  # whether its maps are distributions (non-negative, sum 1)
    min_weight: float | None = None  # the most negative map entry over layers
    attention_error: float | None = None  # mean error of the attention part alone (map . V)
    skip_rel_norm: float | None = None  # mean size of a branch that bypasses the map
    ginv_residual: float | None = None  # mean ||A Z A - A|| / ||A||, Nystrom only


@dataclass(frozen=True)
class ReportData:
    """Everything the sections read; build it with `build_data`."""

    results: Results
    envs: Envs
    kinds: dict[str, str]  # model -> attention kind
    rows: list[ModelRow]
    series: list[Series]
    fidelity: list[FidelityRow]
    baseline_model: str | None = None  # the accuracy baseline named by the user, if any
    # model -> the option sweep it came from (`group` of its records), for swept models only
    groups: dict[str, str] = field(default_factory=dict)
    # models that merge tokens (their records say how many tokens each block saw): never a
    # baseline, whatever their kind
    merged: frozenset[str] = frozenset()

    def kind(self, *kinds: str) -> list[Record]:
        return self.results.kind(*kinds)

    @property
    def analyzed(self) -> list[Record]:
        """The newest `analyze` record of each model, in model order."""
        return [f.record for f in self.fidelity]

    def env(self, r: Mapping[str, Any]) -> str:
        """The record's environment id (E1, E2, ...)."""
        return self.envs.id(r)

    def order(self, models: Iterable[str]) -> list[str]:
        return model_order(models, self.kinds)

    def colour(self, model: str) -> str:
        return colour_of(model, self.kinds)

    def variants(self, model: str) -> list[str]:
        """The models of `model`'s option sweep, in model order ([model] when it has none)."""
        group = self.groups.get(model)
        if group is None:
            return [model]
        return self.order(m for m, g in self.groups.items() if g == group)

    def swept(self) -> dict[str, list[str]]:
        """Each option sweep with at least two variants: its name -> its models in order."""
        out: dict[str, list[str]] = {}
        for m in self.order(self.groups):
            out.setdefault(self.groups[m], []).append(m)
        return {g: ms for g, ms in out.items() if len(ms) > 1}

    def style(self, model: str) -> dict[str, Any]:
        """Matplotlib style of `model`'s line or points: its kind's colour, and for the
        variants of one option sweep, one marker and dash pattern each, so that the legend
        reads as one mechanism's curve family."""
        i = self.variants(model).index(model)
        return {"color": self.colour(model), "marker": MARKERS[i % len(MARKERS)],
                "ls": DASHES[i % len(DASHES)]}  # fmt: skip

    def label(self, model: str) -> str:
        """`model` as a legend shows it: a sweep's variants as `group: values`."""
        group = self.groups.get(model)
        if group and len(self.variants(model)) > 1 and model.startswith(group + "-"):
            return literal(f"{group}: {model.removeprefix(group + '-')}")
        return literal(model)

    def exact(self, model: str) -> bool:
        """Whether the model computes exact softmax attention."""
        return self.kinds.get(model) in EXACT_KINDS

    def baseline(self, points: Iterable[Record]) -> str | None:
        """The first model of the baseline kind among `points`' models."""
        return next(iter(self.baselines(points)), None)

    def baselines(self, points: Iterable[Record]) -> list[str]:
        """Every model of the baseline kind among `points`' models (one per SDPA backend,
        say): crossovers are against the best of them at each resolution."""
        return [
            m
            for m in self.order(r["model"] for r in points)
            if self.kinds.get(m) == BASELINE_KIND and m not in self.merged
        ]


def build_data(results: Results, *, baseline: str | None = None) -> ReportData:
    """ReportData from the collected records (environment ids in the order first seen);
    accuracies are paired against `baseline` (a model name), else the baseline kind's model."""
    envs = Envs()
    for r in results.records:
        if measures(r):
            envs.id(r)
    kinds = {
        r["model"]: str((r.get("attention") or {}).get("kind", ""))
        for r in results.records
        if "model" in r
    }
    analyzed = _latest_analyzed(results, kinds)
    groups = {r["model"]: str(r["group"]) for r in results.records if r.get("group")}
    merged = frozenset(
        r["model"] for r in results.records if r.get("block_tokens") or r.get("token_merging")
    )
    return ReportData(
        results=results,
        envs=envs,
        kinds=kinds,
        rows=_paired(
            _model_rows(results, envs, kinds),
            {m: k for m, k in kinds.items() if m not in merged},
            baseline,
        ),
        series=_series(results, envs),
        fidelity=[_fidelity_row(r) for r in analyzed],
        baseline_model=baseline,
        groups=groups,
        merged=merged,
    )


# ---------------------------------------------------------------------------- accuracy rows


def _finals(results: Results, envs: Envs) -> dict[tuple[str, ...], list[Record]]:
    """Final training records by model, dataset, resolution, budget and environment: runs
    that differ in any of these are separate rows."""
    groups: dict[tuple[str, ...], list[Record]] = {}
    for r in results.kind("train"):
        key = (
            r["model"],
            str(r.get("dataset")),
            str(r.get("seq_len")),
            str(budget_of(r)),
            envs.id(r),
        )
        groups.setdefault(key, []).append(r)
    return groups


def _latency_at(results: Results, envs: Envs, final: Record) -> Record | None:
    """An inference point of the trained model's size (same resolution and tokens, no
    checkpoint): from the training's environment when there is one, else the newest."""
    points = [
        r
        for r in results.kind("scale")
        if r["model"] == final["model"]
        and r.get("image_size") == final.get("image_size")
        and r.get("seq_len") == final.get("seq_len")
        and r.get("infer_ms") is not None
        and not r.get("checkpoint")
    ]
    env = envs.id(final)
    return max(points, key=lambda r: (envs.id(r) == env, r.get("time", ""))) if points else None


def _learning(final: Record, epochs: list[Record]) -> bool | None:
    """Whether a run was still learning: its record's word, else the rule on its epoch records
    (runs trained before the record said so)."""
    if final.get("still_learning") is not None:
        return bool(final["still_learning"])
    curve = {e["epoch"]: e["train_loss"] for e in epochs if e.get("seed") == final.get("seed")}
    return still_learning([curve[k] for k in sorted(curve)], final.get("best_epoch"))


def _model_row(results: Results, envs: Envs, model: str, runs: list[Record]) -> ModelRow:
    ok = [r for r in runs if r.get("status") == "ok" and r.get("test_top1") is not None]
    # row s of every model's answers is one seed, for pairing
    ok.sort(key=lambda r: (r.get("seed") is None, r.get("seed") or 0))
    first = runs[0]
    seeds = {r.get("seed") for r in runs}
    mine = [
        e
        for e in results.kind("train_epoch")
        if e["model"] == model
        and e.get("seed") in seeds
        and e.get("status") == "ok"
        and envs.id(e) == envs.id(first)
    ]
    epoch_s = [e["train_s"] for e in mine]
    return ModelRow(
        model=model,
        runs=runs,
        ok=ok,
        top1=[r["test_top1"] for r in ok],
        top5=[r["test_top5"] for r in ok if r.get("test_top5") is not None],
        params=first.get("params"),
        flops=first.get("flops_per_image"),
        latency=_latency_at(results, envs, first),
        epoch_s=statistics.fmean(epoch_s) if epoch_s else None,
        epochs_contended=sum(bool(e.get("contended")) for e in mine),
        peak_mib=first.get("peak_mib"),
        dataset=first.get("dataset"),
        image_size=first.get("image_size"),
        env=envs.id(first),
        budget=budget_of(first),
        stats=row_stats(ok),
        learning=sum(bool(_learning(r, mine)) for r in ok),
    )


def _paired(rows: list[ModelRow], kinds: Mapping[str, str], baseline: str | None) -> list[ModelRow]:
    """Rows with their paired difference from the baseline row of their comparison (the
    named model, else the first of the baseline kind)."""
    out = []
    for row in rows:
        peers = [r for r in rows if r.comparison == row.comparison and r.stats is not None]
        base = next(
            (
                r
                for r in peers
                if (r.model == baseline if baseline else kinds.get(r.model) == BASELINE_KIND)
            ),
            None,
        )
        if row.stats is None or base is None or base is row:
            out.append(row)
            continue
        paired = with_baseline(row.stats, base.stats, base.model)
        out.append(replace(row, stats=paired))
    return out


def _model_rows(results: Results, envs: Envs, kinds: Mapping[str, str]) -> list[ModelRow]:
    """One row per model, dataset, resolution and environment, by model order then env."""
    rows = [
        _model_row(results, envs, model, runs)
        for (model, *_), runs in _finals(results, envs).items()
    ]
    order = model_order((r.model for r in rows), kinds)
    return sorted(rows, key=lambda r: (order.index(r.model), r.env))


# ---------------------------------------------------------------------------- scale series


def _series(results: Results, envs: Envs) -> list[Series]:
    """Scale points (not of checkpoints) by environment, patch, batch, precision and mode,
    newest per model and resolution, in the order each series was first seen by time."""
    series: dict[tuple[Any, ...], dict[tuple[str, int], Record]] = {}
    for r in sorted(results.kind("scale"), key=lambda r: r.get("time", "")):
        if r.get("checkpoint"):
            continue
        key = (
            envs.id(r),
            r.get("patch_size"),
            "max" if r.get("batch_search") == "max" else r.get("batch_size"),
            r.get("precision"),
            r.get("mode"),
        )
        series.setdefault(key, {})[(r["model"], r["image_size"])] = r
    return [Series(*key, points=list(v.values())) for key, v in series.items()]


# ---------------------------------------------------------------------------- fidelity


def _latest_analyzed(results: Results, kinds: Mapping[str, str]) -> list[Record]:
    """The newest `analyze` record of each model, in model order."""
    latest: dict[str, Record] = {}
    for r in sorted(results.kind("analyze"), key=lambda r: r.get("time", "")):
        latest[r["model"]] = r
    return [latest[m] for m in model_order(latest, kinds)]


def _fidelity_row(r: Record) -> FidelityRow:
    layers = r["layers"]
    weights = [x["min_weight"] for x in layers if x.get("min_weight") is not None]
    return FidelityRow(
        model=r["model"],
        mean_error=statistics.fmean(x["rel_output_error"] for x in layers),
        worst_error=max(x["rel_output_error"] for x in layers),
        mean_tv=_layer_mean(layers, "tv_mean"),
        max_row_dev=max(
            (x["row_sum_max_dev"] for x in layers if x.get("row_sum_max_dev") is not None),
            default=None,
        ),
        pinv_residual=_layer_mean(layers, "pinv_residual"),
        images=r["n_images"],
        record=r,
        # Records from before the field: their maps were all row-stochastic stand-ins.
        row_stochastic=r.get("map_row_stochastic", True) is not False and r.get("has_map", True),
        min_weight=min(weights) if weights else None,
        attention_error=_layer_mean(layers, "attention_error"),
        skip_rel_norm=_layer_mean(layers, "skip_rel_norm"),
        ginv_residual=_layer_mean(layers, "ginv_residual"),
    )


def _layer_mean(layers: list[Record], key: str) -> float | None:
    """The mean of a per-layer figure over the layers that have it (None where none does)."""
    values = [x[key] for x in layers if x.get(key) is not None]
    return statistics.fmean(values) if values else None
