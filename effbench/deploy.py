"""`effbench export`: each model whole, at the spec's resolution, on the ways out of PyTorch
that a deployment takes: `torch.export` with a static shape and with a dynamic batch
dimension, ONNX through the dynamo exporter, and that ONNX file in onnxruntime (its CPU
provider; its CUDA provider on a CUDA device where the installed onnxruntime has it).

Each path is tried on its own, so that a model `torch.export` refuses still gets its ONNX try,
and each gives one record: ok, or why not (the failure's first line and its class: the first
unsupported operator, a data-dependent shape, a dimension the model fixes, random values drawn
in the graph), the largest difference from eager PyTorch's outputs and, in onnxruntime, its
latency beside eager's at the same batch and thread count. The image side (so the sequence
length) stays static on every path: Linformer's projections and every position embedding
are sized for it. Yields records and never prints.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import logging
import re
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from effbench.config.spec import BenchSpec, ModelEntry
from effbench.measure import OnStep, time_call
from effbench.model import ViT, build_model
from effbench.results import Env, ExportRecord, inside, record_base

DEPLOY_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
OPSET = 18  # the dynamo exporter's own opset; the ONNX rows record the one written
MAX_BATCH = 4096  # the largest batch a dynamic program or ONNX file is declared for
# The largest difference from eager's outputs a path may show, relative to the outputs'
# largest magnitude (at least 1): beyond it, the path computes something else.
TOLERANCE = 1e-4
EXPORT_DIR = "export"  # under the results directory: one <model>.onnx per model
# Operators that draw new random values at each call, in an exported graph or an ONNX file.
RANDOM_OP = re.compile(r"\b(rand\w*|normal|bernoulli|multinomial|uniform)\b", re.IGNORECASE)
ONNX_RANDOM = frozenset(
    {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli",
     "Multinomial"}
)  # fmt: skip
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
REASON_CHARS = 240
TORCH_PATHS = ("torch.export static", "torch.export dynamic batch")


def missing_packages() -> list[str]:
    """The packages of the `deploy` extra that cannot be imported here."""
    missing = []
    for name in DEPLOY_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


@dataclass(frozen=True)
class ExportSettings:
    """Where the ONNX files go (`output`/export/), the batch every path is checked and timed
    at, the ONNX opset, and the timing of eager and onnxruntime calls (`time_call`)."""

    output: Path
    batch_size: int = 8
    opset: int = OPSET
    warmup: int = 1
    min_run_time: float = 0.2
    retries: int = 0


# ---------------------------------------------------------------------------- failures


@dataclass(frozen=True)
class Failure:
    """Why a path failed: `status` unsupported (the path cannot take the model as it is) or
    error; `failure` the class; `reason` one line; `operator` the first unsupported one."""

    status: str
    failure: str
    reason: str
    operator: str | None = None

    def fields(self) -> dict[str, Any]:
        return {"status": self.status, "failure": self.failure, "error": self.reason,
                "operator": self.operator}  # fmt: skip


def _line(text: str) -> str:
    """`text` as one trimmed line: colours and runs of spaces removed, cut at REASON_CHARS."""
    text = " ".join(_ANSI.sub("", text).split())
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 1] + "…"


def _chain(err: BaseException) -> list[BaseException]:
    """`err` and the exceptions it was raised from, outermost first."""
    out: list[BaseException] = []
    while err is not None and err not in out:
        out.append(err)
        err = err.__cause__ or err.__context__
    return out


def _operator(m: re.Match[str]) -> str:
    """'effbench::local_attention' from an OpOverload's 'effbench.local_attention'."""
    name = m.group(1)
    return name.replace(".", "::", 1) if "::" not in name else name


