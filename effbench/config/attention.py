"""Validated options of every attention mechanism, one frozen pydantic model per kind.

Kept free of torch so that `bench.toml` validates (and `effbench --help` answers) without
importing it; the modules that implement each kind live beside this file.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal, Self, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

# The most tokens, features or window cells an option may name (beyond: only overflow).
MAX_TOKENS = 1 << 20


class _AttentionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    exact: ClassVar[bool] = False
    """Computes exact softmax attention (the reference the approximations are measured against)."""
    baseline: ClassVar[bool] = False
    """The fused exact kernel every mechanism is timed against (`scale` adds it when missing)."""
    token_sizes: ClassVar[bool] = False
    """Attends over merged tokens with proportional attention (`Attention.attend_sized`), so
    that token merging works with it; kinds that need the patch grid or a fixed token count
    do not."""

    qkv_bias: bool = Field(True, description="bias on the shared Q/K/V projection")
    heads: int | None = Field(
        None,
        ge=1,
        le=MAX_TOKENS,
        description="this model's attention heads (must divide backbone.dim); unset: the "
        "backbone's (hydra: one per feature). W_qkv and W_o are the same whatever the heads",
    )

    def head_count(self, *, dim: int, backbone_heads: int) -> int:
        """The heads this model's attention splits `dim` features into: `heads`, else the
        backbone's."""
        return self.heads or backbone_heads

    def token_limits(self) -> dict[str, int]:
        """Options that may not exceed the token count, by name."""
        return {}

    def fitted_to(self, tokens: int) -> dict[str, int]:
        """The token-limited options above `tokens`, each at the largest value that many
        tokens allow (`tokens` itself unless the option has further constraints)."""
        return {k: tokens for k, v in self.token_limits().items() if v > tokens}

    @classmethod
    def tiny(cls) -> Self:
        """Small valid options for tests and examples: fit a 17-token sequence (CLS + a 4x4
        patch grid) and keep every code path of the default options."""
        return cls()

    @classmethod
    def tiny_variants(cls) -> tuple[dict[str, Any], ...]:
        """Overrides of `tiny()` that reach the mechanism's other code paths; the tests run
        the attention contract over each."""
        return ()


class StandardConfig(_AttentionConfig):
    """Explicit softmax attention with separate Q, K and V projections."""

    kind: Literal["standard"] = "standard"
    exact: ClassVar[bool] = True
    token_sizes: ClassVar[bool] = True

    @classmethod
    def tiny_variants(cls) -> tuple[dict[str, Any], ...]:
        return ({"qkv_bias": False},)


class FusedConfig(_AttentionConfig):
    """Explicit softmax attention with one fused QKV projection."""

    kind: Literal["fused"] = "fused"
    exact: ClassVar[bool] = True
    token_sizes: ClassVar[bool] = True


class SdpaConfig(_AttentionConfig):
    """Fused QKV projection + torch.nn.functional.scaled_dot_product_attention."""

    kind: Literal["sdpa"] = "sdpa"
    exact: ClassVar[bool] = True
    baseline: ClassVar[bool] = True
    token_sizes: ClassVar[bool] = True
    backend: Literal["auto", "math", "flash", "efficient", "cudnn"] = Field(
        "auto", description="force one SDPA backend; 'auto' lets PyTorch choose"
    )

    @classmethod
    def tiny_variants(cls) -> tuple[dict[str, Any], ...]:
        return ({"backend": "math"},)  # the one forced backend every device has


class LinformerConfig(_AttentionConfig):
    """Low-rank projections of keys and values along the sequence (Wang et al. 2020)."""

    kind: Literal["linformer"] = "linformer"
    k: int = Field(64, ge=1, le=MAX_TOKENS, description="projected sequence length")
    share_kv: bool = Field(False, description="one projection for keys and values")

    @classmethod
    def tiny(cls) -> Self:
        return cls(k=8)

    @classmethod
    def tiny_variants(cls) -> tuple[dict[str, Any], ...]:
        return ({"share_kv": True},)

    def token_limits(self) -> dict[str, int]:
        return {"k": self.k}


