"""Atomic file writes: a file appears complete or not at all."""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "json_bytes", "named_os_error", "npy_bytes", "save_by_extension"]


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> Path:
    """Call ``write(fileobj)`` on a temporary file next to ``path``, then rename it into place.

    An :class:`OSError` while writing (no space left on device, a file size limit, an I/O error)
    removes the temporary file and is raised again naming ``path``, so the user learns which
    file could not be written.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except (FileExistsError, NotADirectoryError):
        from convscope.core.errors import InputError

        raise InputError(f"cannot write {path}: a part of {path.parent} is a file, not a folder") from None
    except OSError as exc:  # name the caller's path, not the temporary file
        raise type(exc)(exc.errno, exc.strerror, str(path)) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and not isinstance(exc, BrokenPipeError):
            raise named_os_error(exc, path) from None
        raise
    return path


def named_os_error(exc: OSError, path: str | os.PathLike) -> OSError:
    """``exc`` again, naming ``path`` (an error from ``write()`` names no file; one from a temporary
    file names the wrong one)."""
    return OSError(exc.errno, exc.strerror or str(exc), str(path))


def npy_bytes(array: Any) -> bytes:
    """The ``.npy`` file of ``array`` (a numpy array or tensor), as float32."""
    import numpy as np

    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    buf = io.BytesIO()
    np.save(buf, np.asarray(array).astype(np.float32))
    return buf.getvalue()


def json_bytes(obj: Any, indent: int | None = 1) -> bytes:
    """``obj`` as a JSON document ending in a newline."""
    return (json.dumps(obj, indent=indent) + "\n").encode()


def save_by_extension(path: str | os.PathLike, writers: Mapping[str, Callable[[], bytes]]) -> Path:
    """Write ``path`` atomically with the writer of its extension (``{".png": make_png, ...}``).

    Writers are called only for the chosen extension. An unknown extension raises
    :class:`~convscope.core.errors.InputError` naming the accepted ones, and writes nothing.
    """
    from convscope.core.errors import InputError

    p = Path(path)
    make = writers.get(p.suffix.lower())
    if make is None:
        names = list(writers)
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
        raise InputError(f"cannot save to {p.name!r}: use a {listed} file name")
    data = make()
    return atomic_write(p, lambda fh: fh.write(data))
