"""Networks of the auxiliary deep generative models (Maaloe, Sonderby, Sonderby & Winther 2016, "Auxiliary Deep
Generative Models", ADGM / SDGM): MLPs with several inputs, and the classifier q(y | a, x) with its auxiliary
posterior q(a | x), which is also the models' exportable encoder.

Every conditional of those models reads several variables (q(z | a, y, x), p(a | x, y, z), ...). As in the
original code, each input enters the first hidden layer through its own linear map and the maps are summed,
W_x x + W_a a + W_y y + b, which equals one linear layer on the concatenation. Written this way a per-image
input (x, a) is mapped once per image and only broadcast against the K enumerated classes, so enumerating every
class for B images (B*K rows) costs the image-sized first layer B times, not B*K times.
No batch normalization (the original went NaN with it on unlabeled data), except inside the optional conv q(y|a,x)
(`qy_arch: conv`), whose ConvNet normalizes over the batch's images, never over the enumerated class rows.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from genssl.nn.classifiers import ConvNet, check_conv_input
from genssl.registry import register_encoder_arch

QY_ARCHS = ("mlp", "conv")


class SumMLP(nn.Module):
    """inputs {name: (..., d_name)} -> (..., out_dim): sum of per-input linear maps + bias, then
    [ReLU -> Linear] * (len(hidden) - 1), ReLU, Linear head. `part(name, t)` is one input's first-layer
    contribution and `finish(pre)` the rest, so callers may compute each part at its own batch shape and let
    broadcasting (or row expansion) combine them."""

    def __init__(self, in_dims: dict[str, int], hidden: tuple[int, ...], out_dim: int):
        super().__init__()
        if not hidden:
            raise ValueError("SumMLP needs at least one hidden layer (hidden=())")
        self.in_dims = dict(in_dims)
        self.inputs = nn.ModuleDict({k: nn.Linear(d, hidden[0], bias=False) for k, d in in_dims.items()})
        self.bias = nn.Parameter(torch.zeros(hidden[0]))
        layers: list[nn.Module] = [nn.ReLU()]
        for a, b in zip(hidden[:-1], hidden[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(hidden[-1], out_dim)
        with torch.no_grad():  # fan-in of the first layer is the concatenation's: rescale as nn.Linear(sum d) would
            bound = 1.0 / math.sqrt(sum(in_dims.values()))
            for lin in self.inputs.values():
                lin.weight.uniform_(-bound, bound)
            self.bias.uniform_(-bound, bound)

    def part(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """(..., d_name) -> (..., H): W_name t."""
        return self.inputs[name](t)

    def hidden(self, pre: torch.Tensor) -> torch.Tensor:
        """The last hidden layer from the summed first-layer parts (..., H0) -> (..., H)."""
        return self.body(pre + self.bias)

    def finish(self, pre: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(pre))

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        if set(inputs) != set(self.inputs):
            raise ValueError(f"SumMLP expects inputs {sorted(self.inputs)}, got {sorted(inputs)}")
        return self.finish(sum(self.part(k, v) for k, v in inputs.items()))


def gaussian_params(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A head's (..., 2D) output -> (mu, logvar), (..., D) each."""
    mu, logvar = out.chunk(2, dim=-1)
    return mu, logvar


@register_encoder_arch("adgm_classifier")
class AuxClassifier(nn.Module):
    """The ADGM/SDGM classifier: q(a | x) = N(mu(x), diag sigma^2(x)) and q(y | a, x) = Cat(pi(a, x)).

    As an exported encoder, `forward(x)` is q(y | a, x)'s last hidden layer at a = the mean of q(a | x) (the
    "classifier's features", deterministic). `input_shape` is the shape of one input (an image or a vector);
    inputs are passed flattened.

    `qy_arch` is how x enters q(y | a, x)'s first layer: `mlp`, a linear map of the pixels (the paper); `conv`, the
    classifiers' ConvNet (genssl.nn.classifiers: 32/64/128 channels, batch norm over the images, which are never
    repeated per class) with its head mapping the pooled features to that layer, so ADGM/SDGM's classifier is the
    same network as FixMatch's (Oliver et al. 2018's one shared model). q(a | x) and the generative side stay MLPs.
    """

    def __init__(self, input_shape, num_classes: int, a_dim: int = 100, qa_hidden=(500, 500),
                 qy_hidden=(500, 500), qy_arch: str = "mlp"):
        super().__init__()
        if qy_arch not in QY_ARCHS:
            raise ValueError(f"unknown classifier arch {qy_arch!r} for q(y|a,x); choose one of {', '.join(QY_ARCHS)}")
        self.input_shape = tuple(int(d) for d in input_shape)
        self.num_classes, self.a_dim = int(num_classes), int(a_dim)
        self.args = {"input_shape": list(self.input_shape), "num_classes": self.num_classes, "a_dim": self.a_dim,
                     "qa_hidden": [int(h) for h in qa_hidden], "qy_hidden": [int(h) for h in qy_hidden],
                     "qy_arch": qy_arch}
        in_dim = math.prod(self.input_shape)
        self.qa = SumMLP({"x": in_dim}, tuple(qa_hidden), 2 * self.a_dim)
        if qy_arch == "conv":
            check_conv_input(self.input_shape, "cls_arch='conv'")
            self.qy_x = ConvNet(self.input_shape[0], int(qy_hidden[0]))  # W_x x of the first layer, from conv features
            self.qy = SumMLP({"a": self.a_dim}, tuple(qy_hidden), self.num_classes)
        else:
            self.qy_x = None
            self.qy = SumMLP({"x": in_dim, "a": self.a_dim}, tuple(qy_hidden), self.num_classes)
        self.out_dim = int(qy_hidden[-1])

    def spec_args(self) -> dict:
        return dict(self.args)

    def posterior_a(self, x_flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(a | x): (B, F) flattened inputs -> mu, logvar (B, A)."""
        return gaussian_params(self.qa(x=x_flat))

    def _x_part(self, x_flat: torch.Tensor) -> torch.Tensor:
        """x's contribution to q(y | a, x)'s first layer, (B, F) -> (B, H), computed once per image."""
        if self.qy_x is None:
            return self.qy.part("x", x_flat)
        return self.qy_x(x_flat.unflatten(-1, self.input_shape))

    def logits(self, x_flat: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """q(y | a, x) logits; a (..., B, A) may carry leading sample dims: -> (..., B, K)."""
        return self.qy.finish(self._x_part(x_flat) + self.qy.part("a", a))

    def features_at(self, x_flat: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self.qy.hidden(self._x_part(x_flat) + self.qy.part("a", a))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, *input_shape) -> (B, out_dim)
        x_flat = x.flatten(1)
        mu_a, _ = self.posterior_a(x_flat)
        return self.features_at(x_flat, mu_a)