# (pattern, status, class, reason from the match, operator from the match)
PATTERNS: tuple[tuple[re.Pattern[str], str, str, Callable[[re.Match[str]], str], bool], ...] = (
    (
        re.compile(r"No ONNX function found for <OpOverload\(op='([\w.:]+)'"),
        "unsupported", "unsupported operator",
        lambda m: f"no ONNX function for {_operator(m)}", True,
    ),
    (
        re.compile(r"Could not find an implementation for (\w+\(\d+\))"),
        "unsupported", "unsupported operator",
        lambda m: f"onnxruntime has no kernel for {m.group(1)}", True,
    ),
    (
        re.compile(r"marked (\w+) as dynamic but your code specialized it to be a constant "
                   r"\((\d+)\)"),
        "unsupported", "dimension fixed by the model",
        lambda m: f"the model fixes {m.group(1)} to {m.group(2)}", False,
    ),
    (
        re.compile(r"(Could not (?:guard on|extract specialized integer from) data-dependent "
                   r"expression [^\s(]+|[\w ]*data-dependent[^.\n]*)", re.IGNORECASE),
        "unsupported", "data-dependent shape", lambda m: m.group(1).strip(), False,
    ),
    (
        re.compile(r"Could not run '(\w+::\w+)' with arguments from the '(\w+)' backend"),
        "unsupported", "unsupported operator",
        lambda m: f"{m.group(1)} has no {m.group(2)} kernel", True,
    ),
)  # fmt: skip


def describe(err: BaseException) -> Failure:
    """The class and one-line reason of a failed export or run: the first recognised pattern
    in the exception or the ones it was raised from; else an error with the innermost
    exception's type and first line."""
    chain = _chain(err)
    for pattern, status, failure, reason, names_op in PATTERNS:
        for e in chain:
            m = pattern.search(_ANSI.sub("", str(e)))
            if m:
                return Failure(
                    status, failure, _line(reason(m)), _operator(m) if names_op else None
                )
    inner = chain[-1]
    first = next((ln for ln in str(inner).splitlines() if ln.strip()), "")
    return Failure("error", type(inner).__name__, _line(f"{type(inner).__name__}: {first}"))


def _attempt(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`fn()`'s record fields, or the fields of its failure; the exporters kept quiet."""
    t0 = time.perf_counter()
    try:
        with _quiet():
            out = fn()
    except Exception as err:  # any failure of a path is that path's record
        out = describe(err).fields()
    return {"export_s": time.perf_counter() - t0} | out


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters' warnings and log lines (graph dumps, constant folding notes) held
    back: what failed is in the record."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


def _compared(got: Tensor, want: Tensor, fields: dict[str, Any]) -> dict[str, Any]:
    """`fields` with the largest difference of `got` from `want`; beyond TOLERANCE (relative
    to the outputs' largest magnitude, at least 1) the path failed: `unsupported` when the
    graph draws random values (`fields["random"]`, left out of the record), else `error`."""
    random = fields.pop("random", None)
    diff = float((got.float().cpu() - want.float().cpu()).abs().max())
    scale = max(1.0, float(want.abs().max()))
    fields = fields | {"max_abs_diff": diff, "note": random or fields.get("note")}
    if diff <= TOLERANCE * scale:
        return fields
    failure = "random values in the graph" if random else "outputs differ from eager"
    return fields | {
        "status": "unsupported" if random else "error",
        "failure": failure,
        "error": _line(f"max |output - eager| = {diff:.3g} > {TOLERANCE * scale:g}"),
    }


# ---------------------------------------------------------------------------- inputs


class Inputs:
    """Images of each batch size, the same on every path, and eager's outputs for them."""

    def __init__(self, model: ViT, device: torch.device, channels: int) -> None:
        self.model, self.device, self.channels = model, device, channels
        self._ref: dict[int, Tensor] = {}

    def images(self, batch: int) -> Tensor:
        side = self.model.image_size
        g = torch.Generator().manual_seed(batch)  # drawn on the CPU: the same on every device
        return torch.randn(batch, self.channels, side, side, generator=g).to(self.device)

    def eager(self, batch: int) -> Tensor:
        if batch not in self._ref:
            with torch.inference_mode():
                self._ref[batch] = self.model(self.images(batch)).cpu()
        return self._ref[batch]


def _outputs(run: Callable[[Tensor], Tensor], inputs: Inputs, batches: list[int]) -> Tensor:
    """What `run` gives for the images of each batch, flattened into one tensor."""
    return torch.cat([run(inputs.images(b)).detach().cpu().flatten() for b in batches])


def _eager_cat(inputs: Inputs, batches: list[int]) -> Tensor:
    return torch.cat([inputs.eager(b).flatten() for b in batches])


def _random_note(names: list[str]) -> str | None:
    """A note naming the first operator that draws random values at each call."""
    found = next((n for n in names if RANDOM_OP.search(n)), None)
    if found is None:
        return None
    return f"draws new random values at each call ({found}): make them a frozen buffer"


# ---------------------------------------------------------------------------- torch.export


def _torch_export(inputs: Inputs, batch: int, *, dynamic: bool) -> dict[str, Any]:
    """`torch.export` at `batch`, its program run and compared with eager: at `batch` when
    static; with a dynamic batch dimension, traced at `batch` (at least 2, as a batch of 1
    is specialised) and checked at 1 and `batch` + 1."""
    trace = max(batch, 2) if dynamic else batch
    shapes = ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},) if dynamic else None
    program = torch.export.export(
        inputs.model, (inputs.images(trace),), dynamic_shapes=shapes, strict=False
    )
    names = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    module = program.module()
    checked = [1, batch + 1] if dynamic else [batch]
    with torch.no_grad():
        got = _outputs(module, inputs, checked)
    fields = {"status": "ok", "checked_batches": checked, "dynamic_batch": dynamic,
              "random": _random_note(names)}  # fmt: skip
    return _compared(got, _eager_cat(inputs, checked), fields)


