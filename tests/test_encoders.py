"""Encoder export / import: bit-identical round trips, foreign weights through key maps, refusal of unsafe or
mismatched files, and torch.hub from the local checkout."""

from __future__ import annotations

import pathlib

import pytest
import torch
import yaml
from torch import nn

from genssl import Trainer, export_encoder, load_encoder
from genssl.fileio import CheckpointError
from genssl.encoders.format import Encoder
from genssl.encoders.load import list_released
from genssl.registry import register_encoder_arch
from genssl.encoders.from_run import encoder_from_run, export_run

REPO = pathlib.Path(__file__).resolve().parent.parent


@register_encoder_arch("test_gaussian_encoder")
class TinyGaussian(nn.Module):
    """A registered arch with a Gaussian posterior, standing in for a VAE encoder."""

    def __init__(self, in_dim: int = 784, z: int = 4):
        super().__init__()
        self.in_dim, self.z = in_dim, z
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_dim, 16), nn.ReLU(), nn.Linear(16, 2 * z))

    def spec_args(self):
        return {"in_dim": self.in_dim, "z": self.z}

    def posterior(self, x):
        mu, logvar = self.body(x).chunk(2, dim=1)
        return mu, logvar

    def forward(self, x):
        return self.posterior(x)[0]


class ForeignNet(nn.Module):
    """Someone else's network, unregistered, with batch norm (so eval mode matters)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 7 * 7, 8)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        return self.fc(nn.functional.avg_pool2d(h, 4).flatten(1))


def _images(n=16, shape=(1, 28, 28), seed=0):
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_data):
    from conftest import tiny_run_config

    cfg = tiny_run_config("supervised", tmp_path_factory.mktemp("runs"), train={"steps": 4, "eval_every": 2})
    trainer = Trainer(cfg, data=tiny_data)
    trainer.fit()
    return trainer.run_dir, trainer.method.eval()


def test_run_export_load_is_bit_identical(trained_run, tiny_data, tmp_path):
    run_dir, method = trained_run
    x = tiny_data[1].images[:64].float() / 255
    with torch.no_grad():
        expected = method.encode(x)
        folder = export_run(run_dir, tmp_path / "enc", data=tiny_data)
        enc = load_encoder(folder)
        assert isinstance(enc, Encoder) and not enc.training and enc.out_dim == 500
        assert enc.input_shape == (1, 28, 28) and enc.normalization is None
        assert torch.equal(enc(x), expected)
        assert torch.equal(encoder_from_run(run_dir, data=tiny_data)(x), expected)  # on-the-fly export
    spec = yaml.safe_load((folder / "encoder.yaml").read_text())
    assert spec["arch"] == "classifier_features" and spec["source"]["method"] == "supervised"
    assert len(spec["source"]["config_digest"]) == 12 and spec["out_dim"] == 500
    with pytest.raises(FileExistsError, match="already holds"):
        export_run(run_dir, folder, data=tiny_data)
    # a run folder with an encoder/ export loads through it, without the dataset
    export_run(run_dir, data=tiny_data, overwrite=True)
    with torch.no_grad():
        assert torch.equal(load_encoder(run_dir)(x), expected)


@pytest.mark.parametrize("net", [
    {"d_hidden": [32, 16]},
    {"arch": "conv28", "conv_width": 4},
    {"arch": "convnet", "conv_width": 4, "fake_logit": "explicit"},
], ids=["mlp", "conv28", "convnet-explicit"])
def test_sgan_export_gives_the_ema_discriminators_features(net, tiny_data, tmp_path):
    """`genssl export` of an SSL-GAN run is its evaluation discriminator's feature layer: the EMA weights, as
    method.encode gives them, rebuilt from encoder.yaml alone."""
    from conftest import tiny_run_config
    from genssl.encoders.from_run import method_from_run

    cfg = tiny_run_config("sgan", tmp_path / "runs", {"g_hidden": [16], "z_dim": 8, "n_samples": 4, **net},
                          train={"steps": 2, "eval_every": 2, "ckpt_every": 2})
    trainer = Trainer(cfg, data=tiny_data)
    trainer.fit()
    method = method_from_run(trainer.run_dir, data=tiny_data)[0]
    x = tiny_data[1].images[:32].float() / 255
    folder = export_run(trainer.run_dir, tmp_path / "enc", data=tiny_data)
    enc = load_encoder(folder)
    spec = yaml.safe_load((folder / "encoder.yaml").read_text())
    assert spec["arch"] == "gan_discriminator_features" and spec["source"]["method"] == "sgan"
    with torch.no_grad():
        expected = method.encode(x)
        assert enc.out_dim == expected.shape[1] == spec["out_dim"]
        torch.testing.assert_close(enc(x), expected)
        assert not torch.allclose(method.disc.features(x), expected)  # the average, not the raw weights


def test_encoder_is_frozen_and_checks_inputs(tmp_path):
    net = TinyGaussian()
    folder = export_encoder(net, tmp_path / "g", input_shape=(1, 28, 28), source_method="test")
    enc = load_encoder(folder)
    enc.train()  # a parent module's .train() must not unfreeze it
    assert not enc.training and not enc.net.training
    assert not any(p.requires_grad for p in enc.parameters())
    x = _images()
    mu, logvar = enc.posterior(x)
    assert enc.has_posterior and torch.equal(mu, net(x)) and torch.equal(enc(x), mu) and logvar.shape == (16, 4)
    with pytest.raises(ValueError, match=r"expects \(B, 1x28x28\) images, got \(2, 1, 32, 32\)"):
        enc(torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match="uint8"):
        enc((x * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="not registered"):
        export_encoder(ForeignNet(), tmp_path / "f", input_shape=(1, 28, 28))
    plain = load_encoder(ForeignNet().state_dict(), module=ForeignNet(), input_shape=(1, 28, 28))
    assert not plain.has_posterior and isinstance(plain, Encoder)
    with pytest.raises(ValueError, match="has no Gaussian posterior"):
        plain.posterior(x)


def test_foreign_state_dict_through_key_map(tmp_path):
    torch.manual_seed(0)
    original = ForeignNet()
    original.bn.running_mean.uniform_(-1, 1)  # non-trivial buffers must travel too
    original.eval()
    renamed = {f"backbone.{k}": v.clone() for k, v in original.state_dict().items()}
    renamed["head.extra.weight"] = torch.zeros(3)  # a key the map drops
    x = _images()
    with torch.no_grad():
        expected = original(x)
    by_prefix = load_encoder(renamed, module=ForeignNet(), key_map={"backbone.": "", "head.": None},
                             input_shape=(1, 28, 28))
    assert by_prefix.out_dim == 8 and torch.equal(by_prefix(x), expected)
    path = tmp_path / "foreign.pth"
    torch.save({"state_dict": renamed}, path)  # nested under "state_dict", as many training scripts save
    by_fn = load_encoder(path, module=ForeignNet(), input_shape=(1, 28, 28),
                         key_map=lambda k: k.removeprefix("backbone.") if k.startswith("backbone.") else None)
    assert torch.equal(by_fn(x), expected)
    with pytest.raises(CheckpointError, match="unexpected keys: backbone.conv.weight"):
        load_encoder(renamed, module=ForeignNet(), input_shape=(1, 28, 28), key_map={"head.": None})


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling this would create a file: code execution
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    folder = export_encoder(TinyGaussian(), tmp_path / "enc", input_shape=(1, 28, 28))
    evil = folder / "weights.pt"
    torch.save({"body.1.weight": _RunsCode(str(marker))}, evil)
    spec = yaml.safe_load((folder / "encoder.yaml").read_text())
    import hashlib
    spec["weights_sha256"] = hashlib.sha256(evil.read_bytes()).hexdigest()  # so the pickle itself is reached
    (folder / "encoder.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(CheckpointError, match=r"weights\.pt: refused to load"):
        load_encoder(folder)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_encoder(evil, module=TinyGaussian(), input_shape=(1, 28, 28))
    with pytest.raises(CheckpointError, match="refused to load"):
        load_encoder("torchvision:resnet18", weights=evil)
    assert not marker.exists()


def test_spec_weights_mismatch_is_refused(tmp_path):
    folder = export_encoder(TinyGaussian(z=4), tmp_path / "enc", input_shape=(1, 28, 28))
    spec_path = folder / "encoder.yaml"
    spec = yaml.safe_load(spec_path.read_text())
    spec_path.write_text(yaml.safe_dump({**spec, "args": {"in_dim": 784, "z": 6}}))
    with pytest.raises(CheckpointError, match=r"weights\.pt: the weights do not match .*shape mismatches: "
                                              r"body\.3\.weight: file \(8, 16\) vs net \(12, 16\)"):
        load_encoder(folder)
    # weights edited after export: caught by the checksum, naming the file
    spec_path.write_text(yaml.safe_dump(spec))
    state = torch.load(folder / "weights.pt", weights_only=True)
    del state["body.1.bias"]
    torch.save(state, folder / "weights.pt")
    with pytest.raises(CheckpointError, match=r"weights\.pt: sha256 .* differs"):
        load_encoder(folder)
    spec_path.write_text(yaml.safe_dump({**spec, "weights_sha256": None}))
    with pytest.raises(CheckpointError, match=r"missing keys: body\.1\.bias"):
        load_encoder(folder)
    spec_path.write_text(yaml.safe_dump({**spec, "arch": "no_such_arch"}))
    with pytest.raises(ValueError, match="unknown encoder arch 'no_such_arch'; registered encoder archs: .*classifier_features"):
        load_encoder(folder)
    spec_path.write_text(yaml.safe_dump({**spec, "format_version": 99}))
    with pytest.raises(CheckpointError, match="format_version 99"):
        load_encoder(folder)


def test_torchvision_architecture_with_local_weights(tmp_path):
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=7).eval()
    path = tmp_path / "resnet18.pth"
    torch.save(model.state_dict(), path)
    enc = load_encoder("torchvision:resnet18", weights=path)
    assert enc.out_dim == 512 and enc.input_shape == (3, None, None)
    x = _images(2, (3, 32, 32))
    model.fc = nn.Identity()
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    with torch.no_grad():
        assert torch.allclose(enc(x), model((x - mean[:, None, None]) / std[:, None, None]), atol=1e-5)
    folder = export_encoder(enc, tmp_path / "exported")  # a foreign torchvision encoder exports like ours
    with torch.no_grad():
        assert torch.equal(load_encoder(folder)(x), enc(x))
    with pytest.raises(ValueError, match="needs weights="):
        load_encoder("torchvision:resnet18")


def test_released_name_lookup(tmp_path):
    root = tmp_path / "released"
    export_encoder(TinyGaussian(), root / "tiny-gauss", input_shape=(1, 28, 28))
    assert list_released(root) == ["tiny-gauss"]
    enc = load_encoder("tiny-gauss", released_root=root)
    assert enc.out_dim == 4 and enc.source["path"] == str(root / "tiny-gauss")
    with pytest.raises(FileNotFoundError, match=r"released: tiny-gauss in"):
        load_encoder("tiny-gaus", released_root=root)


def test_unknown_source_lists_the_choices(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"not an encoder folder .* released encoder \(released: "):
        load_encoder(str(tmp_path / "nothing"))
    with pytest.raises(ValueError, match="also needs module="):
        load_encoder({"w": torch.zeros(1)})


def test_torch_hub_local_checkout(tmp_path):
    folder = export_encoder(TinyGaussian(), tmp_path / "enc", input_shape=(1, 28, 28))
    import importlib.util

    spec = importlib.util.spec_from_file_location("genssl_hubconf", REPO / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    assert callable(hubconf.encoder) and callable(hubconf.fmnist_m1)
    enc = torch.hub.load(str(REPO), "encoder", str(folder), source="local")
    x = _images()
    with torch.no_grad():
        assert torch.equal(enc(x), load_encoder(folder)(x))
    assert "fmnist-m1" in list_released()
    for name in list_released():  # each released encoder's hub entry is load_encoder(name): same weights, outputs
        released = torch.hub.load(str(REPO), name.replace("-", "_"), source="local")
        reference = load_encoder(name)
        assert isinstance(released, Encoder) and released.out_dim == reference.out_dim > 0
        assert not released.training and not any(p.requires_grad for p in released.parameters())
        ours, theirs = released.state_dict(), reference.state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name
        x = _images(seed=3)
        with torch.no_grad():
            assert torch.equal(released(x), reference(x)), name
            if reference.has_posterior:
                assert all(torch.equal(a, b) for a, b in zip(released.posterior(x), reference.posterior(x))), name


def test_probing_an_encoders_width_restores_every_modules_mode():
    from genssl.encoders.format import infer_out_dim

    inner = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3), torch.nn.Dropout(0.5)).eval()
    wrapper = torch.nn.Sequential(inner)  # a fresh wrapper is in train mode around an eval-mode network
    assert infer_out_dim(wrapper, (1, 2, 2)) == 3
    assert wrapper.training and not any(m.training for m in inner.modules())
