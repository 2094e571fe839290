"""The benchmark spec: pydantic models of `bench.toml`, loading, overrides and cross-field checks.

No torch import here: a spec validates (and its errors print) before any heavy import.
"""

from __future__ import annotations

import itertools
import json
import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    field_validator,
)

from effbench.config.attention import KINDS, AttentionConfig
from effbench.config.budget import HELP as BUDGET_HELP
from effbench.config.budget import Budget, normalised, parse_budget
from effbench.config.size import SIZE_HELP, parse_size
from effbench.errors import SpecError

DEFAULT_SPEC = "bench.toml"
# Upper bounds of sizes and counts: beyond them a run could only hang or overflow.
MAX_SIZE = 1 << 20
MAX_SEED = (1 << 32) - 1
Dtype = Literal["float32", "bfloat16", "float16"]


def _check_device(v: str) -> str:
    ok = v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit())
    if not ok:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {v!r}")
    return v


DeviceName = Annotated[str, AfterValidator(_check_device)]
Threads = Annotated[
    int | None,
    Field(gt=0, le=4096, description="CPU threads for torch; unset: torch's default (the cores)"),
]
Retries = Annotated[
    int,
    Field(
        ge=0,
        le=10,
        description="re-measurements of a timing that other work on the CPU disturbed, "
        "before it is recorded as contended",
    ),
]

Compile = Annotated[
    bool,
    Field(
        description="time the torch.compile'd layer or model (inductor); the first call, "
        "which compiles, is timed apart as compile_s"
    ),
]
CompileMode = Annotated[
    Literal["default", "reduce-overhead", "max-autotune"],
    Field(description="torch.compile mode: default, reduce-overhead (CUDA graphs), max-autotune"),
]

Repeats = Annotated[
    int,
    Field(ge=1, le=100, description="timed repeats per point; the record keeps their spread"),
]


def _check_size(v: str | None) -> str | None:
    if v is not None:
        parse_size(v)
    return v


def _check_batch(v: Any) -> int | str:
    if v == "max":
        return v
    if isinstance(v, str) and v.strip().isdigit():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= MAX_SIZE:
        raise ValueError(f"batch_size must be 1 to {MAX_SIZE} or 'max', got {v!r}")
    return v


BatchSize = Annotated[
    int | Literal["max"],
    PlainValidator(_check_batch),
    Field(
        description="images (or sequences) per call; 'max': the largest batch whose peak "
        "memory fits memory_limit, searched per point and phase"
    ),
]
MemoryLimit = Annotated[
    str | None,
    AfterValidator(_check_size),
    Field(
        description="with batch_size = 'max': the memory a call may use, "
        f"{SIZE_HELP}; unset: the GPU's free memory less a tenth (the CPU needs one)"
    ),
]
LargestBatch = Annotated[
    int, Field(gt=0, le=MAX_SIZE, description="with batch_size = 'max': the largest tried")
]

Interleave = Annotated[
    bool,
    Field(
        description="take the repeats round-robin over the grid's points, so that a slow "
        "spell of the machine hits every point alike (each point's model and input stay in "
        "memory until the last round); false: each point's repeats back to back"
    ),
]


class _Section(BaseModel):
    # inf and nan are refused in every number (an infinite warm-up or timing never ends)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Backbone(_Section):
    """The ViT shared by every model; only the attention differs."""

    image_size: int = Field(32, gt=0, le=MAX_SIZE, description="input side in pixels")
    patch_size: int = Field(4, gt=0, le=MAX_SIZE, description="patch side in pixels")
    tokenizer: Literal["patch", "conv"] = Field(
        "patch",
        description="how images become tokens: 'patch', one strided convolution per patch "
        "(ViT); 'conv', log2(patch_size) stages of a 3x3 convolution, ReLU and a stride-2 "
        "max-pool (Compact Convolutional Transformers, Hassani et al. 2021), the same token "
        "grid; patch_size must then be a power of two",
    )
    dim: int = Field(128, gt=0, le=MAX_SIZE, description="embedding width C")
    depth: int = Field(6, gt=0, le=1024, description="number of transformer blocks")
    heads: int = Field(4, gt=0, le=1024, description="attention heads")
    mlp_ratio: float = Field(2.0, gt=0, le=1024, description="MLP hidden width / dim")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout in MLP and on embeddings")
    num_classes: int = Field(10, gt=1, le=MAX_SIZE)
    channels: int = Field(3, gt=0, le=1024)

    def grid(self, image_size: int | None = None) -> tuple[int, int]:
        side = (image_size or self.image_size) // self.patch_size
        return side, side

    def seq_len(self, image_size: int | None = None) -> int:
        """Tokens for an image side: patches plus the CLS token."""
        gh, gw = self.grid(image_size)
        return gh * gw + 1


