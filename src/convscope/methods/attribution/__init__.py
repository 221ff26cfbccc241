"""Attribution methods. Every public module of this package registers its methods on import.

The modules are discovered, not listed, so adding a method family is adding a module.
"""

import importlib
import pkgutil

from convscope.methods.attribution._base import MethodContext, MethodOutput

__all__ = ["MethodContext", "MethodOutput"]

for _mod in pkgutil.iter_modules(__path__):
    if not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")