# ---------------------------------------------------------------------------- ONNX


def _onnx_export(model: nn.Module, x: Tensor, path: Path, opset: int, dynamic: bool) -> None:
    shapes = ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},) if dynamic else None
    torch.onnx.export(
        model, (x,), str(path), dynamo=True, opset_version=opset, dynamic_shapes=shapes,
        verbose=False,
    )  # fmt: skip


def _onnx(inputs: Inputs, batch: int, path: Path, opset: int, root: Path) -> dict[str, Any]:
    """The model as an ONNX file at `path`, traced on the CPU (the portable paths of each
    mechanism) with a dynamic batch; when that fails, with the batch fixed at `batch` and
    a note saying why. Checked with `onnx.checker`; random operators in it noted."""
    import onnx

    note = None
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (path, path.with_name(path.name + ".data")):
        stale.unlink(missing_ok=True)
    try:
        _onnx_export(inputs.model, inputs.images(max(batch, 2)), path, opset, True)
        dynamic = True
    except Exception as err:  # a dynamic batch refused: a static file is still deployable
        note = f"static batch {batch}: a dynamic batch failed: {describe(err).reason}"
        _onnx_export(inputs.model, inputs.images(batch), path, opset, False)
        dynamic = False
    onnx.checker.check_model(str(path))
    graph = onnx.load(str(path), load_external_data=False)
    ops = [n.op_type for n in graph.graph.node]
    random = _random_note([op for op in ops if op in ONNX_RANDOM])
    data = path.with_name(path.name + ".data")
    size = path.stat().st_size + (data.stat().st_size if data.exists() else 0)
    opsets = {o.domain or "ai.onnx": o.version for o in graph.opset_import}
    return {"status": "ok", "dynamic_batch": dynamic, "note": random or note, "random": random,
            "opset": opsets.get("ai.onnx", opset), "onnx_file": str(path.relative_to(root)),
            "onnx_bytes": size}  # fmt: skip


# ---------------------------------------------------------------------------- onnxruntime