class ModelEntry(_Section):
    """One model to compare: a name and its attention table."""

    name: str = Field(
        min_length=1,
        pattern=r"^[A-Za-z0-9_.+-]+$",
        description="letters, digits, _ . + - (not only dots): the run's directory name",
    )
    attention: AttentionConfig
    group: str | None = Field(
        None,
        description=(
            "the [[models]] entry an option sweep expanded this model from (its name): the "
            "report draws a group's variants as one curve"
        ),
    )

    @field_validator("name")
    @classmethod
    def _not_only_dots(cls, v: str) -> str:
        if set(v) == {"."}:
            raise ValueError(f"{v!r} names a directory outside the output: use letters or digits")
        return v


class ProfileSection(_Section):
    """`effbench profile`: the attention layer alone across sequence lengths."""

    seq_lens: list[int] = Field(
        default_factory=lambda: [65, 257, 1025], min_length=1, description="token counts"
    )
    batch_size: BatchSize = 8
    memory_limit: MemoryLimit = None
    largest_batch: LargestBatch = 4096
    dtype: Dtype = "float32"
    device: DeviceName = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'")
    warmup: int = Field(2, ge=0, le=1000, description="untimed calls before timing")
    min_run_time: float = Field(0.1, gt=0, le=60, description="seconds of timing per repeat")
    repeats: Repeats = 3
    interleave: Interleave = True
    backward: bool = Field(True, description="also time forward+backward")
    count_flops: bool = Field(True, description="count FLOPs with fvcore and FlopCounterMode")
    top_ops: int = Field(
        8, ge=0, le=1000, description="operators/kernels kept per point, by self time"
    )
    trace: bool = Field(False, description="write Chrome/Perfetto and TensorBoard traces")
    breakdown: bool = Field(
        False,
        description="also profile one transformer block: time in attention / MLP / norm / other",
    )
    threads: Threads = None
    retries: Retries = 2
    compile: Compile = False
    compile_mode: CompileMode = "default"

    @field_validator("seq_lens")
    @classmethod
    def _seq_lens(cls, v: list[int]) -> list[int]:
        bad = [n for n in v if not 2 <= n <= MAX_SIZE]
        if bad:
            raise ValueError(
                f"sequence lengths must be 2 (CLS + one patch) to {MAX_SIZE}, got {bad}"
            )
        return v


