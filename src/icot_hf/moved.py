"""Module paths from before the methods had folders keep importing: `icot_hf.modeling_icot` is
`icot_hf.kd.modeling_icot`, `icot_hf.trainers.stepwise_trainer` is `icot_hf.stepwise.stepwise_trainer`,
and so on (the same module object, so a patch through either name is seen by both).
`icot_hf.teacher`, which held both the teacher-state reading and the generation helpers, is a
module with the names of both of their new homes. Installed on `import icot_hf`."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types

MOVED = {
    "icot_hf.configuration_icot": ("icot_hf.kd.configuration_icot", "icot_hf.stepwise.configuration_stepwise"),
    "icot_hf.modeling_icot": ("icot_hf.kd.modeling_icot",),
    "icot_hf.fused_inference": ("icot_hf.kd.fused_inference",),
    "icot_hf.state_cache": ("icot_hf.kd.state_cache",),
    "icot_hf.modeling_stepwise": ("icot_hf.stepwise.modeling_stepwise",),
    "icot_hf.teacher": ("icot_hf.kd.teacher_states", "icot_hf.generation"),
    **{f"icot_hf.trainers.{stage}_{kind}": (f"icot_hf.kd.{stage}_{kind}",)
       for stage in ("mind_reading", "emulator", "coupled") for kind in ("config", "trainer")},
    **{f"icot_hf.trainers.stepwise_{kind}": (f"icot_hf.stepwise.stepwise_{kind}",) for kind in ("config", "trainer")},
}


class MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec):
        homes = [importlib.import_module(home) for home in MOVED[spec.name]]
        if len(homes) == 1:
            return homes[0]
        merged = types.ModuleType(spec.name, f"Names from {', '.join(home.__name__ for home in homes)} (moved there).")
        for home in homes:
            merged.__dict__.update({k: v for k, v in vars(home).items() if not k.startswith("__")})
        return merged

    def exec_module(self, module):
        pass


def install() -> None:
    if not any(isinstance(finder, MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(MovedModules())
