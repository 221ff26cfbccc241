"""Build the explanation report: every chosen method, side by side, on each image.

Everything here is driven by the method registry: the list of methods, their titles, colour
bars (signed or not), whether they need a layer, the one-line note (summary and caveats) and the
cheap settings used when ``fast=True``. A method registered tomorrow appears in the report
without an edit here.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from convscope.core.document import Figure, Report, model_rows
from convscope.core.errors import ConvscopeError, MethodError
from convscope.core.progress import Progress
from convscope.core.targets import check_topk, resolve_target, top_classes
from convscope.methods.attribution._shared import clean_outputs, shared_work
from convscope.methods.registry import MethodInfo, get_method, list_methods, unmet_requirement

__all__ = ["MethodRun", "explain_report", "explanation_figure", "method_note", "resolve_methods",
           "run_methods", "top_k"]


def resolve_methods(names: Sequence[str] | None) -> list[MethodInfo]:
    """Method names, family names (``"cam"``) or ``"all"`` -> registry entries, in order.

    ``None`` or an empty list means every registered method.

    Raises:
        MethodError: a name is neither a method nor a family (the message lists close names).
    """
    every = list_methods()
    if not names:
        return every
    families = {m.family for m in every}
    out: list[MethodInfo] = []
    for raw in names:
        for name in (n.strip() for n in str(raw).split(",")):
            if not name:
                continue
            if name == "all":
                picked = every
            elif name in families:
                picked = [m for m in every if m.family == name]
            else:
                picked = [get_method(name)]
            out.extend(m for m in picked if m not in out)
    if not out:
        raise MethodError("no method chosen; name methods or families (run `convscope methods`)")
    return out


def method_note(info: MethodInfo) -> str:
    """The one-line note shown with a method: what it shows, then its caveats."""
    parts = []
    if info.summary:
        parts.append(info.summary[:1].upper() + info.summary[1:].rstrip("."))
    if info.caveats:
        parts.append("Caveat: " + info.caveats.rstrip("."))
    return ". ".join(parts) + ("." if parts else "")


def top_k(probs: Sequence[float], names: Sequence[str], k: int = 3) -> list[tuple[str, float]]:
    """The ``k`` most probable (name, probability) pairs, most probable first."""
    return [(name, p) for _, name, p in top_classes(probs, names, k)]


@dataclass
class MethodRun:
    """The outcome of one method on the whole batch: an explanation or the reason it failed."""

    info: MethodInfo
    explanation: Any = None
    error: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    fast: bool = False


def _figure_for(run: MethodRun, j: int, pixelated: bool) -> Figure:
    info = run.info
    if run.explanation is None:
        return Figure(src="", title=info.name, caption=f"not computed: {run.error}",
                      note=method_note(info), kind="skipped", family=info.family)
    e = run.explanation
    t = e.targets[j]
    p = ""
    if e.probabilities is not None and t is not None:
        p = f" (p = {float(e.probabilities[j, t]):.2f})"
    meta = [f"explains {e.target_name(j)}{p}"]
    if e.layer:
        meta.append(f"layer {e.layer}")
    if run.fast and run.options:
        meta.append("fast settings: " + ", ".join(f"{k}={v}" for k, v in run.options.items()))
    for k, v in e.diagnostics.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            meta.append(f"{k} = {v:.3g}")
    return explanation_figure(e, j, title=info.name, caption=" · ".join(meta), note=method_note(info),
                              kind="method", family=info.family, pixelated=pixelated)


def explanation_figure(e: Any, j: int, *, bars: int = 0, **kw: Any) -> Figure:
    """The figure of sample ``j`` of explanation ``e``: its overlay with the colour bar of its sign.

    Args:
        bars: show the ``bars`` most probable classes under it (0: none; none without probabilities).
        **kw: the other :class:`Figure` fields (title, caption, note, ...).
    """
    if bars and e.probabilities is not None:
        kw["bars"] = top_k(e.probabilities[j].tolist(), e.class_names, bars)
    kw.setdefault("colorbar", "signed" if e.signed else "unsigned")
    because = e.unreliable_because(j) if hasattr(e, "unreliable_because") else None
    if because:
        kw.setdefault("warning", because)
    return Report.figure(e.overlay(j), **kw)


def _old_order(model: Any, images: Any) -> bool:
    """Whether ``explain_report`` was called the old way, ``(images, model)``: images first."""
    import numpy as np
    from PIL import Image

    def imageish(v: Any) -> bool:
        return isinstance(v, (list, tuple, torch.Tensor, np.ndarray, Image.Image))

    return imageish(model) and not imageish(images)


def run_methods(
    lm: Any,
    x: torch.Tensor,
    infos: Sequence[MethodInfo],
    *,
    target: Any = None,
    layer: str | None = None,
    fast: bool = False,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool | None = None,
    share: bool = True,
) -> tuple[torch.Tensor, list[MethodRun]]:
    """The class probabilities of ``x`` and every method's explanation of it: the report's work.

    Args:
        lm: the loaded model.
        x: (B, C, H, W) model-space inputs on the model's device.
        infos: the methods, in order.
        target, layer, fast, batch_size, seed, progress: as for :func:`explain_report`.
        share: compute what several methods need (the clean logits, a CAM layer's forward and
            backward pass, the input gradient) once for all of them
            (:func:`~convscope.methods.attribution._shared.shared_work`); the results are the same
            either way.

    Returns:
        (probabilities (B, K) on the CPU, one :class:`MethodRun` per method).
    """
    from convscope.core.hooks import state_guard
    from convscope.methods.explain import explain

    runs: list[MethodRun] = []
    with shared_work() if share else contextlib.nullcontext():
        with state_guard(lm.model):
            logits = clean_outputs(lm.model, x, batch_size)
        if target is not None:  # a bad target is the caller's error, not a report of error panels
            resolve_target(target, logits, lm.class_names)
        probs = torch.softmax(logits.float(), 1).cpu()
        with Progress("report: methods", len(infos), enabled=progress, unit="methods") as bar:
            for k, info in enumerate(infos):
                opts = dict(info.fast_options) if fast else {}
                try:
                    e = explain(lm, x, method=info.name, target=target,
                                layer=layer if info.needs_layer else None,
                                batch_size=batch_size, seed=seed, **opts)
                    runs.append(MethodRun(info, e, options=opts, fast=fast))
                except ConvscopeError as exc:
                    runs.append(MethodRun(info, error=str(exc), options=opts, fast=fast))
                bar.update(k + 1)
    return probs, runs


def explain_report(
    model: Any,
    images: Sequence[Any],
    *,
    methods: Sequence[str] | None = None,
    target: Any = None,
    topk: int | None = None,
    layer: str | None = None,
    fast: bool = False,
    batch_size: int = 32,
    seed: int = 0,
    labels: Sequence[str] | None = None,
    title: str | None = None,
    extra_sections: Sequence[Callable[[Report, Any], None]] = (),
    progress: bool | None = None,
    preprocessing: Any = None,
    compare: int = 0,
    compare_method: str = "gradcam",
) -> Report:
    """Explain ``images`` with every chosen method and lay the results out as a :class:`Report`.

    Args:
        model: a spec for :func:`~convscope.load_model`, an ``nn.Module`` or a loaded model.
        images: paths, PIL images or arrays (anything :func:`~convscope.load_image` reads).
            The old order ``explain_report(images, model)`` still works for now, with a
            ``DeprecationWarning``: the arguments are ``(model, images)`` as everywhere in convscope.
        methods: method or family names (``None``: every registered method that applies to the
            model, :func:`~convscope.methods.registry.unmet_requirement`; the report names those left out).
        target: the class to explain (``None``: the predicted class of each image).
        topk: how many class probabilities the bar chart shows (default 5, or every class of a
            model with fewer); more than the model's classes is refused.
        layer: layer for the methods that need one (default: the model's default layer).
        fast: run each method with its registry ``fast_options`` (said so in the report).
        batch_size, seed: passed to :func:`~convscope.explain`.
        labels: a display name per image (default: "image 1", ...).
        title: the report title.
        extra_sections: callables ``f(report, loaded_model)`` that append more sections (class
            visualisations, channel galleries, filters).
        progress: progress over the methods on stderr: ``None`` (default) a bar on a terminal and
            a line every 10 s (and at the end) elsewhere, such as a CI log or a notebook;
            ``False``: silent.
        preprocessing: the model's preprocessing, for a plain ``nn.Module`` (a preset name, a
            dict or a Preprocessing; see :func:`~convscope.load_model`).
        compare: also explain each image's ``compare`` most probable classes side by side on one
            colour scale with ``compare_method`` (:func:`convscope.methods.grids.explain_classes`); 0: no.

    Returns:
        The report; call ``.write(path)``.
    """
    from convscope.methods.explain import prepare_inputs
    from convscope.models import load_model

    if _old_order(model, images):
        import warnings

        warnings.warn("explain_report(images, model) is deprecated: call explain_report(model, images), "
                      "the argument order of every convscope function", DeprecationWarning, stacklevel=2)
        model, images = images, model
    infos = resolve_methods(methods)
    lm = load_model(model, preprocessing=preprocessing)
    if isinstance(images, torch.Tensor):  # a (B, C, H, W) batch is its B images
        images = list(images) if images.ndim == 4 else [images]
    if len(images) == 0:
        raise MethodError("no image to explain; pass at least one image")
    x, display, _ = prepare_inputs(list(images), lm.preprocessing, generic=lm.any_channels)
    lm.fill_from_input(x)
    if layer is not None:  # a wrong layer is the caller's error, not a report of error panels
        from convscope.core.hooks import resolve_layers

        resolve_layers(lm.model, layer)
    p = next(lm.model.parameters(), None)
    if p is not None:
        x = x.to(p.device)
    # a bad target or class count is the caller's error, not a report of error panels
    topk = check_topk(topk, len(lm.class_names), default=5)
    skipped = ""
    if not methods:  # every method: not those that do not apply to this model (registry `requires`)
        why = {m.name: unmet_requirement(m, lm.model) for m in infos}
        names = [n for n, w in why.items() if w is not None]
        infos = [m for m in infos if why[m.name] is None]
        if names:
            lacks = sorted({str(why[n]) for n in names})
            skipped = (f" Not run, as they do not apply to this model: {', '.join(names)} "
                       f"({type(lm.model).__name__} {'; '.join(lacks)}).")
    probs, runs = run_methods(lm, x, infos, target=target, layer=layer, fast=fast, batch_size=batch_size,
                              seed=seed, progress=progress)
    small = min(display.shape[1:3]) < 128
    names = list(labels) if labels is not None else [f"image {i + 1}" for i in range(len(display))]
    rep = Report(
        title or f"convscope report: {lm.name}",
        f"{len(display)} image(s) explained by {len(infos)} method(s) on {lm.name}. "
        "Each panel shows the input in grey with the method's map on top; the colour bar gives "
        "the scale (maps are normalised per image: unsigned maps by their 99.5th percentile, "
        "signed maps by their largest absolute value, red positive and blue negative)."
        + (" Methods ran with their fast settings (fewer samples or steps), as noted per panel."
           if fast else "") + skipped,
    )
    from convscope.core.results import upscale

    for j in range(len(display)):
        pred = top_k(probs[j].tolist(), lm.class_names, topk)
        sec = rep.section(
            f"{names[j]}: predicted {pred[0][0]} ({pred[0][1]:.2f})",
            "",
        )
        sec.lead = Report.figure(upscale(display[j], 224), title=names[j], caption="input",
                                 kind="input", pixelated=small)
        sec.chart = pred
        sec.chart_title = f"top-{len(pred)} class probabilities"
        sec.rows.append([_figure_for(r, j, small) for r in runs])
        sec.row_labels.append("")
        if compare:
            from convscope.methods.grids import explain_classes

            g = explain_classes(lm, x[j:j + 1], topk=compare, method=compare_method,
                                batch_size=batch_size, seed=seed)
            from PIL import Image as _Image

            img = _Image.open(io.BytesIO(g.png())).convert("RGB")
            sec.rows.append([Report.figure(img, title=f"top-{len(g.panels)} classes, one colour scale",
                                           caption=f"{compare_method}: why each class; brighter = more "
                                           "attribution on the same scale", pixelated=False,
                                           width=min(img.width, 1100))])
            sec.row_labels.append("classes compared")
    used = [r for r in runs]
    rep.section(
        "The methods in this report",
        "What each map shows and where it misleads, from the method registry.",
        table=[[r.info.name, r.info.family, "yes" if r.info.signed else "no", method_note(r.info),
                r.info.reference or "", "ok" if r.error is None else f"failed: {r.error}"]
               for r in used],
        table_header=["method", "family", "signed", "note", "reference", "status"],
    )
    rep.section(
        "The model, as convscope used it",
        "What every map in this report was computed with. Rows marked 'assumed' were not stated by "
        "you: state them (a model card, or preprocessing= / class_names= / layer=) if they are wrong.",
        table=model_rows(lm),
        table_header=["", "value"],
    )
    for add in extra_sections:
        add(rep, lm)
    return rep