class TrainSection(_Section):
    """`effbench train`: one budget shared by every model and seed."""

    dataset: Literal["cifar10", "imagenet100", "synthetic"] = "cifar10"
    data_dir: str = Field(
        "data",
        description="a cifar-10-batches-py directory (or its parent), or an ImageFolder root "
        "with train/ and val/",
    )
    download: bool = Field(True, description="download CIFAR-10 into data_dir when absent")
    epochs: int = Field(30, gt=0, le=MAX_SIZE)
    budget: Annotated[str, AfterValidator(normalised)] | None = Field(None, description=BUDGET_HELP)
    batch_size: int = Field(
        128, gt=0, le=MAX_SIZE, description="global batch, split across processes"
    )
    eval_batch_size: int = Field(512, gt=0, le=MAX_SIZE)
    lr: float = Field(1e-3, gt=0, description="AdamW peak learning rate")
    min_lr: float = Field(1e-5, ge=0, description="learning rate at the end of the cosine")
    weight_decay: float = Field(0.05, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_epochs: float = Field(2.0, ge=0, description="linear warm-up, then cosine decay")
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    grad_clip: float = Field(1.0, ge=0, description="max global gradient norm; 0 turns it off")
    crop_padding: int = Field(4, ge=0, description="random crop after padding (CIFAR); 0: off")
    hflip: bool = Field(True, description="random horizontal flip")
    random_erasing: float = Field(
        0.0, ge=0, le=1, description="probability per image (CIFAR and synthetic)"
    )
    trivial_augment: bool = Field(
        False,
        description="TrivialAugmentWide per image, on the device in batches (CIFAR and synthetic)",
    )
    mixup: float = Field(0.0, ge=0, le=1000, description="mixup Beta(a, a); 0 turns it off")
    cutmix: float = Field(0.0, ge=0, le=1000, description="cutmix Beta(a, a); 0 turns it off")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="of the training set, held out")
    split_seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of the validation split")
    patience: int = Field(
        0,
        ge=0,
        description="early stop after this many epochs without "
        "validation improvement; 0 turns it off",
    )
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA, fp32 on CPU"
    )
    compile: bool = Field(False, description="torch.compile the model")
    compile_mode: CompileMode = "default"
    device: DeviceName = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'")
    threads: Threads = None
    workers: int = Field(4, ge=0, le=1024, description="DataLoader workers for folder datasets")
    synthetic_samples: int = Field(
        1024, gt=0, le=MAX_SIZE, description="training images of `synthetic`"
    )
    checkpoint_every: int = Field(1, ge=1, le=MAX_SIZE, description="epochs between checkpoints")
    output_dir: str = Field("runs", description="one directory per model and seed inside")
    tensorboard: bool = Field(False, description="also write TensorBoard scalars")

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"seeds repeat: {v}")
        if any(not 0 <= s <= MAX_SEED for s in v):
            raise ValueError(f"seeds must be 0 to {MAX_SEED}, got {v}")
        return v

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError(f"betas must lie in [0, 1), got {list(v)}")
        return v

    def run_budget(self) -> Budget:
        """What each run may spend: `budget`, or `epochs` epochs when it is unset."""
        return parse_budget(self.budget) if self.budget else Budget("ep", float(self.epochs))


class ScaleSection(_Section):
    """`effbench scale`: whole models across input resolutions."""

    resolutions: list[int] = Field(
        default_factory=lambda: [32, 64, 128, 224],
        min_length=1,
        description="input sides in pixels, each divisible by the patch size",
    )
    patch_size: int | None = Field(
        None, gt=0, le=MAX_SIZE, description="patch side in pixels; unset: the backbone's"
    )
    batch_size: BatchSize = 8
    memory_limit: MemoryLimit = None
    largest_batch: LargestBatch = 4096
    mode: Literal["infer", "train", "both"] = Field(
        "infer", description="time inference, one training step, or both"
    )
    dtype: Dtype = "float32"
    device: DeviceName = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'")
    warmup: int = Field(1, ge=0, le=1000, description="untimed calls before timing")
    min_run_time: float = Field(0.2, gt=0, le=60, description="seconds of timing per repeat")
    repeats: Repeats = 3
    interleave: Interleave = True
    count_flops: bool = Field(True, description="count FLOPs with fvcore and FlopCounterMode")
    breakdown: bool = Field(
        True, description="profile one forward: time in attention / MLP / norm / other"
    )
    threads: Threads = None
    retries: Retries = 2
    top_ops: int = Field(
        8, ge=0, le=1000, description="operators/kernels kept per point, by self time"
    )
    compile: Compile = False
    compile_mode: CompileMode = "default"
    energy: bool | None = Field(
        None,
        description="joules per image and per training step from NVML's energy counter "
        "(NVIDIA GPUs, the energy extra); unset: on CUDA, off elsewhere",
    )

    @field_validator("resolutions")
    @classmethod
    def _resolutions(cls, v: list[int]) -> list[int]:
        bad = [r for r in v if not 0 < r <= MAX_SIZE]
        if bad:
            raise ValueError(f"resolutions must be 1 to {MAX_SIZE} px, got {bad}")
        return sorted(set(v))