class PerformerConfig(_AttentionConfig):
    """FAVOR+ with positive orthogonal random features (Choromanski et al. 2021)."""

    kind: Literal["performer"] = "performer"
    features: int = Field(64, ge=1, le=MAX_TOKENS, description="number of random features m")
    redraw_interval: int = Field(
        0, ge=0, le=1 << 40, description="redraw the features every this many steps; 0 = never"
    )
    kernel: Literal["softmax", "relu"] = Field(
        "softmax", description="'softmax': positive random features; 'relu': generalised kernel"
    )

    @classmethod
    def tiny(cls) -> Self:
        return cls(features=16)

    @classmethod
    def tiny_variants(cls) -> tuple[dict[str, Any], ...]:
        return ({"kernel": "relu"},)


class NystromConfig(_AttentionConfig):
    """Nystrom landmarks with an iterative pseudo-inverse (Xiong et al. 2021)."""

    kind: Literal["nystrom"] = "nystrom"
    landmarks: int = Field(
        32, ge=1, le=MAX_TOKENS, description="number of landmarks (segment means)"
    )
    pinv_iterations: int = Field(6, ge=1, le=100, description="Newton-Schulz iterations")
    conv_kernel: int = Field(
        0,
        ge=0,
        le=MAX_TOKENS,
        description="depthwise conv residual on V along the sequence; 0 = off",
    )

    @field_validator("conv_kernel")
    @classmethod
    def _odd_kernel(cls, v: int) -> int:
        if v and v % 2 == 0:
            raise ValueError(f"conv_kernel must be odd (or 0 for off), got {v}")
        return v

    @classmethod
    def tiny(cls) -> Self:
        # 4 landmarks divide neither 17 nor 26 tokens: uneven segments are exercised too.
        return cls(landmarks=4, conv_kernel=3)

    @classmethod
    def tiny_variants(cls) -> tuple[dict[str, Any], ...]:
        return ({"conv_kernel": 0},)

    def token_limits(self) -> dict[str, int]:
        return {"landmarks": self.landmarks}


class HybridConfig(_AttentionConfig):
    """Dilated local attention on the patch grid + a global linear-attention branch."""

    kind: Literal["hybrid"] = "hybrid"
    window: int = Field(
        3, ge=1, le=MAX_TOKENS, description="odd side of the local window, in grid cells"
    )
    dilation: int = Field(
        2, ge=1, le=MAX_TOKENS, description="step between window cells on the grid"
    )
    feature_map: Literal["elu", "relu"] = Field(
        "elu", description="positive feature map of the global linear branch"
    )
    local_backend: Literal["auto", "slices", "flex", "gather"] = Field(
        "auto",
        description=(
            "how the local branch runs, the same maths each way: flex attention (auto on "
            "CUDA), shifted views of the key grid (auto elsewhere), or gathered windows"
        ),
    )

    @field_validator("window")
    @classmethod
    def _odd_window(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"window must be odd so that it centres on its query, got {v}")
        return v

    @classmethod
    def tiny(cls) -> Self:
        return cls(window=3, dilation=1)

    @classmethod
    def tiny_variants(cls) -> tuple[dict[str, Any], ...]:
        return ({"feature_map": "relu", "dilation": 2, "local_backend": "gather"},)


class WindowConfig(_AttentionConfig):
    """Swin-style attention within non-overlapping windows of the patch grid, shifted by half
    a window in odd-numbered blocks (Liu et al. 2021)."""

    kind: Literal["window"] = "window"
    window: int = Field(4, ge=1, le=MAX_TOKENS, description="window side M, in grid cells")
    shift: bool = Field(
        True, description="odd-numbered blocks shift the windows by M/2 (cyclic, masked)"
    )

    @classmethod
    def tiny(cls) -> Self:
        return cls(window=2)

    @classmethod
    def tiny_variants(cls) -> tuple[dict[str, Any], ...]:
        return ({"shift": False}, {"window": 3})  # 3 does not divide a 4x4 or 5x5 grid


class NeighborhoodConfig(_AttentionConfig):
    """Neighbourhood attention: each patch attends to a k x k neighbourhood clamped at the
    borders, dilated (Hassani et al. 2023; Hassani & Shi 2022)."""

    kind: Literal["neighborhood"] = "neighborhood"
    kernel: int = Field(
        7,
        ge=1,
        le=MAX_TOKENS,
        description=(
            "odd side k of the neighbourhood, in grid cells; clamped to a (sub-)grid's side "
            "where that is shorter"
        ),
    )
    dilation: int = Field(
        1,
        ge=1,
        le=MAX_TOKENS,
        description="step between neighbours: the grid splits into dilation^2 sub-grids",
    )
    local_backend: Literal["auto", "flex", "tiles", "gather"] = Field(
        "auto",
        description=(
            "how the neighbourhoods run, the same maths each way: flex attention (auto on "
            "CUDA), tiles of queries in one masked SDPA call (auto elsewhere), or gathered "
            "keys and values per query (the reference)"
        ),
    )

    @field_validator("kernel")
    @classmethod
    def _odd_kernel(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"kernel must be odd so that it centres on its query, got {v}")
        return v

    @classmethod
    def tiny(cls) -> Self:
        return cls(kernel=3)

    @classmethod
    def tiny_variants(cls) -> tuple[dict[str, Any], ...]:
        return ({"dilation": 2},)


