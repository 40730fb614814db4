"""Every registered method's declared capabilities (genssl.methods.base.Method) hold: what a method says it can
do, it does; code asks these flags instead of hasattr."""

from __future__ import annotations

import pytest
import torch

from genssl import DataSpec, create_method, list_methods
from genssl.data.batching import SSLBatch
from genssl.encoders.format import export_encoder, load_exported
from genssl.registry import ENCODER_ARCHS, get_method_class
from genssl.training.stacked import StackedStep

SPEC = DataSpec((1, 28, 28), 10, 20, 200, hflip=True)


def _method(name: str, seed: int = 0, overrides: dict | None = None):
    torch.manual_seed(seed)
    m = create_method(name, overrides or {}, SPEC)
    m.setup(total_steps=10)
    return m


def _batch(seed: int = 0) -> SSLBatch:
    g = torch.Generator().manual_seed(seed)
    return SSLBatch(torch.rand(8, 1, 28, 28, generator=g), torch.arange(8) % 10, torch.rand(16, 1, 28, 28, generator=g))


@pytest.mark.parametrize("name", list_methods())
def test_declared_capabilities_work(name, tmp_path):
    cls = get_method_class(name)
    m = _method(name)
    m.initialize(_batch())
    m.fit_readout(_batch().x_l, _batch().y_l)
    m.eval()
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        assert m.predict(x).shape == (5, 10)
        if cls.has_features:
            feats = m.encode(x)
            assert feats.dim() == 2 and feats.shape[0] == 5
        if cls.can_sample:
            s = m.sample(6)
            assert s.shape == (6, 1, 28, 28) and 0 <= float(s.min()) and float(s.max()) <= 1
        if cls.can_sample_conditional:
            assert m.sample(4, torch.tensor([0, 1, 2, 3])).shape == (4, 1, 28, 28)
    if cls.has_encoder:
        net = m.encoder_module()
        assert type(net).encoder_arch in ENCODER_ARCHS and ENCODER_ARCHS.get(type(net).encoder_arch) is type(net)
        enc = load_exported(export_encoder(net, tmp_path / "enc", input_shape=SPEC.image_shape))
        with torch.no_grad():
            torch.testing.assert_close(enc(x), net.eval()(x))


# Options a stacked step refuses (Method.stacking_refusal), turned off where a method's defaults use them.
STACKABLE = {"adgm": {"grad_clip": None}, "sdgm": {"grad_clip": None}}


@pytest.mark.parametrize("name", [n for n in list_methods() if get_method_class(n).supports_stacking])
def test_methods_that_claim_stacking_train_stacked(name):
    methods = [_method(name, seed, STACKABLE.get(name)) for seed in (0, 1)]
    for m in methods:
        m.initialize(_batch())
    step = StackedStep(methods, total_steps=10, precision="fp32")
    before = [p.detach().clone() for p in step.template.parameters()]
    logs = step([_batch(0), _batch(1)], 0)
    assert len(logs) == 2 and all(torch.isfinite(v).all() for lane in logs for v in lane.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, step.template.parameters())), "nothing was updated"
    lane = step.lane_method(1)
    lane.fit_readout(_batch().x_l, _batch().y_l)  # a no-op but for readout methods (M1)
    assert lane.predict(torch.rand(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.parametrize("name", [n for n in list_methods() if not get_method_class(n).supports_stacking])
def test_methods_that_do_not_claim_stacking_are_refused_clearly(name):
    with pytest.raises(ValueError, match="does not support stacked seeds .*; train the seeds one after another"):
        StackedStep([_method(name, 0), _method(name, 1)], total_steps=10, precision="fp32")


@pytest.mark.parametrize("name", sorted(STACKABLE))
def test_options_that_couple_the_seeds_are_refused_by_name(name):
    assert get_method_class(name).stacking_refusal(create_method(name, STACKABLE[name], SPEC).cfg) is None
    with pytest.raises(ValueError, match=r"gradient clipping by global norm \(grad_clip=5.0\) couples the seeds"):
        StackedStep([_method(name, 0), _method(name, 1)], total_steps=10, precision="fp32")