class ClusterSection(_Section):
    """`[cluster]`: how `effbench compare --executor slurm` asks for its jobs. How the study
    runs, not what it computes: it is left out of the spec's hash."""

    partition: str | None = Field(None, description="SLURM partition (sbatch --partition)")
    time_min: int = Field(
        240, gt=0, le=60 * 24 * 365, description="each job's time limit in minutes"
    )
    gpus_per_run: int = Field(
        0, ge=0, le=64, description="GPUs per training run (more than one: torchrun inside)"
    )
    cpus_per_run: int | None = Field(
        None, gt=0, le=4096, description="CPUs per job; unset: 8 with GPUs, else 1"
    )
    mem: str | None = Field(
        None, pattern=r"^[0-9]+[KMGT]?$", description="memory per job, as sbatch --mem (16G)"
    )
    account: str | None = Field(None, description="SLURM account (sbatch --account)")
    array_parallelism: int = Field(
        64, gt=0, le=100_000, description="training jobs of one array running at once"
    )
    max_requeues: int = Field(
        3, ge=0, le=100, description="requeues after a time limit or preemption, then failed"
    )
    args: dict[str, str] = Field(
        default_factory=dict, description="further sbatch options: {constraint = 'a100'}"
    )


def resolution_ladder(low: int, high: int, patch: int) -> list[int]:
    """The ends and every power of two between them that divides into patches.

    Raises:
        ValueError: when an end is not a positive multiple of the patch, or low > high.
    """
    for end in (low, high):
        if end <= 0 or end % patch:
            nearest = max(patch, round(end / patch) * patch)
            raise ValueError(
                f"{end} px is not divisible by patch size {patch}; use a multiple such as {nearest}"
            )
    if low > high:
        raise ValueError(f"--res {low} {high}: the first must not exceed the second")
    ladder = {low, high}
    p = 1
    while p < high:
        if p > low and p % patch == 0:
            ladder.add(p)
        p *= 2
    return sorted(ladder)


