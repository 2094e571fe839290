"""The record schema: one pydantic model per kind of record (profile, scale, its summary,
train and its epochs, analyze, export), the environment manifest every record carries, and
`record_base`, the fields they share. Layer 1: no torch."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from effbench.config.spec import BenchSpec, ModelEntry

SCHEMA_VERSION = 1
FLOPS_UNIT = "FLOPs = 2 x multiply-adds of matrix products, forward, per sample"
Status = Literal["ok", "oom", "nan", "error"]


class Env(BaseModel):
    """Where and how a record was measured."""

    model_config = ConfigDict(extra="allow")

    effbench: str
    torch: str
    python: str
    platform: str
    device: str
    device_name: str
    threads: int
    allocator: str
    dtype: str
    openmp: str | None = None  # the OpenMP wait policy the threads ran with
    cuda: str | None = None
    cudnn: int | None = None
    # where a scheduler ran it (`effbench.env.scheduler`): SLURM's job id (an array task as
    # <array job>_<index>, as submitit and study.json name it), the array index, the node
    slurm_job_id: str | None = None
    slurm_array_task_id: int | None = None
    node: str | None = None


class Record(BaseModel):
    """Fields every record carries, whatever produced it."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    kind: str
    status: Status = "ok"
    error: str | None = None
    run_id: str
    time: str = Field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    spec_hash: str
    model: str
    # the [[models]] entry an option sweep expanded the model from (`ModelEntry.group`)
    group: str | None = None
    attention: dict[str, Any]
    env: Env


class CpuCheck(BaseModel):
    """Whether a timed measurement had the CPU to itself (`effbench.contention`).

    Shares are over the measurement's wall time: `cpu_share` is the process's CPU time per
    thread that could run, `wait_share` the time its threads waited for a CPU, `others_cpus`
    the CPUs other work kept busy. `attempts` counts the measurements made for `repeats`
    timings (more: re-measured after a disturbed one); `disturbed` says the kept one was still
    disturbed (of several repeats: at least half of them).
    """

    model_config = ConfigDict(extra="forbid")

    wall_s: float
    threads: int
    cpus: int
    cpu_share: float
    wait_share: float | None = None
    others_cpus: float | None = None
    attempts: int = 1
    repeats: int = 1
    disturbed: bool = False
    reason: str | None = None


class Contention(BaseModel):
    """Fields of a record whose figures are timed: whether the CPU was its own."""

    # True: a timed figure of the record was measured while other work held the CPU (still
    # so after the re-measurements), so it is slower than the machine can do; None: unchecked.
    contended: bool | None = None
    cpu_checks: dict[str, CpuCheck] | None = None  # per timed phase (fwd, infer, train, ...)

    def contended_phases(self) -> list[str]:
        return [k for k, c in (self.cpu_checks or {}).items() if c.disturbed]

    def retried(self) -> int:
        """Re-measurements made after disturbed measurements."""
        return sum(c.attempts - c.repeats for c in (self.cpu_checks or {}).values())


class OpTime(BaseModel):
    """One row of the profiler's table: an operator (CPU) or kernel (CUDA) by self time."""

    name: str
    self_ms: float
    total_ms: float
    calls: int


class Compiled(BaseModel):
    """Fields of a record whose timed calls may be `torch.compile`d."""

    compiled: bool | None = None  # True: the timed calls ran the compiled layer or model
    compile_mode: str | None = None
    # seconds of each phase's first call, which compiles (and runs once): fwd, fwdbwd, ...
    compile_s: dict[str, float] | None = None
    # the backend of the local attention in each phase (fwd, fwdbwd, infer, train), where the
    # mechanism has one: flex, slices or gather (`effbench.attention.local`)
    local_backend: dict[str, str] | None = None
    # CUDA: True when the GPU's kernels fill less than half the timed forward's wall time
    # (fwd_kernel_ms / fwd_ms in profile, infer_kernel_ms / infer_ms in scale), so that the
    # figure measures launches more than the mechanism; None off CUDA
    launch_bound: bool | None = None


