"""Generated samples feed a downstream classifier: a separate classifier trained on the labeled few plus an
endless stream of generated images, each labeled by the trained model and kept only if it is confident.

    L = CE(f(x_l), y_l) + w * mean_b[ 1{conf(x_b) >= tau} * CE(f(x_b), yhat(x_b)) ],   x_b ~ model.sample

Two labelers (`label_source`):
  predict      x_b = sample(B), yhat = argmax predict(x_b), conf = max softmax(predict(x_b)); for an
               unconditional generator whose classifier labels its samples (the SGAN's discriminator).
  conditional  y_b ~ Uniform(K), x_b = sample(B, y_b), yhat = y_b, conf = softmax(predict(x_b))[y_b]: the
               class-conditional samples of M2 (Kingma et al. 2014), filtered by its own classifier's agreement
               (tau = 0 keeps every sample).
Any Method with `sample(n, y=None)` and `predict(x)` works. Fresh samples every step (no pool to store), drawn
with the model in eval mode. The classifier is chosen on the validation split when one is given. With a
`monitor` (genssl.training.monitor.Monitor, or anything with `scalars(values, step)`), each evaluation logs the
mean training losses since the last one (train/loss, train/sup_loss, train/gen_loss, train/kept_fraction) and
val/acc, the same tags as a Trainer's run.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from genssl.nn.classifiers import ARCHS, make_classifier
from genssl.nn.probes import accuracy  # also what compare.samples scores the classifier with

LABEL_SOURCES = ("predict", "conditional")


@dataclass
class SampleClassifierConfig:
    arch: str = "mlp"
    """mlp | conv (genssl.nn.classifiers.make_classifier)."""
    hidden: tuple[int, ...] = (500, 500)
    dropout: float = 0.3
    lr: float = 1e-3
    weight_decay: float = 5e-4
    steps: int = 3000
    batch_size: int = 100
    """Generated images per step."""
    labeled_batch_size: int = 100
    threshold: float = 0.9
    """tau: keep a generated image only if its labeler confidence is at least this."""
    generated_weight: float = 1.0
    """w, the weight of the generated images' loss."""
    label_source: str = "predict"
    """predict | conditional (see the module docstring)."""
    eval_every: int = 250
    seed: int = 0

    def __post_init__(self):
        if self.label_source not in LABEL_SOURCES:
            raise ValueError(f"label_source={self.label_source!r} is not one of {', '.join(LABEL_SOURCES)}")
        if self.arch not in ARCHS:
            raise ValueError(f"arch={self.arch!r} is not one of {', '.join(ARCHS)}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")


@torch.no_grad()
def labeled_samples(model, n: int, num_classes: int, label_source: str = "predict", generator=None):
    """(images (n, C, H, W), labels (n,), confidence (n,)) from `model` in eval mode."""
    if label_source == "predict":
        x = model.sample(n).float()
        conf, y = F.softmax(model.predict(x).float(), 1).max(1)
    elif label_source == "conditional":
        y = torch.randint(num_classes, (n,), generator=generator, device=generator.device if generator else None)
        x = model.sample(n, y).float()
        conf = F.softmax(model.predict(x).float(), 1).gather(1, y[:, None])[:, 0]
    else:
        raise ValueError(f"label_source={label_source!r} is not one of {', '.join(LABEL_SOURCES)}")
    return x, y, conf


def train_sample_classifier(model, x_l: torch.Tensor, y_l: torch.Tensor, num_classes: int,
                            cfg: SampleClassifierConfig | None = None, x_val: torch.Tensor | None = None,
                            y_val: torch.Tensor | None = None, monitor=None):
    """Train a fresh classifier on (x_l, y_l) plus confident generated samples of `model`.
    Images are float in [0, 1], (N, C, H, W). Returns (classifier in eval mode, stats dict). `monitor`: see the
    module docstring (the losses are summed on the device and read once per evaluation)."""
    cfg = cfg or SampleClassifierConfig()
    device = x_l.device
    torch.manual_seed(cfg.seed)
    net = make_classifier(cfg.arch, tuple(x_l.shape[1:]), num_classes, cfg.hidden, cfg.dropout).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    was_training = model.training
    model.eval()
    kept = torch.zeros((), device=device)
    best_val, best_state, best_step = -1.0, None, cfg.steps
    since = torch.zeros(4, device=device)  # sums since the last log: loss, sup_loss, gen_loss, kept
    last_log = 0
    net.train()
    for step in range(1, cfg.steps + 1):
        li = torch.randint(len(x_l), (cfg.labeled_batch_size,), generator=gen, device=device)
        x_g, y_g, conf = labeled_samples(model, cfg.batch_size, num_classes, cfg.label_source, gen)
        mask = (conf >= cfg.threshold).float()  # (B,)
        logits = net(torch.cat([x_l[li], x_g]))  # one pass over labeled and generated images
        sup = F.cross_entropy(logits[:cfg.labeled_batch_size], y_l[li])
        gen_loss = (F.cross_entropy(logits[cfg.labeled_batch_size:], y_g, reduction="none") * mask).mean()
        opt.zero_grad(set_to_none=True)
        loss = sup + cfg.generated_weight * gen_loss
        loss.backward()
        opt.step()
        kept += mask.mean()
        if monitor is not None:
            since += torch.stack([loss.detach(), sup.detach(), gen_loss.detach(), mask.mean()]).float()
        if step % cfg.eval_every != 0 and step != cfg.steps:
            continue
        if monitor is not None:
            means = (since / (step - last_log)).tolist()
            monitor.scalars(dict(zip(("train/loss", "train/sup_loss", "train/gen_loss", "train/kept_fraction"),
                                     means)), step)
            since.zero_()
            last_log = step
        if x_val is not None:
            acc = accuracy(net, x_val, y_val)
            if monitor is not None:
                monitor.scalars({"val/acc": acc}, step)
            if acc > best_val:
                best_val, best_state, best_step = acc, copy.deepcopy(net.state_dict()), step
    model.train(was_training)
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    return net, {"kept_fraction": float(kept) / cfg.steps, "best_val_acc": best_val, "best_step": best_step}

