"""Data sources for dataset views and batch jobs: an image folder, a torch ``Dataset``, the digits.

Every source is a map-style ``torch.utils.data.Dataset`` whose item ``i`` is
``(x, label, i)``: the model-space input (C, H, W) for the model's preprocessing, the integer
label (-1 when unknown) and the index. ``pixels(i)`` gives the display image (H, W, 3) in [0, 1]
that thumbnails, patches and grids show. ``describe()`` says what the source is, for manifests.

Sources are plain picklable objects (paths, tensors, the wrapped dataset) so DataLoader workers
and Ray actors can rebuild them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convscope.core.errors import InputError
from convscope.core.image import load_image, pil_to_tensor
from convscope.data.base import IMAGE_EXTENSIONS, DataSource, fit_pixels
from convscope.models.preprocessing import Preprocessing

__all__ = [
    "DataSource",
    "DigitsSource",
    "FolderSource",
    "TensorSource",
    "TorchSource",
    "as_source",
    "fit_pixels",
]

class DigitsSource(DataSource):
    """The bundled digits (:func:`convscope.data.toydata.digits`), split ``"all"``, ``"train"`` or
    ``"test"``."""

    def __init__(self, pre: Preprocessing, split: str = "all", limit: int | None = None) -> None:
        from convscope.data.toydata import digits

        self.preprocessing = pre
        self.split = split
        self.limit = limit
        x, y = digits().split(split)
        if limit is not None:
            x, y = x[:limit], y[:limit]
        self._x = x
        self._y = y
        self.class_names = [str(i) for i in range(10)]

    def __len__(self) -> int:
        return int(self._x.shape[0])

    def pixel_tensor(self, i: int) -> torch.Tensor:
        return fit_pixels(self._x[i], self.preprocessing)

    def label(self, i: int) -> int:
        return int(self._y[i])

    def labels(self) -> np.ndarray:
        return self._y.numpy().astype(np.int64)

    def describe(self) -> dict[str, Any]:
        return {"kind": "digits", "split": self.split, "limit": self.limit, "size": len(self)}


class FolderSource(DataSource):
    """Images in a folder; class sub-folders (sorted by name) give the labels.

    Images directly in ``root`` are read too, without a label (-1), when there are no sub-folders.
    """

    def __init__(self, root: str | os.PathLike, pre: Preprocessing, limit: int | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(
                f"data folder not found: {self.root} (expected a folder of images or class sub-folders)"
            )
        self.preprocessing = pre
        self.limit = limit
        subdirs = sorted(d for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        files: list[tuple[str, int]] = []
        if subdirs:
            self.class_names = [d.name for d in subdirs]
            for k, d in enumerate(subdirs):
                files.extend(
                    (str(p.relative_to(self.root)), k)
                    for p in sorted(d.rglob("*"))
                    if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                )
        else:
            self.class_names = []
            files = [
                (p.name, -1)
                for p in sorted(self.root.iterdir())
                if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
            ]
        if not files:
            raise InputError(f"no images ({', '.join(IMAGE_EXTENSIONS[:4])}, ...) found in {self.root}")
        if limit is not None:
            files = files[:limit]
        self.files = [f for f, _ in files]
        self._labels = np.array([k for _, k in files], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.files)

    def pixel_tensor(self, i: int) -> torch.Tensor:
        img = self.preprocessing.to_display(load_image(self.root / self.files[i]))
        return fit_pixels(pil_to_tensor(img), self.preprocessing)

    def label(self, i: int) -> int:
        return int(self._labels[i])

    def labels(self) -> np.ndarray:
        return self._labels.copy()

    def describe(self) -> dict[str, Any]:
        h = hashlib.sha256()
        for f in self.files:
            st = (self.root / f).stat()
            h.update(f"{f}\0{st.st_size}\0".encode())
        return {
            "kind": "folder",
            "path": str(self.root.resolve()),
            "size": len(self),
            "classes": self.class_names,
            "files_sha256": h.hexdigest(),
            "limit": self.limit,
        }


class TensorSource(DataSource):
    """An (N, C, H, W) tensor read by the one input rule (:mod:`convscope.models.inputs`): what the
    model takes (``space="model"``, the default) or pixels in [0, 1] (``space="pixels"``)."""

    def __init__(
        self,
        images: torch.Tensor,
        pre: Preprocessing,
        labels: Sequence[int] | torch.Tensor | None = None,
        *,
        space: str = "model",
        class_names: Sequence[str] = (),
    ) -> None:
        from convscope.models.inputs import as_inputs

        if images.ndim != 4 or not images.is_floating_point():
            raise InputError(
                f"a tensor source must be a float (N, C, H, W) tensor, got {tuple(images.shape)}"
            )
        self.preprocessing = pre
        as_inputs(images[:0] if images.shape[0] == 0 else images, pre, space=space, what="data")  # checks
        self._x = images.detach().cpu()
        self.space = space
        self.model_space = space == "model"
        n = images.shape[0]
        self._y = (
            np.full(n, -1, np.int64) if labels is None else np.asarray(labels, dtype=np.int64).reshape(n)
        )
        self.class_names = list(class_names)

    def __len__(self) -> int:
        return int(self._x.shape[0])

    def pixel_tensor(self, i: int) -> torch.Tensor:
        t = self._x[i]
        if self.model_space:
            t = self.preprocessing.denormalize(t).clamp(0, 1)
        return fit_pixels(t, self.preprocessing)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        if self.model_space:
            i = int(i)
            return self._x[i].float().contiguous(), int(self._y[i]), i
        return super().__getitem__(i)

    def label(self, i: int) -> int:
        return int(self._y[i])

    def labels(self) -> np.ndarray:
        return self._y.copy()

    def describe(self) -> dict[str, Any]:
        h = hashlib.sha256(self._x.float().numpy().tobytes()).hexdigest()
        return {
            "kind": "tensor",
            "size": len(self),
            "shape": list(self._x.shape),
            "sha256": h,
            "space": self.space,
        }


class TorchSource(DataSource):
    """A torch ``Dataset`` whose items are images or ``(image, label, ...)`` tuples.

    Images may be PIL images or arrays (preprocessed like files), or float (C, H, W) tensors read by
    the one input rule (:mod:`convscope.models.inputs`): what the model takes (``space="model"``, the
    default: a dataset whose transform ends in ``Normalize``) or pixels in [0, 1]
    (``space="pixels"``: a transform that ends in ``ToTensor``).
    """

    def __init__(self, dataset: Any, pre: Preprocessing, class_names: Sequence[str] | None = None,
                 *, space: str = "model") -> None:
        from convscope.models.inputs import check_space

        self.space = check_space(space)
        self.dataset = dataset
        self.preprocessing = pre
        self.class_names = list(
            class_names if class_names is not None else getattr(dataset, "classes", []) or []
        )

    def __len__(self) -> int:
        return len(self.dataset)

    def _item(self, i: int) -> tuple[Any, int]:
        item = self.dataset[i]
        if isinstance(item, (tuple, list)):
            img = item[0]
            lab = item[1] if len(item) > 1 else -1
            return img, int(lab) if isinstance(lab, (int, np.integer, torch.Tensor)) else -1
        return item, -1

    def _inputs(self, img: Any) -> Any:
        if not (isinstance(img, torch.Tensor) and img.is_floating_point() and img.ndim == 3):
            return None
        from convscope.models.inputs import as_inputs

        return as_inputs(img.detach().cpu().float(), self.preprocessing, space=self.space, what="item")

    def pixel_tensor(self, i: int) -> torch.Tensor:
        img, _ = self._item(i)
        inp = self._inputs(img)
        if inp is not None:
            return fit_pixels(inp.pixels[0], self.preprocessing)
        return fit_pixels(pil_to_tensor(self.preprocessing.to_display(load_image(img))), self.preprocessing)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"item {i} out of range for a source of {len(self)}")
        img, lab = self._item(i)
        inp = self._inputs(img)
        fits = inp is not None and tuple(inp.x.shape[-2:]) == tuple(self.preprocessing.size)
        if fits and self.space == "model":
            return inp.x[0].contiguous(), lab, i  # the model's own input, untouched
        return super().__getitem__(i)

    def label(self, i: int) -> int:
        return self._item(i)[1]

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "torch",
            "class": f"{type(self.dataset).__module__}.{type(self.dataset).__qualname__}",
            "size": len(self),
            "space": self.space,
        }


def as_source(data: Any, pre: Preprocessing, *, limit: int | None = None, space: str = "model") -> DataSource:
    """Turn ``data`` into a :class:`DataSource` for a model with preprocessing ``pre``.

    Args:
        data: ``"digits"`` / ``"digits:test"`` / ``"digits:train"``, a path to an image folder,
            a :class:`DataSource`, a torch ``Dataset``, or an (N, C, H, W) tensor.
        pre: the model's preprocessing.
        space: how to read tensors (a tensor ``data``, or a ``Dataset``'s tensor items): what the
            model takes (``"model"``, default) or pixels in [0, 1] (``"pixels"``).
        limit: use only the first ``limit`` items.
    """
    if isinstance(data, DataSource):
        src = data if data.preprocessing == pre else data.with_preprocessing(pre)
        if limit is not None and limit < len(src):
            return Subset(src, range(limit))
        return src
    if isinstance(data, str) and (data == "digits" or data.startswith("digits:")):
        split = data.split(":", 1)[1] if ":" in data else "all"
        if split not in ("all", "train", "test"):
            raise InputError(f"unknown digits split {split!r}; use digits, digits:train or digits:test")
        return DigitsSource(pre, split, limit)
    if isinstance(data, (str, os.PathLike)):
        return FolderSource(data, pre, limit)
    if isinstance(data, torch.Tensor):
        src = TensorSource(data, pre, space=space)
        return Subset(src, range(limit)) if limit is not None and limit < len(src) else src
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        src = TorchSource(data, pre, space=space)
        return Subset(src, range(limit)) if limit is not None and limit < len(src) else src
    raise InputError(
        f"cannot use a {type(data).__name__} as a data set; pass 'digits', an image folder, a torch Dataset "
        "or an (N, C, H, W) tensor"
    )


class Subset(DataSource):
    """Items ``indices`` of another source, re-indexed from 0; ``labels`` (one per index) replace
    the base's labels when given (e.g. a folder's class index mapped to the model's)."""

    def __init__(self, base: DataSource, indices: Sequence[int], labels: Sequence[int] | None = None) -> None:
        self.base = base
        self.indices = [int(i) for i in indices]
        self.preprocessing = base.preprocessing
        self.class_names = base.class_names
        self.relabel = None if labels is None else [int(v) for v in labels]
        if self.relabel is not None and len(self.relabel) != len(self.indices):
            raise InputError(f"{len(self.relabel)} labels for {len(self.indices)} items")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        x, y, _ = self.base[self.indices[int(i)]]
        return x, y if self.relabel is None else self.relabel[int(i)], int(i)

    def pixel_tensor(self, i: int) -> torch.Tensor:
        return self.base.pixel_tensor(self.indices[int(i)])

    def label(self, i: int) -> int:
        return self.base.label(self.indices[int(i)]) if self.relabel is None else self.relabel[int(i)]

    def labels(self) -> np.ndarray:
        if self.relabel is not None:
            return np.asarray(self.relabel, dtype=np.int64)
        return super().labels()

    def with_preprocessing(self, pre: Preprocessing) -> DataSource:
        return Subset(self.base.with_preprocessing(pre), self.indices, self.relabel)

    def describe(self) -> dict[str, Any]:
        d = {**self.base.describe(), "subset": len(self.indices)}
        if self.relabel is not None or len(self.indices) != len(self.base):
            h = hashlib.sha256(np.asarray(self.indices, dtype=np.int64).tobytes())
            if self.relabel is not None:
                h.update(np.asarray(self.relabel, dtype=np.int64).tobytes())
            d["subset_sha256"] = h.hexdigest()
        return d
