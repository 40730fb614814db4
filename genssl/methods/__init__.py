"""Built-in methods; importing a module registers it. A new method is one file and one line here."""

from . import pseudo_label, self_training, supervised  # noqa: F401
from . import sgan  # noqa: F401
from . import vae_m1, vae_m2  # noqa: F401
