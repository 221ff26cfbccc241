"""Two convscope trees in one process, their calls interleaved with a peer's (issue #29).

Each tree is imported from its own ``src`` folder with its own set of ``convscope`` modules in
``sys.modules`` (swapped in before each of its calls, outside the timer; each tree's lazy imports
are made during its warm-up calls), so base and changed code are timed in the same seconds,
beside the peer, the order reversed every other repetition. CPU time (``time.process_time``),
one thread, medians, and the medians of each repetition's ratio ("paired").

* ``sal``: saliency on digits-cnn, one image, per call, against Captum's ``Saliency``;
* ``cam``: Grad-CAM on resnet18 (random weights), 224 px, batch 1, layer4, against TorchCAM
  0.5.0's ``GradCAM`` (its hooks on only for its own calls) and a forward pass without gradients.

    python benchmarks/ab_trees.py sal|cam REPS BASE_SRC NEW_SRC [SIDE]

(``SIDE``: the Grad-CAM input's side, default 224; a small one makes the work that is not the
model most of the call.)

(e.g. ``git archive e23bb62 src | tar -x -C /tmp/base`` gives ``/tmp/base/src``). Prints one line.
"""
import importlib
import statistics
import sys
import time
import warnings

import torch

warnings.simplefilter("ignore")
torch.set_num_threads(1)
which, reps, BASE, NEW = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
SIDE = int(sys.argv[5]) if len(sys.argv) > 5 else 224
MODS: dict[str, dict] = {}


def ours() -> list[str]:
    return [k for k in sys.modules if k == "convscope" or k.startswith("convscope.")]


def use(tag: str) -> None:
    """Make ``tag``'s modules the ``convscope`` that imports (lazy ones included) resolve to."""
    for k in ours():
        del sys.modules[k]
    if tag in MODS:
        sys.modules.update(MODS[tag])


if which == "sal":
    from captum.attr import Saliency

    def setup(cs):
        lm = cs.load_model("digits-cnn")
        x = lm.preprocessing.normalize(torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0)))
        t = lm.model(x).argmax(1).tolist()
        return (lambda: cs.explain(lm, x, method="saliency", target=t)), (lm.model, x, t)
else:
    import torchvision
    from torchcam.methods import GradCAM

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    names = [f"class {i}" for i in range(1000)]
    xx = torch.randn(1, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        targets = net(xx).argmax(1).tolist()

    def setup(cs):
        lm = cs.load_model(net, class_names=names, default_layer="layer4")
        return (lambda: cs.explain(lm, xx, method="gradcam", target=targets, batch_size=1)), None

fns = {}
for tag, src in (("base", BASE), ("new", NEW)):
    use(tag)
    sys.path.insert(0, src)
    cs = importlib.import_module("convscope")
    assert cs.__file__.startswith(src), cs.__file__
    f, extra = setup(cs)
    f()
    f()  # lazy imports happen here, under this tree's path
    MODS[tag] = {k: sys.modules[k] for k in ours()}
    sys.path.remove(src)
    fns[tag] = f
if which == "sal":
    net, x, t = extra
    sal = Saliency(net)
    tt = torch.tensor(t)
    fns["peer"] = lambda: sal.attribute(x, target=tt, abs=True)
else:
    ext = GradCAM(net, "layer4")
    ext._hooks_enabled = False

    def torchcam():
        ext._hooks_enabled = True
        try:
            return ext(targets, net(xx))
        finally:
            ext._hooks_enabled = False

    def fwd():
        with torch.no_grad():
            net(xx)

    fns["peer"] = torchcam
    fns["fwd"] = fwd
use("base")
a = fns["base"]()
use("new")
b = fns["new"]()
assert torch.equal(a.map, b.map)
ts: dict[str, list[float]] = {k: [] for k in fns}
for i in range(reps):
    items = list(fns.items())
    if i % 2:
        items.reverse()
    for k, f in items:
        if k in MODS:
            use(k)
        t0 = time.process_time()
        f()
        ts[k].append(time.process_time() - t0)
m = {k: statistics.median(v) for k, v in ts.items()}


def paired(u: str, v: str) -> float:
    return statistics.median(p / q for p, q in zip(ts[u], ts[v], strict=True))


line = [which, str(reps), " ".join(f"{k}={v * 1e3:.3f}ms" for k, v in m.items()),
        f"| base/peer={m['base'] / m['peer']:.4f} new/peer={m['new'] / m['peer']:.4f} "
        f"new/base={m['new'] / m['base']:.4f}",
        f"| paired: base/peer={paired('base', 'peer'):.4f} new/peer={paired('new', 'peer'):.4f} "
        f"new/base={paired('new', 'base'):.4f}"]
if "fwd" in m:
    line.append(f"| base/fwd={m['base'] / m['fwd']:.4f} new/fwd={m['new'] / m['fwd']:.4f} "
                f"peer/fwd={m['peer'] / m['fwd']:.4f}")
print(" ".join(line), flush=True)
