"""``LoadedModel``: a network with what is needed to feed and explain it, and the class-count
and class-name defaults every loader shares (split from :mod:`.zoo`, which re-exports it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from convscope.core.errors import ModelLoadError
from convscope.models.forward import find_default_layer, probe
from convscope.models.outputs import ScoresModel, class_scores
from convscope.models.preprocessing import Preprocessing

__all__ = ["LoadedModel"]


@dataclass
class LoadedModel:
    """A model together with what is needed to feed and explain it.

    Attributes:
        model: the ``nn.Module`` (in eval mode) whose forward returns the class scores: the user's
            model, or a :class:`~convscope.models.outputs.ScoresModel` around it when its output
            is not a tensor (the layer names stay the user's model's).
        preprocessing: how images become inputs.
        class_names: one name per output.
        default_layer: a sensible layer for CAM methods, or ``None``.
        name: the spec it was loaded from.
        card: the model card (bundled models), else ``{}``.
        generic: the model came as a plain module: class names and default layer are found
            from the first input it sees.
        weights: what weights the network holds (a file, pretrained, "random init (seed 0)").
        assumed: what convscope assumed rather than was told (empty when everything was stated).
    """

    model: nn.Module
    preprocessing: Preprocessing
    class_names: list[str]
    default_layer: str | None
    name: str
    card: dict[str, Any] = field(default_factory=dict)
    generic: bool = False
    weights: str = ""
    assumed: list[str] = field(default_factory=list)

    @property
    def any_channels(self) -> bool:
        """A plain module whose preprocessing was assumed: a tensor of any channel count is taken."""
        return self.generic and any(a.startswith("preprocessing") for a in self.assumed)

    def fill_from_input(self, x: torch.Tensor) -> None:
        """For a generic model: derive class names and the default layer from a real input."""
        if not self.generic:
            return
        c = int(x.shape[1])
        first = not self.class_names or self.default_layer is None  # the first input: probe it once
        if not first and not (self.any_channels and c != self.preprocessing.channels):
            return  # nothing to derive (every later call)
        pre = Preprocessing(size=(int(x.shape[-2]), int(x.shape[-1])), channels=c,
                            mean=(0.0,) * c, std=(1.0,) * c, resize=None)  # the tensor as it is
        if self.any_channels and c != self.preprocessing.channels:
            # the assumed RGB preprocessing cannot be what this tensor went through: say what is used
            self.preprocessing = pre
            self.assumed = [a for a in self.assumed if not a.startswith("preprocessing")]
            self.assumed.insert(0, f"preprocessing: none known; the {c}-channel tensor is used as given "
                                "(baselines and display read it as pixels); pass preprocessing= to state it")
        out = None
        if first and not isinstance(self.model, ScoresModel):
            out = _probe(self.model, pre)
            if not isinstance(out, torch.Tensor):  # load could not probe: the assumed input did not fit
                raise ModelLoadError(
                    f"{self.name} returns a {type(out).__name__}, not a tensor, and its input was not known "
                    "when it was loaded; pass preprocessing= (CLI --input-size, --input-channels) so "
                    "convscope reads its class scores by the output rule at load"
                )
        if not self.class_names:  # the probe's output, when there was one, gives the count
            n = int(out.shape[-1]) if out is not None else _num_outputs(self.model, pre)
            self.class_names = _imagenet_names(n)
            self.assumed.append(_names_note(n))
        if self.default_layer is None:
            self.default_layer = find_default_layer(self.model, pre)
            if self.default_layer is not None:
                self.assumed.append(f"layer: {self.default_layer} (the last layer with a spatial map; "
                                    "pass layer= to explain() or default_layer= to load_model())")

    def info(self, default_layer_used: bool = True) -> dict[str, Any]:
        """What results and reports record about the model: plain data.

        Args:
            default_layer_used: the result used the model's default layer; ``False`` (a method
                that uses no layer, or a layer the caller named) leaves the assumed default layer
                out of ``assumed``, since nothing was assumed about it.
        """
        out = {} if not isinstance(self.model, ScoresModel) else {
            "output": self.model.output or "by convscope's rule (a tensor, .logits, dict key 'logits', ...)"}
        return out | {
            "model": self.name,
            "weights": self.weights,
            "preprocessing": self.preprocessing.to_dict(),
            "preprocessing_text": self.preprocessing.describe(),
            "num_classes": len(self.class_names),
            "class_names": list(self.class_names[:20]) + (["..."] if len(self.class_names) > 20 else []),
            "default_layer": self.default_layer,
            "assumed": [a for a in self.assumed if default_layer_used or not a.startswith("layer:")],
        }

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _names_note(n: int) -> str:
    if n == 1000:
        return "class names: ImageNet's 1000 categories (the model has 1000 outputs); pass class_names="
    return f"class names: 'class 0' .. 'class {n - 1}' (none given); pass class_names= or a labels file"


def _imagenet_names(n: int) -> list[str]:
    if n == 1000:
        try:
            from torchvision.models import ResNet18_Weights

            return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
        except Exception:  # pragma: no cover - torchvision always ships the names
            pass
    return [f"class {i}" for i in range(n)]


def _num_outputs(model: nn.Module, pre: Preprocessing) -> int:
    """The number of class scores ``model`` gives (read by the output rule) for a zero input."""
    return int(class_scores(_probe(model, pre)).shape[-1])


def _probe(model: nn.Module, pre: Preprocessing) -> Any:
    """What ``model`` returns for one zero input of the preprocessing's shape (eval mode, no grad)."""
    return probe(model, pre)[0]