class MaxBatch(BaseModel):
    """How `--batch max` found a phase's batch: the largest tried whose peak fitted."""

    batch: int
    peak_mib: float
    limit_mib: float
    tried: list[list[float | None]]  # [batch, peak MiB (None: ran out of memory)]
    mib_per_image: float | None = None  # slope of the line fitted to the peaks
    capped: bool = False  # stopped at `largest_batch`, below the limit


class ProfileRecord(Compiled, Contention, Record):
    """One attention layer at one sequence length."""

    kind: Literal["profile"] = "profile"
    seq_len: int
    batch_size: int | None  # under `--batch max`: the forward's batch (None: nothing fitted)
    dim: int
    heads: int
    # the model's token merging (r per block): it acts between blocks, so the layer alone is
    # its kind's, timed at every length the merged sequence passes through
    token_merging: int | None = None
    repeats: int | None = None  # timed repeats per phase (records before repeats: one)
    sdpa_backend: str | None = None
    params: int | None = None
    fwd_ms: float | None = None  # one batch, median of the repeats' medians
    fwd_iqr_ms: float | None = None
    fwd_runs: int | None = None
    fwd_calls_per_run: int | None = None
    fwd_repeat_spread: float | None = None  # (max - min) / median of the repeats' medians
    fwd_rounds_ms: list[float] | None = None  # each repeat's median, round by round
    fwd_kernel_ms: float | None = None  # CUDA: GPU kernel and copy time of one forward
    fwdbwd_ms: float | None = None
    fwdbwd_iqr_ms: float | None = None
    fwdbwd_runs: int | None = None
    fwdbwd_calls_per_run: int | None = None
    fwdbwd_repeat_spread: float | None = None
    fwdbwd_rounds_ms: list[float] | None = None  # each repeat's median, round by round
    fwd_peak_mib: float | None = None
    fwdbwd_peak_mib: float | None = None
    mem_source: str | None = None
    flops_unit: str = FLOPS_UNIT
    flops_analytic: int | None = None
    # of flops_analytic, the element-wise work a mechanism counts (Hydra's), which the
    # counters below do not see: they are checked against flops_analytic less this
    flops_elementwise: int | None = None
    flops_fvcore: int | None = None
    flops_flop_counter: int | None = None
    flops_by_op: dict[str, int] | None = None
    fwd_gflops_per_s: float | None = None
    top_ops: list[OpTime] | None = None
    trace_dir: str | None = None
    breakdown_ms: dict[str, float] | None = None  # one transformer block: attention/mlp/norm/other
    breakdown_step_ms: float | None = None
    breakdown_source: str | None = None
    sdpa_backend_source: str | None = None
    sdpa_math_fallback: bool | None = None
    # `--batch max`: each phase at the largest batch that fits the memory limit (the search
    # per phase in `max_batch`), its time per sequence and tokens per second
    batch_search: Literal["max"] | None = None
    max_batch: dict[str, MaxBatch] | None = None
    fwd_image_ms: float | None = None  # per sequence (the name scale records use)
    fwd_image_rounds_ms: list[float] | None = None
    fwd_tokens_per_s: float | None = None
    fwdbwd_image_ms: float | None = None
    fwdbwd_image_rounds_ms: list[float] | None = None
    fwdbwd_tokens_per_s: float | None = None


