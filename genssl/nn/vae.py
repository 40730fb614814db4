"""Networks of the VAE family (Kingma et al. 2014): a Gaussian encoder q(z|x[, y]), a decoder p(x|z[, y]) and
the observation likelihoods. MLP (the paper's 784-500-500-50 shape is `hidden=(500, 500), z_dim=50`) or
convolutional (any image of at least 4x4 pixels) bodies.

Conditioning on a class y (M2) enters additively at the first hidden layer, W_x x + W_y y, which is the same
as a linear layer on concat(x, y). Written this way the x part is computed once per image and broadcast
against all K one-hot rows, so enumerating every class (B*K rows) costs the first layer only B times.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from genssl import losses
from genssl.registry import register_encoder_arch

ARCHS = ("mlp", "conv")
LIKELIHOODS = ("bernoulli", "gaussian")
MIN_LOGVAR = -6.0  # floor on a Gaussian likelihood's log-variance: pixels that never vary must not give +inf


CONV_MIN_SIZE = 4  # the conv trunk's two stride-2 convolutions leave H // 4 rows: at least one


def _check_arch(arch: str, shape: tuple[int, ...]) -> None:
    if arch not in ARCHS:
        raise ValueError(f"unknown VAE arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if arch == "conv" and (len(shape) != 3 or min(shape[1:]) < CONV_MIN_SIZE):
        raise ValueError(f"arch='conv' takes (C, H, W) images of any channel count with H, W >= {CONV_MIN_SIZE}, "
                         f"got {tuple(shape)}; use larger images (data.image_size) or arch='mlp' (any size)")


def _conv_trunk(shape: tuple[int, int, int], width: int) -> tuple[nn.Module, int]:
    """(B, C, H, W) -> (B, 2*width*(H//4)*(W//4)): two stride-2 convolutions (4x4 kernels, padding 1), each
    giving floor(side / 2)."""
    c, h, w = shape
    body = nn.Sequential(nn.Conv2d(c, width, 4, 2, 1), nn.ReLU(), nn.Conv2d(width, 2 * width, 4, 2, 1), nn.ReLU(),
                         nn.Flatten())
    return body, 2 * width * (h // 4) * (w // 4)


@register_encoder_arch("vae_gaussian_encoder")
class GaussianEncoder(nn.Module):
    """q(z | x[, y]) = N(mu, diag exp(logvar)) (AEVB eq. 9; SSL eq. 4 and 5 for the conditional form).

    `forward(x)` is the posterior mean (the M1 feature), `posterior(x, y=None)` gives (mu, logvar) (B, D),
    `posterior_all(x)` conditions on every class at once: (B, K, D) each.
    """

    def __init__(self, input_shape: tuple[int, ...], z_dim: int = 50, arch: str = "mlp",
                 hidden: tuple[int, ...] = (500, 500), cond_dim: int = 0, conv_width: int = 32):
        super().__init__()
        input_shape = tuple(input_shape)
        _check_arch(arch, input_shape)
        if not hidden:
            raise ValueError("GaussianEncoder needs at least one hidden layer (hidden=())")
        self.input_shape, self.out_dim, self.z_dim, self.cond_dim = input_shape, z_dim, z_dim, cond_dim
        self._spec = {"input_shape": list(input_shape), "z_dim": z_dim, "arch": arch, "hidden": list(hidden),
                      "cond_dim": cond_dim, "conv_width": conv_width}
        if arch == "mlp":
            trunk, feat = nn.Flatten(), math.prod(input_shape)
        else:
            trunk, feat = _conv_trunk(input_shape, conv_width)
        self.trunk = nn.Sequential(trunk, nn.Linear(feat, hidden[0]))  # pre-activation of the first hidden layer
        self.cond = nn.Linear(cond_dim, hidden[0], bias=False) if cond_dim else None
        layers: list[nn.Module] = [nn.ReLU()]
        for a, b in zip(hidden[:-1], hidden[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(hidden[-1], 2 * z_dim)

    def spec_args(self) -> dict:
        """JSON-able constructor kwargs: `GaussianEncoder(**spec_args())` rebuilds this architecture."""
        return dict(self._spec)

    def _gaussian(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(pre)
        # The head in fp32 even under bf16 autocast: mu and logvar (hence z and the KL) rounded to bf16 cost M2
        # about a point of test accuracy (experiments/HISTORY.md, 2026-12-06); the (H, 2D) head is a small matmul.
        with torch.autocast(h.device.type, enabled=False):
            mu, logvar = self.head(h.float()).chunk(2, dim=-1)
        return mu, logvar

    def posterior(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, *input_shape), y (B, cond_dim) one-hot or None -> mu, logvar (B, D)."""
        pre = self.trunk(x)  # (B, H)
        if (y is None) != (self.cond is None):
            raise ValueError(f"this encoder has cond_dim={self.cond_dim}; pass y exactly when cond_dim > 0")
        if y is not None:
            pre = pre + self.cond(y.to(pre.dtype))
        return self._gaussian(pre)

    def posterior_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z | x, y) for every class y at once: mu, logvar (B, K, D), with K = cond_dim."""
        if self.cond is None:
            raise ValueError("posterior_all needs a class-conditional encoder (cond_dim > 0)")
        pre = self.trunk(x)  # (B, H)
        eye = losses.class_conditions(self.cond_dim, x.device, pre.dtype)
        pre = pre[:, None, :] + self.cond(eye)[None]  # (B, K, H)
        return self._gaussian(pre)

    def posterior_labeled_and_all(self, x_l: torch.Tensor, y_l: torch.Tensor, x_u: torch.Tensor
                                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """M2's fused pass: q(z | x_l, y_l) for the labeled images and q(z | x_u, y) for every class y, through
        one trunk pass over all images and one head pass over all B_l + B_u*K rows.
        Returns mu, logvar (B_l + B_u*K, D): the labeled rows first, then row B_l + b*K + k for (x_u[b], k)."""
        if self.cond is None:
            raise ValueError("posterior_labeled_and_all needs a class-conditional encoder (cond_dim > 0)")
        n_l = x_l.shape[0]
        pre = self.trunk(torch.cat([x_l, x_u]))  # (B_l + B_u, H)
        c = self.cond(losses.class_conditions(self.cond_dim, pre.device, pre.dtype))  # (K, H): W_y e_k
        rows = torch.cat([pre[:n_l] + c[y_l], (pre[n_l:, None, :] + c[None]).flatten(0, 1)])  # (R, H)
        return self._gaussian(rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.posterior(x)[0]


class _Float32(nn.Module):
    """Mixin for a layer that computes in fp32 even under autocast (same parameters and state_dict keys)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())


