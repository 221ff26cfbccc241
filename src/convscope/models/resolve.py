"""``as_loaded``: the one rule that turns whatever a task function was given into a :class:`LoadedModel`."""

from __future__ import annotations

from typing import Any

from convscope.models.preprocessing import Preprocessing
from convscope.models.zoo import LoadedModel, load_model

__all__ = ["as_loaded"]


def as_loaded(model: Any, preprocessing: Preprocessing | str | dict[str, Any] | None = None) -> LoadedModel:
    """A :class:`LoadedModel` for any model a task function accepts.

    * a :class:`LoadedModel`: the same object; with ``preprocessing``, a copy that uses it (the
      caller's loaded model is never changed);
    * a spec or an ``nn.Module``: :func:`~convscope.models.load_model` (a plain module without
      ``preprocessing`` gets ImageNet's, with an :class:`~convscope.core.errors.AssumptionWarning`);
    * a black-box ``predict(batch) -> scores`` function or ONNX session: wrapped as a
      parameter-free module (:class:`~convscope.engines.perturb.BlackBoxModel`; only gradient-free tasks
      can use it).
    """
    from convscope.models.blackbox import BlackBoxModel, is_black_box

    if is_black_box(model):
        model = BlackBoxModel(model)
    return load_model(model, preprocessing=preprocessing)