class ScaleRecord(Compiled, Contention, Record):
    """One whole model at one input resolution (`effbench scale`)."""

    kind: Literal["scale"] = "scale"
    image_size: int
    patch_size: int
    seq_len: int
    batch_size: int | None  # under `--batch max`: the batch found (None: nothing fitted)
    mode: str
    precision: str  # "float32", or e.g. "bfloat16 autocast" (weights stay float32)
    dim: int
    depth: int
    heads: int
    repeats: int
    note: str | None = None  # options fitted to the token count, and the like
    params: int | None = None
    flops_unit: str = FLOPS_UNIT
    flops_analytic: int | None = None
    # with token merging: the tokens entering each block, then those leaving the last
    block_tokens: list[int] | None = None
    flops_elementwise: int | None = None  # as in ProfileRecord (in attn_flops_analytic too)
    flops_fvcore: int | None = None
    flops_flop_counter: int | None = None
    attn_flops_analytic: int | None = None
    attn_flops_fvcore: int | None = None
    attn_flops_flop_counter: int | None = None
    flops_by_op: dict[str, int] | None = None
    infer_ms: float | None = None  # one batch, median over all repeats
    infer_iqr_ms: float | None = None
    infer_runs: int | None = None
    infer_calls_per_run: int | None = None
    infer_repeat_spread: float | None = None  # (max - min) / median of the repeats' medians
    infer_rounds_ms: list[float] | None = None  # each repeat's median, round by round
    infer_kernel_ms: float | None = None  # CUDA: GPU kernel and copy time of one forward
    images_per_s: float | None = None  # inference
    infer_peak_mib: float | None = None
    train_ms: float | None = None  # one optimizer step: forward, loss, backward, AdamW
    train_iqr_ms: float | None = None
    train_runs: int | None = None
    train_calls_per_run: int | None = None
    train_repeat_spread: float | None = None
    train_rounds_ms: list[float] | None = None  # each repeat's median, round by round
    train_images_per_s: float | None = None
    train_peak_mib: float | None = None
    # NVIDIA GPUs (`effbench.measure.energy`): NVML's energy counter over a window of at
    # least 2 s of calls, apart from the timings; mean watts over that window
    infer_joules_per_image: float | None = None
    infer_watts: float | None = None
    infer_energy_window_s: float | None = None
    train_joules_per_step: float | None = None
    train_watts: float | None = None
    train_energy_window_s: float | None = None
    energy_source: str | None = None
    energy_note: str | None = None  # why an energy figure is missing (no NVIDIA GPU, ...)
    mem_source: str | None = None
    sdpa_backend: str | None = None
    sdpa_backend_source: str | None = None
    sdpa_math_fallback: bool | None = None
    breakdown_ms: dict[str, float] | None = None  # inference forward: attention/mlp/norm/other
    breakdown_step_ms: float | None = None
    breakdown_source: str | None = None
    top_ops: list[OpTime] | None = None
    checkpoint: str | None = None  # `scale --checkpoint`: the run evaluated
    # `--batch max`: each phase timed at the largest batch that fits the memory limit; per
    # phase the search (`MaxBatch`) and the time per image, for throughput and its verdicts
    batch_search: Literal["max"] | None = None
    max_batch: dict[str, MaxBatch] | None = None
    infer_image_ms: float | None = None
    infer_image_rounds_ms: list[float] | None = None
    train_image_ms: float | None = None
    train_image_rounds_ms: list[float] | None = None
    trained_image_size: int | None = None
    test_loss: float | None = None
    test_top1: float | None = None
    test_top5: float | None = None
    n_test: int | None = None


class Crossover(BaseModel):
    """The smallest resolution from which a mechanism beats the baseline at every larger one."""

    resolution: int
    tokens: int
    at_start: bool  # already ahead at the smallest resolution compared


class PointVerdict(BaseModel):
    """A model against the baseline at one resolution in time (`effbench.ratios`): the ratio
    of their times, its 95 % interval from paired rounds, and the verdict."""

    model_config = ConfigDict(extra="forbid")

    verdict: Literal["faster", "slower", "not resolved"]
    ratio: float | None = None  # time(model) / time(baseline): geometric mean over rounds
    low: float | None = None
    high: float | None = None
    p: float | None = None
    rounds: int | None = None
    paired: bool | None = None  # false: medians of records without rounds, no interval
    failed: bool | None = None  # one side has no figure (out of memory, error)


