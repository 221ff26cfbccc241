"""Results of the synthesis tasks that render themselves.

* :class:`AdversarialResult`: originals, adversarial images, success, confidences and
  perturbation norms; ``figure()`` shows original | magnified perturbation | adversarial.
* :class:`SynthesisResult`: made images (an inversion strip, a texture, a stylised image) with
  their reference images and the loss history.

Both are frozen dataclasses with ``figure()``, ``save(path)`` by extension (``.png``, ``.npy``,
``.json``; atomic), ``_repr_png_`` and ``to_html()`` / ``_repr_html_`` for notebooks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convscope.core.io import atomic_write
from convscope.core.result import Result, jsonable, png_bytes
from convscope.core.results import brief, result_repr
from convscope.methods.synthesis._common import to_numpy_image

__all__ = ["AdversarialResult", "SynthesisResult", "magnify"]


def magnify(delta: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """A perturbation made visible: ``0.5 + delta / (2 scale)``, mid-grey for zero change.

    ``scale`` defaults to the largest absolute change, so the strongest change is black or white.

    Shape:
        delta: (C, H, W); returns (C, H, W) in [0, 1].
    """
    s = float(delta.abs().max()) if scale is None else float(scale)
    return (0.5 + delta / (2 * max(s, 1e-12))).clamp(0, 1)


def _show(ax: Any, t: torch.Tensor, title: str) -> None:
    a = to_numpy_image(t)
    if a.ndim == 2:
        ax.imshow(a, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(a, interpolation="nearest" if a.shape[0] < 96 else "antialiased")
    ax.set_title(title, fontsize=8)
    ax.axis("off")


class _FigureResult(Result):
    """A result whose picture is its matplotlib ``figure()``, saved with its pixels and metadata."""

    save_formats = (".png", ".npy", ".json")
    model_name: str
    model_info: dict[str, Any]
    options: dict[str, Any]

    def figure(self) -> Any:
        raise NotImplementedError

    def _record(self, what: dict[str, Any], numbers: dict[str, Any]) -> dict[str, Any]:
        """The ``.json`` layout both results share: ``what`` it is, the model and the options it
        ran with (JSON-ready), then its own ``numbers``."""
        return {**what, "model": self.model_name, "model_info": self.model_info,
                "options": jsonable(self.options), **numbers}

    def png(self) -> bytes:
        """:meth:`figure` as PNG bytes."""
        from convscope.core.figure import figure_png  # matplotlib only when a figure is drawn

        return figure_png(self.figure())


@dataclass(frozen=True)
class AdversarialResult(_FigureResult):
    """An attack (or fooling image) on a batch of B images.

    Attributes:
        method: ``"fgsm"``, ``"pgd"`` or ``"fooling"``.
        norm: ``"linf"`` or ``"l2"``.
        eps: the budget in pixel units (pixels in [0, 1]); ``inf`` for unbounded fooling images.
        original: (B, C, H, W) pixels the attack started from.
        adversarial: (B, C, H, W) pixels in [0, 1].
        labels: (B,) the classes attacked away from (the prediction on the originals by default).
        targets: (B,) target classes of a targeted attack, else ``None``.
        predictions: (B,) the model's class on the adversarial images.
        success: (B,) bool: reached the target (targeted) or left the label (untargeted).
        probs_original, probs_adversarial: (B, K) softmax on the originals / adversarial images.
        class_names: output names.
        options: the options the attack ran with.
        model_name: the model spec.
        model_info: weights, preprocessing, class names and assumptions (``LoadedModel.info()``).
    """

    method: str
    norm: str
    eps: float
    original: torch.Tensor
    adversarial: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor | None
    predictions: torch.Tensor
    success: torch.Tensor
    probs_original: torch.Tensor
    probs_adversarial: torch.Tensor
    class_names: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    model_name: str = ""
    model_info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.original.shape[0])

    @property
    def perturbation(self) -> torch.Tensor:
        """(B, C, H, W) ``adversarial - original`` in pixel units."""
        return self.adversarial - self.original

    @property
    def linf(self) -> torch.Tensor:
        """(B,) largest absolute pixel change (computed in float64)."""
        return (self.adversarial.double() - self.original.double()).flatten(1).abs().amax(1)

    @property
    def l2(self) -> torch.Tensor:
        """(B,) Euclidean norm of the change over all pixels and channels (float64)."""
        return (self.adversarial.double() - self.original.double()).flatten(1).norm(dim=1)

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean())

    def _name(self, k: int) -> str:
        return self.class_names[k] if k < len(self.class_names) else f"class {k}"

    def confidence(self, index: int = 0) -> dict[str, float]:
        """Probabilities of the label (before/after) and of the target (after), for sample ``index``."""
        lab = int(self.labels[index])
        d = {
            "label_before": float(self.probs_original[index, lab]),
            "label_after": float(self.probs_adversarial[index, lab]),
            "predicted_after": float(self.probs_adversarial[index, int(self.predictions[index])]),
        }
        if self.targets is not None:
            d["target_after"] = float(self.probs_adversarial[index, int(self.targets[index])])
        return d

    def summary(self) -> str:
        kind = "targeted" if self.targets is not None else "untargeted"
        return (f"{self.method} ({kind}, {self.norm}, eps={self.eps:g}): success "
                f"{int(self.success.sum())}/{len(self)}, max linf {float(self.linf.max()):.4g}, "
                f"max l2 {float(self.l2.max()):.4g}")

    def __repr__(self) -> str:
        """The summary line, model, shape and options (no pixel dump)."""
        return result_repr(self, [
            ("summary", repr(self.summary())),
            ("model", brief(self.model_name)),
            ("images", str(tuple(self.adversarial.shape))),
            ("options", brief(self.options) if self.options else None),
        ])

    # --- pictures -----------------------------------------------------------------------------
    def figure(self, indices: int | list[int] | None = None, *, max_rows: int = 8) -> Any:
        """Rows of original | magnified perturbation | adversarial, with classes and confidences."""
        from convscope.core.figure import InlineFigure  # no pyplot: the caller's backend stays as it is

        if indices is None:
            idx = list(range(min(len(self), max_rows)))
        elif isinstance(indices, int):
            idx = [indices]
        else:
            idx = list(indices)
        fig = InlineFigure(figsize=(7.5, 2.7 * len(idx)))
        axes = fig.subplots(len(idx), 3, squeeze=False)
        for r, i in enumerate(idx):
            lab = int(self.labels[i])
            pred = int(self.predictions[i])
            po = float(self.probs_original[i, lab])
            pa = float(self.probs_adversarial[i, pred])
            delta = self.perturbation[i]
            dmax = float(delta.abs().max())
            _show(axes[r, 0], self.original[i], f"original: {self._name(lab)} ({po:.2f})")
            _show(axes[r, 1], magnify(delta),
                  f"perturbation x{0.5 / max(dmax, 1e-12):.3g}\nlinf {float(self.linf[i]):.3g}, "
                  f"l2 {float(self.l2[i]):.3g}")
            tgt = "" if self.targets is None else f" -> {self._name(int(self.targets[i]))}"
            ok = "ok" if bool(self.success[i]) else "failed"
            _show(axes[r, 2], self.adversarial[i],
                  f"adversarial: {self._name(pred)} ({pa:.2f})\n{self.method}{tgt} [{ok}]")
        fig.tight_layout()
        return fig

    def to_dict(self) -> dict[str, Any]:
        return self._record({"method": self.method}, {
            "norm": self.norm,
            "eps": self.eps if np.isfinite(self.eps) else None,
            "targeted": self.targets is not None,
            "labels": self.labels.tolist(),
            "targets": None if self.targets is None else self.targets.tolist(),
            "predictions": self.predictions.tolist(),
            "success": self.success.tolist(),
            "success_rate": self.success_rate,
            "linf": self.linf.tolist(),
            "l2": self.l2.tolist(),
            "confidences": [self.confidence(i) for i in range(len(self))],
        })

    def npy_array(self) -> torch.Tensor:
        """The adversarial pixels (B, C, H, W): what ``save("x.npy")`` writes (``.png``: the figure;
        ``.json``: metadata)."""
        return self.adversarial

    def html_caption(self) -> str:
        return self.summary()


@dataclass(frozen=True)
class SynthesisResult(_FigureResult):
    """Images made by optimisation or sampling, with their references.

    Attributes:
        kind: ``"inversion"``, ``"texture"``, ``"efros-leung"``, ``"style"``.
        images: (N, C, H, W) made pixels in [0, 1] (e.g. one reconstruction per layer).
        titles: one caption per made image.
        references: (caption, (C, H, W) pixels) of the inputs (target, texture, content, style).
        history: loss name -> value per step (``"loss"`` is the total that was minimised).
        layers: the layers the losses were computed at.
        options: the options it ran with.
        diagnostics: numbers qualifying the result (e.g. final losses, SSIM).
        extras: other arrays (e.g. Efros-Leung source coordinates).
        model_name: the model spec (empty for model-free methods).
        model_info: weights, preprocessing, class names and assumptions (``LoadedModel.info()``).
    """

    kind: str
    images: torch.Tensor
    titles: tuple[str, ...]
    references: tuple[tuple[str, torch.Tensor], ...] = ()
    history: dict[str, list[float]] = field(default_factory=dict)
    layers: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    model_name: str = ""
    model_info: dict[str, Any] = field(default_factory=dict)

    @property
    def image(self) -> torch.Tensor:
        """The first (often the only) made image, (C, H, W)."""
        return self.images[0]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        """Kind, model, shape, titles, layers, final loss and options (no pixel dump)."""
        loss = self.history.get("loss")
        return result_repr(self, [
            ("kind", repr(self.kind)),
            ("model", brief(self.model_name) if self.model_name else None),
            ("images", str(tuple(self.images.shape))),
            ("titles", brief(self.titles)),
            ("layers", brief(self.layers) if self.layers else None),
            ("final_loss", f"{loss[-1]:.4g}" if loss else None),
            ("options", brief(self.options) if self.options else None),
        ])

    def figure(self, *, show_loss: bool = True) -> Any:
        """References, then the made images in a row, and the loss curve if there is one."""
        from convscope.core.figure import InlineFigure  # no pyplot: the caller's backend stays as it is

        panels = [(t, im) for t, im in self.references] + list(zip(self.titles, self.images, strict=True))
        curves: dict[str, list[float]] = {}
        if show_loss:  # the total, or one total per layer (inversion strips: "layer:loss")
            if "loss" in self.history:
                curves = {"loss": self.history["loss"]}
            else:
                curves = {k.rsplit(":", 1)[0]: v for k, v in self.history.items() if k.endswith(":loss")}
        n = len(panels) + (1 if curves else 0)
        fig = InlineFigure(figsize=(2.6 * n, 2.9))
        axes = fig.subplots(1, n, squeeze=False)
        for ax, (t, im) in zip(axes[0], panels, strict=False):  # the last axis may hold the loss
            _show(ax, im, t)
        if curves:
            ax = axes[0, -1]
            for name, loss in curves.items():
                ax.plot(np.arange(1, len(loss) + 1), loss, lw=1, label=name)
            if len(curves) > 1:
                ax.legend(fontsize=6)
            if min(min(v) for v in curves.values()) > 0:
                ax.set_yscale("log")
            ax.set_xlabel("step", fontsize=8)
            ax.set_title("loss", fontsize=8)
            ax.tick_params(labelsize=7)
        fig.tight_layout()
        return fig

    def to_dict(self) -> dict[str, Any]:
        return self._record({"kind": self.kind}, {
            "titles": list(self.titles),
            "layers": list(self.layers),
            "shape": list(self.images.shape),
            "diagnostics": {k: jsonable(v) for k, v in self.diagnostics.items()},
            "history": {k: [float(v) for v in vals] for k, vals in self.history.items()},
        })

    def npy_array(self) -> torch.Tensor:
        """The made pixels (N, C, H, W): what ``save("x.npy")`` writes (``.png``: the figure;
        ``.json``: metadata and history)."""
        return self.images

    def html_caption(self) -> str:
        return f"{self.kind}" + (f" @ {', '.join(self.layers)}" if self.layers else "")

    def save_image(self, path: str | os.PathLike, index: int = 0) -> Path:
        """Write made image ``index`` alone as a PNG at its own resolution (atomically)."""
        from PIL import Image

        a = to_numpy_image(self.images[index])
        data = png_bytes(Image.fromarray((a * 255 + 0.5).astype(np.uint8)))
        return atomic_write(Path(path), lambda fh: fh.write(data))
