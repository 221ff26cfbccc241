"""The on-disk result store of a batch job: a chunked Zarr (v3) group plus a manifest.

Layout of ``OUT/``::

    zarr.json             the Zarr group
    maps/                 (N, H, W) float32, one Zarr chunk per job chunk along N
    targets/              (N,) int64 explained class (-1: a callable target)
    labels/               (N,) int64 data set label (-1: none)
    probabilities/        (N, K) float32 softmax of the logits
    manifest.json         what was done: job (model, method, options, data, chunking), versions, status
    inputs.json           for an image folder: its path and the file of each row, in order
    done/chunk-000012     one marker per finished chunk: the SHA-256 of its data, then (image
                          folders) the fingerprint of its input files

Rules that make a job resumable and never show a partial result as complete:

* the store is created in a hidden temporary folder and renamed into place, so ``OUT`` either does
  not exist or is a valid empty store;
* a job chunk is exactly one Zarr chunk of every array (so two workers never share a file); its
  data are written, fsynced, and only then its ``done/`` marker is written atomically;
* a chunk without a marker is treated as not computed, whatever its files hold, and recomputed;
* ``manifest.json`` says ``"status": "complete"`` only after every marker exists (atomic replace);
* a chunk whose input files changed since it was computed (their contents, see
  :func:`files_fingerprint`) is stale, and a chunk whose data no longer match the SHA-256 in its
  marker (a chunk file swapped, overwritten or lost) is corrupt: :meth:`BatchStore.verify`
  reports both, running the job again (a resume) recomputes them, and
  ``read(..., verify=True)`` (``convscope batch --verify``) refuses them with one line naming them.

Readers (:func:`open_store`) refuse incomplete stores unless ``allow_partial=True``, and then mask
rows of unfinished chunks.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from convscope.core.errors import InputError
from convscope.core.io import atomic_write, named_os_error

__all__ = ["FORMAT", "BatchStore", "create_store", "files_fingerprint", "open_store"]

FORMAT = "convscope-batch/1"
ARRAYS = ("maps", "targets", "labels", "probabilities")
DTYPES = {"maps": ("float32", np.nan), "targets": ("int64", -1), "labels": ("int64", -1),
          "probabilities": ("float32", np.nan)}  # a batch job's arrays: (dtype, fill of unwritten rows)


def zarr_module() -> Any:
    """The ``zarr`` module, or an error that says how to install it."""
    try:
        import zarr
    except ImportError:
        raise InputError("batch jobs need zarr: pip install 'convscope[jobs]'") from None
    return zarr


def _fsync_path(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _json_bytes(d: dict[str, Any]) -> bytes:
    return (json.dumps(d, indent=1, sort_keys=True) + "\n").encode()


def files_fingerprint(paths: list[Path]) -> str:
    """SHA-256 over each file's name and the SHA-256 of its contents; a missing file counts too.

    Contents, not sizes and times: a replacement that keeps both the size and the modification time
    of a file (``cp -p``, ``touch -r``) is seen. A chunk's fingerprint is taken just before its
    images are read, so those reads come from the page cache; on a resume the files of finished
    chunks are read once more (a plain read, no decoding, no model).
    """
    h = hashlib.sha256()
    for p in paths:
        try:
            f = hashlib.sha256()
            with open(p, "rb") as fh:
                for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    f.update(block)
            h.update(f"{p.name}\0{f.hexdigest()}\n".encode())
        except (FileNotFoundError, IsADirectoryError):
            h.update(f"{p.name}\0missing\n".encode())
    return h.hexdigest()


@dataclass
class BatchStore:
    """An open batch store (see the module docstring)."""

    path: Path

    # --- metadata -----------------------------------------------------------------------------
    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads((self.path / "manifest.json").read_text())

    @property
    def arrays(self) -> tuple[str, ...]:
        """The arrays, in checksum order: a batch job's :data:`ARRAYS`, or the manifest's ``array_names``."""
        return tuple(self.manifest.get("array_names", ARRAYS))

    @property
    def complete(self) -> bool:
        return self.manifest.get("status") == "complete"

    @property
    def n_chunks(self) -> int:
        return int(self.manifest["chunking"]["n_chunks"])

    @property
    def chunk_size(self) -> int:
        return int(self.manifest["chunking"]["chunk_size"])

    @property
    def size(self) -> int:
        return int(self.manifest["chunking"]["size"])

    def rows(self, chunk: int) -> tuple[int, int]:
        c = self.chunk_size
        return chunk * c, min((chunk + 1) * c, self.size)

    def _marker(self, chunk: int) -> Path:
        return self.path / "done" / f"chunk-{chunk:06d}"

    def done_chunks(self) -> list[int]:
        d = self.path / "done"
        if not d.is_dir():
            return []
        out = []
        for p in d.iterdir():
            if p.name.startswith("chunk-") and not p.name.endswith(".part"):
                try:
                    out.append(int(p.name[6:]))
                except ValueError:
                    continue
        return sorted(out)

    def pending_chunks(self) -> list[int]:
        done = set(self.done_chunks())
        return [c for c in range(self.n_chunks) if c not in done]

    # --- inputs -------------------------------------------------------------------------------
    def input_files(self) -> list[Path] | None:
        """The file behind each row (image-folder jobs), else ``None``."""
        p = self.path / "inputs.json"
        if not p.is_file():
            return None
        d = json.loads(p.read_text())
        root = Path(d["root"])
        return [root / f for f in d["files"]]

    def input_fingerprint(self, chunk: int, files: list[Path] | None = None) -> str | None:
        """The fingerprint of chunk ``chunk``'s input files now (``None``: inputs not on disk)."""
        files = self.input_files() if files is None else files
        if files is None:
            return None
        lo, hi = self.rows(chunk)
        return files_fingerprint(files[lo:hi])

    def _marker_lines(self, chunk: int) -> list[str]:
        return self._marker(chunk).read_text().split()

    def stale_chunks(self) -> list[int]:
        """Finished chunks whose input files changed (or vanished) since they were computed."""
        files = self.input_files()
        if files is None:
            return []
        bad = []
        for c in self.done_chunks():
            lines = self._marker_lines(c)
            if len(lines) > 1 and lines[1] != self.input_fingerprint(c, files):
                bad.append(c)
        return bad

    def reopen(self, chunks: list[int]) -> None:
        """Forget ``chunks`` (their markers go) so the job computes them again."""
        if not chunks:
            return
        m = self.manifest
        if m.get("status") == "complete":
            m["status"] = "running"
            atomic_write(self.path / "manifest.json", lambda fh: fh.write(_json_bytes(m)))
        for c in chunks:
            self._marker(c).unlink(missing_ok=True)
        _fsync_path(self.path / "done")

    # --- writing ------------------------------------------------------------------------------
    def _array(self, name: str) -> Any:
        return zarr_module().open_array(str(self.path / name), mode="r+")

    def write_chunk(
        self, chunk: int, data: dict[str, np.ndarray], *, fsync: bool = True, inputs: str | None = None
    ) -> None:
        """Write one chunk's arrays, make them durable, then mark the chunk done.

        ``inputs``: the chunk's :meth:`input_fingerprint` taken before its images were read
        (default: taken now).
        """
        if inputs is None:
            inputs = self.input_fingerprint(chunk)
        lo, hi = self.rows(chunk)
        h = hashlib.sha256()
        names = self.arrays
        for name in names:
            a = np.ascontiguousarray(data[name])
            if a.shape[0] != hi - lo:
                raise InputError(f"chunk {chunk} of {name} has {a.shape[0]} rows, expected {hi - lo}")
            arr = self._array(name)
            try:
                arr[lo:hi] = a
            except OSError as exc:  # no space left, a size limit: name the array being written
                raise named_os_error(exc, self.path / name) from None
            h.update(a.tobytes())
            if fsync:
                coords = (chunk,) + (0,) * (a.ndim - 1)
                key = arr.metadata.encode_chunk_key(coords)
                _fsync_path(self.path / name / key)
        if fsync:
            for name in names:
                for sub in (self.path / name).rglob("*"):
                    if sub.is_dir():
                        _fsync_path(sub)
        marker = self._marker(chunk)
        def write_marker(fh: Any) -> None:
            fh.write((h.hexdigest() + ("" if inputs is None else "\n" + inputs)).encode())
            fh.flush()
            os.fsync(fh.fileno())

        atomic_write(marker, write_marker)
        if fsync:
            _fsync_path(marker.parent)

    def finish(self, run: dict[str, Any]) -> bool:
        """Mark the store complete if every chunk is done; returns whether it is."""
        if self.pending_chunks():
            return False
        m = self.manifest
        m["status"] = "complete"
        m["run"] = {**m.get("run", {}), **run}
        atomic_write(self.path / "manifest.json", lambda fh: fh.write(_json_bytes(m)))
        _fsync_path(self.path)
        return True

    # --- reading ------------------------------------------------------------------------------
    def valid_rows(self) -> np.ndarray:
        """(N,) bool: rows whose chunk is done."""
        ok = np.zeros(self.size, dtype=bool)
        for c in self.done_chunks():
            lo, hi = self.rows(c)
            ok[lo:hi] = True
        return ok

    def read(self, name: str, *, allow_partial: bool = False, verify: bool = False) -> np.ndarray:
        """Array ``name`` (maps, targets, labels, probabilities).

        Args:
            name: which array.
            allow_partial: read an unfinished job, its unfinished chunks' rows masked.
            verify: first check every finished chunk against its checksum and input files
                (:meth:`check`; reads the whole store and the input files once).

        Raises:
            InputError: the job has not finished (unless ``allow_partial``, which masks the rows
                of unfinished chunks with NaN or -1); with ``verify``, a chunk that fails the check.
        """
        if name not in self.arrays:
            raise InputError(f"unknown array {name!r}; the store holds {', '.join(self.arrays)}")
        if not self.complete and not allow_partial:
            raise InputError(
                f"{self.path} is an unfinished job ({len(self.done_chunks())}/{self.n_chunks} chunks); "
                "run it again to resume, or read with allow_partial=True"
            )
        if verify:
            self.check()
        a = np.asarray(zarr_module().open_array(str(self.path / name), mode="r")[:])
        if not self.complete:
            bad = ~self.valid_rows()
            a[bad] = np.nan if a.dtype.kind == "f" else -1
        return a

    def corrupt_chunks(self) -> list[int]:
        """Finished chunks whose data no longer match the SHA-256 in their marker (a chunk file
        swapped, overwritten, truncated or lost)."""
        arrays = {n: zarr_module().open_array(str(self.path / n), mode="r") for n in self.arrays}
        bad = []
        for c in self.done_chunks():
            lo, hi = self.rows(c)
            h = hashlib.sha256()
            try:
                for n in arrays:
                    h.update(np.ascontiguousarray(arrays[n][lo:hi]).tobytes())
                want = self._marker_lines(c)[0]
            except Exception:  # a chunk file that no longer decodes, an empty marker
                bad.append(c)
                continue
            if h.hexdigest() != want:
                bad.append(c)
        return bad

    def verify(self) -> list[int]:
        """Chunks whose data no longer match their marker's checksum (:meth:`corrupt_chunks`), or
        whose input files changed since they were computed (:meth:`stale_chunks`); should be empty."""
        return sorted(set(self.stale_chunks()) | set(self.corrupt_chunks()))

    def check(self) -> None:
        """Raise a one-line :class:`InputError` naming every chunk :meth:`verify` finds.

        Raises:
            InputError: ``maps.zarr: chunk 3 (rows 24-31) does not match its checksum; ...``.
        """
        stale, corrupt = set(self.stale_chunks()), set(self.corrupt_chunks())
        if not stale and not corrupt:
            return
        parts = []
        for c in sorted(stale | corrupt)[:8]:
            lo, hi = self.rows(c)
            why = ("does not match its checksum" if c in corrupt else "was computed from input files "
                   "that changed since")
            parts.append(f"chunk {c} (rows {lo}-{hi - 1}) {why}")
        more = len(stale | corrupt) - len(parts)
        raise InputError(
            f"{self.path}: {'; '.join(parts)}{f'; and {more} more' if more > 0 else ''}; run the job "
            "again to recompute them"
        )


