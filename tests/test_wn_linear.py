"""The fast paths of the weight-normalized linear layer (genssl.nn.layers.WNLinear): the output-scaled forward, the
one-pass backward (_WNLinearFn) and the frozen-weight cache give what w = g v / ||v|| computed the plain way gives."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from genssl.nn.layers import WNLinear


def _layer(train_scale: bool) -> WNLinear:
    torch.manual_seed(0)
    layer = WNLinear(12, 7, train_scale=train_scale)
    with torch.no_grad():
        layer.g.uniform_(0.5, 2.0)
        layer.b.normal_()
    return layer


def _reference(layer: WNLinear, x: torch.Tensor) -> torch.Tensor:
    w = layer.g[:, None] * layer.v / layer.v.norm(dim=1, keepdim=True)
    return F.linear(x, w, layer.b)


@pytest.mark.parametrize("train_scale", [True, False])
@pytest.mark.parametrize("shape", [(5, 12), (2, 3, 12)])
def test_forward_and_gradients_match_plain_weight_norm(train_scale, shape):
    layer = _layer(train_scale)
    x = torch.randn(*shape, requires_grad=True)
    grad_out = torch.randn(*shape[:-1], 7)
    params = [p for p in (layer.v, layer.g, layer.b) if p.requires_grad]
    y = layer(x)
    got = torch.autograd.grad(y, [x, *params], grad_out)
    want_y = _reference(layer, x)
    want = torch.autograd.grad(want_y, [x, *params], grad_out)
    torch.testing.assert_close(y, want_y)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_bf16_autocast_is_close_to_fp32():
    layer = _layer(True)
    x = torch.randn(64, 12, requires_grad=True)
    grad_out = torch.randn(64, 7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    got = torch.autograd.grad(y.float(), [x, layer.v, layer.g, layer.b], grad_out)
    assert [t.dtype for t in got] == [torch.float32] * 4
    want = torch.autograd.grad(_reference(layer, x), [x, layer.v, layer.g, layer.b], grad_out)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0.05, atol=0.05 * b.abs().max().item())


def test_frozen_layer_follows_in_place_updates():
    layer = _layer(True).requires_grad_(False)
    x = torch.randn(4, 12)
    torch.testing.assert_close(layer(x), _reference(layer, x))
    opt = torch.optim.Adam(layer.parameters(), lr=0.1, fused=True)  # fused Adam does not bump version counters
    for p in layer.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    torch.testing.assert_close(layer(x), _reference(layer, x))
    twin = copy.deepcopy(layer)
    with torch.no_grad():
        twin.g.fill_(3.0)
    torch.testing.assert_close(twin(x), _reference(twin, x))
    x.requires_grad_(True)  # frozen weights still pass gradients to their input (a GAN's generator step)
    gx, = torch.autograd.grad(layer(x).sum(), x)
    want, = torch.autograd.grad(_reference(layer, x).sum(), x)
    torch.testing.assert_close(gx, want)


def test_stacked_under_vmap_matches_per_seed():
    from torch.func import functional_call, stack_module_state

    layers = [_layer(True) for _ in range(3)]
    for i, m in enumerate(layers):
        with torch.no_grad():
            m.v.add_(i)
    params, buffers = stack_module_state(layers)
    x = torch.randn(3, 5, 12)
    out = torch.vmap(lambda p, b, xi: functional_call(layers[0], (p, b), (xi,)))(params, buffers, x)
    for i, m in enumerate(layers):
        torch.testing.assert_close(out[i], _reference(m, x[i]))
