"""SlimMultiheadAttention (slimnet/modules.py), the pruned stand-in for nn.MultiheadAttention: its fused path
(F.scaled_dot_product_attention, taken when no weights are asked for), its explicit path and the original module
with the pruned heads' outputs zeroed (the masked original) agree for every mask kind, both batch layouts, self-
and cross-attention and kdim/vdim; old pickles load and compute the same; a pruned torchvision ViT still verifies,
counts its attention's MACs as the cost model predicts, and can be shrunk again."""

from __future__ import annotations

import copy
import io
import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimnet.api import shrink
from slimnet.cost.macs import count_macs
from slimnet.modules import SlimMultiheadAttention

from .helpers import check, randomise

E, H, HD = 16, 4, 4  # embed width, heads, head size of the original
KEPT = [0, 2]  # heads the "pruned" module keeps
B, L, S = 2, 5, 7  # batch, query length, source length (cross-attention)


def _rows(heads: list[int], blocks: int) -> torch.Tensor:
    return torch.tensor([blk * E + h * HD + j for blk in range(blocks) for h in heads for j in range(HD)])


def _pair(
    batch_first: bool, kdim: int | None = None, vdim: int | None = None, dropout: float = 0.0
) -> tuple[nn.MultiheadAttention, SlimMultiheadAttention]:
    """(the original with the pruned heads' out_proj columns zeroed, the slim module with the kept heads)."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, H, batch_first=batch_first, kdim=kdim, vdim=vdim, dropout=dropout).double()
    with torch.no_grad():
        for p in mha.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    cols = _rows(KEPT, 1)
    out_proj = nn.Linear(len(cols), E).double()
    with torch.no_grad():
        out_proj.weight.copy_(mha.out_proj.weight[:, cols])
        out_proj.bias.copy_(mha.out_proj.bias)
        bias = mha.in_proj_bias[_rows(KEPT, 3)].clone()
        if mha._qkv_same_embed_dim:
            slim = SlimMultiheadAttention(mha, mha.in_proj_weight[_rows(KEPT, 3)].clone(), bias, out_proj, HD)
        else:
            q, k, v = (getattr(mha, f"{n}_proj_weight")[cols].clone() for n in "qkv")
            slim = SlimMultiheadAttention(
                mha, None, bias, out_proj, HD, q_proj_weight=q, k_proj_weight=k, v_proj_weight=v
            )
        dropped = torch.tensor([c for c in range(E) if c not in cols.tolist()])
        mha.out_proj.weight[:, dropped] = 0.0
    assert slim.num_heads == len(KEPT) and slim.head_dim == HD
    return mha.eval(), slim.eval()


def _inputs(batch_first: bool, cross: bool, kdim: int = E, vdim: int = E) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(1)

    def t(n: int, width: int) -> torch.Tensor:
        x = torch.randn(B, n, width, generator=gen, dtype=torch.float64)
        return x if batch_first else x.transpose(0, 1).contiguous()

    if not cross:
        x = t(L, E)
        return x, x, x
    return t(L, E), t(S, kdim), t(S, vdim)


def _masks(kind: str, src_len: int) -> dict[str, object]:
    """The keyword arguments for nn.MultiheadAttention of one mask kind (no row is masked out entirely)."""
    gen = torch.Generator().manual_seed(2)
    blocked = torch.rand(L, src_len, generator=gen) < 0.4
    blocked[:, 0] = False
    blocked3 = torch.rand(B * H, L, src_len, generator=gen) < 0.4
    blocked3[..., 0] = False
    padded = torch.zeros(B, src_len, dtype=torch.bool)
    padded[0, -2:] = True
    padded[1, -1] = True
    as_float = {True: float("-inf"), False: 0.0}

    def additive(m: torch.Tensor) -> torch.Tensor:
        return torch.randn(m.shape, generator=gen, dtype=torch.float64).masked_fill(m, as_float[True])

    causal = torch.ones(L, src_len, dtype=torch.bool).tril().logical_not()
    return {
        "none": {},
        "bool2d": {"attn_mask": blocked},
        "float2d": {"attn_mask": additive(blocked)},
        "bool3d": {"attn_mask": blocked3},
        "float3d": {"attn_mask": additive(blocked3)},
        "padding_bool": {"key_padding_mask": padded},
        "padding_float": {"key_padding_mask": torch.zeros(B, src_len, dtype=torch.float64).masked_fill(padded, -1e9)},
        "bool2d+padding": {"attn_mask": blocked, "key_padding_mask": padded},
        "causal": {"attn_mask": causal, "is_causal": True},
        "causal+padding": {"attn_mask": causal, "is_causal": True, "key_padding_mask": padded},
    }[kind]


def _for_slim(kw: dict[str, object]) -> dict[str, object]:
    """The same masks for the slim module: a per-head (3-D) mask keeps the kept heads' slices; a causal one is
    left to is_causal alone (the module builds it)."""
    out = dict(kw)
    m = out.get("attn_mask")
    if isinstance(m, torch.Tensor) and m.dim() == 3:
        out["attn_mask"] = m.reshape(B, H, *m.shape[1:])[:, KEPT].reshape(B * len(KEPT), *m.shape[1:])
    if out.get("is_causal"):
        out.pop("attn_mask")
    return out


MASKS = [
    "none", "bool2d", "float2d", "bool3d", "float3d", "padding_bool", "padding_float", "bool2d+padding", "causal",
    "causal+padding",
]  # fmt: skip


def _sdpa_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    return calls


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("kind", MASKS)
def test_fused_explicit_and_masked_original_agree(monkeypatch, batch_first, cross, kind):
    if kind.startswith("causal") and cross:
        pytest.skip("a causal mask is square")
    mha, slim = _pair(batch_first)
    q, k, v = _inputs(batch_first, cross)
    kw = _masks(kind, k.shape[1 if batch_first else 0])
    calls = _sdpa_calls(monkeypatch)
    with torch.no_grad():
        ref, ref_w = mha(q, k, v, need_weights=True, average_attn_weights=False, **kw)
        fused, none = slim(q, k, v, need_weights=False, **_for_slim(kw))
        assert len(calls) == 1 and none is None  # the fused path ran
        monkeypatch.setattr(SlimMultiheadAttention, "fused", False)
        explicit, _ = slim(q, k, v, need_weights=False, **_for_slim(kw))
        assert len(calls) == 1  # the explicit path did not call SDPA
        monkeypatch.setattr(SlimMultiheadAttention, "fused", True)
        weighted, w_heads = slim(q, k, v, need_weights=True, average_attn_weights=False, **_for_slim(kw))
        _, w_mean = slim(q, k, v, need_weights=True, **_for_slim(kw))
    assert len(calls) == 1  # asking for the weights takes the explicit path
    assert float(ref.abs().max()) > 0.1
    for got in (fused, explicit, weighted):
        assert got.shape == ref.shape
        assert torch.allclose(got, ref, atol=1e-10), float((got - ref).abs().max())
    kept_w = ref_w[:, KEPT]
    assert w_heads.shape == kept_w.shape and torch.allclose(w_heads, kept_w, atol=1e-12)
    assert torch.allclose(w_mean, kept_w.mean(1), atol=1e-12)


@pytest.mark.parametrize("batch_first", [True, False])
def test_kdim_and_vdim_other_than_the_embed_width(monkeypatch, batch_first):
    mha, slim = _pair(batch_first, kdim=5, vdim=7)
    assert (slim.kdim, slim.vdim, slim.in_proj_weight) == (5, 7, None)
    q, k, v = _inputs(batch_first, cross=True, kdim=5, vdim=7)
    kw = {**_masks("padding_bool", S), **_masks("bool2d", S)}
    calls = _sdpa_calls(monkeypatch)
    with torch.no_grad():
        ref, ref_w = mha(q, k, v, average_attn_weights=False, **kw)
        fused, _ = slim(q, k, v, need_weights=False, **kw)
        weighted, w = slim(q, k, v, average_attn_weights=False, **kw)
    assert len(calls) == 1
    assert torch.allclose(fused, ref, atol=1e-10) and torch.allclose(weighted, ref, atol=1e-10)
    assert torch.allclose(w, ref_w[:, KEPT], atol=1e-12)


def test_float32_fused_kernel_matches_the_explicit_path():
    """The double checks above may take SDPA's reference kernel; float32 on the CPU takes the flash kernel."""
    _, slim = _pair(True)
    slim = slim.float()
    x = torch.randn(3, 11, E)
    pad = torch.zeros(3, 11, dtype=torch.bool)
    pad[1, -3:] = True
    with torch.no_grad():
        for kw in ({}, {"key_padding_mask": pad}, {"is_causal": True}):
            fused, _ = slim(x, x, x, need_weights=False, **kw)
            explicit, _ = slim(x, x, x, need_weights=True, **kw)
            assert torch.allclose(fused, explicit, atol=1e-5), (kw, float((fused - explicit).abs().max()))


