"""`effbench report`: result files -> tables and matplotlib figures -> one self-contained HTML
file and a Markdown file with its PNG figures beside it.

Reads only result files (JSON Lines from train, profile, scale and analyze, and the resolved
specs beside them) and never imports torch. Records from different environments are kept in
separate tables and figures, each labelled with its environment.
"""

from __future__ import annotations

import base64
import io
import json
import math
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from effbench import __version__
from effbench.crossover import METRICS, is_contended, metrics_for, phase_contended, summarize
from effbench.results import BadLine, read_jsonl, spec_digest

TEMPLATES = "effbench.report"
FIGURE_DIR = "report_files"
# The attention kinds in the registry's order (tests check it against attention.configs):
# each keeps one colour in every figure.
KIND_ORDER = ("standard", "fused", "sdpa", "linformer", "performer", "nystrom", "hybrid")
PALETTE = (
    "#4c72b0", "#8172b3", "#2f2f2f", "#dd8452", "#55a868", "#c44e52", "#937860",
    "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd",
)  # fmt: skip
PART_COLOURS = {"attention": "#c44e52", "mlp": "#4c72b0", "norm": "#55a868", "other": "#bbbbbb"}
DPI = 110


# ---------------------------------------------------------------------------- reading


@dataclass
class Results:
    """Every record found, where it came from, and what could not be read."""

    records: list[dict[str, Any]] = field(default_factory=list)
    bad: list[BadLine] = field(default_factory=list)
    specs: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)  # hash -> spec
    files: list[str] = field(default_factory=list)

    def kind(self, *kinds: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("kind") in kinds]


def _result_files(paths: Iterable[Path]) -> tuple[list[Path], list[Path]]:
    jsonl: list[Path] = []
    specs: list[Path] = []
    for p in paths:
        if p.is_file():
            (specs if p.name.endswith("spec.json") else jsonl).append(p)
        elif p.is_dir():
            jsonl += sorted(q for q in p.rglob("*.jsonl") if FIGURE_DIR not in q.parts)
            specs += sorted(p.rglob("*spec.json"))
    return list(dict.fromkeys(jsonl)), list(dict.fromkeys(specs))


def collect(paths: Iterable[Path]) -> Results:
    """Read every `*.jsonl` result file and `*spec.json` under `paths`."""
    out = Results()
    jsonl, specs = _result_files(paths)
    for path in jsonl:
        good, bad = read_jsonl(path)
        out.files.append(str(path))
        out.bad += bad
        for r in good:
            r["_source"] = str(path)
            out.records.append(r)
    for path in specs:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            out.bad.append(BadLine(path=str(path), line=0, reason=f"unreadable spec: {err}"))
            continue
        digest = spec_digest(data)
        out.specs.setdefault(digest, (str(path), data))
    return out


# ---------------------------------------------------------------------------- environments


def env_key(r: dict[str, Any]) -> tuple[str, ...]:
    """What makes two records comparable: device, torch, threads and allocator."""
    e = r.get("env") or {}
    return (
        str(e.get("device_name", "?")),
        str(e.get("torch", "?")),
        str(e.get("threads", "?")),
        str(e.get("allocator", "?")),
    )


def env_label(key: tuple[str, ...]) -> str:
    device, torch_version, threads, allocator = key
    return f"{device}, torch {torch_version}, {threads} threads, {allocator}"


@dataclass
class Envs:
    """Environment ids (E1, E2, ...) in the order they were first seen."""

    keys: dict[tuple[str, ...], str] = field(default_factory=dict)

    def id(self, r: dict[str, Any]) -> str:
        key = env_key(r)
        return self.keys.setdefault(key, f"E{len(self.keys) + 1}")


# ---------------------------------------------------------------------------- formatting


def num(v: Any, digits: int = 3) -> str:
    """About `digits` significant figures, thousands separated; '-' for missing."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    v = float(v)
    if v == 0:
        return "0"
    if abs(v) < 1e-3:
        return f"{v:.{digits - 1}e}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(v))))
    return f"{v:,.{decimals}f}"


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def px_list(sizes: Iterable[int]) -> str:
    return ", ".join(f"{s} px" for s in sizes)


def contended_mark(point: dict[str, Any] | None) -> str:
    """'*' for a scale point whose inference latency is contended, else ''."""
    return "*" if point is not None and is_contended(point, "infer_time") else ""


def evidence(r: dict[str, Any]) -> list[str]:
    """[phases, evidence] of a contended record: which timings, and what the CPU showed."""
    checks = r.get("cpu_checks") or {}
    phases = [p for p in checks if phase_contended(r, p)]
    parts = []
    for p in phases:
        c = checks[p]
        bits = [f"CPU share {c.get('cpu_share', 0):.2f}"]
        if c.get("wait_share") is not None:
            bits.append(f"waited {c['wait_share']:.0%}")
        if c.get("others_cpus") is not None:
            bits.append(f"other work {c['others_cpus']:.1f} of {c.get('cpus')} CPUs")
        bits.append(f"{c.get('attempts', 1)} attempt(s)")
        parts.append(f"{p}: " + ", ".join(bits))
    return [", ".join(phases), "; ".join(parts)]


def mean_std(values: list[float], scale: float = 100.0) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values) * scale
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {statistics.stdev(values) * scale:.1f}"


def colour_of(model: str, kinds: dict[str, str]) -> str:
    """One colour per mechanism, the same in every figure."""
    kind = kinds.get(model, "")
    if kind in KIND_ORDER:
        return PALETTE[KIND_ORDER.index(kind)]
    others = sorted(m for m, k in kinds.items() if k not in KIND_ORDER)
    i = others.index(model) if model in others else 0
    return PALETTE[len(KIND_ORDER) + i % (len(PALETTE) - len(KIND_ORDER))]


def model_order(models: Iterable[str], kinds: dict[str, str]) -> list[str]:
    """Models by their kind's registry order, then by name."""

    def key(m: str) -> tuple[int, str]:
        k = kinds.get(m, "")
        return (KIND_ORDER.index(k) if k in KIND_ORDER else len(KIND_ORDER), m)

    return sorted(set(models), key=key)


