"""The numerical pieces of the dataset audit (SpRAy): affinity, eigengap, clustering, mass boxes.

Everything here works on one class's attribution maps, already downsized to an ``s x s`` grid and
normalised to sum 1 (rows of ``X``, shape (n, s*s)), so it is plain numpy/scipy/scikit-learn and is
tested on synthetic maps with a known answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Box", "Spectrum", "box_mass", "cluster", "knn_affinity", "mass_box", "spectrum", "where"]


def knn_affinity(x: np.ndarray, n_neighbors: int) -> "object":
    """Symmetric k-nearest-neighbour affinity (scipy sparse): 1 between mutual neighbours, 0.5
    where only one of the two counts the other among its ``n_neighbors`` nearest (Euclidean)."""
    from sklearn.neighbors import kneighbors_graph

    nn = max(1, min(int(n_neighbors), x.shape[0] - 1))
    a = kneighbors_graph(x, nn, mode="connectivity", include_self=False)
    return (0.5 * (a + a.T)).tocsr()


@dataclass(frozen=True)
class Spectrum:
    """The smallest eigenvalues of the affinity's normalised Laplacian and the eigengap choice.

    Attributes:
        eigenvalues: ascending, ``eigenvalues[0]`` is 0 (up to rounding).
        gaps: ``gaps[j - 1] = eigenvalues[j] - eigenvalues[j - 1]``: the gap after ``j`` clusters.
        k: the number of clusters with the largest gap (1 when the first gap is the largest).
    """

    eigenvalues: np.ndarray
    gaps: np.ndarray
    k: int


def spectrum(affinity: object, max_k: int) -> Spectrum:
    """Eigenvalues 0..``max_k`` of the normalised Laplacian of ``affinity``; ``k`` by the eigengap.

    A graph with ``k`` well separated groups has ``k`` eigenvalues near 0 and then a jump, so the
    position of the largest jump among the first ``max_k`` is the number of groups (von Luxburg,
    "A tutorial on spectral clustering", 2007, section 8.3).
    """
    import scipy.linalg
    from scipy.sparse.csgraph import laplacian

    lap = laplacian(affinity, normed=True)
    n = lap.shape[0]
    top = max(1, min(int(max_k), n - 1))
    if n <= 2500:
        vals = scipy.linalg.eigh(lap.toarray(), eigvals_only=True, subset_by_index=[0, top])
    else:  # shift-invert around 0 for the smallest eigenvalues of a large sparse Laplacian
        from scipy.sparse.linalg import eigsh

        vals = eigsh(lap, k=top + 1, sigma=-1e-3, which="LM", return_eigenvectors=False)
    vals = np.clip(np.sort(np.real(vals)), 0.0, 2.0)
    gaps = np.diff(vals)
    k = int(np.argmax(gaps)) + 1 if len(gaps) else 1
    return Spectrum(vals, gaps, k)


def cluster(affinity: object, k: int, seed: int) -> np.ndarray:
    """Spectral clustering of the precomputed ``affinity`` into ``k`` groups; cluster 0 is the largest.

    ``cluster_qr`` assigns labels without k-means restarts, so the same affinity always gives the
    same labels.
    """
    n = affinity.shape[0]  # type: ignore[attr-defined]
    if k <= 1 or n <= 1:
        return np.zeros(n, dtype=np.int64)
    import warnings

    from sklearn.cluster import SpectralClustering

    with warnings.catch_warnings():  # "graph is not fully connected": expected for clear clusters
        warnings.simplefilter("ignore", UserWarning)
        lab = SpectralClustering(
            n_clusters=int(k), affinity="precomputed", assign_labels="cluster_qr", random_state=seed
        ).fit_predict(affinity)
    # renumber by size (largest first; ties by first member) so ids do not depend on the solver
    ids, first, counts = np.unique(lab, return_index=True, return_counts=True)
    order = ids[np.lexsort((first, -counts))]
    remap = np.empty(int(lab.max()) + 1, dtype=np.int64)
    remap[order] = np.arange(len(order))
    return remap[lab]


@dataclass(frozen=True)
class Box:
    """A box on the ``s x s`` grid, rows ``y0:y1`` and columns ``x0:x1`` (exclusive ends)."""

    x0: int
    y0: int
    x1: int
    y1: int

    def area(self, side: int) -> float:
        """The box's share of the grid, in [0, 1]."""
        return (self.x1 - self.x0) * (self.y1 - self.y0) / float(side * side)

    def scaled(self, side: int, width: int, height: int) -> list[int]:
        """``[x0, y0, x1, y1]`` in pixels of a ``width x height`` image (outward rounding)."""
        return [
            int(np.floor(self.x0 * width / side)), int(np.floor(self.y0 * height / side)),
            int(np.ceil(self.x1 * width / side)), int(np.ceil(self.y1 * height / side)),
        ]


def mass_box(m: np.ndarray, share: float = 0.8) -> Box:
    """The smallest box of the non-negative map ``m`` that holds at least ``share`` of its mass.

    Exhaustive over all boxes with 2-D prefix sums: for every pair of rows, the narrowest column
    span from each left edge is found by binary search in the (non-decreasing) column sums. Among
    boxes of the smallest area the one holding the most mass wins. A map without mass gives the
    whole grid.
    """
    m = np.clip(np.asarray(m, dtype=np.float64), 0.0, None)
    h, w = m.shape
    total = float(m.sum())
    whole = Box(0, 0, w, h)
    if total <= 0:
        return whole
    need = share * total * (1 - 1e-9)
    p = np.zeros((h + 1, w + 1))
    p[1:, 1:] = m.cumsum(0).cumsum(1)
    best = (float(h * w) + 1.0, -1.0, whole)
    lefts = np.arange(w)
    for t in range(h):
        for b in range(t + 1, h + 1):
            col = p[b] - p[t]  # mass of rows t:b in columns :j
            if col[-1] < need:
                continue
            r = np.searchsorted(col, col[:-1] + need, side="left")
            ok = r <= w
            if not ok.any():
                continue
            widths = np.where(ok, r - lefts, w + 1)
            area = (b - t) * widths
            amin = int(area.min())
            if amin > best[0]:
                continue
            cand = np.flatnonzero(area == amin)
            masses = col[np.minimum(r[cand], w)] - col[cand]
            j = int(np.argmax(masses))
            if amin < best[0] or masses[j] > best[1]:
                l0 = int(cand[j])
                best = (float(amin), float(masses[j]), Box(l0, t, int(r[l0]), b))
    return best[2]


def box_mass(maps: np.ndarray, box: Box) -> np.ndarray:
    """Share of each map's mass inside ``box``: maps (n, s, s) non-negative -> (n,)."""
    maps = np.asarray(maps, dtype=np.float64)
    inside = maps[:, box.y0:box.y1, box.x0:box.x1].sum((1, 2))
    total = maps.sum((1, 2))
    return np.where(total > 0, inside / np.where(total > 0, total, 1.0), 0.0)


def where(box: Box, side: int) -> str:
    """Where the box's centre lies, in words: "bottom-right", "top", "centre", ..."""
    cx = (box.x0 + box.x1) / (2.0 * side)
    cy = (box.y0 + box.y1) / (2.0 * side)
    v = "top" if cy < 1 / 3 else "bottom" if cy > 2 / 3 else ""
    hz = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else ""
    return "-".join(p for p in (v, hz) if p) or "centre"
