"""Batch jobs: the store holds explain()'s maps, survives SIGKILL at any moment, and the Ray
engine writes the same store as the local one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

import convscope as cs
from convscope.core.errors import InputError
from convscope.methods.dataset import TensorSource
from convscope.methods.jobs import open_store, run_batch

ARRAYS = ("maps", "targets", "labels", "probabilities")


def _arrays(store):
    return {n: store.read(n) for n in ARRAYS}


def _assert_same(a, b):
    for n in ARRAYS:
        np.testing.assert_array_equal(a[n], b[n], err_msg=n)


def test_local_store_holds_explain_results(clean_model, digits_data, tmp_path):
    x, y = digits_data.images[:40], digits_data.labels[:40]
    src = TensorSource(x, clean_model.preprocessing, y, space="pixels")
    store = run_batch(
        clean_model, src, "gradient_x_input", tmp_path / "s.zarr", target="label", batch_size=8, chunk_size=16
    )
    assert store.complete and store.n_chunks == 3 and store.verify() == []
    e = cs.explain(
        clean_model, clean_model.preprocessing.normalize(x), "gradient_x_input", target=[int(v) for v in y]
    )
    np.testing.assert_allclose(store.read("maps"), e.map.numpy(), rtol=1e-5, atol=1e-6)
    assert (store.read("targets") == y.numpy()).all() and (store.read("labels") == y.numpy()).all()
    np.testing.assert_allclose(store.read("probabilities"), e.probabilities.numpy(), rtol=1e-5, atol=1e-6)
    m = json.loads((tmp_path / "s.zarr" / "manifest.json").read_text())
    assert m["status"] == "complete" and m["job"]["method"] == "gradient_x_input"
    assert m["job"]["target"] == "label" and m["chunking"] == {
        "size": 40,
        "chunk_size": 16,
        "n_chunks": 3,
        "axis": 0,
    }
    assert {"torch", "zarr", "convscope"} <= set(m["run"]["versions"])
    # the same job again is a no-op; another job on the same store is refused
    again = run_batch(
        clean_model, src, "gradient_x_input", tmp_path / "s.zarr", target="label", batch_size=8, chunk_size=16
    )
    _assert_same(_arrays(again), _arrays(store))
    with pytest.raises(InputError, match="different job"):
        run_batch(clean_model, src, "saliency", tmp_path / "s.zarr", batch_size=8, chunk_size=16)


SCRIPT = textwrap.dedent(
    """
    import sys, time
    import torch
    from convscope.data.toydata import digits
    from convscope.methods.jobs import run_batch

    class SlowDigits(torch.utils.data.Dataset):
        # reading each image takes a while, so a kill can land anywhere in the job
        def __init__(self):
            d = digits()
            self.x, self.y = d.images[:N], d.labels[:N]
        def __len__(self):
            return len(self.x)
        def __getitem__(self, i):
            time.sleep(0.02)
            return self.x[i], int(self.y[i])

    run_batch("digits-cnn", SlowDigits(), "saliency", sys.argv[1], batch_size=8, chunk_size=16,
              space="pixels")
    """
).replace("N]", "96]")


def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path, digits_data):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    out = tmp_path / "killed.zarr"
    lm = cs.load_model("digits-cnn")
    ref = run_batch(
        lm,
        TensorSource(digits_data.images[:96], lm.preprocessing, digits_data.labels[:96], space="pixels"),
        "saliency",
        tmp_path / "ref.zarr",
        batch_size=8,
        chunk_size=16,
    )
    ref_arrays = _arrays(ref)
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    kills = 0
    for want in (1, 3, None):  # kill after 1 and 3 finished chunks, then let it finish
        proc = subprocess.Popen(
            [sys.executable, str(script), str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        if want is None:
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err.decode()[-2000:]
            break
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            done = len(list((out / "done").glob("chunk-*"))) if (out / "done").is_dir() else 0
            if done >= want:
                break
            time.sleep(0.01)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
        store = open_store(out)
        # never visible as complete; every chunk marked done holds exactly its final data
        assert not store.complete and store.verify() == []
        with pytest.raises(InputError, match="unfinished"):
            store.read("maps")
        part = store.read("maps", allow_partial=True)
        ok = store.valid_rows()
        assert ok.any() and not ok.all()
        np.testing.assert_array_equal(part[ok], ref_arrays["maps"][ok])
        assert np.isnan(part[~ok]).all()
    assert kills == 2
    final = open_store(out)
    assert final.complete and final.verify() == []
    _assert_same(_arrays(final), ref_arrays)


def test_cli_batch(tmp_path, capsys):
    env = {**os.environ, "MPLBACKEND": "Agg"}
    args = ["batch", "--limit", "24", "--chunk-size", "8", "-q"]
    r = subprocess.run([sys.executable, "-m", "convscope", *args, "-o", str(tmp_path / "b.zarr")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert open_store(tmp_path / "b.zarr").complete
    from convscope.frontends.cli.main import main  # the error path in-process (a subprocess costs seconds)

    capsys.readouterr()
    assert main([*args, "--method", "gradient_x_input", "-o", str(tmp_path / "b.zarr")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "different job" in err


def test_ray_engine_store_equals_local(ray_local, clean_model, digits_data, tmp_path):
    x, y = digits_data.images[:48], digits_data.labels[:48]
    src = TensorSource(x, clean_model.preprocessing, y, space="pixels")
    kw = dict(batch_size=8, chunk_size=16)
    local = run_batch(clean_model, src, "saliency", tmp_path / "local.zarr", **kw)
    remote = run_batch(clean_model, src, "saliency", tmp_path / "ray.zarr", engine="ray", **kw)
    assert remote.complete and remote.verify() == []
    _assert_same(_arrays(remote), _arrays(local))
    assert remote.manifest["job"] == local.manifest["job"]
    assert remote.manifest["run"]["engine"] == "ray" and "ray" in remote.manifest["run"]["versions"]
    assert torch.is_tensor(torch.as_tensor(remote.read("maps")))


def test_torn_chunk_without_marker_is_recomputed(clean_model, digits_data, tmp_path):
    """A kill between a chunk's data write and its marker (or while creating the store) leaves
    no trace in the result: the chunk is recomputed and the half-built store is ignored."""
    src = TensorSource(digits_data.images[:32], clean_model.preprocessing, digits_data.labels[:32],
                       space="pixels")
    kw = dict(batch_size=8, chunk_size=16)
    ref = _arrays(run_batch(clean_model, src, "saliency", tmp_path / "ref.zarr", **kw))
    out = tmp_path / "torn.zarr"
    store = run_batch(clean_model, src, "saliency", out, **kw)
    (out / "done" / "chunk-000001").unlink()
    chunk_file = out / "maps" / "c" / "1" / "0" / "0"
    chunk_file.write_bytes(chunk_file.read_bytes()[:50])  # a torn write
    m = json.loads((out / "manifest.json").read_text())
    m["status"] = "running"
    (out / "manifest.json").write_text(json.dumps(m))
    (tmp_path / ".fresh.zarr.init-dead").mkdir()  # left by a kill while creating fresh.zarr
    assert not store.complete
    with pytest.raises(InputError):
        store.read("maps")
    again = run_batch(clean_model, src, "saliency", out, **kw)
    assert again.complete and again.verify() == []
    _assert_same(_arrays(again), ref)
    fresh = run_batch(clean_model, src, "saliency", tmp_path / "fresh.zarr", **kw)
    assert fresh.complete and not (tmp_path / ".fresh.zarr.init-dead").exists()


def test_layer_method_on_random_resnet_mechanics(tmp_path):
    """A CAM method with the model's default layer on a batch-norm network (mechanics only)."""
    torch.manual_seed(0)
    lm = cs.load_model("torchvision:resnet18", weights=None)
    src = TensorSource(torch.rand(3, 3, 48, 48), lm.preprocessing, space="pixels")
    store = run_batch(lm, src, "gradcam", tmp_path / "r.zarr", batch_size=2, chunk_size=2)
    assert store.complete and store.manifest["job"]["layer"] == "layer4"
    maps = store.read("maps")
    assert maps.shape == (3, 224, 224) and np.isfinite(maps).all()
    assert (store.read("labels") == -1).all() and store.read("probabilities").shape == (3, 1000)