# ---------------------------------------------------------------------------- blocks


@dataclass
class Plot:
    """A rendered figure: PNG bytes, a file stem, a title and a caption."""

    stem: str
    title: str
    caption: str
    png: bytes

    @property
    def uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")

    @property
    def path(self) -> str:
        return f"{FIGURE_DIR}/{self.stem}.png"


@dataclass
class Block:
    kind: str  # text | table | figure | details | list
    text: str = ""
    title: str = ""
    columns: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    figure: Plot | None = None


@dataclass
class Section:
    id: str
    title: str
    blocks: list[Block] = field(default_factory=list)

    def text(self, text: str) -> None:
        self.blocks.append(Block("text", text=text))

    def table(self, columns: list[str], rows: list[list[str]], title: str = "") -> None:
        self.blocks.append(Block("table", columns=columns, rows=rows, title=title))

    def figure(self, plot: Plot) -> None:
        self.blocks.append(Block("figure", figure=plot, title=plot.title))

    def details(self, title: str, text: str) -> None:
        self.blocks.append(Block("details", title=title, text=text))

    def bullets(self, items: list[str]) -> None:
        self.blocks.append(Block("list", items=items))


def render_png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


def new_figure(panels: int, *, width: float = 5.2, height: float = 3.8) -> tuple[Figure, list[Any]]:
    """A figure of `panels` axes in one row (two rows of two for four)."""
    rows, cols = (2, 2) if panels == 4 else (1, panels)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(panels)]
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    return fig, axes


def _slug(*parts: Any) -> str:
    text = "-".join(str(p) for p in parts)
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text).strip("-").lower()


# ---------------------------------------------------------------------------- the report


@dataclass
class Report:
    """Everything the templates render."""

    title: str
    generated: str
    version: str
    files: list[str]
    summary: list[str]
    sections: list[Section]
    bad: list[BadLine]

    def figures(self) -> list[Plot]:
        return [b.figure for s in self.sections for b in s.blocks if b.figure is not None]


def build_report(results: Results) -> Report:
    """Tables, figures and the summary from the records; a section only when it has data."""
    envs = Envs()
    for r in results.records:
        envs.id(r)
    kinds = {
        r["model"]: str((r.get("attention") or {}).get("kind", ""))
        for r in results.records
        if "model" in r
    }
    ctx = _Context(results, envs, kinds)
    sections = [
        s
        for s in (
            ctx.accuracy_section(),
            ctx.pareto_section(),
            ctx.scaling_section(),
            ctx.breakdown_section(),
            ctx.profile_section(),
            ctx.curves_section(),
            ctx.resolution_section(),
            ctx.fidelity_section(),
            ctx.maps_section(),
            ctx.environment_section(),
        )
        if s is not None
    ]
    contended = Counter(
        r["kind"] for r in results.kind("profile", "scale", "train_epoch") if r.get("contended")
    )
    if contended:
        what = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in sorted(contended.items()))
        ctx.summary.append(
            f"Contended timings ({what} record(s)): measured while other work held the CPU, "
            "even after re-measuring. They are marked, left out of the fastest verdicts, and "
            "named where a crossover rests on them."
        )
    return Report(
        title="effbench report",
        generated=time.strftime("%Y-%m-%d %H:%M:%S %z"),
        version=__version__,
        files=results.files,
        summary=ctx.summary,
        sections=sections,
        bad=results.bad,
    )


