"""``convscope serve``: a local web app to explain images interactively (extra ``serve``).

Upload an image or pick a bundled sample, choose a model, a method (from the registry), a
target class and a layer, and see the overlay, the probabilities and the method's note; browse a
layer's channels. Safe by default: binds 127.0.0.1, limits upload size and pixel count, accepts
only images, never maps a request to a path, and serialises model use (see
:mod:`convscope.frontends.serve.engine`).
"""

from convscope.frontends.serve.engine import Engine
from convscope.frontends.serve.limits import Limits

__all__ = ["Engine", "Limits", "create_app"]


def create_app(*args, **kwargs):  # type: ignore[no-untyped-def]
    """See :func:`convscope.frontends.serve.app.create_app` (imports FastAPI lazily)."""
    from convscope.frontends.serve.app import create_app as _create

    return _create(*args, **kwargs)
