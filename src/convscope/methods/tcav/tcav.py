"""``concept_test``: does the model use a concept for a class? TCAV with a p-value.

Testing with concept activation vectors (Kim et al., ICML 2018). At each layer ``l`` and for each
random set ``R_k`` (k = 1..n):

1. the concept activation vector ``v_k`` points from ``R_k``'s activations towards the concept's
   (:mod:`convscope.methods.tcav._cav`: mean difference by default, SVM or logistic regression);
2. for each image ``x`` of the class, the directional derivative
   ``S(x) = grad_{a_l} logit_class(x) . v_k``, with the gradient taken at the layer's output only
   (no parameter gradients);
3. the TCAV score ``s_k`` is the share of the class's images with ``S(x) > 0``; the magnitude
   ``m_k`` is the mean of ``S(x)`` (Captum's ``magnitude``);
4. the sensitivity: the mean ``S(x)`` along ``v_k`` made orthogonal to the random images' mean
   activation (one more projection, no second pass; :func:`~convscope.methods.tcav._cav.orthogonal_means`);
5. the test (default): every random set plays the concept against the others, and the concept's
   mean sensitivity is compared with theirs by a prediction t-test, Bonferroni-corrected over the
   layers. The paper's test (``statistic="score", null="counterpart"``: the scores of one further
   random set against the same ``R_k``, ``ttest_ind``) is an option; every result holds all four
   p-values and says when random directions reach scores near 0 or 1 (the score is saturated).

All sets stream through the model in batches; with mean-difference vectors memory does not grow
with the number of images. Inside ``with convscope.shared_work():`` a set's activations and the
class's directional derivatives are computed once per model weights, layers and set content and
reused by later tests.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np
import torch

from convscope.core.device import check_device
from convscope.core.errors import AssumptionWarning, InputError, UnreliableResultWarning
from convscope.core.targets import class_index
from convscope.core.validate import Range, check_values, ints, reals
from convscope.methods.tcav._cav import (
    CAV_KINDS,
    NULLS,
    STATISTICS,
    LayerTest,
    activation_scale,
    fit_cav,
    layer_test,
    separation,
)
from convscope.methods.tcav._chunks import ENGINES, check_ray
from convscope.methods.tcav._disk import DiskCache
from convscope.methods.tcav._passes import directional_derivatives, memory_format, set_statistics
from convscope.methods.tcav._sets import (
    CropSource,
    ImageSet,
    PooledSource,
    concept_source,
    digest,
    draw_random_sets,
    same_folder,
)
from convscope.methods.tcav.result import ConceptTest
from convscope.models import load_model

__all__ = ["CONCEPT_RANGES", "concept_test"]

#: Allowed values of the concept test's numeric options (the API and the CLI check the same).
CONCEPT_RANGES: dict[str, Range] = {
    "n_random": ints(2, 500),
    "random_size": ints(2, 100_000),
    "alpha": reals(0.0, 1.0, lo_open=True, hi_open=True),
    "batch_size": ints(1, 4096),
    "seed": ints(0, 2**31 - 1),
    "c": reals(0.0, 1e6, lo_open=True),
    "num_workers": ints(0, 64),
}
#: Fewer concept or class images than this make the result warn.
FEW_IMAGES = 10
#: A CAV whose training accuracy is below this separates the sets too poorly to mean much.
POOR_SEPARATION = 0.7


def _class_set(lm: Any, data: Any, target: int, space: str) -> tuple[ImageSet, str]:
    src = concept_source(data, lm.preprocessing, space=space, what="class image")
    name = lm.class_names[target]
    about = "every image given"
    if src.class_names:  # labelled data: the images labelled with the target class's name
        if name not in src.class_names:
            raise InputError(f"the class images have no class {name!r} (theirs: "
                             f"{', '.join(src.class_names[:10])}); give a folder of {name!r} images")
        from convscope.data.sources import Subset

        k = src.class_names.index(name)
        idx = np.flatnonzero(src.labels() == k)
        src = Subset(src, idx.tolist())
        about = f"the images labelled {name!r}"
    if len(src) == 0:
        raise InputError(f"no class images of {name!r}; give at least one")
    return ImageSet(f"class {name}", src, digest(src, target), about), about


def _layers(lm: Any, layers: Any) -> tuple[list[str], str | None]:
    from convscope.core.hooks import resolve_layers

    if layers is None:
        if lm.default_layer is None:
            raise InputError("the model has no default layer with a spatial map; pass layers=")
        return [lm.default_layer], (f"layers: {lm.default_layer} (the model's default layer; pass layers= "
                                    "to test others)")
    names = resolve_layers(lm.model, layers)
    if not names:
        raise InputError("layers= names no layer; give at least one")
    return names, None


def concept_test(
    model: Any,
    concept_images: Any,
    target_class: int | str,
    *,
    class_images: Any,
    layers: str | list[str] | None = None,
    random_sets: Any = None,
    n_random: int = 10,
    random_size: int | None = None,
    cav: str = "mean_difference",
    null: str = "exchangeable",
    statistic: str = "sensitivity",
    alpha: float = 0.05,
    seed: int = 0,
    concept_name: str | None = None,
    space: str = "model",
    c: float = 0.01,
    batch_size: int = 32,
    num_workers: int = 0,
    device: Any = None,
    channels_last: bool = False,
    cache_dir: str | os.PathLike | None = None,
    engine: str = "local",
    ray_address: str | None = None,
) -> ConceptTest:
    """Test whether ``model`` uses a concept to predict ``target_class`` (TCAV with a p-value).

    Args:
        model: anything :func:`convscope.load_model` takes.
        concept_images: the concept's examples: an image folder, an (N, C, H, W) tensor or a list of
            (C, H, W) tensors (read as ``space`` says), or a list of ``(image, mask)`` regions
            (:func:`convscope.methods.tcav.regions`; each cut out to its mask's bounding box, unless
            made with ``keep_place=True``). At least 2 images.
        target_class: the class, by index or name.
        class_images: images of the class whose directional derivatives are tested: a folder
            (with class sub-folders, the one named like the class is used), ``"digits:test"``
            (its images of the class), a tensor or a list of tensors.
        layers: layer names or glob patterns (default: the model's default layer, recorded as
            assumed). Each must give a spatial (B, C, H, W) activation.
        random_sets: a pool of unrelated images (a folder, a tensor, a list of folders, pooled) from
            which ``n_random + 1`` sets are drawn, seeded. ``None``: random crops of the class
            images (:class:`~convscope.methods.tcav._sets.CropSource`), recorded as assumed.
        n_random: random sets the concept is tested against (>= 2; the paper's test wants >= 10).
        random_size: images per random set (default: as many as the concept has).
        cav: ``"mean_difference"`` (default), ``"svm"`` or ``"logistic"``.
        null: ``"exchangeable"`` (default: every random set plays the concept against the others)
            or ``"counterpart"`` (the paper's: one further random set plays the concept).
        statistic: ``"sensitivity"`` (default: the mean directional derivative along the CAV made
            orthogonal to the random images' mean activation) or ``"score"`` (the paper's TCAV
            score). The paper's test is ``statistic="score", null="counterpart"``; every result holds
            the four p-values (:mod:`convscope.methods.tcav._cav`).
        alpha: significance level of the Bonferroni-corrected p-value.
        seed: seeds the random sets and the classifiers.
        concept_name: the concept's name in results (default: the folder's name, else "concept").
        space: how tensors are read: ``"model"`` (what the model takes) or ``"pixels"``.
        c: inverse regularisation of the SVM / logistic regression, for activations divided by
            their mean norm over the random sets at the layer (so it means the same at every layer).
        batch_size, num_workers, device: how the sets stream through the model.
        channels_last: run the passes of a network with 4-D weights in ``torch.channels_last``
            (recorded in the result). On resnet18 at 112 px, one thread, it took 0.66-0.76x the
            CPU time, with the same TCAV scores but sensitivities up to 0.36% apart (float
            rounding of other kernels, amplified by the projection off the mean activation; the
            default format gives bit-identical numbers at any thread count and batch size), so
            it is off by default (``benchmarks/bench_concepts.py``).
        cache_dir: a folder where the model passes' results (set activation sums, the class's
            directional derivatives) are kept per model weights, preprocessing, layers and set
            content, and read back by later tests, in later processes too
            (:mod:`convscope.methods.tcav._disk`): a repeated test does no model pass.
        engine: where the set images' activation passes run: ``"local"`` (default: this process,
            ``num_workers`` reading images) or ``"ray"`` (the shared chunk engine's Ray actors,
            extra ``ray``; the same numbers, :mod:`convscope.methods.tcav._chunks`).
        ray_address: the Ray for ``engine="ray"`` (default: the running or a local Ray); it must
            run on this machine (the chunks go to a temporary store here), and the model on the CPU.

    Returns:
        A :class:`~convscope.methods.tcav.ConceptTest`.

    Raises:
        InputError: fewer than 2 concept images, the concept folder used as the random pool, an
            unknown class, a layer without spatial activations, images the model cannot take, an
            option out of range, ``engine="ray"`` with a model off the CPU or a Ray elsewhere.
    """
    check_values(**{k: (v, CONCEPT_RANGES[k]) for k, v in
                    dict(n_random=n_random, alpha=alpha, batch_size=batch_size, seed=seed, c=c,
                         num_workers=num_workers).items()})
    if random_size is not None:
        check_values(random_size=(random_size, CONCEPT_RANGES["random_size"]))
    if cav not in CAV_KINDS:
        raise InputError(f"unknown cav {cav!r}; use one of {', '.join(CAV_KINDS)}")
    if null not in NULLS:
        raise InputError(f"unknown null {null!r}; use one of {', '.join(NULLS)}")
    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    if statistic not in STATISTICS:
        raise InputError(f"unknown statistic {statistic!r}; use one of {', '.join(STATISTICS)}")
    several = isinstance(random_sets, (list, tuple)) and not _is_tensor_list(random_sets)
    pools = list(random_sets) if several else [random_sets]
    if any(same_folder(concept_images, p) for p in pools):
        raise InputError("the concept folder is also the random folder; random sets must be unrelated images")

    check_device(device)
    lm = load_model(model)
    p = next(lm.model.parameters(), None)
    want = None if device is None else torch.device(device)
    if want is not None and p is not None and (want.type != p.device.type or
                                                want.index not in (None, p.device.index)):
        raise InputError(f"the model is on {p.device}, not {device}: move it there first "
                         "(model.to(device)) or leave device out")
    if engine == "ray":
        check_ray(None if p is None else p.device, ray_address)
    pre = lm.preprocessing
    lm.fill_from_input(torch.zeros(1, pre.channels, *pre.size))
    assumed = list(lm.assumed)
    target = class_index(target_class, lm.class_names, len(lm.class_names))
    names, note = _layers(lm, layers)
    if note:
        assumed.append(note)
        warnings.warn(f"convscope assumed for the concept test: {note}", AssumptionWarning, stacklevel=2)

    csrc = concept_source(concept_images, pre, space=space)
    if len(csrc) < 2:
        raise InputError(f"the concept has {len(csrc)} image(s); a concept vector needs at least 2 "
                         f"(aim for {FEW_IMAGES} or more)")
    cname = concept_name or (str(concept_images).rstrip("/").split("/")[-1]
                             if isinstance(concept_images, str) else "concept")
    concept = ImageSet(cname, csrc, digest(csrc), "the concept's examples")
    cls, cls_about = _class_set(lm, class_images, target, space)
    size = random_size or len(csrc)

    if random_sets is None:
        pool = CropSource(cls.source, max(4 * size, 200), seed)
        about = ("random crops (30-70% of the side) of the class images, resized; none were given: "
                 "pass random_sets= a folder of unrelated images for the paper's null")
        assumed.append(f"random sets: {about}")
        warnings.warn(f"convscope assumed for the concept test: random sets are {about}", AssumptionWarning,
                      stacklevel=2)
    else:
        parts = [concept_source(p, pre, space=space, what="random") for p in pools]
        pool = parts[0] if len(parts) == 1 else PooledSource(parts)
        about = f"drawn from {len(pool)} unrelated images"
    if digest(pool) == concept.key:
        raise InputError("the concept images are also the random pool; random sets must be unrelated images")
    randoms = draw_random_sets(pool, n_random + 1, size, seed, about)

    net = lm.model
    keep = cav != "mean_difference"
    disk = None if cache_dir is None else DiskCache(cache_dir, net, pre.to_dict())
    kw = dict(batch_size=batch_size, num_workers=num_workers, device=device,
              channels_last=bool(channels_last), disk=disk)
    on = dict(engine=engine, ray_address=ray_address)
    (cstats,) = set_statistics(net, [concept], names, keep_rows=keep, **kw, **on)
    rstats = set_statistics(net, randoms, names, keep_rows=keep, **kw, **on)

    for n in names:
        for other in rstats:
            if other[n].shape != cstats[n].shape:
                raise InputError(f"at layer {n!r} the concept images give activations of {cstats[n].shape}, "
                                 f"the random images {other[n].shape}: give images of the model's input size "
                                 f"({pre.size[0]}x{pre.size[1]})")
    partners = n_random - 1 if cav == "mean_difference" else min(3, n_random - 1)
    pairs_ = [(j, 1 + (j - 1 + d) % n_random) for j in range(1, n_random + 1) for d in range(1, partners + 1)]
    vectors: dict[str, torch.Tensor] = {}
    cosines: dict[str, torch.Tensor] = {}
    seps: dict[str, list[float]] = {}
    for n in names:
        fit = dict(seed=seed, c=c, scale=activation_scale([rs[n] for rs in rstats]))
        vs = [fit_cav(cav, cstats[n], rs[n], **fit) for rs in rstats[1:]]
        vs += [fit_cav(cav, rstats[0][n], rs[n], **fit) for rs in rstats[1:]]
        vs += [fit_cav(cav, rstats[j][n], rstats[k][n], **fit) for j, k in pairs_]
        total = sum(rs[n].total for rs in rstats)
        o = (total / max(float(total.norm()), 1e-30)).float()  # the random images' mean activation, unit
        cosines[n] = torch.stack(vs) @ o
        vectors[n] = torch.stack([*vs, o])
        pairs = zip(vs[:n_random], rstats[1:], strict=True)
        seps[n] = [s for s in (separation(v, cstats[n], rs[n]) for v, rs in pairs) if s is not None]
    dd = directional_derivatives(net, cls, target, vectors, **kw)
    tests = [layer_test(n, dd[n], cosines[n], n_random=n_random, partners=partners, statistic=statistic,
                        null=null, n_layers=len(names), alpha=alpha,
                        separation=float(np.mean(seps[n])) if seps[n] else None) for n in names]

    notes = _notes(len(csrc), len(cls), tests, alpha)
    result = ConceptTest(
        concept=cname, target=target, target_name=lm.class_names[target], layers=tuple(tests),
        cav=cav, alpha=alpha, n_concept=len(csrc), n_class=len(cls), n_random=n_random, random_size=size,
        random_source=about, class_source=cls_about, seed=seed, strip=_strip(csrc),
        model_info={**lm.info(), "assumed": assumed}, notes=tuple(notes),
        vectors={n: v[:n_random].clone() for n, v in vectors.items()},
        options={"batch_size": batch_size, "null": null, "statistic": statistic, "c": c, "space": space,
                 "channels_last": memory_format(net, bool(channels_last)) is not None, "engine": engine})
    for note_ in notes:
        warnings.warn(f"concept test: {note_}", UnreliableResultWarning, stacklevel=2)
    return result


def _is_tensor_list(v: Any) -> bool:
    """A list of (C, H, W) tensors (one pool), not a list of pools."""
    return len(v) > 0 and all(isinstance(t, torch.Tensor) and t.ndim == 3 for t in v)


def _notes(n_concept: int, n_class: int, tests: list[LayerTest], alpha: float) -> list[str]:
    out = []
    if n_concept < FEW_IMAGES:
        out.append(f"only {n_concept} concept images: the vectors are noisy; give {FEW_IMAGES} or more")
    if n_class < FEW_IMAGES:
        out.append(f"only {n_class} class images: each score moves in steps of {1 / n_class:.2f}; "
                   f"give {FEW_IMAGES} or more")
    for t in tests:
        default = f"{STATISTICS[0]}/{NULLS[0]}"
        if t.significant and f"{t.statistic}/{t.null}" != default and t.p_values[default] >= alpha:
            out.append(f"{t.layer}: significant by the {t.statistic}/{t.null} test but not by the "
                       f"{default} test (p = {t.p_values[default]:.2g}): a set of random images can score "
                       "like this concept")
        if t.magnitude * t.sensitivity < 0:
            out.append(f"{t.layer}: the mean derivative along the concept vectors ({t.magnitude:.2g}) "
                       "changes "
                       f"sign once the random images' mean activation is taken out ({t.sensitivity:.2g}): "
                       "the raw score rides on how much more the concept activates the layer overall")
        if t.saturated:
            out.append(f"{t.layer}: the TCAV score is saturated: {t.saturation:.0%} of random directions "
                       "score <= 0.1 or >= 0.9 (the class's gradient hardly changes from image to image), "
                       "so a score near 0 or 1 is no evidence of the concept; read the sensitivity test")
        if t.separation is not None and t.separation < POOR_SEPARATION:
            out.append(f"{t.layer}: the concept vectors separate concept from random images only "
                       f"{t.separation:.0%} of the time; the score says little about this concept")
    return out


def _strip(src: Any, k: int = 8) -> np.ndarray:
    """Up to ``k`` of the concept's images as display pixels, (k, H, W, 3) uint8."""
    idx = np.linspace(0, len(src) - 1, min(k, len(src))).round().astype(int)
    return np.stack([(src.pixels(int(i)) * 255).round().astype(np.uint8) for i in idx])
