"""Names a package exports but imports only on first use (the trainers, their configs): loading or
running a model never imports the Trainer stack."""

from __future__ import annotations

import importlib
from typing import Callable


def lazy_attributes(package: str, homes: dict[str, str]) -> Callable[[str], object]:
    """A module-level `__getattr__` for `package`: `name` comes from the module `homes[name]`
    (relative to `package`) when first asked for."""

    def __getattr__(name: str):
        if name in homes:
            return getattr(importlib.import_module(homes[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
