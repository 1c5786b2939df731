"""torchvision's MViT (video/mvit.py) built small with its own classes: V2's attention (pooled q/k/v with
per-head LayerNorm, relative-position tables shared by all heads, residual pooling) and V1's prune whole heads,
exactly, and the pruned attention's num_heads/output_dim match its weights."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.video.mvit import MSBlockConfig, MViT

import slimnet
from slimnet._tensors import count_params
from slimnet.cost.macs import count_macs

from .helpers import check, kept, randomise, reasons


def tiny_mvit(v2: bool) -> MViT:
    """Three blocks as mvit_v2_s / mvit_v1_b lay them out: a pooled first block, one that changes width and
    stride (block 1), one with more heads; 16x16 tokens per frame pair at 1x3x4x32x32."""
    torch.manual_seed(0)
    if v2:  # every block pools q, k and v (kernel 3), with the relative-position tables
        cfg = [
            MSBlockConfig(2, 16, 16, [3, 3, 3], [3, 3, 3], [1, 1, 1], [1, 2, 2]),
            MSBlockConfig(2, 16, 32, [3, 3, 3], [3, 3, 3], [1, 2, 2], [1, 1, 1]),
            MSBlockConfig(4, 32, 32, [3, 3, 3], [3, 3, 3], [1, 1, 1], [1, 1, 1]),
        ]
        flags = {"residual_pool": True, "residual_with_cls_embed": False, "rel_pos_embed": True}
        model = MViT((32, 32), 4, cfg, proj_after_attn=True, num_classes=10, **flags)
    else:  # a one-head first block, as mvit_v1_b's; pool_q only where the stride changes
        cfg = [
            MSBlockConfig(1, 16, 32, [], [3, 3, 3], [], [1, 2, 2]),
            MSBlockConfig(2, 32, 32, [3, 3, 3], [3, 3, 3], [1, 2, 2], [1, 1, 1]),
            MSBlockConfig(2, 32, 32, [], [3, 3, 3], [], [1, 1, 1]),
        ]
        flags = {"residual_pool": False, "residual_with_cls_embed": True, "rel_pos_embed": False}
        model = MViT((32, 32), 4, cfg, proj_after_attn=False, num_classes=10, **flags)
    return randomise(model)


X = torch.randn(1, 3, 4, 32, 32, generator=torch.Generator().manual_seed(1))


def _heads_groups(res) -> dict[str, object]:
    return {g.name: g for g in res.analysis.groups if g.name.endswith(".attn.qkv")}


def _attention_matches_its_weights(model: MViT) -> list[int]:
    heads = []
    for block in model.blocks:
        a = block.attn
        width = a.num_heads * a.head_dim
        assert a.qkv.weight.shape[0] == 3 * width and a.output_dim == width
        assert a.project[0].weight.shape[1] == width
        heads.append(a.num_heads)
    return heads


def test_mvit_v2_prunes_whole_heads_exactly():
    model = tiny_mvit(v2=True)
    original = [(b.attn.rel_pos_h.clone(), b.attn.pool_q.pool.weight.clone()) for b in model.blocks]
    res = check(model, X)  # pruned equals the masked original, every tensor sliced as planned
    assert res.verification.passed and res.verification.max_abs_diff < 1e-12
    groups = _heads_groups(res)
    assert {n: (g.kind, len(g.units), g.reason) for n, g in groups.items()} == {
        "blocks.0.attn.qkv": ("heads", 2, None),
        "blocks.1.attn.qkv": ("heads", 2, None),
        "blocks.2.attn.qkv": ("heads", 4, None),
    }
    assert not any("rel_pos" in r or "matmul" in r or "einsum" in r for r in reasons(res).values())
    assert _attention_matches_its_weights(res.model) == [1, 1, 2]
    # block 2 (heads of 8 channels): whole heads of q, k and v go, and project loses the same columns
    rows = kept(res, "blocks.2.attn.qkv.weight")
    heads = sorted({r % 32 // 8 for r in rows})
    assert len(heads) == 2 and rows == [p * 32 + h * 8 + j for p in range(3) for h in heads for j in range(8)]
    assert kept(res, "blocks.2.attn.project.0.weight", 1) == [h * 8 + j for h in heads for j in range(8)]
    # the tables and the pools are per head size, shared by all heads: untouched
    for block, (rel, pool) in zip(res.model.blocks, original):
        assert torch.equal(block.attn.rel_pos_h, rel) and torch.equal(block.attn.pool_q.pool.weight, pool)
    assert not any("rel_pos" in t or ".pool_" in t for t in res.plan["tensors"])
    assert res.model(torch.randn(2, 3, 4, 32, 32)).shape == (2, 10)
    # the plan alone re-cuts a fresh instance: the surgeon recomputes num_heads and output_dim from the weights
    again, verification = slimnet.apply(tiny_mvit(v2=True), res.plan, X)
    assert verification.passed and _attention_matches_its_weights(again) == [1, 1, 2]
    with torch.no_grad():
        assert torch.equal(again(X), res.model(X))


@pytest.mark.parametrize("v2", [True, False], ids=["v2", "v1"])
def test_mvit_macs_and_params_follow_the_heads(v2):
    model = tiny_mvit(v2)
    res = check(model, X)
    cost = res.analysis.cost
    keep = cost.keep_vector([d.keep for d in res.decisions])
    before, after = count_macs(model, X)["macs"], count_macs(res.model, X)["macs"]
    assert after < 0.8 * before
    # the pooling convs shrink with the heads folded into their batch (counted as unpruned they were 9% over)
    assert abs(cost.macs(keep) - after) <= 1e-4 * after and abs(cost.macs() - before) <= 1e-4 * before
    assert cost.params(keep) == count_params(res.model) < count_params(model)


def test_mvit_v1_prunes_the_heads_of_its_multi_head_blocks():
    res = check(tiny_mvit(v2=False), X)
    groups = _heads_groups(res)
    assert [len(g.units) for g in groups.values()] == [1, 2, 2]
    assert groups["blocks.0.attn.qkv"].reason is not None  # one head: nothing to choose
    assert all(g.kind == "heads" and g.reason is None for n, g in groups.items() if n != "blocks.0.attn.qkv")
    assert _attention_matches_its_weights(res.model) == [1, 1, 1]
