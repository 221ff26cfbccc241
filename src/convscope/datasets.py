"""The old name of :mod:`convscope.toydata` (the bundled toy data sets), kept so existing code works.

``convscope.datasets`` *is* ``convscope.toydata``: the same module object, so its functions,
constants and anything patched on one are the other's. New code imports ``convscope.toydata``,
which is not confused with :mod:`convscope.dataset` (views of a data set).
"""

import sys

from . import toydata

sys.modules[__name__] = toydata