def open_store(path: str | os.PathLike) -> BatchStore:
    """Open an existing batch store."""
    p = Path(path)
    if not (p / "manifest.json").is_file():
        raise InputError(f"{p} is not a convscope batch store (no manifest.json)")
    m = json.loads((p / "manifest.json").read_text())
    if m.get("format") != FORMAT:
        raise InputError(f"{p} has format {m.get('format')!r}, expected {FORMAT!r}")
    return BatchStore(p)


def create_store(
    path: str | os.PathLike,
    manifest: dict[str, Any],
    shapes: dict[str, tuple[int, ...]],
    chunk_size: int,
    inputs: dict[str, Any] | None = None,
    dtypes: dict[str, tuple[str, Any]] | None = None,
) -> BatchStore:
    """Create an empty store atomically: built in a hidden temporary folder, then renamed to ``path``.

    ``inputs``: ``{"root": folder, "files": [name of each row's file, relative to root]}`` when the
    rows come from image files (their fingerprints then mark stale chunks). ``dtypes``: ``{array: (dtype,
    fill)}`` for a store of other arrays than a batch job's (their order is the manifest's ``array_names``).
    """
    zarr = zarr_module()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    for old in p.parent.glob(f".{p.name}.init-*"):  # left behind by a job killed while creating
        shutil.rmtree(old, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{p.name}.init-", dir=p.parent))
    try:
        zarr.open_group(str(tmp), mode="w")
        kinds = DTYPES if dtypes is None else dtypes
        for name in manifest.get("array_names", ARRAYS):
            shape = shapes[name]
            zarr.create_array(
                str(tmp),
                name=name,
                shape=shape,
                chunks=(chunk_size,) + tuple(shape[1:]),
                dtype=kinds[name][0],
                fill_value=kinds[name][1],
            )
        (tmp / "done").mkdir()
        if inputs is not None:
            atomic_write(tmp / "inputs.json", lambda fh: fh.write(_json_bytes(inputs)))
        atomic_write(tmp / "manifest.json", lambda fh: fh.write(_json_bytes(manifest)))
        os.rename(tmp, p)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_path(p.parent)
    return BatchStore(p)