class ScaleSummaryRecord(Record):
    """Per mechanism, after a scale grid: crossovers against the baseline and fitted slopes.

    Metrics are `infer_time`, `infer_memory`, `train_time` and `train_memory`. A crossover
    of None means "not reached in range"; a slope of None, too few points to fit.
    """

    kind: Literal["scale_summary"] = "scale_summary"
    baseline: str | None  # the `sdpa` model compared against
    mode: str
    resolutions: list[int]
    crossovers: dict[str, Crossover | None]
    # Per time metric and resolution (its pixels as a string: a JSON key), the paired
    # verdict a time crossover rests on.
    verdicts: dict[str, dict[str, PointVerdict]] = Field(default_factory=dict)
    slopes: dict[str, float | None]  # d log(value) / d log(tokens) over slope_tokens
    slope_tokens: dict[str, list[int]]  # the token counts each slope was fitted over
    # Per time metric, the resolutions where this model's or the baseline's figure was
    # contended (timed while other work held the CPU): a crossover or slope resting on them
    # is uncertain.
    contended: dict[str, list[int]] = Field(default_factory=dict)


class LayerFidelity(BaseModel):
    """One attention layer of a trained model against exact attention on its own Q, K, V."""

    layer: int
    rel_output_error: float  # ||attend - softmax attention||_F / ||softmax attention||_F
    # Where the layer adds a branch that bypasses its map (Nystrom's conv on V): the error of
    # the attention part alone (map . V against exact), and the branch's relative size.
    attention_error: float | None = None
    skip_rel_norm: float | None = None  # ||skip(V)||_F / ||softmax attention||_F
    # Total-variation distance of attention rows (mean over rows and heads): only where the
    # map is a distribution over the keys (`map_row_stochastic`); None for signed maps.
    tv_mean: float | None = None
    tv_max: float | None = None
    row_sum_max_dev: float | None = None  # max |sum of a row of the map - 1|; None: no map
    min_weight: float | None = None  # the map's most negative entry (0 when none is)
    pinv_residual: float | None = None  # Nystrom: ||A Z - I||_F / ||I||_F
    ginv_residual: float | None = None  # Nystrom: ||A Z A - A||_F / ||A||_F

    @property
    def approximation_error(self) -> float:
        """The attention's own error, the headline: the attention part's where a branch
        bypasses the map, else the whole output's."""
        return self.rel_output_error if self.attention_error is None else self.attention_error


class AnalyzeRecord(Record):
    """Attention maps and fidelity of one trained run (`effbench analyze`)."""

    kind: Literal["analyze"] = "analyze"
    run_dir: str
    weights: str
    dataset: str
    image_size: int
    seq_len: int
    grid: list[int]
    n_images: int  # test images the fidelity figures are measured on
    map_row_stochastic: bool | None = None  # whether the maps are distributions over keys
    # False for a mechanism with no per-head map (`Attention.has_map`): the map fields are
    # then None, and the layers give output fidelity only
    has_map: bool = True
    layers: list[LayerFidelity]
    performer_curve: list[dict[str, float]] | None = None  # features -> mean rel. error
    images: list[Any]  # the shown test images, (H, W, 3) uint8 each
    labels: list[int]
    predictions: list[int]
    classes: list[str] | None = None
    cls_maps: list[Any] | None  # [layer][image] (gh, gw): CLS's weights, mean over heads
    cls_maps_exact: list[Any] | None  # the same from exact softmax attention, same weights
    rollout: list[Any] | None  # [image] (gh, gw)
    rollout_exact: list[Any] | None


class TrainEpochRecord(Contention, Record):
    """One training epoch of one model and seed."""

    kind: Literal["train_epoch"] = "train_epoch"
    seed: int
    epoch: int  # 1-based
    epochs: int | None = None  # epochs the budget buys (the last may be partial); None: time
    step: int  # optimizer steps so far
    train_loss: float
    train_top1: float
    val_loss: float | None = None
    val_top1: float | None = None
    val_top5: float | None = None
    lr: float
    epoch_s: float  # training and validation
    train_s: float
    images_per_s: float  # training images (all processes) per second of training
    peak_mib: float | None = None
    mem_source: str | None = None