class BenchSpec(_Section):
    """The whole of `bench.toml`."""

    backbone: Backbone = Field(default_factory=Backbone)
    models: list[ModelEntry] = Field(min_length=1)
    profile: ProfileSection = Field(default_factory=ProfileSection)
    train: TrainSection = Field(default_factory=TrainSection)
    scale: ScaleSection = Field(default_factory=ScaleSection)
    cluster: ClusterSection = Field(default_factory=ClusterSection)

    def scale_patch(self) -> int:
        """The patch size of `effbench scale`: its own, else the backbone's."""
        return self.scale.patch_size or self.backbone.patch_size

    def scale_problems(self) -> list[tuple[str, str]]:
        """Resolutions of `[scale]` that do not divide into its patches. Checked by the
        `scale` command only, so that the defaults never stop another command."""
        patch = self.scale_patch()
        odd = [r for r in self.scale.resolutions if r % patch]
        if not odd:
            return []
        return [
            (
                "scale.resolutions",
                f"{odd} not divisible by patch size {patch}; use multiples of {patch}",
            )
        ]

    def problems(self) -> list[tuple[str, str]]:
        """Cross-field checks that one field's validator cannot see, as (location, message)."""
        out: list[tuple[str, str]] = []
        bb = self.backbone
        if bb.image_size % bb.patch_size:
            nearest = (bb.image_size // bb.patch_size + 1) * bb.patch_size
            out.append(
                (
                    "backbone.image_size",
                    f"{bb.image_size} is not divisible by patch_size {bb.patch_size}; "
                    f"use a multiple such as {nearest}",
                )
            )
        if bb.dim % bb.heads:
            out.append(("backbone.dim", f"{bb.dim} is not divisible by heads {bb.heads}"))
        if bb.tokenizer == "conv":
            for key, patch in (
                ("backbone.patch_size", bb.patch_size),
                ("scale.patch_size", self.scale.patch_size),
            ):
                if patch is not None and (patch < 2 or patch & (patch - 1)):
                    why = "is not a power of two (2, 4, 8, 16, ...), which tokenizer = 'conv' needs"
                    out.append((key, f"{patch} {why}"))
        if int(bb.dim * bb.mlp_ratio) < 1:
            out.append(
                (
                    "backbone.mlp_ratio",
                    f"{bb.mlp_ratio} x dim {bb.dim} leaves the MLP no hidden unit; use at "
                    f"least {1 / bb.dim:.3g}",
                )
            )
        seen: dict[str, int] = {}
        for i, m in enumerate(self.models):
            if m.name in seen:
                out.append((f"models[{i}].name", f"{m.name!r} repeats models[{seen[m.name]}]"))
            seen.setdefault(m.name, i)
        tr = self.train
        if tr.min_lr > tr.lr:
            out.append(("train.min_lr", f"{tr.min_lr} exceeds train.lr {tr.lr}"))
        return out

    def token_problems(
        self, *, image: bool, profile: bool, where: Mapping[str, str] | None = None
    ) -> list[tuple[str, str]]:
        """Attention options that need more tokens than a run will have: the backbone's image
        (`image`, for train) or the shortest `profile.seq_lens` (`profile`). Only this spec's
        models are checked, so a model that is not selected never blocks one that is;
        `where` names each model's location (default `models[i]`)."""
        out: list[tuple[str, str]] = []
        bb = self.backbone
        tokens, shortest = bb.seq_len(), min(self.profile.seq_lens)
        for i, m in enumerate(self.models):
            loc = (where or {}).get(m.name, f"models[{i}]")
            for key, value in m.attention.token_limits().items():
                if image and value > tokens:
                    out.append(
                        (
                            f"{loc}.attention.{key}",
                            f"{value} exceeds the {tokens} tokens of a {bb.image_size}px image "
                            f"at patch {bb.patch_size}",
                        )
                    )
                if profile and value > shortest:
                    out.append(
                        (
                            f"{loc}.attention.{key}",
                            f"{value} exceeds profile.seq_lens' shortest length {shortest}",
                        )
                    )
        return out

    def model(self, name: str) -> ModelEntry:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)

    def hash(self) -> str:
        """A short, stable hash of the resolved spec, carried by every record."""
        from effbench.results import spec_digest

        return spec_digest(self.model_dump(mode="json"))


def _loc(parts: Iterable[Any]) -> str:
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += f".{p}" if out else str(p)
    return out


def _pydantic_issues(err: ValidationError) -> list[tuple[str, str]]:
    issues = []
    for e in err.errors(include_url=False):
        # Drop the tag that pydantic inserts for the chosen member of a discriminated union
        # (right after `attention`; an option may share a kind's name, as window's does).
        raw = list(e["loc"])
        loc = [
            p
            for i, p in enumerate(raw)
            if not (isinstance(p, str) and p in KINDS and i and raw[i - 1] == "attention")
        ]
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "union_tag_invalid":
            kind = e["input"].get("kind")
            msg = f"unknown attention kind {kind!r}; choose one of {', '.join(KINDS)}"
            loc.append("kind")
        elif e["type"] == "union_tag_not_found":
            msg = f"missing 'kind'; choose one of {', '.join(KINDS)}"
        elif e["type"] == "extra_forbidden":
            msg = f"unknown key {loc[-1]!r} (check its spelling)"
        issues.append((_loc(loc), msg))
    return issues


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set `section.key` (or deeper) in a nested dict, creating tables as needed."""
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise SpecError([(key, f"{p!r} is not a table")])
        node = nxt
    node[parts[-1]] = value


# What a --set value may be without TOML quotes: a plain word or path (`synthetic`, `runs/a`).
_BARE = re.compile(r"[A-Za-z0-9_./~+:@-]+")


def parse_set(items: Iterable[str]) -> dict[str, Any]:
    """`--set section.key=value` options as overrides; values are TOML (`3`, `1e-3`, `true`,
    `[0, 1]`, `"text"`), and a plain word or path (`synthetic`, `runs/a`) is taken as a string.

    Raises:
        SpecError: for an item without `=` or a section, or a value that is neither.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or "." not in key or not all(key.split(".")):
            raise SpecError(
                [("--set", f"{item!r} is not section.key=value (e.g. train.lr=3e-4)")],
                "command line",
            )
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except (tomllib.TOMLDecodeError, ValueError) as err:
            if not _BARE.fullmatch(raw):
                reason = str(err).splitlines()[0] if str(err) else "invalid"
                raise SpecError(
                    [
                        (
                            "",
                            f"{raw!r} is not a TOML value ({reason}); write numbers as 3 or "
                            '1e-3, text as "text", lists as [0, 1]',
                        )
                    ],
                    f"--set {key}",
                ) from None
            value = raw
        out[key] = value
    return out


