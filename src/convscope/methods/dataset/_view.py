"""What every data-set view is of: a layer of a model over a data source."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from convscope.core.results import brief, result_repr
from convscope.data.base import DataSource


@dataclass(frozen=True, repr=False, kw_only=True)
class LayerView:
    """Base of the data-set views' results (:class:`~convscope.methods.dataset.Features`,
    :class:`~convscope.methods.dataset.TopActivations`, :class:`~convscope.methods.dataset.Neighbors`,
    :class:`~convscope.methods.dataset.Embedding`): ``layer`` of the model ``model_name`` over ``source``.

    Gives them one ``repr`` (layer, model, what :meth:`_summary` adds, source) and the
    ``model``/``layer`` head of their ``to_dict`` (:meth:`_about`). A subclass is a frozen
    dataclass with ``repr=False``; these fields are keyword-only and come after its own.

    Attributes:
        layer: the layer's name.
        source: the data source (for pixels and labels).
        model_name: the model's spec.
    """

    layer: str
    source: DataSource
    model_name: str = ""

    def _summary(self) -> list[tuple[str, str | None]]:
        """The view's own ``repr`` fields (``None`` texts are left out)."""
        return []

    def __repr__(self) -> str:
        return result_repr(self, [("layer", repr(self.layer)), ("model", brief(self.model_name)),
                                  *self._summary(), ("source", repr(self.source))])

    def _about(self) -> dict[str, Any]:
        """The head of the view's ``to_dict``: which model and layer it is of."""
        return {"model": self.model_name, "layer": self.layer}
