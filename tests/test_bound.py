"""The verifier's copies (slimnet/bound.py, slimnet/_buffers.py): the masked reference must hold exactly the
original's values on the kept indices and zeros elsewhere, whatever buffer the values were written into."""

from __future__ import annotations

import torch
from torch import nn

from slimnet import _buffers
from slimnet.verify.bound import cast_state, masked, tensors_of


def _reference_mask(t: torch.Tensor, dims: dict[str, list[int]]) -> torch.Tensor:
    out = t.detach().clone().double()
    for dim_s, idx in dims.items():
        drop = [i for i in range(t.shape[int(dim_s)]) if i not in set(idx)]
        out.index_fill_(int(dim_s), torch.tensor(drop, dtype=torch.long), 0.0)
    return out


def _model() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 6, 1), nn.Linear(5, 5))
    net[3].weight = nn.Parameter(torch.randn(5, 5))
    net.tied = net[3]  # the same module under a second name: tied tensor names
    return net


def test_cast_state_masks_each_planned_dim_and_shares_the_rest():
    net = _model()
    planned = {
        "0.weight": {"0": [1, 2, 5, 7], "1": [0, 2]},
        "1.weight": {"0": [1, 2, 5, 7]},
        "1.running_var": {"0": [1, 2, 5, 7]},
        "2.weight": {"0": [0, 3, 4], "1": [1, 2, 5, 7]},
        "3.weight": {"1": [4]},
    }
    tensors = tensors_of(net)
    for small, large in ((1 << 40, 1 << 41), (0, 1 << 41)):  # separate tensors, then one buffer of views
        _buffers._MIN_BYTES, _buffers._MAX_BYTES = small, large
        try:
            for dtype in (torch.float32, torch.float64):
                state = cast_state(tensors, dtype, planned)
                for name, dims in planned.items():
                    assert state[name].dtype == dtype
                    assert torch.equal(state[name].double(), _reference_mask(tensors[name], dims)), name
                assert state["tied.weight"] is state["3.weight"]  # tied names: one copy
                assert "1.num_batches_tracked" not in state  # integer and unplanned: shared, not copied
                assert ("0.bias" in state) == (dtype is torch.float64)  # unplanned floats: cast only when needed
        finally:
            _buffers._MIN_BYTES, _buffers._MAX_BYTES = 8 * _buffers._HUGE_PAGE, 128 << 20
    assert torch.equal(masked(tensors["2.weight"], {}, torch.float32), tensors["2.weight"])


def test_pooled_views_are_disjoint_aligned_and_shaped():
    shapes = [torch.Size([3, 5, 7]), torch.Size([1]), torch.Size([1000, 3]), torch.Size([])]
    saved = _buffers._MIN_BYTES
    _buffers._MIN_BYTES = 0
    try:
        views = _buffers.pooled(shapes, torch.float32)
    finally:
        _buffers._MIN_BYTES = saved
    assert [v.shape for v in views] == shapes
    for k, v in enumerate(views):
        v.fill_(k)
        assert v.data_ptr() % _buffers._ALIGN == 0
    assert all(bool((v == k).all()) for k, v in enumerate(views))  # no view overwrote another