def _sweep_part(key: str, value: Any) -> str:
    """A variant's name part: `k32` for a number, the word for a string (`flex`), the key or
    `no` + key for a bool."""
    if isinstance(value, bool):
        return key if value else f"no{key}"
    if isinstance(value, str):
        return value
    return f"{key}{value}"


def _repeated(values: list[Any]) -> str | None:
    """The first value of a sweep equal to an earlier one (16.0 and 16 alike; a bool only
    equals a bool), as text, or None."""
    seen: list[Any] = []
    for v in values:
        if any(v == w and isinstance(v, bool) == isinstance(w, bool) for w in seen):
            return repr(v)
        seen.append(v)
    return None


def expand_sweeps(models: Any) -> tuple[Any, list[tuple[int, str]]]:
    """`[[models]]` entries whose attention options hold lists, expanded to one model per
    value (several lists: their product), each named from the entry's name and its values
    (`linformer` with `k = [32, 64]` gives `linformer-k32` and `linformer-k64`) and carrying
    the entry's name as its `group`. Returns the models and, for each, (index of the entry
    it came from, its name), so that a problem can be blamed on the entry.

    Raises:
        SpecError: for an empty list.
    """
    if not isinstance(models, list):
        return models, []
    out: list[Any] = []
    origin: list[tuple[int, str]] = []
    for i, entry in enumerate(models):
        att = entry.get("attention") if isinstance(entry, dict) else None
        swept = (
            {k: v for k, v in att.items() if isinstance(v, list) and k != "kind"}
            if isinstance(att, dict)
            else {}
        )
        if not swept:
            out.append(entry)
            origin.append((i, str(entry.get("name", "")) if isinstance(entry, dict) else ""))
            continue
        empty = [k for k, v in swept.items() if not v]
        if empty:
            raise SpecError(
                [(f"models[{i}].attention.{empty[0]}", "an option sweep needs at least one value")]
            )
        for key, values in swept.items():
            twice = _repeated(values)
            if twice is not None:
                raise SpecError(
                    [
                        (
                            f"models[{i}].attention.{key}",
                            f"the sweep lists {twice} "
                            "more than once (as equal values); list each value once",
                        )
                    ]
                )
        base = str(entry.get("name", att.get("kind", "model")))
        for values in itertools.product(*swept.values()):
            chosen = dict(zip(swept, values, strict=True))
            suffix = "-".join(_sweep_part(k, v) for k, v in chosen.items())
            name = f"{base}-{suffix}"
            out.append(
                {
                    **entry,
                    "name": name,
                    "group": entry.get("group", base),
                    "attention": {**att, **chosen},
                }
            )
            origin.append((i, name))
    return out, origin


def _blame_entries(
    issues: list[tuple[str, str]], origin: list[tuple[int, str]]
) -> list[tuple[str, str]]:
    """Locations `models[j]...` of expanded models named as the entry they came from."""
    if all(i == j for j, (i, _) in enumerate(origin)):
        return issues
    out = []
    for loc, msg in issues:
        m = re.match(r"models\[(\d+)\](.*)", loc)
        if m and int(m.group(1)) < len(origin):
            entry, name = origin[int(m.group(1))]
            loc = f"models[{entry}]{m.group(2)} ({name})"
        out.append((loc, msg))
    return out


