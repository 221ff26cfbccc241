"""2-D maps of a layer's pooled features: PCA, t-SNE (scikit-learn) and UMAP (``umap-learn``, if installed).

Shown two ways: a scatter coloured by class (matplotlib) and a map of image thumbnails placed at
their 2-D positions (thumbnails drawn later cover earlier ones; ``max_thumbnails`` picks an
evenly spread subset so the map stays readable).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from convscope.core.errors import AssumptionWarning, InputError, UnreliableResultWarning
from convscope.core.result import Result
from convscope.core.results import png_bytes
from convscope.core.validate import SEEDS, Range, check_values, option_group, reals, shows_options
from convscope.methods.dataset._grid import font, to_pil
from convscope.methods.dataset._view import LayerView
from convscope.methods.dataset.neighbors import Features, Pooling, pooled

__all__ = ["EMBED_METHODS", "EMBED_RANGES", "Embedding", "embed", "embedding_fallback", "project"]

EMBED_METHODS = ("pca", "tsne", "umap")
#: Allowed values of :func:`project`'s and :func:`embed`'s numeric options, checked before any work.
#: A perplexity is an effective number of neighbours: below 1 it is meaningless (degenerate maps),
#: above (N - 1) / 3 it is lowered to that; 10,000 is far above any useful one (scikit-learn
#: suggests 5 to 50).
EMBED_RANGES: dict[str, Range] = {"seed": SEEDS, "perplexity": reals(1, 10_000)}
PCA_FALLBACK = "placed by PCA instead"  # ends embedding_fallback's reason (read back from audit notes)


def embedding_fallback(features: np.ndarray, method: str) -> str | None:
    """Why ``method`` cannot place these rows (then PCA does), or None when it can.

    t-SNE and UMAP need at least 3 distinct rows: on identical rows scikit-learn's t-SNE divides
    its PCA start by a zero spread and crashes the process (a segfault, no error). Rows closer than
    1e-6 of the features' scale (about 16 float32 steps) count as one.
    """
    if method not in ("tsne", "umap"):
        return None
    x = np.asarray(features, dtype=np.float64)
    scale = float(np.abs(x).max()) if x.size else 0.0
    if not np.isfinite(scale):
        return None  # not this function's question: the method itself refuses nan/inf
    if scale == 0:
        distinct = 1
    else:
        distinct = len(np.unique(np.round(x / (1e-6 * scale)), axis=0))
    if distinct >= 3:
        return None
    same = "all identical" if distinct == 1 else "only 2 distinct ones"
    return f"{method} needs at least 3 distinct feature rows; these {len(x)} are {same}: {PCA_FALLBACK}"


def _check_options(method: str, seed: int, perplexity: float) -> None:
    if method not in EMBED_METHODS:
        raise InputError(f"unknown embedding method {method!r}; use one of {', '.join(EMBED_METHODS)}")
    check_values(seed=(seed, EMBED_RANGES["seed"]), perplexity=(perplexity, EMBED_RANGES["perplexity"]))


def tsne_perplexity(perplexity: float, n: int) -> float:
    """The perplexity t-SNE runs with on ``n`` images: the one asked, at most (N - 1) / 3, at least 1.

    (N - 1) / 3 is below 1 only for N = 3 images; a perplexity below 1 is meaningless, so 1 is used.
    """
    return max(1.0, min(float(perplexity), (n - 1) / 3))


def project(
    features: np.ndarray, method: str = "pca", *, seed: int = 0, perplexity: float = 30.0
) -> np.ndarray:
    """(N, D) features -> (N, 2) coordinates with ``method`` (pca, tsne or umap).

    Where t-SNE or UMAP cannot place the rows (:func:`embedding_fallback`), PCA does, with an
    :class:`UnreliableResultWarning` that says so; identical rows all sit at (0, 0). ``seed`` and
    ``perplexity`` (t-SNE's; above (N - 1) / 3 it is lowered to that) are checked against
    :data:`EMBED_RANGES` (an :class:`InputError`).
    """
    _check_options(method, seed, perplexity)
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise InputError(f"features must be (N, D) rows, got shape {x.shape}")
    n = x.shape[0]
    if n < 3:
        raise InputError(f"an embedding map needs at least 3 images, got {n}")
    if not np.isfinite(x).all():
        raise InputError("the features hold NaN or infinite values; the model's activations overflowed")
    why = embedding_fallback(x, method)
    if why is not None:
        warnings.warn(why, UnreliableResultWarning, stacklevel=2)
        method = "pca"
    if method == "pca":
        from sklearn.decomposition import PCA

        if not np.ptp(x, axis=0).any():  # no spread: one point (PCA would divide by zero)
            return np.zeros((n, 2))
        return PCA(n_components=2, random_state=seed).fit_transform(x)
    if method == "tsne":
        from sklearn.decomposition import PCA
        from sklearn.manifold import TSNE

        if x.shape[1] > 50 and n > 50:  # fewer images than 50: t-SNE on the features as they are
            x = PCA(n_components=50, random_state=seed).fit_transform(x)
        used = tsne_perplexity(perplexity, n)
        if used != perplexity:
            warnings.warn(f"perplexity {perplexity:g} is more neighbours than {n} images allow; t-SNE ran "
                          f"with {used:.4g}, (N - 1) / 3 or 1 (pass a smaller perplexity to choose it "
                          "yourself)",
                          AssumptionWarning, stacklevel=2)
        return TSNE(n_components=2, perplexity=used, init="pca", random_state=seed).fit_transform(x)
    try:  # umap, the method left (checked above)
        import umap  # type: ignore[import-not-found]
    except ImportError:
        raise InputError("UMAP needs the umap-learn package (pip install umap-learn); or use pca or "
                         "tsne") from None
    return np.asarray(umap.UMAP(n_components=2, random_state=seed).fit_transform(x))


@dataclass(frozen=True, repr=False)
class Embedding(LayerView, Result):
    """2-D positions (N, 2) of a data set's images in a layer's feature space."""

    method: str
    coords: np.ndarray
    labels: np.ndarray
    perplexity: float | None = None  # the one t-SNE ran with (None for PCA and UMAP)

    def _summary(self) -> list[tuple[str, str | None]]:
        rows = [("method", repr(self.method)), ("coords", str(tuple(self.coords.shape)))]
        if self.perplexity is not None:
            rows.append(("perplexity", f"{self.perplexity:.4g}"))
        return rows

    def _title(self) -> str:
        return f"{self.model_name} {self.layer}: {self.method.upper()} of {len(self.coords)} images"

    def scatter(self, *, size: float = 6.0) -> Image.Image:
        """A scatter plot coloured by class, with a legend."""
        import matplotlib

        from convscope.core.figure import (  # no pyplot: the caller's backend stays as it is
            InlineFigure,
            figure_png,
        )

        fig = InlineFigure(figsize=(6.4, 5.6), dpi=100)
        ax = fig.subplots()
        names = self.source.class_names
        classes = np.unique(self.labels)
        cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
        for n, c in enumerate(classes):
            sel = self.labels == c
            name = names[c] if 0 <= c < len(names) else ("no label" if c < 0 else str(c))
            ax.scatter(self.coords[sel, 0], self.coords[sel, 1], s=size, color=cmap(n % cmap.N), label=name)
        if len(classes) <= 20:
            ax.legend(markerscale=2.5, fontsize=8, loc="best", frameon=False)
        ax.set_title(self._title(), fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.tight_layout()
        return Image.open(io.BytesIO(figure_png(fig, bbox_inches=None))).convert("RGB")

    def thumbnails(
        self, *, canvas: int = 1000, thumb: int = 28, max_thumbnails: int = 600, seed: int = 0
    ) -> Image.Image:
        """Image thumbnails placed at their 2-D positions on a white canvas."""
        n = len(self.coords)
        idx = np.arange(n)
        if n > max_thumbnails:
            idx = np.sort(np.random.default_rng(seed).choice(n, max_thumbnails, replace=False))
        c = self.coords
        lo, hi = c.min(0), c.max(0)
        span = np.where(hi - lo > 0, hi - lo, 1.0)
        margin = thumb // 2 + 4
        top = 24
        img = Image.new("RGB", (canvas, canvas + top), (255, 255, 255))
        from PIL import ImageDraw

        ImageDraw.Draw(img).text((6, 5), self._title(), fill=(0, 0, 0), font=font(13))
        for i in idx:
            x = margin + (c[i, 0] - lo[0]) / span[0] * (canvas - 2 * margin)
            y = margin + (1.0 - (c[i, 1] - lo[1]) / span[1]) * (canvas - 2 * margin)
            t = to_pil(self.source.pixels(int(i)), thumb)
            img.paste(t, (int(round(x - t.width / 2)), top + int(round(y - t.height / 2))))
        return img

    save_formats = (".png", ".json", ".npy")
    json_indent = None  # one line: the coordinates of every image

    def png(self, *, kind: str = "scatter") -> bytes:
        """``kind="scatter"`` (:meth:`scatter`) or ``"thumbnails"`` as PNG bytes.

        ``save(path, kind=)`` writes ``.png`` (this), ``.json`` or ``.npy`` (coordinates); atomic.
        """
        if kind not in ("scatter", "thumbnails"):
            raise InputError(f"unknown kind {kind!r}; use scatter or thumbnails")
        return png_bytes(self.scatter() if kind == "scatter" else self.thumbnails())

    def npy_array(self) -> np.ndarray:
        return self.coords

    def to_dict(self) -> dict[str, Any]:
        return {**self._about(), "method": self.method, "coords": self.coords.tolist(),
                "labels": self.labels.tolist()}


@shows_options(Pooling)
def embed(
    model: Any,
    data: Any,
    layer: str,
    *,
    method: str = "pca",
    seed: int = 0,
    perplexity: float = 30.0,
    features: Features | None = None,
    **pooling: Any,
) -> Embedding:
    """A 2-D map of the data set's pooled features at ``layer``.

    Args:
        method: ``"pca"``, ``"tsne"`` or ``"umap"`` (needs ``umap-learn``).
        seed: random state of t-SNE / UMAP (and the PCA solver), an integer in [0, 2**32 - 1].
        perplexity: t-SNE's, in [1, 10000] (lowered to (N - 1) / 3 for N images where larger, but
            never below 1).
        features: precomputed :func:`layer_features` of ``data``.
        **pooling: how the features are made (``pool``, ``batch_size``, ...), as for
            :func:`layer_features`.
    """
    _check_options(method, seed, perplexity)  # before the features are made
    st = option_group(Pooling, "embed", pooling)  # checked even when ``features`` are given
    if features is None:
        features = pooled(st, *st.open(model, data, layer))
    x = features.features.numpy()
    placed_by = "pca" if embedding_fallback(x, method) else method  # the result names what placed them
    coords = project(x, method, seed=seed, perplexity=perplexity)  # warns when it falls back
    used = tsne_perplexity(perplexity, len(x)) if placed_by == "tsne" else None
    return Embedding(placed_by, coords, features.labels, used, layer=features.layer, source=features.source,
                     model_name=features.model_name)
