"""The Vision Transformer: identical for every mechanism except the attention layer.

Conv patch embedding (or a convolutional tokenizer on the same grid), CLS token (token 0),
learned position embedding (resizable to another grid), pre-norm blocks with a GELU MLP,
classification head on the CLS token. Equal starts: for one seed every mechanism gets the
same shared weights (embeddings, norms, MLPs, head, W_qkv and W_o), and each attention layer
draws its own parameters from a stream of its own.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from effbench.attention import Attention, build_attention
from effbench.attention.grid import resize_token_grid as resize_pos_embed
from effbench.config.attention import AttentionConfig
from effbench.config.spec import Backbone
from effbench.merging import block_tokens, match_flops, merge_tokens, merged_count


class PatchEmbed(nn.Module):
    """(B, channels, H, W) -> (B, P, C) with a strided convolution."""

    def __init__(self, *, channels: int, dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)

    def convs(self) -> list[nn.Conv2d]:
        return [self.proj]

    def flops(self, image_size: int) -> int:
        """Forward FLOPs per image (2 per multiply-add; biases not counted)."""
        k, side = self.proj.kernel_size[0], image_size // self.proj.kernel_size[0]
        return 2 * side * side * self.proj.out_channels * self.proj.in_channels * k * k


class ConvTokenizer(nn.Module):
    """(B, channels, H, W) -> (B, P, C) on the same grid as a `PatchEmbed` of `patch_size`:
    log2(patch_size) stages of a 3x3 convolution (no bias), ReLU and a 3x3 stride-2 max-pool,
    as the tokenizer of Compact Convolutional Transformers (Hassani et al. 2021). The
    stages before the last are dim // 2 wide. A locality prior every attention kind gets
    alike, which small datasets reward."""

    def __init__(self, *, channels: int, dim: int, patch_size: int) -> None:
        super().__init__()
        stages = patch_size.bit_length() - 1
        if stages < 1 or 2**stages != patch_size:
            raise ValueError(f"a conv tokenizer needs a power-of-two patch size, not {patch_size}")
        widths = [channels] + [max(dim // 2, 1)] * (stages - 1) + [dim]
        self.stages = nn.ModuleList(
            nn.Conv2d(widths[i], widths[i + 1], kernel_size=3, padding=1, bias=False)
            for i in range(stages)
        )

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.stages:
            x = F.max_pool2d(F.relu(conv(x)), kernel_size=3, stride=2, padding=1)
        return x.flatten(2).transpose(1, 2)

    def convs(self) -> list[nn.Conv2d]:
        return list(self.stages)

    def flops(self, image_size: int) -> int:
        """Forward FLOPs per image of the convolutions (2 per multiply-add); ReLU and the
        pools are not counted, as fvcore and FlopCounterMode do not count them."""
        total, side = 0, image_size
        for conv in self.stages:
            total += 2 * side * side * conv.out_channels * conv.in_channels * 9
            side = (side + 1) // 2
        return total


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, attn: Attention, *, mlp_ratio: float, dropout: float, r: int = 0) -> None:
        super().__init__()
        dim = attn.dim
        self.norm1 = nn.LayerNorm(dim)
        self.attn = attn
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout)
        self.r = r  # tokens merged after the attention (token merging; 0: none)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))

    def merging(self, x: Tensor, size: Tensor | None) -> tuple[Tensor, Tensor]:
        """The block with token merging: attention over tokens of `size` (B, N, 1; None: all
        1) with proportional attention, then `r` tokens merged on its keys, then the MLP."""
        log_size = None if size is None else size[..., 0].log()
        out, keys = self.attn(self.norm1(x), log_size, keys=True)
        x, size = merge_tokens(x + out, size, keys, self.r)
        return x + self.mlp(self.norm2(x)), size


class ViT(nn.Module):
    """A ViT for one input size; build another with `build_model` for another size."""

    def __init__(
        self, backbone: Backbone, attention: AttentionConfig, *, image_size: int, merge_r: int = 0
    ) -> None:
        super().__init__()
        bb = backbone
        self.image_size = image_size
        self.grid = bb.grid(image_size)
        self.seq_len = bb.seq_len(image_size)
        # Token merging: r tokens merged in each block, so block i sees block_tokens[i].
        self.merge_r = merge_r
        self.block_tokens = block_tokens(self.seq_len, merge_r, bb.depth)
        tokenizer = ConvTokenizer if bb.tokenizer == "conv" else PatchEmbed
        self.patch_embed = tokenizer(channels=bb.channels, dim=bb.dim, patch_size=bb.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, bb.dim))
        self.pos_embed = nn.Parameter(torch.randn(1, self.seq_len, bb.dim) * 0.02)
        self.drop = nn.Dropout(bb.dropout)
        # One draw from the global stream, the same for every mechanism: it seeds the shared
        # weights and each attention layer's own stream, so what a mechanism builds never
        # shifts the global stream or anybody else's weights.
        seed = int(torch.randint(0, 2**62, (1,)).item())
        n = self.block_tokens
        self.blocks = nn.ModuleList(
            Block(
                _own_attention(attention, bb, seq_len=n[i], seed=seed + 1 + i, block=i),
                mlp_ratio=bb.mlp_ratio,
                dropout=bb.dropout,
                r=merged_count(n[i], merge_r),
            )
            for i in range(bb.depth)
        )
        self.norm = nn.LayerNorm(bb.dim)
        self.head = nn.Linear(bb.dim, bb.num_classes)
        init_shared(self, torch.Generator().manual_seed(seed))

    def tokens(self, images: Tensor) -> Tensor:
        """(B, channels, H, W) -> embedded tokens (B, N, C), CLS first."""
        B, _, H, W = images.shape
        assert (self.image_size, self.image_size) == (H, W), (
            f"this model is built for {self.image_size}px images, got {H}x{W}"
        )
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)
        return self.drop(x + self.pos_embed)

    def forward(self, images: Tensor) -> Tensor:
        x = self.tokens(images)
        if self.merge_r:
            size = None
            for blk in self.blocks:
                x, size = blk.merging(x, size)
        else:
            for blk in self.blocks:
                x = blk(x)
        return self.head(self.norm(x)[:, 0])

    def attention_layers(self) -> list[Attention]:
        return [blk.attn for blk in self.blocks]

    def flops(self) -> int:
        """Analytic forward FLOPs per image (2 per multiply-add of matrix products); with
        token merging each block on its own token count, and its matching counted."""
        n, c = self.block_tokens, self.norm.normalized_shape[0]
        embed = self.patch_embed.flops(self.image_size)
        mlp = sum(
            2 * n[i + 1] * 2 * c * blk.mlp.fc1.out_features for i, blk in enumerate(self.blocks)
        )
        match = sum(
            match_flops(n[i], self.merge_r, blk.attn.head_dim) for i, blk in enumerate(self.blocks)
        )
        return embed + mlp + match + self.attention_flops() + 2 * c * self.head.out_features

    def elementwise_flops(self) -> int:
        """The attention layers' counted element-wise FLOPs per image (in `flops()` too; the
        FLOP counters do not see them)."""
        n = self.block_tokens
        return sum(layer.elementwise_flops(n[i]) for i, layer in enumerate(self.attention_layers()))

    def attention_flops(self) -> int:
        """Analytic forward FLOPs per image of the attention layers alone, projections
        included."""
        n = self.block_tokens
        return sum(layer.flops(n[i]) for i, layer in enumerate(self.attention_layers()))


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def _own_attention(
    attention: AttentionConfig, bb: Backbone, *, seq_len: int, seed: int, block: int
) -> Attention:
    """The attention layer of block `block`, built from its own seeded stream (its
    mechanism-specific parameters and buffers: Linformer's E and F, Performer's features,
    ...); the global stream is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed % 2**63)
        heads = attention.head_count(dim=bb.dim, backbone_heads=bb.heads)
        layer = build_attention(attention, dim=bb.dim, num_heads=heads, seq_len=seq_len)
        layer.apply(_init_weights)
    layer.block_index = block
    return layer


