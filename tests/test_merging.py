"""Token merging (ToMe): the merge against a re-derivation of the paper's algorithm, r = 0 is
the model without merging to the bit, proportional attention counts a merged token as the
tokens it holds, FLOPs of the shrinking sequence agree three ways, which kinds may merge, and
the records say how many tokens each block saw."""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path

import pytest
import torch
from specs import run_cli
from torch import Tensor
from torch.testing import assert_close

from effbench.analyze import analyze_model
from effbench.attention import build_attention
from effbench.config.attention import CONFIGS, HydraConfig, SdpaConfig
from effbench.config.load import parse_spec
from effbench.config.spec import Backbone
from effbench.errors import SpecError
from effbench.measure import count_flops
from effbench.merging import block_tokens, merge_tokens
from effbench.model import build_model

BB = Backbone(image_size=32, patch_size=4, dim=32, depth=3, heads=2)


def reference_merge(x: Tensor, size: Tensor, keys: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """The paper's bipartite soft matching, written out token by token: A = even positions
    (CLS first, never merged), B = odd; each A token's most similar B token by the cosine
    similarity of its keys (mean over heads); the r A tokens with the most similar partners
    merge into them, size-weighted. Output: kept A tokens in order, then the B tokens."""
    metric = keys.mean(dim=1)
    outs, sizes = [], []
    for b in range(x.shape[0]):
        m = [v / v.norm() for v in metric[b]]
        a_side, b_side = list(range(0, x.shape[1], 2)), list(range(1, x.shape[1], 2))
        best = {}
        for i in a_side[1:]:
            sims = [float(m[i] @ m[j]) for j in b_side]
            best[i] = (max(sims), b_side[sims.index(max(sims))])
        merged = sorted(best, key=lambda i: -best[i][0])[:r]
        groups = [[i] for i in a_side if i not in merged]
        groups += [[j, *(i for i in merged if best[i][1] == j)] for j in b_side]
        s = torch.stack([size[b, g].sum(dim=0) for g in groups])
        outs.append(torch.stack([(x[b, g] * size[b, g]).sum(dim=0) for g in groups]) / s)
        sizes.append(s)
    return torch.stack(outs), torch.stack(sizes)


@pytest.mark.parametrize(("n", "r"), [(17, 4), (26, 8), (65, 8), (9, 50)])
def test_the_merge_is_the_papers_bipartite_matching(n: int, r: int) -> None:
    g = torch.Generator().manual_seed(n + r)
    x = torch.randn(3, n, 8, generator=g, dtype=torch.float64)
    size = torch.randint(1, 4, (3, n, 1), generator=g).double()
    keys = torch.randn(3, 2, n, 4, generator=g, dtype=torch.float64)
    got, got_size = merge_tokens(x, size, keys, r)
    want, want_size = reference_merge(x, size, keys, min(r, (n - 1) // 2))
    assert got.shape[1] == n - min(r, (n - 1) // 2)
    assert_close(got, want)
    assert_close(got_size, want_size)
    assert_close(got[:, 0], x[:, 0])  # CLS is never merged, and stays first
    assert got_size.sum(dim=1).allclose(size.sum(dim=1))  # no token is lost


def test_r_zero_is_the_model_without_merging_to_the_bit() -> None:
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(0)
    plain = build_model(BB, SdpaConfig())
    torch.manual_seed(0)
    zero = build_model(BB, SdpaConfig(), merge_r=0)
    with torch.no_grad():
        assert torch.equal(plain(x), zero(x))
    assert zero.block_tokens == [65] * 4 and zero.flops() == plain.flops()


@pytest.mark.parametrize("kind", [k for k, c in CONFIGS.items() if c.token_sizes])
def test_proportional_attention_counts_a_merged_token_as_the_tokens_it_holds(kind: str) -> None:
    cfg = CONFIGS[kind]()
    heads = cfg.head_count(dim=16, backbone_heads=2)
    layer = build_attention(cfg, dim=16, num_heads=heads, seq_len=5).double()
    q, k, v = (torch.randn(2, heads, 5, 16 // heads, dtype=torch.float64) for _ in range(3))
    sizes = torch.tensor([1, 3, 1, 2, 4])
    repeat = torch.repeat_interleave(torch.arange(5), sizes)  # each key as often as its size
    sized = layer.attend_sized(q, k, v, sizes.double().log().expand(2, 5))
    if kind == "hydra":  # its key normalisation is over each token: the copies are the same
        from effbench.attention.hydra import hydra_attention

        copies = hydra_attention(q[:, :, :1].expand(-1, -1, len(repeat), -1), k[:, :, repeat],
                                 v[:, :, repeat])[:, :, :1]  # fmt: skip
        assert_close(sized[:, :, :1], copies)
    else:
        exact = layer.attend(q, k[:, :, repeat], v[:, :, repeat])
        assert_close(sized, exact)


@pytest.mark.parametrize("cfg", [SdpaConfig(), HydraConfig()], ids=["sdpa", "hydra"])
def test_flops_of_the_shrinking_sequence_agree_three_ways(cfg: object) -> None:
    model = build_model(BB, cfg, merge_r=8)
    assert model.block_tokens == block_tokens(65, 8, 3) == [65, 57, 49, 41]
    ew = model.elementwise_flops()
    counts = count_flops(
        model,
        torch.randn(2, 3, 32, 32),
        analytic=model.flops() - ew,
        attention_analytic=model.attention_flops() - ew,
    )
    assert counts.analytic == counts.fvcore == counts.flop_counter, counts
    assert counts.attention_analytic == counts.attention_fvcore == counts.attention_flop_counter
    assert model.flops() < build_model(BB, cfg).flops()


def _spec(extra: str, backbone: str = "") -> dict:
    text = f"[backbone]\ndim = 32\nheads = 2\n{backbone}\n[[models]]\n{extra}\n"
    return tomllib.loads(text)


def test_only_kinds_that_take_token_sizes_may_merge() -> None:
    spec = parse_spec(_spec('name = "sdpa+tome"\nattention = { kind = "sdpa" }\n'
                            "token_merging = { r = 8 }"))  # fmt: skip
    assert spec.models[0].merge_r(spec.backbone) == 8
    with pytest.raises(SpecError) as err:
        parse_spec(_spec('name = "w"\nattention = { kind = "window" }\ntoken_merging = { r = 4 }'))
    line = "\n".join(err.value.lines())
    assert "models[0].token_merging: window cannot attend over merged tokens" in line
    assert "token merging works with standard, fused, sdpa, hydra" in line
    # the backbone's merging applies to every model that sets none; { r = 0 } turns it off
    spec = parse_spec(_spec('name = "a"\nattention = { kind = "sdpa" }\n'
                            '[[models]]\nname = "b"\nattention = { kind = "window" }\n'
                            "token_merging = { r = 0 }",
                            backbone="token_merging = { r = 4 }"))  # fmt: skip
    assert [m.merge_r(spec.backbone) for m in spec.models] == [4, 0]


def test_a_merged_model_has_no_maps_but_its_output_fidelity() -> None:
    model = build_model(BB, SdpaConfig(), merge_r=8)
    fields = analyze_model(model, torch.rand(2, 3, 32, 32), torch.zeros(2, dtype=torch.long))
    assert fields["has_map"] is False and fields["cls_maps"] is None
    assert len(fields["layers"]) == 3
    assert all(x.rel_output_error < 1e-5 for x in fields["layers"])  # exact on its own tokens


def test_records_say_how_many_tokens_each_block_saw(tmp_path: Path) -> None:
    spec = tmp_path / "bench.toml"
    spec.write_text(
        "[backbone]\nimage_size = 16\npatch_size = 4\ndim = 32\ndepth = 2\nheads = 2\n"
        '[[models]]\nname = "sdpa"\nattention = { kind = "sdpa" }\n'
        '[[models]]\nname = "sdpa+tome"\nattention = { kind = "sdpa" }\n'
        "token_merging = { r = 4 }\n"
        "[scale]\nrepeats = 1\nmin_run_time = 0.01\nwarmup = 0\nbreakdown = false\n"
        "[profile]\nseq_lens = [17]\nrepeats = 1\nmin_run_time = 0.01\nwarmup = 0\n"
        "breakdown = false\n"
    )
    code, out = run_cli("scale", "-s", str(spec), "--res", "16", "-o", str(tmp_path / "s"))
    assert code == 0, out
    (path,) = (tmp_path / "s").glob("scale-*.jsonl")
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    tokens = {r["model"]: r.get("block_tokens") for r in recs if r["kind"] == "scale"}
    assert tokens == {"sdpa": None, "sdpa+tome": [17, 13, 9]}
    code, out = run_cli("profile", "-s", str(spec), "-o", str(tmp_path / "p"))
    assert code == 0, out
    (path,) = (tmp_path / "p").glob("profile-*.jsonl")
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    assert {r["model"]: r["token_merging"] for r in recs} == {"sdpa": None, "sdpa+tome": 4}
    assert not math.isnan(recs[0]["fwd_ms"])
