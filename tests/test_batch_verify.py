"""Issue #27, item 4: a batch store never reads back a swapped, overwritten or stale chunk as correct.

Resume checks every finished chunk (its data against the SHA-256 in its marker, its image files
against their contents) and recomputes what fails; ``read(verify=True)`` and ``convscope batch
--verify`` refuse it with one line naming the chunk.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import zarr
from PIL import Image

from convscope.core.errors import InputError
from convscope.frontends.cli.main import main
from convscope.methods.dataset import TensorSource
from convscope.methods.jobs import open_store, run_batch

ARRAYS = ("maps", "targets", "labels", "probabilities")
KW = dict(batch_size=8, chunk_size=8)


def _arrays(store):
    return {n: store.read(n) for n in ARRAYS}


def _assert_same(a, b):
    for n in ARRAYS:
        np.testing.assert_array_equal(a[n], b[n], err_msg=n)


@pytest.fixture
def job(clean_model, digits_data, tmp_path):
    """A finished 3-chunk store and the arrays of a clean run of the same job elsewhere."""
    src = TensorSource(digits_data.images[:24], clean_model.preprocessing, digits_data.labels[:24],
                       space="pixels")
    ref = _arrays(run_batch(clean_model, src, "saliency", tmp_path / "ref.zarr", **KW))
    out = tmp_path / "s.zarr"
    store = run_batch(clean_model, src, "saliency", out, **KW)
    return clean_model, src, out, store, ref


def _chunk_file(out, name, chunk):
    arr = zarr.open_array(str(out / name), mode="r")
    coords = (chunk,) + (0,) * (len(arr.shape) - 1)
    return out / name / arr.metadata.encode_chunk_key(coords)


def test_swapped_chunk_is_refused_on_read_and_recomputed_on_resume(job):
    model, src, out, store, ref = job
    a, b = _chunk_file(out, "maps", 0), _chunk_file(out, "maps", 1)
    shutil.copyfile(a, b)  # chunk 1 of the maps now holds chunk 0's maps: a valid Zarr chunk
    assert not np.array_equal(store.read("maps"), ref["maps"])  # unchecked, it reads as it is
    with pytest.raises(InputError) as exc:
        store.read("maps", verify=True)
    msg = str(exc.value)
    assert "\n" not in msg and "chunk 1 (rows 8-15)" in msg and "checksum" in msg and "chunk 0" not in msg
    marker0 = (out / "done" / "chunk-000000").stat().st_mtime_ns
    again = run_batch(model, src, "saliency", out, **KW)  # a resume
    assert again.complete and again.verify() == []
    _assert_same(_arrays(again), ref)
    assert (out / "done" / "chunk-000000").stat().st_mtime_ns == marker0  # a good chunk is kept
    again.read("maps", verify=True)


def test_overwritten_chunk_values_are_caught(job):
    model, src, out, store, ref = job
    arr = zarr.open_array(str(out / "probabilities"), mode="r+")
    arr[16:18] = arr[16:18][:, ::-1]  # two rows of chunk 2 rewritten through Zarr itself
    assert store.corrupt_chunks() == [2] and store.stale_chunks() == []
    with pytest.raises(InputError, match=r"chunk 2 \(rows 16-23\) does not match its checksum"):
        store.read("targets", verify=True)  # any array: the chunk is checked as a whole
    _assert_same(_arrays(run_batch(model, src, "saliency", out, **KW)), ref)


def test_lost_or_torn_chunk_file_of_a_finished_chunk_is_recomputed(job):
    model, src, out, store, ref = job
    _chunk_file(out, "labels", 1).unlink()  # lost: reads back as the fill value
    t = _chunk_file(out, "maps", 2)
    t.write_bytes(t.read_bytes()[:40])  # torn: no longer decodes
    assert store.verify() == [1, 2]
    _assert_same(_arrays(run_batch(model, src, "saliency", out, **KW)), ref)


def test_same_size_same_mtime_content_change_is_stale(clean_model, digits_data, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(6):  # BMP: every file has the same size
        a = (digits_data.images[i, 0].numpy() * 255).astype(np.uint8)
        Image.fromarray(a).save(folder / f"img{i:02d}.bmp")
    kw = dict(batch_size=2, chunk_size=2)
    out = tmp_path / "s.zarr"
    store = run_batch(clean_model, folder, "saliency", out, **kw)
    old = store.read("maps")
    victim, donor = folder / "img03.bmp", folder / "img05.bmp"
    st = victim.stat()
    victim.write_bytes(donor.read_bytes())
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))  # cp -p: same size, same time
    assert victim.stat().st_size == st.st_size and victim.stat().st_mtime_ns == st.st_mtime_ns
    assert store.verify() == [1] and store.corrupt_chunks() == []
    with pytest.raises(InputError, match=r"chunk 1 \(rows 2-3\) was computed from input files"):
        store.read("maps", verify=True)
    again = run_batch(clean_model, folder, "saliency", out, **kw)
    new = again.read("maps", verify=True)
    np.testing.assert_array_equal(new[[0, 1, 2, 4, 5]], old[[0, 1, 2, 4, 5]])
    np.testing.assert_array_equal(new[3], old[5])  # the row shows the new content
    fresh = run_batch(clean_model, folder, "saliency", tmp_path / "fresh.zarr", **kw)
    np.testing.assert_array_equal(fresh.read("maps"), new)  # equals a clean run on today's files


def test_cli_batch_verify(tmp_path, capsys):
    out = str(tmp_path / "b.zarr")
    args = ["batch", "--limit", "16", "--chunk-size", "8", "-q", "-o", out]
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args, "--verify"]) == 0
    assert "2 chunks match" in capsys.readouterr().out
    shutil.copyfile(_chunk_file(tmp_path / "b.zarr", "maps", 0), _chunk_file(tmp_path / "b.zarr", "maps", 1))
    assert main([*args, "--verify"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("convscope: error:") and "chunk 1 (rows 8-15)" in err[0]
    assert main(args) == 0  # run again: recomputed
    assert main([*args, "--verify"]) == 0
    assert open_store(out).verify() == []
    assert main(["batch", "--verify", "-o", str(tmp_path / "nothing")]) == 2
    assert "not a convscope batch store" in capsys.readouterr().err