def test_dropout_only_in_training():
    _, slim = _pair(True, dropout=0.5)
    _, plain = _pair(True)
    x = _inputs(True, cross=False)[0]
    with torch.no_grad():
        assert torch.equal(slim(x, x, x, need_weights=False)[0], plain(x, x, x, need_weights=False)[0])
        slim.train()
        torch.manual_seed(3)
        a = slim(x, x, x, need_weights=False)[0]
        torch.manual_seed(3)
        b = slim(x, x, x, need_weights=False)[0]
        c = slim(x, x, x, need_weights=False)[0]
        w = slim(x, x, x, need_weights=True)[1]  # the explicit path drops weights too: rows no longer sum to 1
    ref = plain(x, x, x, need_weights=False)[0]
    assert torch.equal(a, b) and not torch.allclose(a, c) and not torch.allclose(a, ref, atol=1e-3)
    assert not torch.allclose(w.sum(-1), torch.ones(()).double(), atol=1e-3)


# ------------------------------------------------------------------------------------------- old pickles
def _old_forward(m: nn.Module, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                 average_attn_weights=True):  # fmt: skip
    """The first version's forward, verbatim in substance: three projections and explicit attention."""
    if not m.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    inner = m.num_heads * m.head_dim
    w, b = m.in_proj_weight, m.in_proj_bias
    bq, bk, bv = (None, None, None) if b is None else b.split(inner)
    wq, wk, wv = w.split(inner)
    q, k, v = F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, wv, bv)
    bsz, tq, tk = q.shape[0], q.shape[1], k.shape[1]
    q, k, v = (t.reshape(bsz, -1, m.num_heads, m.head_dim).transpose(1, 2) for t in (q, k, v))
    mask = None
    if attn_mask is not None:
        mask = torch.zeros(attn_mask.shape, dtype=q.dtype).masked_fill(attn_mask, float("-inf")).reshape(1, 1, tq, tk)
    if key_padding_mask is not None:
        kp = torch.zeros(key_padding_mask.shape, dtype=q.dtype).masked_fill(key_padding_mask, float("-inf"))
        kp = kp.reshape(bsz, 1, 1, tk)
        mask = kp if mask is None else mask + kp
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(m.head_dim)
    if mask is not None:
        scores = scores + mask
    attn = torch.softmax(scores, dim=-1)
    out = m.out_proj((attn @ v).transpose(1, 2).reshape(bsz, tq, inner))
    if not m.batch_first:
        out = out.transpose(0, 1)
    return out, (attn.mean(1) if average_attn_weights else attn) if need_weights else None


