"""The candidates `genssl advise` compares, each an experiment config of the Fashion-MNIST tables adapted to the
user's folder: the templates are read as data from the package (genssl/experiments, the repo's experiments/
folder shipped as package data, as `genssl demo` reads its grid), their `data:` section replaced by the user's
folders and their schedule by the advice's budget.

- supervised: the classifier on the labeled images alone, with strong augmentation (the baseline every other
  candidate is paired against; Oliver et al. 2018: a strong supervised baseline with the same augmentation);
- fixmatch, sgan, vae_m2: FixMatch, the SSL-GAN and M2 at their table configs (MLPs);
- conv-supervised, conv-fixmatch: the matched ConvNet pair (experiments/realistic/matched.yaml), where the images
  are at least CONV_MIN_SIDE pixels on each side (three conv stages with two 2x poolings);
- <candidate>+filtered: the same with the unlabeled pool filtered by a Gaussian M1 trained on the repeat's own
  split (data.filter_run; the ELBO two-sided, as experiments/realistic/filtered.yaml's M1 filter), added when the
  pool check finds many atypical unlabeled images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

from genssl.config import load_yaml, merge

CONV_MIN_SIDE = 16
REFERENCE = "supervised"
FILTER_ENTRY = "pool_m1"
"""The grid entry of the per-repeat M1 runs that filter the pool of the +filtered candidates."""
FILTER_SUFFIX = "+filtered"
FILTER_DATA = {"filter_score": "two_sided", "filter_quantile": 0.1}
"""How a +filtered candidate filters: minus the distance of M1's ELBO from the validation images' median, keeping
the pool images within the central 80% band of the validation images (0.1 below, 0.1 above)."""
SCHEDULE_KEYS = ("steps", "eval_every", "log_every", "ckpt_every")
"""A template's schedule keys, which the advice's budget replaces."""


@dataclass(frozen=True)
class Candidate:
    name: str
    template: str                                  # file name in experiments/
    method: dict = field(default_factory=dict)     # overrides of the template's method section
    train: dict = field(default_factory=dict)      # overrides of its train section (batch sizes)
    conv: bool = False
    filtered: bool = False


CANDIDATES = (
    Candidate(REFERENCE, "fmnist_supervised.yaml", {"augment": "strong"}),
    Candidate("fixmatch", "fmnist_fixmatch.yaml"),
    Candidate("sgan", "fmnist_sgan.yaml"),
    Candidate("vae_m2", "fmnist_vae_m2.yaml"),
    Candidate("conv-supervised", "fmnist_supervised.yaml", {"arch": "conv", "augment": "strong"},
              {"labeled_batch_size": 64}, conv=True),
    Candidate("conv-fixmatch", "fmnist_fixmatch_conv.yaml", conv=True),
)
POOL_M1 = Candidate(FILTER_ENTRY, "fmnist_vae_m1.yaml")
"""The typicality model of the pool check and of the filters: M1 with a Gaussian decoder (experiments/typicality_v1.md:
its ELBO, with the complexity correction, told other images from its data best)."""


def template_path(name: str) -> Path:
    path = Path(str(files("genssl").joinpath("experiments", name)))
    if not path.is_file():
        raise FileNotFoundError(f"the experiment config {name} is missing from the installed package (looked for "
                                f"{path}); reinstall genssl")
    return path


def template(candidate: Candidate) -> dict:
    """The candidate's experiment config, as written."""
    return load_yaml(template_path(candidate.template))


def template_steps(candidate: Candidate) -> int:
    """The template's own schedule length: a run never trains longer, however large its budget."""
    return int((template(candidate).get("train") or {}).get("steps", 3000))


def method_name(candidate: Candidate) -> str:
    return template(candidate)["method"]["name"]


def run_config(candidate: Candidate, data: dict, train: dict) -> dict:
    """The raw run config of `candidate` on `data` (a dataset: folder section) with the advice's `train` keys."""
    raw = template(candidate)
    own_train = {k: v for k, v in (raw.get("train") or {}).items() if k not in SCHEDULE_KEYS}
    return {"method": merge(raw["method"], candidate.method), "data": dict(data),
            "train": merge(merge(own_train, candidate.train), train)}


def filtered(candidate: Candidate) -> Candidate:
    return Candidate(candidate.name + FILTER_SUFFIX, candidate.template, candidate.method, candidate.train,
                     candidate.conv, filtered=True)


def available(image_size: tuple[int, int], names: list[str] | None = None) -> tuple[list[Candidate], list[str]]:
    """(the candidates these images allow, notes on those left out); `names` restricts them (the reference
    always stays)."""
    notes, out = [], []
    valid = [c.name for c in CANDIDATES]
    if names is not None:
        unknown = sorted(set(names) - set(valid))
        if unknown:
            raise ValueError(f"unknown candidate(s) {', '.join(unknown)}; choose from {', '.join(valid)}")
    for c in CANDIDATES:
        if names is not None and c.name not in names and c.name != REFERENCE:
            continue
        if c.conv and min(image_size) < CONV_MIN_SIDE:
            notes.append(f"{c.name}: left out, the images ({image_size[0]}x{image_size[1]}) are smaller than "
                         f"{CONV_MIN_SIDE}x{CONV_MIN_SIDE}, too small for the ConvNet's three stages")
            continue
        out.append(c)
    return out, notes