@dataclass
class _Context:
    results: Results
    envs: Envs
    kinds: dict[str, str]
    summary: list[str] = field(default_factory=list)

    def colour(self, model: str) -> str:
        return colour_of(model, self.kinds)

    def order(self, models: Iterable[str]) -> list[str]:
        return model_order(models, self.kinds)

    # -- accuracy and efficiency ---------------------------------------------------------

    def _finals(self) -> dict[tuple[str, ...], list[dict[str, Any]]]:
        """Final training records by model, dataset, resolution and environment: runs that
        differ in any of these are separate rows."""
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for r in self.results.kind("train"):
            key = (r["model"], str(r.get("dataset")), str(r.get("seq_len")), self.envs.id(r))
            groups.setdefault(key, []).append(r)
        return groups

    def _latency_at(self, final: dict[str, Any]) -> dict[str, Any] | None:
        """An inference point of the trained model's size (same resolution and tokens, no
        checkpoint): from the training's environment when there is one, else the newest."""
        points = [
            r
            for r in self.results.kind("scale")
            if r["model"] == final["model"]
            and r.get("image_size") == final.get("image_size")
            and r.get("seq_len") == final.get("seq_len")
            and r.get("infer_ms") is not None
            and not r.get("checkpoint")
        ]
        env = self.envs.id(final)
        return (
            max(points, key=lambda r: (self.envs.id(r) == env, r.get("time", "")))
            if points
            else None
        )

    @cached_property
    def _table_rows(self) -> list[dict[str, Any]]:
        rows = []
        epochs = self.results.kind("train_epoch")
        for (model, *_), runs in self._finals().items():
            ok = [r for r in runs if r.get("status") == "ok" and r.get("test_top1") is not None]
            first = runs[0]
            lat = self._latency_at(first)
            seeds = {r.get("seed") for r in runs}
            mine = [
                e
                for e in epochs
                if e["model"] == model
                and e.get("seed") in seeds
                and e.get("status") == "ok"
                and self.envs.id(e) == self.envs.id(first)
            ]
            epoch_s = [e["train_s"] for e in mine]
            rows.append(
                {
                    "model": model,
                    "runs": runs,
                    "ok": ok,
                    "top1": [r["test_top1"] for r in ok],
                    "top5": [r["test_top5"] for r in ok if r.get("test_top5") is not None],
                    "params": first.get("params"),
                    "flops": first.get("flops_per_image"),
                    "latency": lat,
                    "epoch_s": statistics.fmean(epoch_s) if epoch_s else None,
                    "epochs_contended": sum(bool(e.get("contended")) for e in mine),
                    "peak_mib": first.get("peak_mib"),
                    "dataset": first.get("dataset"),
                    "image_size": first.get("image_size"),
                    "env": self.envs.id(first),
                }
            )
        order = self.order(r["model"] for r in rows)
        return sorted(rows, key=lambda r: (order.index(r["model"]), r["env"]))

    def accuracy_section(self) -> Section | None:
        rows = self._table_rows
        if not rows:
            return None
        sec = Section("accuracy", "Accuracy and cost")
        table = []
        for r in rows:
            failed = [f"seed {x['seed']}: {x['status']}" for x in r["runs"] if x not in r["ok"]]
            lat = r["latency"]
            table.append(
                [
                    r["model"],
                    f"{len(r['ok'])}/{len(r['runs'])}"
                    + (f" ({'; '.join(failed)})" if failed else ""),
                    mean_std(r["top1"]),
                    mean_std(r["top5"]),
                    num(r["params"] and r["params"] / 1e6),
                    num(r["flops"] and r["flops"] / 1e9),
                    num(lat and lat["infer_ms"]) + contended_mark(lat),
                    num(lat and lat.get("images_per_s")) + contended_mark(lat),
                    num(r["epoch_s"]) + ("*" if r["epochs_contended"] else ""),
                    num(r["peak_mib"]),
                    r["env"] + (f" / {self.envs.id(lat)}" if lat else ""),
                ]
            )
        sec.text(
            "Test accuracy of the weights with the best validation accuracy, mean ± standard "
            "deviation over seeds; a run that ended `nan` or `oom` is counted in the seeds "
            "column and named there. Latency and throughput are one inference batch of "
            "`effbench scale` at the trained resolution; training time is per epoch; peak "
            "memory is that of training. The last column names the environments of the "
            "training and of the latency figures."
            + (
                " * marks a figure timed while other work held the CPU (contended: a latency, "
                "or a training time that includes such epochs), so slower than the machine "
                "can do."
                if any(r["epochs_contended"] or contended_mark(r["latency"]) for r in rows)
                else ""
            )
        )
        sec.table(
            [
                "model", "seeds ok", "top-1 %", "top-5 %", "params (M)", "GFLOPs / image",
                "latency ms", "images/s", "train s / epoch", "train peak MiB", "env",
            ],
            table,
        )  # fmt: skip
        best = max(
            (r for r in rows if r["top1"]), key=lambda r: statistics.fmean(r["top1"]), default=None
        )
        if best is not None:
            self.summary.append(
                f"Most accurate: {best['model']} with {mean_std(best['top1'])} % test top-1 "
                f"({len(best['top1'])} seed(s), {best['dataset']}, {best['image_size']} px)."
            )
        return sec

    # -- Pareto ----------------------------------------------------------------------------

    def pareto_section(self) -> Section | None:
        rows = [r for r in self._table_rows if r["top1"]]
        if len(rows) < 2:
            return None
        axes_spec: list[tuple[str, Callable[[dict[str, Any]], float | None]]] = [
            ("inference latency, ms / batch", lambda r: r["latency"] and r["latency"]["infer_ms"]),
            ("GFLOPs / image", lambda r: r["flops"] and r["flops"] / 1e9),
            ("training peak memory, MiB", lambda r: r["peak_mib"]),
        ]
        axes_spec = [
            (label, f) for label, f in axes_spec if sum(f(r) is not None for r in rows) >= 2
        ]
        if not axes_spec:
            return None
        fig, axes = new_figure(len(axes_spec), width=4.6)
        for ax, (label, get) in zip(axes, axes_spec, strict=True):
            pts = [(get(r), 100 * statistics.fmean(r["top1"]), r["model"]) for r in rows]
            pts = [p for p in pts if p[0] is not None]
            for x, y, m in pts:
                ax.scatter([x], [y], color=self.colour(m), s=40, zorder=3)
                ax.annotate(m, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
            front = pareto_front([(x, y) for x, y, _ in pts])
            ax.step(
                *zip(*front, strict=True), where="post", color="#999999", lw=1, ls="--", zorder=2
            )
            xs = [x for x, _, _ in pts]
            if min(xs) > 0 and max(xs) / min(xs) > 20:
                ax.set_xscale("log")
            ax.set_xlabel(label)
            ax.set_ylabel("test top-1 %")
        sec = Section("pareto", "Accuracy against cost")
        sec.text(
            "Each point is a model (mean top-1 over its seeds). The dashed line is the Pareto "
            "front: the models that no other beats in both accuracy and that cost."
        )
        sec.figure(
            Plot(
                "pareto",
                "Accuracy against latency, FLOPs and memory",
                "Higher and further left is better; the front joins the models not dominated.",
                render_png(fig),
            )
        )
        return sec

    # -- scaling ------------------------------------------------------------------------

    @cached_property
    def _series(self) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
        """Scale points by environment, patch, batch, precision and mode (newest per point)."""
        series: dict[tuple[Any, ...], dict[tuple[str, int], dict[str, Any]]] = {}
        for r in sorted(self.results.kind("scale"), key=lambda r: r.get("time", "")):
            if r.get("checkpoint"):
                continue
            key = (
                self.envs.id(r),
                r.get("patch_size"),
                r.get("batch_size"),
                r.get("precision"),
                r.get("mode"),
            )
            series.setdefault(key, {})[(r["model"], r["image_size"])] = r
        return {k: list(v.values()) for k, v in series.items()}

    def _baseline(self, points: list[dict[str, Any]]) -> str | None:
        return next(
            (m for m in self.order(r["model"] for r in points) if self.kinds.get(m) == "sdpa"),
            None,
        )

    def scaling_section(self) -> Section | None:
        series = self._series
        if not series:
            return None
        sec = Section("scaling", "Scaling with resolution")
        sec.text(
            "Whole models from `effbench scale`, against the number of tokens (log-log). Grey "
            "lines show N and N² growth from the baseline's first point; a star marks where a "
            "model overtakes `sdpa` for good (its crossover). Crossover and slope tables follow "
            "each figure; failed points are listed, not dropped."
        )
        for (env, patch, batch, precision, mode), points in series.items():
            base = self._baseline(points)
            found = summarize(points, baseline=base, mode=mode)
            metrics = metrics_for(mode)
            where = f"{env}: patch {patch}, batch {batch}, {precision}, mode {mode}"
            sec.figure(
                self._scaling_plot(
                    points,
                    found,
                    metrics,
                    where,
                    _slug("scaling", env, patch, batch, precision, mode),
                )
            )
            models = self.order(r["model"] for r in points)
            rows = []
            for m in models:
                cells = [m]
                for metric in metrics:
                    c = found[m]["crossovers"].get(metric)
                    slope = found[m]["slopes"].get(metric)
                    cross = (
                        "baseline"
                        if m == base
                        else "not reached in range"
                        if c is None
                        else f"{c['resolution']} px ({c['tokens']} tokens)"
                        + (", from the smallest" if c["at_start"] else "")
                    )
                    shaky = found[m].get("contended", {}).get(metric)
                    rests = f"; rests on contended figures at {px_list(shaky)}" if shaky else ""
                    cells.append(f"{cross}; slope {num(slope)}{rests}")
                rows.append(cells)
            sec.table(
                ["model", *(m.replace("_", " ") for m in metrics)],
                rows,
                title=f"Crossover against {base}, {where}",
            )
            failed = [r for r in points if r.get("status") != "ok"]
            if failed:
                sec.table(
                    ["model", "px", "tokens", "status", "error"],
                    [
                        [
                            r["model"],
                            str(r["image_size"]),
                            str(r["seq_len"]),
                            r["status"],
                            (r.get("error") or "")[:160],
                        ]
                        for r in failed
                    ],
                    title=f"Failed points, {where}",
                )
            contended = [r for r in points if any(is_contended(r, m) for m in metrics)]
            if contended:
                sec.table(
                    ["model", "px", "tokens", "phase", "evidence"],
                    [
                        [r["model"], str(r["image_size"]), str(r["seq_len"]), *evidence(r)]
                        for r in contended
                    ],
                    title=f"Contended points (timed while other work held the CPU), {where}",
                )
            self._fastest(points, where)
            if base:
                reached = [
                    f"{m} from {found[m]['crossovers']['infer_time']['resolution']} px"
                    + (
                        f" (rests on contended figures at {px_list(shaky)})"
                        if (shaky := found[m].get("contended", {}).get("infer_time"))
                        else ""
                    )
                    for m in models
                    if m != base and found[m]["crossovers"].get("infer_time")
                ]
                self.summary.append(
                    f"Inference crossovers against {base} ({where}): "
                    + (", ".join(reached) if reached else "none in range")
                    + "."
                )
        return sec

    def _fastest(self, points: list[dict[str, Any]], where: str) -> None:
        """The fastest model at the smallest and largest resolution, from figures that were
        not contended (those are left out, and counted)."""
        sizes = sorted({r["image_size"] for r in points})
        parts = []
        for size in (sizes[0], sizes[-1]) if len(sizes) > 1 else sizes:
            timed = [r for r in points if r["image_size"] == size and r.get("infer_ms") is not None]
            ok = [r for r in timed if not is_contended(r, "infer_time")]
            left_out = len(timed) - len(ok)
            note = f", {left_out} contended figure(s) left out" if left_out else ""
            if ok:
                best = min(ok, key=lambda r: r["infer_ms"])
                parts.append(
                    f"at {size} px {best['model']} ({num(best['infer_ms'])} ms a batch{note})"
                )
            elif left_out:
                parts.append(f"at {size} px not decided (every figure there is contended)")
        if parts:
            self.summary.append(f"Fastest inference ({where}): " + "; ".join(parts) + ".")

    def _scaling_plot(
        self,
        points: list[dict[str, Any]],
        found: dict[str, dict[str, Any]],
        metrics: list[str],
        where: str,
        stem: str,
    ) -> Plot:
        fig, axes = new_figure(len(metrics), width=4.4, height=3.6)
        base = self._baseline(points)
        contended_labelled = False
        for ax, metric in zip(axes, metrics, strict=True):
            field_ = METRICS[metric]
            for m in self.order(r["model"] for r in points):
                mine = sorted(
                    (r["seq_len"], r[field_]) for r in points if r["model"] == m and r.get(field_)
                )
                if not mine:
                    continue
                ax.plot(*zip(*mine, strict=True), marker="o", ms=3, color=self.colour(m), label=m)
                shaky = [
                    (r["seq_len"], r[field_])
                    for r in points
                    if r["model"] == m and r.get(field_) and is_contended(r, metric)
                ]
                if shaky:
                    ax.scatter(
                        *zip(*shaky, strict=True),
                        marker="x",
                        s=50,
                        color="black",
                        zorder=5,
                        label="contended" if not contended_labelled else None,
                    )
                    contended_labelled = True
                c = found[m]["crossovers"].get(metric)
                if c is not None:
                    y = dict(mine).get(c["tokens"])
                    if y is not None:
                        ax.scatter(
                            [c["tokens"]],
                            [y],
                            marker="*",
                            s=140,
                            color=self.colour(m),
                            zorder=4,
                            edgecolors="black",
                            linewidths=0.5,
                        )
            ref = sorted(
                (r["seq_len"], r[field_]) for r in points if r["model"] == base and r.get(field_)
            )
            ax.set_xscale("log")
            ax.set_yscale("log")
            if ref:
                ylim = ax.get_ylim()  # the data's range: the guides must not stretch it
                n0, y0 = ref[0]
                xs = sorted({r["seq_len"] for r in points})
                ax.plot(xs, [y0 * x / n0 for x in xs], color="#aaaaaa", ls=":", lw=1, label="∝ N")
                ax.plot(
                    xs,
                    [y0 * (x / n0) ** 2 for x in xs],
                    color="#aaaaaa",
                    ls="--",
                    lw=1,
                    label="∝ N²",
                )
                ax.set_ylim(*ylim)
            ax.set_xlabel("tokens N")
            ax.set_ylabel("MiB" if metric.endswith("memory") else "ms")
            ax.set_title(metric.replace("_", " "), fontsize=10)
        axes[0].legend(fontsize=7, ncol=2)
        return Plot(
            stem,
            f"Scaling, {where}",
            f"Time and peak memory against tokens, {where}"
            + (
                "; × marks a figure timed while other work held the CPU (contended)."
                if contended_labelled
                else "."
            ),
            render_png(fig),
        )

    # -- time by part ----------------------------------------------------------------------

    def breakdown_section(self) -> Section | None:
        sec = Section("breakdown", "Where the time goes")
        for (env, patch, batch, precision, _mode), points in self._series.items():
            with_parts = [r for r in points if r.get("breakdown_ms")]
            if not with_parts:
                continue
            size = max(r["image_size"] for r in with_parts)
            rows = [r for r in with_parts if r["image_size"] == size]
            where = f"{env}: {size} px, patch {patch}, batch {batch}, {precision}"
            source = rows[0].get("breakdown_source", "")
            sec.figure(
                self._parts_plot(
                    [(r["model"], r["breakdown_ms"]) for r in rows],
                    f"Inference time by part, {where} ({source})",
                    _slug("breakdown", env, patch, batch, precision, size),
                )
            )
            sec.table(
                [
                    "model",
                    "attention ms",
                    "MLP ms",
                    "norm ms",
                    "other ms",
                    "attention share",
                    "profiled / timed",
                ],
                [
                    [
                        r["model"],
                        *(num(r["breakdown_ms"][p]) for p in ("attention", "mlp", "norm", "other")),
                        f"{100 * r['breakdown_ms']['attention'] / r['breakdown_step_ms']:.0f} %"
                        if r.get("breakdown_step_ms")
                        else "-",
                        num(r["breakdown_step_ms"] / r["infer_ms"])
                        if r.get("infer_ms") and r.get("breakdown_step_ms")
                        else "-",
                    ]
                    for r in sorted(
                        rows, key=lambda r: self.order(x["model"] for x in rows).index(r["model"])
                    )
                ],
                title=where,
            )
        profiled = [r for r in self.results.kind("profile") if r.get("breakdown_ms")]
        if profiled:
            n = max(r["seq_len"] for r in profiled)
            rows = [r for r in profiled if r["seq_len"] == n]
            env = self.envs.id(rows[0])
            sec.figure(
                self._parts_plot(
                    [(r["model"], r["breakdown_ms"]) for r in rows],
                    f"One transformer block by part, {env}: {n} tokens (profile --breakdown)",
                    _slug("block-breakdown", env, n),
                )
            )
        if not sec.blocks:
            return None
        sec.blocks.insert(
            0,
            Block(
                "text",
                text="From `torch.profiler` with the attention, MLP and norm modules labelled: "
                "CPU time on CPU, CUDA kernel time on GPU; `other` is the rest of the call "
                "(embedding, residual additions, head). 'profiled / timed' compares the "
                "profiled call with the timed one: well above 1, the profiler's overhead; "
                "well below 1 on a GPU, a call bound by kernel launches.",
            ),
        )
        return sec

    def _parts_plot(self, rows: list[tuple[str, dict[str, float]]], title: str, stem: str) -> Plot:
        models = self.order(m for m, _ in rows)
        parts = dict(rows)
        fig = Figure(figsize=(7.5, 0.45 * len(models) + 1.4), layout="constrained")
        ax = fig.add_subplot(1, 1, 1)
        left = [0.0] * len(models)
        for part, colour in PART_COLOURS.items():
            widths = [parts[m].get(part, 0.0) for m in models]
            ax.barh(models, widths, left=left, color=colour, label=part)
            left = [a + b for a, b in zip(left, widths, strict=True)]
        ax.invert_yaxis()
        ax.set_xlabel("ms per call")
        ax.legend(fontsize=8, ncol=4, loc="lower right")
        ax.grid(True, axis="x", alpha=0.3)
        return Plot(stem, title, title + ".", render_png(fig))

    # -- the attention layer alone -------------------------------------------------------

    def profile_section(self) -> Section | None:
        recs = self.results.kind("profile")
        if not recs:
            return None
        sec = Section("profile", "The attention layer alone")
        sec.text(
            "Forward (and forward + backward) milliseconds of one attention layer from "
            "`effbench profile`, per environment."
        )
        by_env: dict[str, list[dict[str, Any]]] = {}
        for r in recs:
            by_env.setdefault(self.envs.id(r), []).append(r)
        for env, rs in by_env.items():
            lengths = sorted({r["seq_len"] for r in rs})
            latest = {
                (r["model"], r["seq_len"]): r for r in sorted(rs, key=lambda r: r.get("time", ""))
            }
            rows = []
            for m in self.order(r["model"] for r in rs):
                cells = [m]
                for n in lengths:
                    r = latest.get((m, n))
                    if r is None:
                        cells.append("")
                    elif r.get("status") != "ok":
                        cells.append(r["status"])
                    else:
                        fwd, fb = (
                            num(r.get(f"{p}_ms")) + ("*" if phase_contended(r, p) else "")
                            for p in ("fwd", "fwdbwd")
                        )
                        cells.append(f"{fwd} / {fb}")
                rows.append(cells)
            batch = rs[0].get("batch_size")
            dtype = (rs[0].get("env") or {}).get("dtype")
            sec.table(
                ["model", *(f"N = {n}" for n in lengths)],
                rows,
                title=f"{env}: batch {batch}, {dtype}; forward / forward + backward ms",
            )
            shaky = [r for r in latest.values() if r.get("contended")]
            if shaky:
                sec.text(
                    f"* {len(shaky)} of these points were timed while other work held the CPU "
                    "(contended, still so after re-measuring): their times are slower than "
                    "the machine can do."
                )
                sec.table(
                    ["model", "tokens", "phase", "evidence"],
                    [[r["model"], str(r["seq_len"]), *evidence(r)] for r in shaky],
                    title=f"Contended points, {env}",
                )
        return sec

    # -- training curves -------------------------------------------------------------------

    def curves_section(self) -> Section | None:
        epochs = [r for r in self.results.kind("train_epoch") if r.get("status") == "ok"]
        if not epochs:
            return None
        sec = Section("curves", "Training curves")
        sec.text(
            "Mean over seeds at each epoch; validation accuracy is on the split held out of the "
            "training set."
        )
        for metric, label, scale in (
            ("train_loss", "training loss", 1.0),
            ("val_top1", "validation top-1 %", 100.0),
        ):
            fig, (ax,) = new_figure(1, width=6.5, height=3.8)
            drawn = False
            for m in self.order(r["model"] for r in epochs):
                per_epoch: dict[int, list[float]] = {}
                for r in epochs:
                    if r["model"] == m and r.get(metric) is not None:
                        per_epoch.setdefault(r["epoch"], []).append(r[metric] * scale)
                if per_epoch:
                    xs = sorted(per_epoch)
                    ax.plot(
                        xs,
                        [statistics.fmean(per_epoch[x]) for x in xs],
                        marker="o",
                        ms=3,
                        color=self.colour(m),
                        label=m,
                    )
                    drawn = True
            if not drawn:
                continue
            ax.set_xlabel("epoch")
            ax.set_ylabel(label)
            ax.legend(fontsize=8, ncol=2)
            sec.figure(
                Plot(
                    _slug("curve", metric),
                    label.capitalize(),
                    f"{label.capitalize()} per epoch, every model.",
                    render_png(fig),
                )
            )
        return sec

    # -- accuracy against resolution -------------------------------------------------------

    def resolution_section(self) -> Section | None:
        recs = [r for r in self.results.kind("scale") if r.get("checkpoint")]
        if not recs:
            return None
        sec = Section("resolution", "Accuracy at other resolutions")
        sec.text(
            "A trained model evaluated at other input sizes by `effbench scale --checkpoint` "
            "(position embedding and Linformer projections interpolated). The dotted line marks "
            "the trained resolution."
        )
        fig, (ax,) = new_figure(1, width=6.5, height=3.8)
        rows = []
        for m in self.order(r["model"] for r in recs):
            mine = sorted((r["image_size"], r) for r in recs if r["model"] == m)
            pts = [(s, 100 * r["test_top1"]) for s, r in mine if r.get("test_top1") is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", color=self.colour(m), label=m)
            trained = mine[0][1].get("trained_image_size")
            if trained:
                ax.axvline(trained, color=self.colour(m), ls=":", lw=1)
            rows.append(
                [
                    m,
                    str(trained),
                    *(
                        f"{s} px: "
                        + (pct(r.get("test_top1")) if r.get("status") == "ok" else r["status"])
                        for s, r in mine
                    ),
                ]
            )
        ax.set_xlabel("input side, px")
        ax.set_ylabel("test top-1 %")
        ax.legend(fontsize=8)
        sec.figure(
            Plot(
                "accuracy-resolution",
                "Accuracy against resolution",
                "Test top-1 at each evaluated resolution.",
                render_png(fig),
            )
        )
        width = max(len(r) for r in rows)
        sec.table(
            ["model", "trained px", *(["top-1 %"] * (width - 2))],
            [r + [""] * (width - len(r)) for r in rows],
        )
        return sec

    # -- fidelity --------------------------------------------------------------------------

    @cached_property
    def _analyzed(self) -> list[dict[str, Any]]:
        latest: dict[str, dict[str, Any]] = {}
        for r in sorted(self.results.kind("analyze"), key=lambda r: r.get("time", "")):
            latest[r["model"]] = r
        return [latest[m] for m in self.order(latest)]

    def fidelity_section(self) -> Section | None:
        recs = self._analyzed
        if not recs:
            return None
        sec = Section("fidelity", "How far from exact attention")
        sec.text(
            "For every layer of each trained model, on its own Q, K and V from test images: the "
            "relative output error against exact softmax attention, ‖attend − softmax‖ / "
            "‖softmax‖, and the total-variation distance between its attention rows and the "
            "exact ones (0: identical, 1: disjoint). Exact mechanisms should read ~0."
        )
        rows = []
        for r in recs:
            layers = r["layers"]
            resid = [x["pinv_residual"] for x in layers if x.get("pinv_residual") is not None]
            rows.append(
                [
                    r["model"],
                    num(statistics.fmean(x["rel_output_error"] for x in layers)),
                    num(max(x["rel_output_error"] for x in layers)),
                    num(statistics.fmean(x["tv_mean"] for x in layers)),
                    num(max(x["row_sum_max_dev"] for x in layers)),
                    num(statistics.fmean(resid)) if resid else "-",
                    str(r["n_images"]),
                ]
            )
        sec.table(
            [
                "model",
                "mean rel. error",
                "worst layer",
                "mean TV distance",
                "max |row sum − 1|",
                "Nystrom pinv residual",
                "images",
            ],
            rows,
        )
        fig, axes = new_figure(2, width=4.6)
        for r in recs:
            xs = [x["layer"] + 1 for x in r["layers"]]
            axes[0].plot(
                xs,
                [x["rel_output_error"] for x in r["layers"]],
                marker="o",
                color=self.colour(r["model"]),
                label=r["model"],
            )
            axes[1].plot(
                xs,
                [x["tv_mean"] for x in r["layers"]],
                marker="o",
                color=self.colour(r["model"]),
                label=r["model"],
            )
        for ax, label in zip(axes, ("relative output error", "mean TV distance"), strict=True):
            ax.set_xlabel("layer")
            ax.set_ylabel(label)
        axes[0].legend(fontsize=8)
        sec.figure(
            Plot(
                "fidelity-layers",
                "Fidelity per layer",
                "Relative output error and total-variation distance against exact attention, "
                "per layer.",
                render_png(fig),
            )
        )
        curves = [r for r in recs if r.get("performer_curve")]
        if curves:
            fig, (ax,) = new_figure(1, width=5.5)
            for r in curves:
                pts = [(c["features"], c["rel_error"]) for c in r["performer_curve"]]
                ax.plot(
                    *zip(*pts, strict=True),
                    marker="o",
                    color=self.colour(r["model"]),
                    label=r["model"],
                )
                m0, e0 = pts[0]
                ax.plot(
                    [p[0] for p in pts],
                    [e0 * math.sqrt(m0 / p[0]) for p in pts],
                    color="#aaaaaa",
                    ls="--",
                    lw=1,
                    label="∝ 1/√m",
                )
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("random features m")
            ax.set_ylabel("relative output error")
            ax.legend(fontsize=8)
            sec.figure(
                Plot(
                    "performer-features",
                    "Performer error against feature count",
                    "Mean relative output error of FAVOR+ with fresh features on the trained "
                    "layers' Q, K, V.",
                    render_png(fig),
                )
            )
        ranked = sorted(
            rows, key=lambda row: float(row[1].replace(",", "")) if row[1] != "-" else math.inf
        )
        approx = [
            row for row in ranked if self.kinds.get(row[0]) not in ("standard", "fused", "sdpa")
        ]
        if approx:
            self.summary.append(
                "Distance from exact attention (mean relative output error over layers): "
                + ", ".join(f"{row[0]} {row[1]}" for row in approx)
                + "."
            )
        return sec

    # -- attention maps --------------------------------------------------------------------

    def maps_section(self) -> Section | None:
        recs = self._analyzed
        if not recs:
            return None
        sec = Section("maps", "Attention maps")
        sec.text(
            "The CLS token's attention over the patch grid (mean over heads) for fixed test "
            "images: for each image, the mechanism's effective map (upper row) and exact "
            "softmax attention computed from the same trained weights (lower row), per layer "
            "and as rollout across layers; each pair shares one colour scale, from 0."
        )
        for r in recs:
            sec.figure(self._maps_plot(r))
        return sec

    def _maps_plot(self, r: dict[str, Any]) -> Plot:
        images = r["images"]
        layers = len(r["cls_maps"])
        cols = layers + 2
        fig = Figure(figsize=(1.25 * cols, 2.5 * len(images) + 0.3), layout="constrained")
        grid = fig.add_gridspec(2 * len(images), cols)
        classes = r.get("classes") or []

        def top(a: list[Any], b: list[Any], layer: int, i: int) -> float:
            """One colour scale for the mechanism's map and the exact one beside it."""
            return max(max(map(max, a[layer][i])), max(map(max, b[layer][i]))) or 1.0

        def name(i: int) -> str:
            return classes[i] if 0 <= i < len(classes) else str(i)

        for i, img in enumerate(images):
            ax = fig.add_subplot(grid[2 * i : 2 * i + 2, 0])
            ax.imshow(img)
            ax.set_title(f"{name(r['labels'][i])}\n→ {name(r['predictions'][i])}", fontsize=7)
            ax.axis("off")
            for row, (maps, roll, tag) in enumerate(
                (
                    (r["cls_maps"], r["rollout"], r["model"]),
                    (r["cls_maps_exact"], r["rollout_exact"], "exact"),
                )
            ):
                for layer in range(layers):
                    ax = fig.add_subplot(grid[2 * i + row, layer + 1])
                    ax.imshow(
                        maps[layer][i],
                        cmap="magma",
                        vmin=0,
                        vmax=top(r["cls_maps"], r["cls_maps_exact"], layer, i),
                    )
                    ax.set_xticks([])
                    ax.set_yticks([])
                    if i == 0 and row == 0:
                        ax.set_title(f"layer {layer + 1}", fontsize=7)
                    if layer == 0:
                        ax.set_ylabel(tag, fontsize=7)
                ax = fig.add_subplot(grid[2 * i + row, cols - 1])
                ax.imshow(
                    roll[i],
                    cmap="magma",
                    vmin=0,
                    vmax=top([r["rollout"]], [r["rollout_exact"]], 0, i),
                )
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0 and row == 0:
                    ax.set_title("rollout", fontsize=7)
        gh, gw = r["grid"]
        title = f"{r['model']}: CLS attention, {r['image_size']} px, {gh}×{gw} patches"
        return Plot(
            _slug("maps", r["model"]),
            title,
            title + "; label → prediction above each image.",
            render_png(fig),
        )

    # -- environments and specs --------------------------------------------------------------

    def environment_section(self) -> Section | None:
        if not self.results.records:
            return None
        sec = Section("environment", "Where this was measured")
        rows = []
        counts: dict[str, dict[str, int]] = {}
        first: dict[str, dict[str, Any]] = {}
        for r in self.results.records:
            e = self.envs.id(r)
            counts.setdefault(e, {})
            counts[e][r["kind"]] = counts[e].get(r["kind"], 0) + 1
            first.setdefault(e, r.get("env") or {})
        for e, env in first.items():
            rows.append(
                [
                    e,
                    str(env.get("device_name", "?")),
                    f"torch {env.get('torch', '?')}"
                    + (f", CUDA {env['cuda']}" if env.get("cuda") else ""),
                    str(env.get("threads", "?"))
                    + (f" ({env['openmp']})" if env.get("openmp") else ""),
                    str(env.get("allocator", "?")),
                    f"{env.get('platform', '?')}, Python {env.get('python', '?')}",
                    f"effbench {env.get('effbench', '?')}",
                    ", ".join(f"{n} {k}" for k, n in sorted(counts[e].items())),
                ]
            )
        sec.table(
            ["id", "device", "software", "threads", "allocator", "platform", "version", "records"],
            rows,
        )
        labels = {e: env_label(k) for k, e in self.envs.keys.items()}
        self.summary.append("Measured on: " + "; ".join(f"{e} = {labels[e]}" for e in first) + ".")
        for digest, (path, data) in sorted(self.results.specs.items()):
            sec.details(f"Resolved spec {digest} ({path})", json.dumps(data, indent=2))
        return sec


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated when lower x and higher y are better, by increasing x."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


# ---------------------------------------------------------------------------- rendering


def _environment() -> Any:
    import jinja2

    root = resources.files(TEMPLATES) / "templates"
    return jinja2.Environment(
        loader=jinja2.FunctionLoader(lambda name: (root / name).read_text(encoding="utf-8")),
        autoescape=jinja2.select_autoescape(["html"]),  # by the template name's ending
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def md_cell(text: Any) -> str:
    """Text safe inside a Markdown table cell: no pipes, no raw HTML, no line breaks."""
    out = str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
    return out.replace("<", "&lt;").replace(">", "&gt;")


def render(report: Report, fmt: str) -> str:
    env = _environment()
    env.filters["md"] = md_cell
    return env.get_template(f"report.{fmt}").render(report=report)


def write_report(report: Report, output: Path, formats: Iterable[str]) -> list[Path]:
    """Write report.html (self-contained) and/or report.md with its PNGs in report_files/."""
    output.mkdir(parents=True, exist_ok=True)
    from effbench.results import replace_atomically

    written = []
    for fmt in formats:
        if fmt == "md":
            figures = output / FIGURE_DIR
            figures.mkdir(exist_ok=True)
            for plot in report.figures():
                (figures / f"{plot.stem}.png").write_bytes(plot.png)
        path = output / f"report.{fmt}"
        with replace_atomically(path) as tmp:
            tmp.write_text(render(report, fmt), encoding="utf-8")
        written.append(path)
    return written
