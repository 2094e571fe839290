"""The benchmark spec: the pydantic models of `bench.toml` (backbone, models, each command's
section, the cluster) and their cross-field checks; `spec_digest`, the hash every record
carries. Loading a file, `--set` overrides and option sweeps live in `load`, `overrides` and
`sweeps`. No torch import here: a spec validates (and its errors print) before any heavy
import.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
)

from effbench.config.attention import CONFIGS, AttentionConfig
from effbench.config.budget import HELP as BUDGET_HELP
from effbench.config.budget import Budget, normalised, parse_budget
from effbench.config.fields import (
    DATA_ENV,
    MAX_SEED,
    MAX_SIZE,
    BatchSize,
    Compile,
    CompileMode,
    DeviceName,
    Dtype,
    Interleave,
    LargestBatch,
    MemoryLimit,
    Repeats,
    Retries,
    Threads,
    default_data_dir,
)


class _Section(BaseModel):
    # inf and nan are refused in every number (an infinite warm-up or timing never ends)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class TokenMerging(_Section):
    """Token merging (ToMe, Bolya et al. 2023): after each block's attention, `r` tokens are
    merged into their most similar ones by bipartite soft matching on the keys, CLS never;
    later blocks attend with proportional attention (each token weighted by how many it
    holds)."""

    r: int = Field(0, ge=0, le=MAX_SIZE, description="tokens merged in each block; 0 = no merging")


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
    token_merging: TokenMerging | None = Field(
        None, description="token merging in every model that sets none of its own: { r = 8 }"
    )

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
    token_merging: TokenMerging | None = Field(
        None,
        description="this model's token merging, { r = 8 } (unset: the backbone's; "
        "{ r = 0 }: none): any kind whose attention takes token sizes, e.g. sdpa+tome",
    )

    def merge_r(self, backbone: Backbone) -> int:
        """Tokens this model merges in each block (0: none)."""
        merging = self.token_merging or backbone.token_merging
        return merging.r if merging is not None else 0

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
    data_dir: str | None = Field(
        None,
        description="a cifar-10-batches-py directory (or its parent), or an ImageFolder root "
        f"with train/ and val/; default: ${DATA_ENV}, else the per-user cache "
        "(imagenet100/ under it for ImageNet-100)",
    )
    download: bool = Field(True, description="download CIFAR-10 into data_dir when absent")

    def data_path(self) -> Path:
        """Where the dataset is: `data_dir`, or the default location (`default_data_dir`)."""
        if self.data_dir:
            return Path(self.data_dir).expanduser()
        base = default_data_dir()
        return base / "imagenet100" if self.dataset == "imagenet100" else base

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


def spec_digest(data: dict[str, Any]) -> str:
    """A short, stable hash of a resolved spec as JSON data (`BenchSpec.hash()`). The
    `cluster` table (how a study's jobs are asked for) is not part of what a spec computes."""
    if isinstance(data, dict) and "cluster" in data:
        data = {k: v for k, v in data.items() if k != "cluster"}
    blob = json.dumps(data, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


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
            if m.merge_r(bb) and not type(m.attention).token_sizes:
                takes = ", ".join(k for k, c in CONFIGS.items() if c.token_sizes)
                out.append(
                    (
                        f"models[{i}].token_merging",
                        f"{m.attention.kind} cannot attend over merged tokens (it needs the "
                        f"patch grid or a fixed token count); token merging works with {takes}",
                    )
                )
            heads = m.attention.head_count(dim=bb.dim, backbone_heads=bb.heads)
            if m.attention.heads is not None and bb.dim % heads:
                out.append(
                    (
                        f"models[{i}].attention.heads",
                        f"{heads} does not divide backbone.dim {bb.dim}",
                    )
                )
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
        return spec_digest(self.model_dump(mode="json"))