class _Float32Linear(_Float32, nn.Linear):
    pass


class _Float32ConvTranspose2d(_Float32, nn.ConvTranspose2d):
    pass


class Decoder(nn.Module):
    """p(x | z[, y]): (..., D) latents [and (..., K) one-hot classes] -> (..., P, *output_shape) parameters of
    the likelihood (P = 1 for Bernoulli logits, 2 for a Gaussian's mean and log-variance). Any leading dims.

    A Gaussian's output layer runs in fp32 under autocast: its learned variance (floored at e^-6) divides the error
    of a bf16-rounded mean, which cost M1 about a point of test accuracy (experiments/HISTORY.md, 2026-12-06).
    Bernoulli logits stay in the autocast dtype (M2's largest matmul)."""

    def __init__(self, output_shape: tuple[int, ...], z_dim: int = 50, arch: str = "mlp",
                 hidden: tuple[int, ...] = (500, 500), cond_dim: int = 0, n_params: int = 1, conv_width: int = 32):
        super().__init__()
        output_shape = tuple(output_shape)
        _check_arch(arch, output_shape)
        if not hidden:
            raise ValueError("Decoder needs at least one hidden layer (hidden=())")
        self.output_shape, self.n_params, self.arch = output_shape, n_params, arch
        gaussian = n_params == 2
        self.fc_z = nn.Linear(z_dim, hidden[0])
        self.fc_y = nn.Linear(cond_dim, hidden[0], bias=False) if cond_dim else None
        layers: list[nn.Module] = [nn.ReLU()]
        for a, b in zip(hidden[:-1], hidden[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        if arch == "mlp":
            layers.append((_Float32Linear if gaussian else nn.Linear)(hidden[-1], n_params * math.prod(output_shape)))
            self.body, self.deconv = nn.Sequential(*layers), None
        else:
            # two stride-2 transposed convolutions double twice: start at ceil(side / 4) and crop the
            # (at most 3) extra rows and columns of sizes that are not multiples of 4 (28 and 32 are)
            c, h, w = output_shape
            self.side = (-(-h // 4), -(-w // 4))
            layers += [nn.Linear(hidden[-1], 2 * conv_width * self.side[0] * self.side[1]), nn.ReLU()]
            self.body = nn.Sequential(*layers)
            self.deconv = nn.Sequential(
                nn.ConvTranspose2d(2 * conv_width, conv_width, 4, 2, 1), nn.ReLU(),
                (_Float32ConvTranspose2d if gaussian else nn.ConvTranspose2d)(conv_width, n_params * c, 4, 2, 1))

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        pre = self.fc_z(z)
        if (y is None) != (self.fc_y is None):
            raise ValueError("pass y exactly when the decoder is class-conditional (cond_dim > 0)")
        if y is not None:
            pre = pre + self.fc_y(y.to(pre.dtype))  # y may be (K, K) broadcasting against (B, K, H)
        h = self.body(pre)
        lead = h.shape[:-1]
        if self.deconv is not None:
            sh, sw = self.side
            h = self.deconv(h.reshape(-1, h.shape[-1] // (sh * sw), sh, sw))
            h = h[..., :self.output_shape[1], :self.output_shape[2]]  # (B', P*C, H, W)
        return h.reshape(*lead, self.n_params, *self.output_shape)


def n_params(likelihood: str) -> int:
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {likelihood!r}; choose one of {', '.join(LIKELIHOODS)}")
    return 1 if likelihood == "bernoulli" else 2


def resolve_likelihood(likelihood: str, shape: tuple[int, ...]) -> str:
    """'auto' is Bernoulli for single-channel images in [0, 1] and Gaussian for colour images and vectors."""
    if likelihood == "auto":
        return "bernoulli" if len(shape) == 3 and shape[0] == 1 else "gaussian"
    n_params(likelihood)
    return likelihood


def log_likelihood(likelihood: str, params: torch.Tensor, x: torch.Tensor, event_dims: int) -> torch.Tensor:
    """log p(x | params) summed over the last `event_dims` dims; params (..., P, *event), x broadcastable."""
    if likelihood == "bernoulli":
        return losses.bernoulli_log_likelihood(params.select(-event_dims - 1, 0), x, event_dims)
    mean, raw = params.unbind(dim=-event_dims - 1)
    return losses.gaussian_log_likelihood(x, mean, _floor_logvar(raw), event_dims)


def likelihood_mean(likelihood: str, params: torch.Tensor, event_dims: int) -> torch.Tensor:
    """E[x | params] for pictures: sigmoid(logits) or the Gaussian mean."""
    first = params.select(-event_dims - 1, 0)
    return torch.sigmoid(first.float()) if likelihood == "bernoulli" else first.float()


def _floor_logvar(raw: torch.Tensor) -> torch.Tensor:
    return MIN_LOGVAR + nn.functional.softplus(raw.float() - MIN_LOGVAR)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I): the reparameterization trick (AEVB sec. 2.4)."""
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