def ort_providers(device: torch.device) -> list[str]:
    """onnxruntime's CPU provider, and its CUDA provider when measuring on a CUDA device and
    the installed onnxruntime has it."""
    import onnxruntime as ort

    out = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        out.append("CUDAExecutionProvider")
    return out


def runtime_path(provider: str) -> str:
    """The path name of an onnxruntime provider's records."""
    return "onnxruntime cuda" if provider == "CUDAExecutionProvider" else "onnxruntime cpu"


def export_paths(providers: list[str]) -> list[str]:
    """Every path a model is tried on, in order, with onnxruntime's `providers`."""
    return [*TORCH_PATHS, "onnx", *(runtime_path(p) for p in providers)]


def _session(path: Path, provider: str, device: torch.device) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # eager's threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: a failure is the record's
    chosen: Any = provider
    if provider == "CUDAExecutionProvider":
        chosen = (provider, {"device_id": device.index or 0})
    return ort.InferenceSession(str(path), options, providers=[chosen])


Prepared = tuple[Callable[[], Any], Callable[[], Any]]
"""A session's call on one batch (what is timed) and the fetch of its output (numpy)."""


def _runner(session: Any, provider: str, device: torch.device) -> Callable[[Tensor], Prepared]:
    """Prepares `session`'s call on a batch of images; on CUDA with inputs and outputs bound
    on the GPU (`io_binding`), as eager's are, so that the timed call copies nothing."""
    import onnxruntime as ort

    name, out = session.get_inputs()[0].name, session.get_outputs()[0].name
    if provider != "CUDAExecutionProvider":

        def plain(x: Tensor) -> Prepared:
            feed = {name: x.cpu().numpy()}
            return (lambda: session.run([out], feed)), (lambda: session.run([out], feed)[0])

        return plain

    def bound(x: Tensor) -> Prepared:
        binding = session.io_binding()
        value = ort.OrtValue.ortvalue_from_numpy(x.cpu().numpy(), "cuda", device.index or 0)
        binding.bind_ortvalue_input(name, value)
        binding.bind_output(out, "cuda", device.index or 0)

        def run() -> None:
            session.run_with_iobinding(binding)
            binding.synchronize_outputs()

        return run, (lambda: (run(), binding.copy_outputs_to_cpu()[0])[1])

    return bound


def _onnxruntime(
    inputs: Inputs, onnx: dict[str, Any], provider: str, settings: ExportSettings
) -> dict[str, Any]:
    """The ONNX file in onnxruntime with `provider`: compared with eager at the batch (and
    one more when the file takes any batch), and eager and onnxruntime timed at the batch.
    Eager is timed before the session exists: onnxruntime's threads spin for a while after
    each run, and would take the CPU from eager's."""
    b, device = settings.batch_size, inputs.device
    timing = {"device": device, "warmup": settings.warmup,
              "min_run_time": settings.min_run_time, "retries": settings.retries}  # fmt: skip
    x = inputs.images(b)
    with torch.inference_mode():
        eager = time_call(lambda: inputs.model(x), **timing)
    file = settings.output / onnx["onnx_file"]
    prepare = _runner(_session(file, provider, device), provider, device)
    checked = [b, b + 1] if onnx.get("dynamic_batch") else [b]
    got = torch.cat([torch.from_numpy(prepare(inputs.images(c))[1]()).flatten() for c in checked])
    ort = time_call(prepare(x)[0], **timing)
    fields = {"status": "ok", "checked_batches": checked, "provider": provider,
              "dynamic_batch": onnx.get("dynamic_batch"), "opset": onnx.get("opset"),
              "onnx_file": onnx["onnx_file"], "note": onnx.get("note"),
              "random": onnx.get("random")}  # fmt: skip
    checks = {"eager": eager.check, "onnxruntime": ort.check}
    return _compared(got, _eager_cat(inputs, checked), fields) | {
        "eager_ms": eager.median_ms,
        "ort_ms": ort.median_ms,
        "cpu_checks": {k: c for k, c in checks.items() if c is not None},
        "contended": any(c.disturbed for c in checks.values() if c is not None),
    }


