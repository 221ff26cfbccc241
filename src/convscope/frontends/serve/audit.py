"""The web app's audit view: a saved dataset audit (``convscope audit -o OUT``) to click through.

:class:`AuditView` reads ``OUT/audit.json`` at start-up (``convscope serve --audit OUT``) and
serves, for the page at ``/audit``:

* the audit itself (``/api/audit``), plus what the app can show of it (``view``);
* one audited image with its own map blended on top and its cluster's box
  (``/api/audit/item/{index}.png``), the image read from the audit's image folder (``root``) or
  from the bundled digits, the map from the audit's Zarr store;
* a cluster's mean map with its box (``/api/audit/cluster/{class}/{cluster}.png``), computed by
  streaming the members' rows of the store one chunk at a time, kept in a bounded cache.

**Which store row holds an image's map.** ``audit()`` computes maps for ``rows``, the data-set
indices of every image of the audited classes that the model has, in ascending order; store row
``r`` is the map of data-set index ``rows[r]``. ``audit.json`` lists the members (data-set indices)
of every clustered class, so ``rows`` is the sorted list of all members whenever their number is
the store's size. A class with 1-3 images is computed but not clustered, so its images are not
listed: then the rows come from the store's ``inputs.json`` (image folders: the file of each row),
or from the data set's labels by the same rule as ``audit()`` (the digits). Either way every
member's row is checked against the store's ``labels`` (the model class of each row); a store that
does not match shows no maps, and the page says why.

Requests never name a path: an image is picked by its data-set index, looked up in a table built
from ``audit.json``; its file is ``root`` joined with the path ``audit.json`` gives, and a path that
resolves outside ``root`` (``..``, an absolute path, a symbolic link leading out) is refused.
Rendering runs as jobs of the view's own bounded :class:`~convscope.frontends.serve.jobs.JobQueue` (one
worker thread, 429 when full, 503 past the time limit), apart from the models' queue.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from convscope.core.errors import InputError
from convscope.frontends.serve.audit_files import _box_rc, _load_json, store_rows
from convscope.frontends.serve.jobs import _OUT_OF_TIME, JobQueue, TimedOut
from convscope.frontends.serve.limits import Limits

__all__ = ["AuditView", "NotInAudit", "store_rows"]

#: Smallest side of a served picture (small images are enlarged, nearest neighbour).
MIN_SIDE = 256
#: Colour of the cluster's box (as in the HTML report).
BOX_COLOR = (0.1, 0.9, 1.0)
#: Bounds of the cache of rendered pictures.
CACHE_ITEMS = 256
CACHE_BYTES = 32 * 1024 * 1024


class NotInAudit(InputError):
    """The request names an image or cluster the audit does not have or will not serve (HTTP 404)."""


class AuditView:
    """A saved audit, ready to be served: tables from ``audit.json``, the image source, the maps.

    Args:
        path: the folder ``convscope audit -o OUT`` wrote, or its ``audit.json``.
        limits: the app's limits (queue length, time limit, largest image read).

    Attributes:
        images_note: why images cannot be shown ("" when they can).
        maps_note: why maps cannot be shown ("" when they can).

    Raises:
        InputError: ``audit.json`` is missing, unreadable or not an audit (one line, for the CLI).
    """

    def __init__(self, path: str | os.PathLike, limits: Limits | None = None) -> None:
        from convscope.core.io import json_bytes

        self.path, self.audit = _load_json(path)
        self.limits = limits or Limits()
        a = self.audit
        h, w = (int(v) for v in a["image_size"])
        self.image_size = (h, w)
        self.items: dict[int, dict[str, Any]] = {}
        self.clusters: dict[tuple[int, int], dict[str, Any]] = {}
        for c in a["classes"]:
            for cl in c["clusters"]:
                self.clusters[int(c["index"]), int(cl["id"])] = cl
                paths = cl.get("paths")
                for j, i in enumerate(cl["members"]):
                    self.items[int(i)] = {"class": int(c["index"]), "cluster": int(cl["id"]),
                                          "path": None if paths is None else str(paths[j]),
                                          "box": cl["box"]}
        self.pre = self._preprocessing()
        self.root: Path | None = None
        self._source: Any = None  # the digits, when the audit ran on them
        self.images_note = self._open_images()
        self._arr: Any = None
        self.row_of: dict[int, int] = {}
        self.store: Any = None
        self.maps_note = self._open_maps()
        self.jobs = JobQueue(self.limits.max_queue)
        self._cache: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
        self._cache_bytes = 0
        self._lock = threading.Lock()
        self.json = json_bytes({**a, "view": self.view()})

    def close(self) -> None:
        """Stop the view's job queue."""
        self.jobs.close()

    def view(self) -> dict[str, Any]:
        """What the app can show of the audit: images and maps, and why not."""
        return {"images": not self.images_note, "images_note": self.images_note,
                "maps": not self.maps_note, "maps_note": self.maps_note,
                "store": None if self.store is None else str(self.store.path), "audit": str(self.path)}

    # --- opening ------------------------------------------------------------------------------
    def _preprocessing(self) -> Any:
        from convscope.models.preprocessing import Preprocessing

        p = (self.audit.get("model") or {}).get("preprocessing") or {}
        try:
            pre = Preprocessing(size=tuple(int(v) for v in p["size"]), mean=tuple(p["mean"]),
                                std=tuple(p["std"]), channels=int(p["channels"]), resize=p.get("resize"))
            if pre.size == self.image_size:
                return pre
        except (KeyError, TypeError, ValueError):
            pass
        # not stated: the images resized to the maps' size, as RGB
        return Preprocessing(size=self.image_size, mean=(0.0,) * 3, std=(1.0,) * 3, channels=3, resize=None)

    def _open_images(self) -> str:
        a = self.audit
        data = a.get("data") or {}
        root = a.get("root")
        if root:
            r = self.path.parent / root  # audit.json names it relative to its own folder
            if not r.is_dir():
                return f"the image folder {root} is not there (moved or deleted?): maps only"
            self.root = r.resolve()
            return ""
        if data.get("kind") == "digits":
            from convscope.data.sources import DigitsSource

            try:
                self._source = DigitsSource(self.pre, str(data.get("split", "all")), data.get("limit"))
            except Exception as exc:  # a split name this version does not know
                return f"the digits ({data.get('split')}) cannot be read ({exc}): maps only"
            if self.items and max(self.items) >= len(self._source):
                self._source = None
                return "the bundled digits are not the ones audited (fewer images): maps only"
            return ""
        what = data.get("kind") or "Python data set"
        return f"the images came from a {what} in Python, which the app cannot read: maps only"

    def _data_labels(self) -> np.ndarray:
        from convscope.data.sources import FolderSource

        if self._source is not None:
            return np.asarray(self._source.labels())
        if self.root is not None:
            return FolderSource(self.root, self.pre, self.audit.get("settings", {}).get("limit")).labels()
        raise InputError("the audit's data set cannot be read")

    def _open_maps(self) -> str:
        from convscope.methods.jobs.store import open_store, zarr_module

        named = self.audit.get("store")
        candidates = [] if not named else [self.path.parent / named]  # relative to audit.json (or absolute)
        beside = self.path.parent / "maps.zarr"  # where `convscope audit -o OUT` writes it
        if beside.resolve() not in [c.resolve() for c in candidates]:
            candidates.append(beside)
        found = [c for c in candidates if c.is_dir()]
        if not found:
            where = f"{named} is not there" if named else "the audit kept none"
            return f"no maps store ({where}): images only, without their maps"
        why = ""
        for p in found:
            try:
                st = open_store(p)
                if not st.complete:
                    raise InputError(f"{p} is an unfinished job")
                arr = zarr_module().open_array(str(st.path / "maps"), mode="r")
                if tuple(int(v) for v in arr.shape[1:]) != self.image_size:
                    raise InputError(f"its maps are {arr.shape[1]}x{arr.shape[2]}, the audit's "
                                     f"{self.image_size[0]}x{self.image_size[1]}")
                labels = self._data_labels if (self._source is not None or self.root is not None) else None
                self.row_of = store_rows(self.audit, st, labels)
            except (InputError, OSError, ValueError, KeyError) as exc:
                why = f"the maps store {p} cannot be used ({exc}): images only, without their maps"
                continue
            self.store, self._arr = st, arr
            return ""
        return why

    # --- pictures -----------------------------------------------------------------------------
    def item(self, index: str | int) -> dict[str, Any]:
        """The table entry of data-set image ``index``.

        Raises:
            NotInAudit: ``index`` is not a member of any cluster of the audit.
        """
        try:
            i = int(str(index))
        except ValueError:
            raise NotInAudit(f"no image {str(index)[:40]!r} in the audit; images are named by their "
                             "data-set index") from None
        if i not in self.items:
            raise NotInAudit(f"image {i} is not in the audit ({len(self.items)} clustered images)")
        return {"index": i, **self.items[i]}

    def cluster(self, class_index: str | int, cluster_id: str | int) -> dict[str, Any]:
        """The ``audit.json`` entry of one cluster.

        Raises:
            NotInAudit: no such class or cluster.
        """
        try:
            key = (int(str(class_index)), int(str(cluster_id)))
        except ValueError:
            key = None
        if key is None or key not in self.clusters:
            raise NotInAudit(f"no cluster {str(cluster_id)[:20]} of class {str(class_index)[:20]} in the "
                             "audit; classes and clusters are named by their index and id")
        return self.clusters[key]

    def pixels(self, index: int) -> np.ndarray | None:
        """The display image (H, W, 3) of audited image ``index`` as the model saw it, or None.

        Raises:
            NotInAudit: its file is outside the audit's image folder, or cannot be read.
        """
        it = self.item(index)
        if self._source is not None:
            return np.asarray(self._source.pixels(it["index"]))
        if self.root is None or it["path"] is None:
            return None
        from convscope.core.errors import ImageLoadError
        from convscope.core.image import load_image, pil_to_tensor
        from convscope.data.base import fit_pixels
        from convscope.models.preprocessing import display_array

        p = (self.root / it["path"]).resolve()
        if not p.is_relative_to(self.root):
            raise NotInAudit(f"image {it['index']}: its path {it['path']!r} leads outside the audit's "
                             "image folder; not served")
        try:
            img = self.pre.to_display(load_image(p, max_pixels=self.limits.max_pixels))
        except ImageLoadError as exc:
            raise NotInAudit(f"image {it['index']} ({it['path']}) cannot be read: {exc}") from None
        return display_array(fit_pixels(pil_to_tensor(img), self.pre))

    def item_map(self, index: int) -> np.ndarray | None:
        """The map of audited image ``index``, scaled to [0, 1] as the report shows it, or None."""
        from convscope.core.results import normalize_map
        from convscope.methods.dataset._audit import mass_maps

        it = self.item(index)
        if self._arr is None:
            return None
        m = np.asarray(self._arr[self.row_of[it["index"]]], dtype=np.float32)
        return normalize_map(mass_maps(m[None])[0].numpy(), signed=False, normalize="max")

    def cluster_mean(self, class_index: int, cluster_id: int,
                     expired: Callable[[], bool] = lambda: False) -> np.ndarray | None:
        """The mean of the cluster's maps (positive part, each scaled to sum 1), or None without maps.

        Streams the store: one chunk of maps in memory at a time, only chunks holding members read.
        """
        from convscope.methods.dataset._audit import mass_maps

        cl = self.cluster(class_index, cluster_id)
        if self._arr is None or self.store is None:
            return None
        rows = np.sort(np.asarray([self.row_of[int(i)] for i in cl["members"]], dtype=np.int64))
        total = np.zeros(self.image_size, dtype=np.float64)
        for c in range(self.store.n_chunks):
            lo, hi = self.store.rows(c)
            sel = rows[(rows >= lo) & (rows < hi)]
            if not len(sel):
                continue
            if expired():
                raise TimedOut(_OUT_OF_TIME, 1)
            block = np.asarray(self._arr[lo:hi])[sel - lo]
            total += mass_maps(block).numpy().sum(0)
        return (total / max(1, len(rows))).astype(np.float32)

    def _box(self, box: list[int]) -> tuple[int, int, int, int]:
        return _box_rc(box, *self.image_size)

    def render_item(self, index: int) -> Any:
        """Image ``index`` with its map blended on top and its cluster's box (a PIL image)."""
        from PIL import Image

        from convscope.core.results import blend, colorize, upscale
        from convscope.methods.dataset._grid import draw_box

        it = self.item(index)
        px = self.pixels(it["index"])
        hm = self.item_map(it["index"])
        h, w = self.image_size
        if px is not None and px.shape[:2] != (h, w):
            img = Image.fromarray((np.clip(px, 0, 1) * 255 + 0.5).astype(np.uint8)).resize((w, h))
            px = np.asarray(img, dtype=np.float64) / 255
        if px is not None and hm is not None:
            rgb = blend(px, hm, signed=False)
        elif px is not None:
            rgb = px
        elif hm is not None:
            rgb = colorize(hm, signed=False)
        else:
            raise NotInAudit(f"nothing to show for image {it['index']}: {self.images_note}; {self.maps_note}")
        return upscale(draw_box(rgb, self._box(it["box"]), color=BOX_COLOR), MIN_SIDE)

    def render_cluster(self, class_index: int, cluster_id: int,
                       expired: Callable[[], bool] = lambda: False) -> Any:
        """The cluster's mean map (colour map) with its box (a PIL image)."""
        from convscope.core.results import colorize, normalize_map, upscale
        from convscope.methods.dataset._grid import draw_box

        mean = self.cluster_mean(class_index, cluster_id, expired)
        if mean is None:
            raise NotInAudit(f"no mean map: {self.maps_note}")
        cl = self.cluster(class_index, cluster_id)
        hm = normalize_map(mean, signed=False, normalize="max")
        return upscale(draw_box(colorize(hm, signed=False), self._box(cl["box"]), color=BOX_COLOR), MIN_SIDE)

    # --- serving: the bounded queue and the cache ---------------------------------------------
    def item_png(self, index: str | int) -> bytes:
        """PNG of :meth:`render_item`, from the cache or rendered as a light job of the queue."""
        i = self.item(index)["index"]
        return self._png(("item", i), False, lambda _expired: self.render_item(i))

    def cluster_png(self, class_index: str | int, cluster_id: str | int) -> bytes:
        """PNG of :meth:`render_cluster`, from the cache or rendered as a heavy job of the queue."""
        self.cluster(class_index, cluster_id)
        key = (int(str(class_index)), int(str(cluster_id)))
        if self._arr is None:
            raise NotInAudit(f"no mean map: {self.maps_note}")
        return self._png(("cluster", *key), True, lambda expired: self.render_cluster(*key, expired))

    def _png(self, key: tuple[Any, ...], heavy: bool, render: Callable[[Callable[[], bool]], Any]) -> bytes:
        import time

        from convscope.core.results import png_bytes

        hit = self._get(key)
        if hit is not None:
            return hit

        def job(expired: Callable[[], bool]) -> bytes:
            again = self._get(key)  # rendered while this job waited
            if again is not None:
                return again
            data = png_bytes(render(expired))
            self._put(key, data)
            return data

        return self.jobs.run(job, heavy=heavy, deadline=time.monotonic() + self.limits.timeout_s)

    def _get(self, key: tuple[Any, ...]) -> bytes | None:
        with self._lock:
            data = self._cache.get(key)
            if data is not None:
                self._cache.move_to_end(key)
            return data

    def _put(self, key: tuple[Any, ...], data: bytes) -> None:
        with self._lock:
            if key in self._cache:
                return
            self._cache[key] = data
            self._cache_bytes += len(data)
            while self._cache and (len(self._cache) > CACHE_ITEMS or self._cache_bytes > CACHE_BYTES):
                _, old = self._cache.popitem(last=False)
                self._cache_bytes -= len(old)
