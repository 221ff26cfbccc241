"""The methods layer: everything that explains a model, above the engines and below the front ends.

Its own layers, lowest first (``pyproject.toml``, checked by ``lint-imports``): :mod:`.registry` (the
one table of methods), :mod:`.attribution` (the attribution methods, which register themselves
there), :mod:`.explain` (the facade ``explain``), :mod:`.grids`, :mod:`.featvis` and :mod:`.jobs`
(batch jobs over data sets), :mod:`.synthesis` and :mod:`.evaluation`, :mod:`.dataset` (data-set
views and the audit), and :mod:`.tcav` (concept tests).

Importing this package fills the registry: the attribution modules are imported here, so
``list_methods()`` sees every method whichever module was imported first.
"""

from convscope.methods import (
    attribution,  # noqa: F401, I001  (registers the methods; after the registry)
    registry,
)

__all__ = ["attribution", "registry"]
