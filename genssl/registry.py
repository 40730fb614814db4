"""Name -> class registries: one generic `Registry`, used for methods, exportable encoder architectures and
atypical-input detectors.

A leaf module: it imports nothing of genssl, so any layer may look a name up. Entries arrive when the module
that defines them is imported; `import genssl` imports every built-in one (methods, VAE and foreign encoder
archs), so the registries are full before user code runs::

    @METHODS.register("supervised")
    class Supervised(Method): ...

    METHODS.get("supervised")        # the class, or a ValueError that lists the registered names
"""

from __future__ import annotations

from typing import Callable


class Registry:
    """name -> class. `register(name)` is a class decorator that records the class, sets `cls.<name_attr> = name`
    and runs `check(name, cls)` (which raises TypeError for a class that cannot serve)."""

    def __init__(self, kind: str, name_attr: str, check: Callable[[str, type], None] | None = None):
        self.kind, self.name_attr, self.check = kind, name_attr, check
        self._entries: dict[str, type] = {}

    def register(self, name: str):
        def deco(cls):
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered (by {self._entries[name].__module__})")
            if self.check is not None:
                self.check(name, cls)
            setattr(cls, self.name_attr, name)
            self._entries[name] = cls
            return cls

        return deco

    def get(self, name: str) -> type:
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; registered {self.kind}s: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries


def _check_method(name: str, cls: type) -> None:
    if not hasattr(cls, "Config"):
        raise TypeError(f"method {name!r} must define a nested Config dataclass")


def _check_encoder_arch(name: str, cls: type) -> None:
    if not isinstance(cls, type) or not callable(getattr(cls, "spec_args", None)) or not callable(cls):
        raise TypeError(f"encoder arch {name!r} must be an nn.Module class with a spec_args() method")


METHODS = Registry("method", "name", _check_method)
ENCODER_ARCHS = Registry("encoder arch", "encoder_arch", _check_encoder_arch)
DETECTORS = Registry("detector", "name")  # filled by genssl.methods.detectors; here so config can check a name
DETECTOR_ALIASES = {"confidence": "max_softmax"}  # older names of registered detectors (--flag-atypical, filter_score)

register_method = METHODS.register
register_encoder_arch = ENCODER_ARCHS.register
get_method_class = METHODS.get
list_methods = METHODS.names


def detector_kinds() -> list[str]:
    """Every detector name a user may give before a run is known: the registered ones and their aliases."""
    return DETECTORS.names() + sorted(DETECTOR_ALIASES)