def test_bad_target_leaves_no_store_and_the_fix_runs(tmp_path, capsys):
    from convscope.frontends.cli.main import main

    out = tmp_path / "b.zarr"
    args = ["batch", "--data", "digits", "--limit", "20", "--method", "gradcam", "-q", "-o", str(out)]
    assert main([*args, "--target", "99"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "99" in err
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nothing written, not even a temp folder
    assert main([*args, "--target", "3"]) == 0
    store = open_store(out)
    assert store.complete and (store.read("targets") == 3).all()
    with pytest.raises(InputError, match="positive integer"):
        run_batch("digits-cnn", "digits", "saliency", tmp_path / "n.zarr", limit=-5)
    assert not (tmp_path / "n.zarr").exists()


def test_store_of_another_job_that_holds_nothing_is_replaced(clean_model, digits_data, tmp_path):
    src = TensorSource(digits_data.images[:16], clean_model.preprocessing, digits_data.labels[:16])
    out = tmp_path / "s.zarr"
    first = run_batch(clean_model, src, "saliency", out, batch_size=8, chunk_size=8)
    for c in first.done_chunks():  # as if the first job had died before finishing a chunk
        (out / "done" / f"chunk-{c:06d}").unlink()
    first.reopen([])
    m = json.loads((out / "manifest.json").read_text())
    m["status"] = "running"
    (out / "manifest.json").write_text(json.dumps(m))
    second = run_batch(clean_model, src, "gradient_x_input", out, batch_size=8, chunk_size=8)
    assert second.complete and second.manifest["job"]["method"] == "gradient_x_input"
    with pytest.raises(InputError, match="different job"):  # one with results is still refused
        run_batch(clean_model, src, "saliency", out, batch_size=8, chunk_size=8)


def _bmp_folder(root, digits_data, n):
    """n digits as BMP files: uncompressed, so every file has the same size."""
    from PIL import Image

    root.mkdir()
    for i in range(n):
        a = (digits_data.images[i, 0].numpy() * 255).astype(np.uint8)
        Image.fromarray(a).save(root / f"img{i:02d}.bmp")
    return root


def test_changed_file_in_a_finished_chunk_is_stale(clean_model, digits_data, tmp_path):
    folder = _bmp_folder(tmp_path / "imgs", digits_data, 6)
    out = tmp_path / "s.zarr"
    kw = dict(batch_size=2, chunk_size=2)
    store = run_batch(clean_model, folder, "saliency", out, **kw)
    assert store.complete and store.verify() == []
    old = store.read("maps")
    # replace img03 (chunk 1) by another digit's file of the same size, as a copy would
    victim, donor = folder / "img03.bmp", folder / "img05.bmp"
    st = victim.stat()
    victim.write_bytes(donor.read_bytes())
    assert victim.stat().st_size == st.st_size
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a later write
    assert store.verify() == [1]
    again = run_batch(clean_model, folder, "saliency", out, **kw)  # resumes: chunk 1 only
    assert again.complete and again.verify() == []
    new = again.read("maps")
    np.testing.assert_array_equal(new[[0, 1, 2, 4, 5]], old[[0, 1, 2, 4, 5]])
    np.testing.assert_array_equal(new[3], old[5])  # the row now shows the new file's content
    assert not np.array_equal(new[3], old[3])


def test_label_target_on_unlabelled_images_fails_before_the_store(clean_model, digits_data, tmp_path):
    src = TensorSource(digits_data.images[:4], clean_model.preprocessing)  # no labels
    with pytest.raises(InputError, match="labelled"):
        run_batch(clean_model, src, "saliency", tmp_path / "s.zarr", target="label")
    assert list(tmp_path.iterdir()) == []