def _as_first_version(m: SlimMultiheadAttention) -> SlimMultiheadAttention:
    """The instance as the first version built it: no q/k/v_proj_weight, _qkv_same_embed_dim, kdim or vdim."""
    old = copy.deepcopy(m)
    for name in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
        del old._parameters[name]
    for name in ("_qkv_same_embed_dim", "kdim", "vdim"):
        del old.__dict__[name]
    return old


@pytest.mark.parametrize("batch_first", [True, False])
def test_a_pickle_of_the_first_version_loads_and_computes_the_same(batch_first):
    _, slim = _pair(batch_first)
    old = _as_first_version(slim)
    state = pickle.dumps(old)
    assert b"q_proj_weight" not in state and b"kdim" not in state  # the pickle holds the old layout
    buf = io.BytesIO()
    torch.save(old, buf)
    buf.seek(0)
    for loaded in (pickle.loads(state), torch.load(buf, weights_only=False)):
        assert type(loaded) is SlimMultiheadAttention
        assert list(loaded.state_dict()) == ["in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"]
        assert (loaded.kdim, loaded.vdim, loaded._qkv_same_embed_dim, loaded.q_proj_weight) == (E, E, True, None)
        q, k, v = _inputs(batch_first, cross=True)
        x = q
        pad = torch.zeros(B, L, dtype=torch.bool)
        pad[0, -1] = True
        with torch.no_grad():
            for args, kw in (
                ((x, x, x), {"need_weights": False}),
                ((x, x, x), {"need_weights": False, "key_padding_mask": pad}),
                ((x, x, x), {"need_weights": True, "average_attn_weights": False}),
                ((q, k, v), {"need_weights": False}),
                ((q, k, v), {"need_weights": True}),
            ):
                got, got_w = loaded(*args, **kw)
                ref, ref_w = _old_forward(old, *args, **kw)
                assert torch.allclose(got, ref, atol=1e-10), kw
                assert (got_w is None) == (ref_w is None)
                assert got_w is None or torch.allclose(got_w, ref_w, atol=1e-12)