def parse_spec(
    data: Mapping[str, Any],
    *,
    overrides: Mapping[str, Any] | None = None,
    source: str = DEFAULT_SPEC,
    origins: dict[str, str] | None = None,
) -> BenchSpec:
    """Validate a spec dict, applying dotted-key overrides (CLI options, `--set`) first;
    `origins` names where an override came from, so that its problems are blamed on it.
    Options that depend on token counts are checked by `BenchSpec.token_problems`, for
    the models and lengths that run.

    Raises:
        SpecError: with one (location, message) per problem.
    """
    merged: dict[str, Any] = json.loads(json.dumps(data))  # deep copy of plain TOML data
    for key, value in (overrides or {}).items():
        if value is not None:
            try:
                set_dotted(merged, key, value)
            except SpecError as err:
                raise SpecError(err.issues, source, origins) from None
    origin: list[tuple[int, str]] = []
    try:
        if "models" in merged:
            merged["models"], origin = expand_sweeps(merged["models"])
    except SpecError as err:
        raise SpecError(err.issues, source, origins) from None
    try:
        spec = BenchSpec.model_validate(merged)
    except ValidationError as err:
        raise SpecError(_blame_entries(_pydantic_issues(err), origin), source, origins) from None
    issues = spec.problems()
    if issues:
        raise SpecError(_blame_entries(issues, origin), source, origins)
    return spec


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file, turning a missing file or bad syntax into a SpecError."""
    p = Path(path)
    if not p.is_file():
        what = "is a directory" if p.is_dir() else "not found"
        raise SpecError([("", f"spec file {what}; pass --spec PATH to a bench.toml")], str(p))
    try:
        return tomllib.loads(p.read_text(encoding="utf-8-sig"))  # a BOM is not TOML
    except UnicodeDecodeError as err:
        raise SpecError([("", f"not UTF-8 text: {err}")], str(p)) from None
    except ValueError as err:  # TOMLDecodeError, or an integer of thousands of digits
        raise SpecError([("", f"invalid TOML: {str(err).splitlines()[0]}")], str(p)) from None
    except (OSError, RecursionError) as err:
        raise SpecError([("", f"unreadable: {err or type(err).__name__}")], str(p)) from None


def load_spec(
    path: str | Path = DEFAULT_SPEC, overrides: Mapping[str, Any] | None = None
) -> BenchSpec:
    """Read, override and validate a spec file."""
    return parse_spec(read_toml(path), overrides=overrides, source=str(path))


def select_models(spec: BenchSpec, wanted: Iterable[str] | None) -> BenchSpec:
    """The spec restricted to the models named on the command line.

    Names are model names, attention kinds, or 'all'. A kind that no model in the spec
    uses gets a model with that kind's default options.

    Raises:
        SpecError: naming what is unknown and what is available.
    """
    wanted = [w for item in (wanted or ["all"]) for w in item.split(",") if w]
    if not wanted or "all" in wanted:
        return spec
    chosen: list[ModelEntry] = []
    unknown = []
    for w in wanted:
        by_name = [m for m in spec.models if m.name == w] or [
            m for m in spec.models if m.group == w
        ]
        by_kind = [m for m in spec.models if m.attention.kind == w]
        if by_name or by_kind:
            picks = by_name or by_kind
        elif w in KINDS:
            picks = [ModelEntry.model_validate({"name": w, "attention": {"kind": w}})]
        else:
            unknown.append(w)
            continue
        chosen += [m for m in picks if m not in chosen]
    if unknown:
        names = ", ".join(m.name for m in spec.models)
        raise SpecError(
            [
                (
                    "--attention",
                    f"unknown attention {', '.join(map(repr, unknown))}; "
                    f"choose 'all', a model ({names}) or a kind ({', '.join(KINDS)})",
                )
            ],
            "command line",
        )
    return spec.model_copy(update={"models": chosen})
