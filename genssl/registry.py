"""Name -> Method class registry. A new method is one file that uses @register_method plus one import line
in genssl/methods/__init__.py; the tests parametrized over list_methods() then cover it."""

from __future__ import annotations

_METHODS: dict[str, type] = {}


def register_method(name: str):
    def deco(cls):
        if name in _METHODS:
            raise ValueError(f"method {name!r} is already registered (by {_METHODS[name].__module__})")
        if not hasattr(cls, "Config"):
            raise TypeError(f"method {name!r} must define a nested Config dataclass")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return deco


def _ensure_loaded() -> None:
    from . import methods  # noqa: F401  (importing registers the built-in methods)


def list_methods() -> list[str]:
    _ensure_loaded()
    return sorted(_METHODS)


def get_method_class(name: str) -> type:
    _ensure_loaded()
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; registered methods: {', '.join(sorted(_METHODS))}") from None


def create_method(name: str, cfg, spec):
    """Instantiate method `name` with its Config `cfg` (or a dict of overrides) for data described by `spec`."""
    from .config import from_dict

    cls = get_method_class(name)
    if cfg is None or isinstance(cfg, dict):
        cfg = from_dict(cls.Config, cfg or {}, "method")
    return cls(cfg, spec)