# ------------------------------------------------------------------------------------------------- a ViT
def _vit() -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return randomise(VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=4, hidden_dim=32,
                                       mlp_dim=64, num_classes=10))  # fmt: skip


def test_a_pruned_vit_verifies_runs_sdpa_and_counts_its_attention(monkeypatch):
    model, x = _vit(), torch.randn(2, 3, 32, 32)
    res = check(model, x)  # verified, pruned output == masked original (float64), tensors == sliced originals
    blocks = list(res.model.encoder.layers)
    assert all(type(b.self_attention) is SlimMultiheadAttention and b.self_attention.num_heads == 2 for b in blocks)
    calls = _sdpa_calls(monkeypatch)
    with torch.no_grad():
        fused = res.model(x)
        assert len(calls) == len(blocks)  # torchvision's encoder asks for no weights: every block took SDPA
        monkeypatch.setattr(SlimMultiheadAttention, "fused", False)
        explicit = res.model(x)
    assert float(fused.abs().max()) > 0.01 and torch.allclose(fused, explicit, atol=1e-5)
    # the attention is counted: the cost model's prediction for the kept units is fvcore's count of the pruned
    # model (SDPA: both products + 2 per attention weight, what the original's fused path counts per kept head)
    # (both off by the same one MAC of a shape product, torchvision's `n_h * n_w`, that the cost model skips);
    # and fvcore counts the fused path exactly as the explicit one (matmuls + div + softmax)
    cost = res.analysis.cost
    keep = cost.keep_vector([d.keep for d in res.decisions])
    explicit_count = count_macs(res.model, x)
    monkeypatch.setattr(SlimMultiheadAttention, "fused", True)
    counted = count_macs(res.model, x)
    assert counted["by_op"].get("scaled_dot_product_attention", 0) > 0 and "softmax" not in counted["by_op"]
    assert counted["macs"] == explicit_count["macs"] and "softmax" in explicit_count["by_op"]
    assert counted["macs"] - cost.macs(keep) == count_macs(model, x)["macs"] - cost.macs() == 1
    tokens = (32 // 16) ** 2 + 1
    per_block = 2 * 2 * tokens * tokens * (8 + 8 + 2)  # batch 2 x 2 heads of 8: q @ k^T, attn @ v, scale + softmax
    assert counted["by_op"]["scaled_dot_product_attention"] == len(blocks) * per_block


def test_a_pruned_vit_can_be_shrunk_again():
    """The slim module traces (``query is key is value`` holds for the tracer's proxies) and its reshapes fix the
    head size, not the head count, so its heads are found again: 2 heads -> 1, attributes updated by the surgeon."""
    first = check(_vit(), torch.randn(2, 3, 32, 32))
    again = check(first.model, torch.randn(2, 3, 32, 32))
    for b0, b1 in zip(first.model.encoder.layers, again.model.encoder.layers):
        a0, a1 = b0.self_attention, b1.self_attention
        assert (a1.num_heads, a1.head_dim, a1.embed_dim) == (1, 8, 32) and a1.in_proj_weight.shape == (24, 32)
        assert a1.out_proj.in_features == 8 and a0.num_heads == 2  # the input model is untouched


def test_a_pruned_vit_in_bfloat16_runs_the_fused_path():
    res = shrink(_vit(), torch.randn(1, 3, 32, 32), ratio=0.5, round_to=1, measure=False)
    model = copy.deepcopy(res.model).to(torch.bfloat16)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        got = model(x.to(torch.bfloat16)).float()
        ref = res.model(x)
    assert torch.allclose(got, ref, atol=0.05 * (1 + float(ref.abs().max())))
