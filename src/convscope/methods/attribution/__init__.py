"""Attribution methods. Every public module of this package registers its methods on import.

The modules are discovered, not listed, so adding a method family is adding a module.
"""

import importlib
import pkgutil

from convscope.methods.attribution._base import MethodContext, MethodOutput

__all__ = ["MethodContext", "MethodOutput"]

#: modules whose methods apply to some architectures only, registered after the rest so that the
#: registry, and every list built from it (``convscope methods``, the report, the web app's first
#: method), starts with methods that explain any CNN
_SPECIALISED = ("attention",)

for _name in sorted((m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")),
                    key=lambda n: (n in _SPECIALISED, n)):
    importlib.import_module(f"{__name__}.{_name}")
