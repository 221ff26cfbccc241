"""The one rule that finds a model's class scores in whatever its forward returns.

Many classifiers do not return a plain tensor: Hugging Face ``transformers`` models return an
``ImageClassifierOutput`` with ``.logits``, others a dict or a tuple (logits plus auxiliary
outputs). convscope reads the class scores (the (B, K) logits every task explains) with one rule:

1. a tensor: itself;
2. an object with a tensor attribute ``logits`` (a dataclass, a ``transformers`` ``ModelOutput``):
   ``.logits``;
3. a dict: its key ``"logits"``, else its only tensor value;
4. a tuple or list: its first element that is a 2-D tensor.

When the rule cannot tell (a dict of several tensors and no ``"logits"``, a tuple with no 2-D
tensor, any other object), name the output: ``load_model(..., output="name")`` (a dict key, an
attribute, or a tuple index such as ``"1"``), the model card key ``output``, or the CLI flag
``--model-output``.

The rule is applied in one place: :func:`~convscope.models.load_model` hands every task a
:class:`ScoresModel` around a model whose output is not a tensor (or whose output was named), so
gradients, CAMs, perturbations, feature visualisation, synthesis, dataset views, evaluation, the
report and the web app all see tensors. The wrapper adds no name of its own: its
``named_modules()`` are the wrapped model's (``vit.encoder.layer.1.layernorm_before`` stays that),
and the wrapped model itself is never changed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from convscope.core.errors import ModelLoadError

__all__ = ["ScoresModel", "class_scores", "scores_model", "unwrap"]

_HOW = "name it with output= (CLI --model-output, model card key 'output')"


def _describe(out: Any) -> str:
    if isinstance(out, Mapping):
        keys = ", ".join(repr(k) for k in list(out)[:8])
        return f"a {type(out).__name__} with keys {keys or '(none)'}"
    if isinstance(out, (tuple, list)):
        kinds = ", ".join(
            f"{tuple(v.shape)} tensor" if isinstance(v, torch.Tensor) else type(v).__name__ for v in out[:6]
        )
        return f"a {type(out).__name__} of {len(out)} ({kinds})"
    return f"a {type(out).__name__}"


def _named(out: Any, output: str) -> Any:
    if isinstance(out, Mapping) and output in out:
        return out[output]
    if isinstance(out, (tuple, list)) and output.lstrip("-").isdigit():
        i = int(output)
        if -len(out) <= i < len(out):
            return out[i]
    elif not isinstance(out, Mapping) and not output.startswith("_") and hasattr(out, output):
        return getattr(out, output)
    raise ModelLoadError(f"the model's output has no {output!r}: it returned {_describe(out)}; name a "
                         "key, an attribute or a tuple index (output=, --model-output, card key 'output')")


def class_scores(out: Any, output: str | None = None) -> torch.Tensor:
    """The class scores in a model's output, by the rule in the module docstring.

    Args:
        out: what the model's forward returned.
        output: the name of the output that holds the scores (a dict key, an attribute, or a
            tuple index such as ``"0"``); ``None`` applies the rule.

    Raises:
        ModelLoadError: the rule cannot tell, or ``output`` names nothing in ``out`` or something
            that is not a tensor; the message says what the model returned and how to name it.
    """
    if output is not None:
        scores = _named(out, str(output))
        if not isinstance(scores, torch.Tensor):
            raise ModelLoadError(f"the model's output {output!r} is a {type(scores).__name__}, not a tensor "
                                 "of class scores; name another with output= (--model-output)")
        return scores
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, Mapping):
        if isinstance(out.get("logits"), torch.Tensor):
            return out["logits"]
        tensors = [v for v in out.values() if isinstance(v, torch.Tensor)]
        if len(tensors) == 1:
            return tensors[0]
    elif isinstance(out, (tuple, list)):
        for v in out:
            if isinstance(v, torch.Tensor) and v.ndim == 2:
                return v
    raise ModelLoadError(f"cannot tell which output holds the class scores: the model returned "
                         f"{_describe(out)}; {_HOW}")


class ScoresModel(nn.Module):
    """A model whose forward returns its class scores (see the module docstring).

    Its modules and parameters carry the wrapped model's names, unprefixed; attributes it does not
    have are read from the wrapped model (``.config``, ``.vit``, ...). The wrapped model is only
    referenced, never changed.

    Attributes:
        wrapped: the user's model.
        output: the named output, or ``None`` for the rule.
    """

    def __init__(self, model: nn.Module, output: str | None = None) -> None:
        super().__init__()
        self.wrapped = model
        self.output = output

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return class_scores(self.wrapped(*args, **kwargs), self.output)

    def named_modules(self, memo: set[nn.Module] | None = None, prefix: str = "",
                      remove_duplicate: bool = True) -> Iterator[tuple[str, nn.Module]]:
        """The wrapped model's modules under their own names (the root is the wrapped model)."""
        return self.wrapped.named_modules(memo, prefix, remove_duplicate)

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        """The wrapped model's state dict (its own keys)."""
        return self.wrapped.state_dict(*args, **kwargs)

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        """Load into the wrapped model (its own keys)."""
        return self.wrapped.load_state_dict(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("wrapped", "_modules") or name.startswith("__"):
                raise
            return getattr(self._modules["wrapped"], name)


def scores_model(model: nn.Module, output: str | None = None) -> ScoresModel:
    """``model`` (or the model inside a :class:`ScoresModel`) wrapped to return its class scores."""
    return ScoresModel(unwrap(model), output)


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside a :class:`ScoresModel`; any other module as it is."""
    return model.wrapped if isinstance(model, ScoresModel) else model