class ReluLinearConfig(_AttentionConfig):
    """ReLU linear attention of EfficientViT: ReLU(Q)(ReLU(K)^T V), row-normalised (Cai et
    al. 2023)."""

    kind: Literal["relu_linear"] = "relu_linear"
    eps: float = Field(
        1e-6, gt=0, le=1.0, description="added to the normaliser ReLU(Q) ReLU(K)^T 1"
    )

    @classmethod
    def tiny_variants(cls) -> tuple[dict[str, Any], ...]:
        return ({"eps": 1e-2},)


class AgentConfig(_AttentionConfig):
    """Agent attention: agent tokens pooled from Q aggregate from the keys and broadcast to
    the queries, plus a depthwise convolution on V (Han et al. 2024)."""

    kind: Literal["agent"] = "agent"
    agents: int = Field(
        49, ge=1, le=MAX_TOKENS, description="agent tokens n, a square (pooled to a grid)"
    )
    dwc_kernel: int = Field(
        3, ge=0, le=MAX_TOKENS, description="depthwise conv on V over the grid; 0 = off"
    )

    @field_validator("agents")
    @classmethod
    def _square_agents(cls, v: int) -> int:
        if math.isqrt(v) ** 2 != v:
            raise ValueError(f"agents must be a square (they are pooled to a grid), got {v}")
        return v

    @field_validator("dwc_kernel")
    @classmethod
    def _odd_dwc(cls, v: int) -> int:
        if v and v % 2 == 0:
            raise ValueError(f"dwc_kernel must be odd (or 0 for off), got {v}")
        return v

    @classmethod
    def tiny(cls) -> Self:
        return cls(agents=4)

    @classmethod
    def tiny_variants(cls) -> tuple[dict[str, Any], ...]:
        return ({"dwc_kernel": 0},)

    def token_limits(self) -> dict[str, int]:
        return {"agents": self.agents}

    def fitted_to(self, tokens: int) -> dict[str, int]:
        """Agents stay a square: the largest square up to `tokens`."""
        return {k: math.isqrt(tokens) ** 2 for k in super().fitted_to(tokens)}


class HydraConfig(_AttentionConfig):
    """Hydra attention: as many heads as features, each a linear attention of one feature
    under a cosine-similarity kernel (Bolya et al. 2022)."""

    kind: Literal["hydra"] = "hydra"
    token_sizes: ClassVar[bool] = True

    def head_count(self, *, dim: int, backbone_heads: int) -> int:
        """One head per feature (the true Hydra), unless `heads` says otherwise."""
        return self.heads or dim

    @classmethod
    def tiny_variants(cls) -> tuple[dict[str, Any], ...]:
        return ({"heads": 2},)  # the multi-head generalisation the paper studies too


AttentionConfig = Annotated[
    StandardConfig
    | FusedConfig
    | SdpaConfig
    | LinformerConfig
    | PerformerConfig
    | NystromConfig
    | HybridConfig
    | WindowConfig
    | NeighborhoodConfig
    | ReluLinearConfig
    | AgentConfig
    | HydraConfig,
    Field(discriminator="kind"),
]

CONFIGS: dict[str, type[Any]] = {
    get_args(cls.model_fields["kind"].annotation)[0]: cls
    for cls in get_args(get_args(AttentionConfig)[0])
}
"""Every attention kind's config class, in the order the report lists them."""

KINDS: tuple[str, ...] = tuple(CONFIGS)
"""Every attention kind, in the order the report lists them."""

EXACT_KINDS: frozenset[str] = frozenset(k for k, c in CONFIGS.items() if c.exact)
"""The kinds that compute exact softmax attention."""

BASELINE_KIND: str = next(k for k, c in CONFIGS.items() if c.baseline)
"""The fused exact kind every mechanism is timed against."""
