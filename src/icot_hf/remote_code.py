"""Saved folders carry their code, flat, so `trust_remote_code=True` loads them without icot_hf.

transformers copies a registered model's module, and every module it imports with `from .x
import`, side by side into the saved folder, and loads them from there as one flat package.
icot_hf keeps one subpackage per method (`kd/`, `stepwise/`, `coconut/`) beside the modules
every method shares, so a method's modeling file imports shared code with `from ..x import`,
which transformers cannot follow. `CarriesItsCode` (a mixin for the models) writes the folder's
code itself: the model's module and, recursively, every icot_hf module it imports relatively,
each as `<name>.py` with its relative imports rewritten to the flat `from .<name> import`. The
config's `auto_map` names the flat files, as transformers would (`modeling_icot.ImplicitCoTForCausalLM`),
so folders saved before the methods moved into subpackages and folders saved after look alike.
In a folder loaded through `trust_remote_code` every import is already flat; the same code
then copies those modules as they are.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

RELATIVE_IMPORT = re.compile(r"^(?P<indent>[ \t]*)from[ \t]+(?P<dots>\.+)(?P<name>[\w.]*)[ \t]+import[ \t]", re.MULTILINE)


def _module_file(name: str) -> Path:
    module = sys.modules.get(name)
    origin = getattr(module, "__file__", None) or getattr(importlib.util.find_spec(name), "origin", None)
    if not origin or not origin.endswith(".py"):
        raise ValueError(f"cannot carry the code of {name}: it is not a Python source file ({origin})")
    return Path(origin)


def flat_sources(module_name: str) -> dict[str, str]:
    """`{file name: source}` for `module_name` and every module it imports relatively (also
    inside functions), each import rewritten to name a sibling file. Two modules with the same
    file name cannot share a flat folder: that is refused, naming both."""
    sources: dict[str, str] = {}
    owners: dict[str, str] = {}

    def visit(name: str) -> str:
        path = _module_file(name)
        flat = path.name
        if flat in owners:
            if owners[flat] != name:
                raise ValueError(f"{owners[flat]} and {name} would both be saved as {flat}: rename one of them")
            return flat
        owners[flat] = name
        package = name.rpartition(".")[0]

        def rewrite(match: re.Match) -> str:
            if not match["name"]:
                raise ValueError(f"{path}: `from {match['dots']} import ...` cannot be carried flat; import from the module itself")
            target = importlib.util.resolve_name(match["dots"] + match["name"], package)
            return f"{match['indent']}from .{visit(target)[:-3]} import "

        sources[flat] = RELATIVE_IMPORT.sub(rewrite, path.read_text(encoding="utf-8"))
        return flat

    visit(module_name)
    return sources


class CarriesItsCode:
    """Mixin for a `PreTrainedModel` registered with `register_for_auto_class`: `save_pretrained`
    writes the flat code and the `auto_map` entry itself instead of transformers' copy (which
    would fail on the package's `from ..x import` lines)."""

    def save_pretrained(self, save_directory, *args, **kwargs):
        cls = type(self)
        auto_class = cls._auto_class
        if auto_class is None:
            return super().save_pretrained(save_directory, *args, **kwargs)
        module = cls.__module__
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), auto_class: f"{module.rpartition('.')[2]}.{cls.__name__}"}
        cls._auto_class = None  # transformers' own copy stays off for this save
        try:
            result = super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            cls._auto_class = auto_class
        if kwargs.get("is_main_process", True):
            for name, source in flat_sources(module).items():
                (Path(save_directory) / name).write_text(source, encoding="utf-8")
        return result
