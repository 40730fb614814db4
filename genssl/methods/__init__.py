"""Built-in methods; importing a module registers it. A new method is one file, one line here, one YAML config in
experiments/ and its line in experiments/demo.yaml (README, "Methods")."""

from genssl.config import from_dict
from genssl.registry import get_method_class

# Importing a method's module registers it; a new method adds its module here.
from genssl.methods import adgm, fixmatch, pseudo_label, self_training  # noqa: F401, I001
from genssl.methods import sgan, supervised, vae_m1, vae_m2  # noqa: F401, I001
from genssl.methods import openmatch  # noqa: F401, I001


def create_method(name: str, cfg, spec):
    """Instantiate method `name` with its Config `cfg` (or a dict of overrides) for data described by `spec`."""
    cls = get_method_class(name)
    if cfg is None or isinstance(cfg, dict):
        cfg = from_dict(cls.Config, cfg or {}, "method")
    return cls(cfg, spec)