def _versions() -> dict[str, str]:
    return {name: importlib.import_module(name).__version__ for name in DEPLOY_PACKAGES}


# ---------------------------------------------------------------------------- the sweep


def _sizes(spec: BenchSpec, model: ViT, batch: int) -> dict[str, Any]:
    bb = spec.backbone
    return {"image_size": model.image_size, "patch_size": bb.patch_size,
            "seq_len": model.seq_len, "batch_size": batch, "dim": bb.dim, "depth": bb.depth,
            "heads": model.attention_layers()[0].num_heads}  # fmt: skip


def export_model(
    spec: BenchSpec,
    entry: ModelEntry,
    *,
    device: torch.device,
    env: Env,
    run_id: str,
    settings: ExportSettings,
    providers: list[str],
) -> Iterator[ExportRecord]:
    """One model's records: torch.export static and with a dynamic batch (on `device`),
    ONNX (traced on the CPU), then onnxruntime with each of `providers`. The model is in
    eval mode with no gradients, so every mechanism takes its inference path."""
    bb = spec.backbone
    cpu = build_model(bb, entry.attention, merge_r=entry.merge_r(bb)).eval().requires_grad_(False)
    model = cpu if device.type == "cpu" else copy.deepcopy(cpu).to(device)
    on_device, on_cpu = (
        Inputs(model, device, spec.backbone.channels),
        Inputs(cpu, torch.device("cpu"), spec.backbone.channels),
    )
    b, root = settings.batch_size, settings.output
    base = record_base(spec, entry, env=env, run_id=run_id) | _sizes(spec, model, b)
    base["versions"] = _versions()
    for path, dynamic in zip(TORCH_PATHS, (False, True), strict=True):
        out = _attempt(lambda dynamic=dynamic: _torch_export(on_device, b, dynamic=dynamic))
        yield ExportRecord(**base, path=path, **out)
    file = inside(root, EXPORT_DIR, f"{entry.name}.onnx")
    onnx = _attempt(lambda: _onnx(on_cpu, b, file, settings.opset, root))
    yield ExportRecord(**base, path="onnx", **{k: v for k, v in onnx.items() if k != "random"})
    for provider in providers:
        inputs = on_cpu if provider == "CPUExecutionProvider" else on_device
        yield ExportRecord(**base, **_in_runtime(inputs, onnx, provider, settings))


def _in_runtime(
    inputs: Inputs, onnx: dict[str, Any], provider: str, settings: ExportSettings
) -> dict[str, Any]:
    """The fields of an onnxruntime record: the ONNX file's run, or why there was none."""
    out = {"path": runtime_path(provider), "provider": provider}
    if onnx["status"] != "ok":
        return out | {"status": onnx["status"], "failure": "no ONNX file",
                      "error": _line(f"the onnx path failed: {onnx['error']}")}  # fmt: skip
    ran = _attempt(lambda: _onnxruntime(inputs, onnx, provider, settings))
    ran.pop("export_s")  # a session was made and run, nothing exported
    return out | ran


def export_sweep(
    spec: BenchSpec,
    *,
    device: torch.device,
    env: Env,
    run_id: str,
    settings: ExportSettings,
    on_step: OnStep | None = None,
) -> Iterator[ExportRecord]:
    """Every model of `spec` on every path, one record per model and path, as they finish."""
    providers = ort_providers(device)
    for i, entry in enumerate(spec.models):
        if on_step is not None:
            on_step(f"exporting {entry.name}", i, len(spec.models))
        yield from export_model(
            spec, entry, device=device, env=env, run_id=run_id, settings=settings,
            providers=providers,
        )  # fmt: skip
    if on_step is not None:
        on_step("exported", len(spec.models), len(spec.models))