def _trunc_normal(*shape: int, g: torch.Generator) -> Tensor:
    return nn.init.trunc_normal_(torch.empty(shape), std=0.02, generator=g)


@torch.no_grad()
def init_shared(model: ViT, g: torch.Generator) -> None:
    """Initialise every weight the mechanisms share from `g`, in one fixed order: the patch
    embedding or conv tokenizer (PyTorch's Conv2d default), position embedding, CLS, then per
    block the norms, W_qkv and W_o in the fused layout (`standard` gets its Q, K and V as the
    split of it) and the MLP, then the final norm and the head (truncated normal, std 0.02,
    zero biases)."""
    for conv in model.patch_embed.convs():
        nn.init.kaiming_uniform_(conv.weight, a=math.sqrt(5), generator=g)
        if conv.bias is not None:
            bound = 1 / math.sqrt(conv.weight[0].numel())
            conv.bias.uniform_(-bound, bound, generator=g)
    nn.init.normal_(model.pos_embed, std=0.02, generator=g)
    model.cls_token.zero_()
    for blk in model.blocks:
        for norm in (blk.norm1, blk.norm2):
            _init_weights(norm)
        attn, c = blk.attn, blk.attn.dim
        state = {
            "qkv.weight": _trunc_normal(3 * c, c, g=g),
            "proj.weight": _trunc_normal(c, c, g=g),
        }
        state |= {"qkv.bias": torch.zeros(3 * c), "proj.bias": torch.zeros(c)}
        attn.load_projection_state(state)
        for lin in (blk.mlp.fc1, blk.mlp.fc2):
            lin.weight.copy_(_trunc_normal(*lin.weight.shape, g=g))
            lin.bias.zero_()
    _init_weights(model.norm)
    model.head.weight.copy_(_trunc_normal(*model.head.weight.shape, g=g))
    model.head.bias.zero_()


def adapt_state_dict(
    state: dict[str, Tensor], model: ViT, *, trained_grid: tuple[int, int]
) -> dict[str, Tensor]:
    """Weights trained on `trained_grid` patches, made to fit `model` (another grid): the
    position embedding is resized, and each attention layer adapts its own weights
    (`Attention.adapt_state`); every other weight is kept as it is."""
    out = dict(state)
    out["pos_embed"] = resize_pos_embed(state["pos_embed"], trained_grid, model.grid)
    for name, layer in model.named_modules():
        if isinstance(layer, Attention):
            prefix = f"{name}."
            own = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
            adapted = layer.adapt_state(own, trained_grid=trained_grid, grid=model.grid)
            out.update({prefix + k: v for k, v in adapted.items()})
    return out


def build_model(
    backbone: Backbone,
    attention: AttentionConfig,
    *,
    image_size: int | None = None,
    merge_r: int = 0,
) -> ViT:
    """The spec's ViT with one attention mechanism, for `image_size` (default: the spec's),
    merging `merge_r` tokens in each block (`ModelEntry.merge_r`; 0: no token merging).

    Raises:
        ValueError: if the image size does not divide into patches.
    """
    size = image_size or backbone.image_size
    if size % backbone.patch_size:
        raise ValueError(
            f"image size {size} is not divisible by patch size {backbone.patch_size}; "
            f"choose a multiple of {backbone.patch_size}"
        )
    return ViT(backbone, attention, image_size=size, merge_r=merge_r)
