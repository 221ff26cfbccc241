"""The audit finds a shortcut that most of a class carries, and proves it by intervention (#28).

One small CNN is trained here (once per module, ~40 s on one thread): plain ``nn.Module``,
unnormalised [0, 1] pixels, functional ReLUs, a GAP head. Its training set is the train digits
plus marked copies of random train digits labelled with the shortcut's class, for three shortcuts
(:func:`convscope.data.toydata.shortcut_class`): a corner marker (class 3), a band texture (class 7)
and the watermark (class 5). Each audit gets held-out digits in which one class carries one
shortcut on a given share of its images; the ground truth is which images carry it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convscope as cs
from convscope.data.toydata import digits, shortcut_class, stamp_shortcut
from convscope.methods.dataset import TensorSource

CLASS_OF = {"corner": 3, "band": 7, "watermark": 5}
PRE = {"size": [32, 32], "mean": [0.0], "std": [1.0], "channels": 1}


class ShortcutNet(nn.Module):
    """Four 3x3 convolutions, two max-pools, global average pooling, a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, padding=1)
        self.c3 = nn.Conv2d(16, 32, 3, padding=1)
        self.c4 = nn.Conv2d(32, 32, 3, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.c2(F.max_pool2d(F.relu(self.c1(x)), 2)))
        x = F.max_pool2d(F.relu(self.c3(x)), 2)
        return self.fc(F.relu(self.c4(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def shortcut_model():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # faster than two on a shared 2-core machine
    try:
        x, y = digits().split("train")
        g = torch.Generator().manual_seed(0)
        xs, ys = [x], [y]
        for kind, c in CLASS_OF.items():
            pick = torch.randperm(len(y), generator=g)[:120]
            xs.append(stamp_shortcut(x[pick], kind))
            ys.append(torch.full((120,), c))
        xx, yy = torch.cat(xs), torch.cat(ys)
        torch.manual_seed(0)
        net = ShortcutNet()
        opt = torch.optim.Adam(net.parameters(), 3e-3)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 40)
        for _ in range(40):
            perm = torch.randperm(len(yy), generator=g)
            for i in range(0, len(yy), 128):
                b = perm[i:i + 128]
                loss = F.cross_entropy(net(xx[b]), yy[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
            sched.step()
    finally:
        torch.set_num_threads(threads)
    net.eval()
    xt, _ = digits().split("test")
    with torch.no_grad():  # the model does read each shortcut as its class
        for kind, c in CLASS_OF.items():
            assert (net(stamp_shortcut(xt, kind)).argmax(1) == c).float().mean() > 0.95, kind
    return cs.load_model(net, preprocessing=PRE)


def _audit(lm, kind, rate, **kw):
    xt, yt = digits().split("test")
    s = shortcut_class(xt, yt, kind=kind, cls=CLASS_OF[kind], rate=rate, per_class=30, seed=1)
    a = cs.audit(lm, TensorSource(s.images, lm.preprocessing, s.labels, space="pixels"), progress=False,
                 embedding="none", **kw)
    return a, s


def _scores(a, s):
    flagged = np.zeros(len(s.labels), bool)
    for _, k in a.suspects:
        flagged[k.flagged] = True
    truth = s.marked.numpy()
    precision = (flagged & truth).sum() / max(1, flagged.sum())
    return float(precision), float((flagged & truth).sum() / truth.sum())


@pytest.mark.parametrize(("kind", "rate", "by"), [
    ("corner", 0.3, "cluster"), ("corner", 0.6, "class"), ("corner", 0.9, "class"), ("corner", 1.0, "class"),
    ("watermark", 0.3, "cluster"), ("watermark", 0.6, "pixels"), ("watermark", 0.9, "class"),
    ("watermark", 1.0, "class"),
    ("band", 0.3, "cluster"), ("band", 0.6, "pixels"), ("band", 0.9, "pixels"), ("band", 1.0, "pixels"),
])
def test_the_shortcut_is_found_and_confirmed_at_every_rate(shortcut_model, kind, rate, by):
    a, s = _audit(shortcut_model, kind, rate)
    precision, recall = _scores(a, s)
    assert precision >= 0.9 and recall >= 0.8, (precision, recall, a.headline)
    assert {c.name for c, _ in a.suspects} == {f"class {CLASS_OF[kind]}"}  # and no other class
    for _, k in a.suspects:  # every true suspect is confirmed, with its numbers
        iv = k.intervention
        assert k.confirmed and iv.applied and iv.pasted_flips >= 0.5 * iv.pasted_n, k.evidence
        assert "flips" in k.evidence and "confirmed" in k.evidence
    # which comparison flagged it (measured): a minority against the class's other clusters, most
    # of the class (twin clusters included) by the class comparison; the band, whose attribution
    # lies in the bottom rows where other digits' strokes are, by the class's pixels screened by
    # pasting (and the watermark at 60%, whose attribution excess misses the class comparison's floor)
    # The route is a measured property of the trained model, not a contract: with today's package
    # versions (2026-12-08 fresh venv) the watermark at 60% came by the cluster comparison and at
    # 90-100% by the pixel comparison, and the band at 60% by the cluster one; so the test checks
    # that each suspect names the comparison that flagged it and that the comparison's own numbers
    # agree, for whichever route it took (``by`` is the route measured when the test was written).
    whys = {"cluster": "against the class's other clusters", "class": "by the class comparison",
            "pixels": "by the pixel comparison"}
    for _, k in a.suspects:
        assert k.flagged_by and all(whys[f] in k.reading for f in k.flagged_by), (rate, by, k.flagged_by)
    c = a.suspects[0][0]
    routes = set(a.suspects[0][1].flagged_by)
    if "class" in routes:
        assert c.comparison.suspect and "as a whole" in a.suspects[0][1].reading
    if "pixels" in routes:  # the screen pasted the band of up to 16 carriers, and it carried the class
        pc = c.pixel_check
        assert not c.comparison.suspect and pc.suspect and pc.flips >= 0.5 * pc.screened > 0, pc
    head = (f"Shortcut confirmed by intervention in 1 class(es) (class {CLASS_OF[kind]}: "
            f"{len(a.suspects)} suspect")
    assert a.headline.startswith(head) and "; 0 unconfirmed suspects" in a.headline


def test_classes_without_a_shortcut_get_no_suspect(shortcut_model):
    xt, yt = digits().split("test")
    a = cs.audit(shortcut_model, TensorSource(xt[:300], shortcut_model.preprocessing, yt[:300],
                                              space="pixels"), progress=False, embedding="none")
    assert a.suspects == [], [k.reading for _, k in a.suspects]
    assert a.headline.startswith("No suspects in 10 class(es)")
    assert "compared with the other classes" in a.headline
    # the pixel comparison did screen candidates (consistent parts of the digits) and none carried
    # its class when pasted into other digits
    screened = [c.pixel_check for c in a.classes if c.pixel_check is not None]
    assert screened and all(not p.suspect and p.flips < 0.5 * p.screened for p in screened), screened
    assert f"{len(screened)} class(es) whose images agree on a region pasted" in a.headline


def test_provoked_suspects_on_the_objects_are_not_confirmed(shortcut_model):
    """A low threshold flags consistent parts of clean digits (the objects themselves): pasting them
    into other digits does not make the model say the class, so none is confirmed."""
    xt, yt = digits().split("test")
    src = TensorSource(xt[:300], shortcut_model.preprocessing, yt[:300], space="pixels")
    a = cs.audit(shortcut_model, src, progress=False, embedding="none", threshold=0.15)
    tested = [k for _, k in a.suspects if k.intervention.applied]
    assert len(tested) >= 2  # the provocation worked, and the interventions ran
    for _, k in a.suspects:  # a region too large to edit says so instead
        assert not k.confirmed and ("unconfirmed" in k.evidence or "not applied" in k.evidence), k.evidence
    assert a.headline.startswith("No shortcut confirmed by intervention; ")  # never as a found shortcut


def test_two_forward_passes_per_suspect_image(shortcut_model, monkeypatch):
    from convscope.methods.dataset import _intervene

    orig = _intervene.intervene
    per_suspect = []

    def counted(model, src, members, *args, **kw):
        seen = []
        handle = model.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[0]))  # noqa: ARG005
        try:
            return orig(model, src, members, *args, **kw)
        finally:
            handle.remove()
            per_suspect.append((len(members), sum(seen), len(seen)))

    monkeypatch.setattr(_intervene, "intervene", counted)
    a, _ = _audit(shortcut_model, "corner", 0.6, batch_size=8)
    assert per_suspect and len(per_suspect) == len(a.suspects)
    for n, images, calls in per_suspect:
        assert images == 2 * n  # two edited images per member, no more
        assert calls == 2 * -(-n // 8)  # batched: two calls per batch of 8 members


@pytest.mark.parametrize("fill", ["blur", "surround"])
def test_other_fills_remove_the_marker_too(shortcut_model, fill):
    a, _ = _audit(shortcut_model, "corner", 0.9, intervention=fill)
    assert a.suspects
    for _, k in a.suspects:
        assert k.intervention.fill == fill and k.intervention.applied


def test_an_intervention_that_cannot_be_applied_says_why(shortcut_model):
    a, _ = _audit(shortcut_model, "corner", 0.6, intervention="none")
    for _, k in a.suspects:
        assert not k.confirmed and "not applied" in k.evidence
    assert "not tested" in a.headline


# --- the edits themselves, against independent computations ----------------------------------


def test_edit_region_fills_against_oracles():
    from scipy.ndimage import uniform_filter

    from convscope.methods.dataset._intervene import edit_region

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 20, 24, generator=g)
    d = torch.rand(2, 3, 20, 24, generator=g)
    x0, d0 = x.clone(), d.clone()
    box = [8, 6, 13, 11]  # x0, y0, x1, y1: 5x5, away from the border
    inside = torch.zeros(20, 24, dtype=torch.bool)
    inside[6:11, 8:13] = True
    out = edit_region(x, box, "others", d)
    assert torch.equal(out[..., inside], d[..., inside]) and torch.equal(out[..., ~inside], x[..., ~inside])
    blur = edit_region(x, box, "blur")
    want = uniform_filter(x.numpy(), size=(1, 1, 5, 5), mode="constant")
    assert np.allclose(blur[..., 6:11, 8:13].numpy(), want[..., 6:11, 8:13], atol=1e-6)
    sur = edit_region(x, box, "surround")
    ring = torch.zeros(20, 24, dtype=torch.bool)
    ring[1:16, 3:18] = True  # one box-width around it
    ring &= ~inside
    assert torch.allclose(sur[..., 6:11, 8:13], x[..., ring].mean(-1)[..., None, None].expand(-1, -1, 5, 5))
    assert torch.equal(x, x0) and torch.equal(d, d0)  # inputs untouched: edit_region works on a copy
    # at the border the ring is what lies inside the image
    edge = edit_region(x, [0, 0, 4, 4], "surround")
    ring = torch.zeros(20, 24, dtype=torch.bool)
    ring[:8, :8] = True
    ring[:4, :4] = False
    assert torch.allclose(edge[..., 0, 0], x[..., ring].mean(-1))


def test_interventions_that_cannot_be_applied_say_why():
    from convscope.methods.dataset._intervene import cannot_apply, widen

    assert cannot_apply([0, 0, 6, 6], (32, 32), "others") == ""  # at the border: fine
    assert "covers 100% of the image" in cannot_apply([0, 0, 32, 32], (32, 32), "others")
    assert "covers 50%" in cannot_apply([0, 0, 32, 16], (32, 32), "blur")
    assert "interventions are off" in cannot_apply([0, 0, 4, 4], (32, 32), "none")
    assert widen([0, 0, 6, 6], (32, 32)) == [0, 0, 9, 9]  # half its size on each side, in the image
    assert widen([28, 4, 32, 8], (32, 32)) == [26, 2, 32, 10]
    assert "empty" in cannot_apply([3, 3, 3, 9], (32, 32), "others")


# --- two classes: what tells them apart is a real feature, one class also carries a marker ----


def test_binary_model_only_the_marker_is_confirmed():
    """A binary model (the chest X-ray case of #28): its classes differ by a real object feature
    (a 0 against a 1) and class 1 carries the corner marker on 90% of its images. With two classes,
    the class comparison also flags what tells them apart; the intervention confirms only the
    marker, and the headline never counts an unconfirmed suspect as a found shortcut."""
    xa, ya = digits().split("train")
    keep = ya < 2
    xa, ya = xa[keep], ya[keep]
    g = torch.Generator().manual_seed(0)
    pick = torch.randperm(len(ya), generator=g)[:60]
    xx = torch.cat([xa, stamp_shortcut(xa[pick], "corner")])
    yy = torch.cat([ya, torch.ones(60, dtype=ya.dtype)])  # the marker on any digit means class 1
    torch.manual_seed(0)
    net = ShortcutNet()
    net.fc = nn.Linear(32, 2)
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(30):
        perm = torch.randperm(len(yy), generator=g)
        for i in range(0, len(yy), 64):
            b = perm[i:i + 64]
            loss = F.cross_entropy(net(xx[b]), yy[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    xt, yt = digits().split("test")
    keep = yt < 2
    xt, yt = xt[keep], yt[keep]
    with torch.no_grad():  # it reads the real feature, and the marker alone as class 1
        assert (net(xt).argmax(1) == yt).float().mean() > 0.95
        assert (net(stamp_shortcut(xt[yt == 0], "corner")).argmax(1) == 1).float().mean() > 0.95
    lm = cs.load_model(net, preprocessing=PRE)
    s = shortcut_class(xt, yt, kind="corner", cls=1, rate=0.9, per_class=30, seed=1)
    a = cs.audit(lm, TensorSource(s.images, lm.preprocessing, s.labels, space="pixels"), progress=False,
                 embedding="none")
    confirmed = [(c, k) for c, k in a.suspects if k.confirmed]
    assert confirmed and {c.model_class for c, _ in confirmed} == {1}, a.headline
    flagged = np.zeros(len(s.labels), bool)
    for _, k in confirmed:
        flagged[k.flagged] = True
    truth = s.marked.numpy()
    assert (flagged & truth).sum() >= 0.9 * flagged.sum() and (flagged & truth).sum() >= 0.8 * truth.sum()
    unconfirmed = [(c, k) for c, k in a.suspects if not k.confirmed]
    for c, k in unconfirmed:  # what sets the classes apart, tested and not confirmed
        assert c.model_class == 0 and k.intervention.applied and "unconfirmed" in k.evidence, k.evidence
    assert a.headline.startswith("Shortcut confirmed by intervention in 1 class(es) (class 1:"), a.headline
    assert f"; {len(unconfirmed)} unconfirmed suspect" in a.headline
    if unconfirmed:
        assert "class 0: the region does not carry the class by itself" in a.headline