class TrainRecord(Record):
    """The end of one training run: test accuracy of the selected (best-validation) weights."""

    kind: Literal["train"] = "train"
    seed: int
    dataset: str
    image_size: int
    seq_len: int
    epochs: int | None = None  # epochs the budget buys; None for a time budget
    epochs_run: int
    steps: int
    budget: str | None = None  # what each run could spend: "30ep", "5min", "2e+15flop"
    images: int | None = None  # training images seen (steps x global batch)
    train_flop: float | None = None  # analytic training FLOPs: forward per image x 3 x images
    best_epoch: int | None = None
    best_val_top1: float | None = None
    test_loss: float | None = None
    test_top1: float | None = None
    test_top5: float | None = None
    params: int
    flops_unit: str = FLOPS_UNIT
    flops_per_image: int
    # with token merging: the tokens entering each block, then those leaving the last
    block_tokens: list[int] | None = None
    precision: str
    compiled: bool = False
    compile_mode: str | None = None  # with compiled: the torch.compile mode
    compile_s: float | None = None
    world_size: int = 1
    batch_size: int
    n_train: int
    n_val: int
    n_test: int
    train_s: float  # time in training steps, all epochs (this process's clock)
    total_s: float
    images_per_s: float | None = None
    contended_epochs: int | None = None  # epochs timed while other work held the CPU
    peak_mib: float | None = None  # this run's own peak (`mem_source` says how it was read)
    mem_source: str | None = None
    stopped_early: bool = False
    # still learning when the budget ended, by `effbench.convergence`'s rule (None: too short)
    still_learning: bool | None = None
    weights: str | None = None  # safetensors file of the selected weights, relative to the run


ExportPath = Literal[
    "torch.export static",
    "torch.export dynamic batch",
    "onnx",
    "onnxruntime cpu",
    "onnxruntime cuda",
]


class ExportRecord(Contention, Record):
    """One whole model on one deployment path (`effbench export`): whether it got through,
    why not (`error`: the first line of the failure, `failure`: its class, `operator`: the
    first operator nothing supports), how far its outputs are from eager PyTorch's and, in
    onnxruntime, its latency beside eager's at the same batch."""

    kind: Literal["export"] = "export"
    # `unsupported`: the path cannot take the model as it is (an operator, a shape); `error`:
    # anything else that failed, outputs too far from eager's included
    status: Literal["ok", "error", "unsupported"] = "ok"
    path: ExportPath
    failure: str | None = None  # the failure's class: unsupported operator, data-dependent ...
    operator: str | None = None
    note: str | None = None  # e.g. an ONNX file with a static batch, and why not dynamic
    image_size: int
    patch_size: int
    seq_len: int
    batch_size: int
    dim: int
    depth: int
    heads: int
    checked_batches: list[int] | None = None  # batches compared with eager
    max_abs_diff: float | None = None  # largest |output - eager output| over those batches
    export_s: float | None = None  # seconds the export took (torch.export and onnx paths)
    dynamic_batch: bool | None = None  # the program or ONNX file takes any batch
    opset: int | None = None
    onnx_file: str | None = None  # relative to the results directory
    onnx_bytes: int | None = None
    provider: str | None = None  # onnxruntime's execution provider
    eager_ms: float | None = None  # one batch in eager PyTorch on the provider's device
    ort_ms: float | None = None  # the same batch in onnxruntime
    versions: dict[str, str] | None = None  # onnx, onnxscript, onnxruntime


def record_base(spec: BenchSpec, model: ModelEntry, *, env: Env, run_id: str) -> dict[str, Any]:
    """The fields every record of `model` carries: which run, which spec, which mechanism, where."""
    return {
        "run_id": run_id,
        "spec_hash": spec.hash(),
        "model": model.name,
        "group": model.group,
        "attention": model.attention.model_dump(mode="json"),
        "env": env,
    }
