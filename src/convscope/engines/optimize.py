"""The input-optimisation engine: one loop for feature visualisation and synthesis.

Everything that makes an image by gradient ascent runs here: class model visualisation,
channel / neuron / DeepDream objectives, and (built on top of it) adversarial images, feature
inversion, texture synthesis and style transfer. The loop is Lucid's ``render_vis`` reduced to
its parts:

* a **parameterisation** ``param``: an ``nn.Module`` with no input whose forward returns a
  (B, C, H, W) batch of pixels in [0, 1] (see :mod:`convscope.methods.featvis.param`);
* **transforms**: a callable on that batch (random jitter, scale, rotation, ...) applied before
  the model sees it, so the result must survive them (see :mod:`convscope.methods.featvis.transforms`);
* ``preprocess``: pixels -> model space (the model's normalisation);
* an **objective**: a callable ``objective(acts) -> (B,)`` scores, maximised. ``acts`` is an
  :class:`Activations` giving the captured layer outputs (``acts["layer4"]``), the model output
  (``acts.output``) and the images (``acts.images``, before transforms; ``acts.inputs``, after).
  An objective can declare what it reads with the attributes ``layers`` (layer names) and
  ``needs_output`` (whether it reads the model output); plain callables get the ``layers=``
  and ``needs_output=`` arguments of :func:`optimize`.

The loss minimised is ``-objective(acts).sum()``: each sample's score only depends on its own
image unless an objective couples them on purpose (diversity).

Evaluate only what the result depends on:

* The weights are frozen for the run (``capture(freeze=True)``), so backward computes gradients
  for the image only, never for the weights.
* **Truncation**: when the objective does not read the model output, the forward pass stops as
  soon as every layer it reads has run, so the rest of the network is never evaluated (Lucent
  runs the whole network). ``truncate=False`` turns this off.
* Hooks are registered by :func:`convscope.core.hooks.capture` and removed on every exit; the model's
  mode and ``requires_grad`` flags are restored, errors included.

Randomness (initialisation, transforms) is seeded by ``seed`` through a forked RNG, so a run
is reproducible and leaves the caller's global RNG untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from convscope.core.errors import InputError, MethodError
from convscope.core.hooks import Capture, capture
from convscope.core.progress import Track
from convscope.core.seeding import seeded

__all__ = ["Activations", "OptimizationResult", "optimize", "total_variation"]

Transform = Callable[[torch.Tensor], torch.Tensor]
PostStep = Callable[[int, nn.Module], None]


class Activations:
    """What an objective sees for one forward pass.

    Attributes:
        images: (B, C, H, W) pixels in [0, 1] from the parameterisation, before transforms.
        inputs: (B, C, H', W') pixels after transforms (what was normalised and fed to the model).
        output: the model output, or ``None`` if the pass was truncated before it.
        step: the optimisation step (0-based).
    """

    def __init__(
        self,
        cap: Capture,
        images: torch.Tensor,
        inputs: torch.Tensor,
        output: torch.Tensor | None,
        step: int,
    ) -> None:
        self._cap = cap
        self.images = images
        self.inputs = inputs
        self._output = output
        self.step = step

    def __getitem__(self, layer: str) -> torch.Tensor:
        """Output of ``layer`` (a dotted name captured for this run)."""
        if layer not in self._cap.modules:
            raise MethodError(
                f"the objective reads layer {layer!r}, which was not captured; declare it in the "
                "objective's `layers` or pass layers= to optimize()"
            )
        return self._cap.activation(layer)

    @property
    def output(self) -> torch.Tensor:
        """The model output (logits). Raises if the forward pass was truncated."""
        if self._output is None:
            raise MethodError(
                "the objective reads the model output, but the forward pass was truncated; set "
                "needs_output=True on the objective or pass needs_output=True to optimize()"
            )
        return self._output

    @property
    def batch_size(self) -> int:
        return int(self.images.shape[0])


@dataclass(frozen=True)
class OptimizationResult:
    """The outcome of :func:`optimize`.

    Attributes:
        images: (B, C, H, W) final pixels in [0, 1], detached, on the CPU (no transforms).
        history: (steps, B) objective score of each sample at each step (under transforms).
        final: (B,) objective score of the final images without transforms.
        output: the model output on the final images without transforms (``None`` when the
            pass was truncated).
        truncated: whether the forward passes stopped before the model output.
        layers: the captured layers.
    """

    images: torch.Tensor
    history: torch.Tensor
    final: torch.Tensor
    output: torch.Tensor | None
    truncated: bool
    layers: tuple[str, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)


def total_variation(x: torch.Tensor, beta: float = 2.0, *, isotropic: bool = True) -> torch.Tensor:
    """Total variation of a pixel batch per sample: the one smoothness prior of the optimisers.

    Two established variants, one per caller, kept so that each gives the numbers it always gave:

    * ``isotropic=True`` (synthesis: feature inversion, texture, style; Mahendran and Vedaldi 2015):
      ``mean_ij ((x[i, j+1] - x[i, j])^2 + (x[i+1, j] - x[i, j])^2)^(beta / 2)`` over the
      (H-1) x (W-1) positions that have both neighbours (``+1e-8`` inside the power when
      ``beta != 2``, so its gradient stays finite at 0);
    * ``isotropic=False`` (feature visualisation's ``total_variation()`` objective, as in Lucid):
      ``mean |x[i, j+1] - x[i, j]| + mean |x[i+1, j] - x[i, j]|``, each mean over its own
      differences; ``beta`` is not used.

    Shape:
        x: (B, C, H, W); returns (B,).
    """
    if not isotropic:
        dx = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
        dy = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
        return dx + dy
    dx = x[..., :-1, 1:] - x[..., :-1, :-1]
    dy = x[..., 1:, :-1] - x[..., :-1, :-1]
    s = dx * dx + dy * dy
    if beta != 2.0:
        s = (s + 1e-8).pow(beta / 2)
    return s.flatten(1).mean(1)


def _as_list(x: Any) -> list[Any]:
    if x is None:
        return []
    if callable(x) and not isinstance(x, (list, tuple)):
        return [x]
    return list(x)


def _device_of(model: nn.Module) -> torch.device:
    t: torch.Tensor | None = next(model.parameters(), None)
    if t is None:
        t = next(model.buffers(), None)
    return t.device if t is not None else torch.device("cpu")


def _forward(
    model: nn.Module,
    cap: Capture,
    x: torch.Tensor,
    stop: bool,
    names: Sequence[str],
) -> torch.Tensor | None:
    """One forward pass; returns the output, or ``None`` when cut short after ``names`` ran."""
    cap.reset()
    if stop and all(n in cap.layers for n in names):
        return cap.run(x, stop_after=list(names))
    return model(x)


def optimize(
    model: nn.Module,
    objective: Callable[[Activations], torch.Tensor],
    param: nn.Module,
    *,
    steps: int = 256,
    lr: float = 0.05,
    optimizer: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer] | None = None,
    transforms: Transform | Sequence[Transform] | None = None,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    layers: str | Sequence[str] | None = None,
    needs_output: bool | None = None,
    post_step: PostStep | Sequence[PostStep] | None = None,
    truncate: bool = True,
    seed: int | None = 0,
    progress: bool | None = None,
    desc: str = "optimising",
    device: str | torch.device | None = None,
) -> OptimizationResult:
    """Optimise ``param`` so that ``objective`` rises.

    Args:
        model: the network; left as it was found (mode, ``requires_grad``, no hooks).
        objective: ``objective(acts) -> (B,)`` (or a scalar) scores to maximise; see the module
            docstring for what ``acts`` offers and how an objective declares its layers.
        param: an ``nn.Module`` whose forward (no arguments) returns (B, C, H, W) pixels in
            [0, 1]; its parameters are optimised in place. It may define ``project()``, called
            under ``no_grad`` after every step (e.g. to clip, or to project onto an eps-ball).
        steps: number of optimisation steps.
        lr: learning rate of the default optimiser (Adam).
        optimizer: ``factory(parameters) -> Optimizer`` to use another optimiser.
        transforms: a callable (or a list, applied in order) on the pixel batch before
            ``preprocess``; random ones make the result robust (Lucid's transformation robustness).
        preprocess: pixels -> model space (e.g. ``Preprocessing.normalize``); default identity.
        layers: layers to capture in addition to the objective's ``layers`` attribute.
        needs_output: whether the objective reads ``acts.output``; default: the objective's
            ``needs_output`` attribute, else ``True`` for plain callables without ``layers``.
        post_step: ``f(step, param)`` called under ``no_grad`` after each step (e.g. blur every
            N steps); a list is called in order.
        truncate: stop the forward pass after the last needed layer when the output is not read.
        seed: seed for the parameterisation's initial noise is the caller's business; this seed
            drives everything random inside the loop (transforms). ``None``: use the global RNG.
        progress: progress over the steps; ``None``: a bar on a terminal only (or, inside an active
            :class:`~convscope.core.progress.Progress`, its sub-status).
        desc: label of the progress.
        device: where to run (default: the model's device); ``param`` is moved there.

    Returns:
        An :class:`OptimizationResult` with the final images and the score history.

    Shape:
        param() -> (B, C, H, W); result.images (B, C, H, W); result.history (steps, B).
    """
    if steps < 0:
        raise InputError(f"steps must be >= 0, got {steps}")
    dev = torch.device(device) if device is not None else _device_of(model)
    param = param.to(dev)
    obj_layers = list(getattr(objective, "layers", ()) or ())
    extra = [layers] if isinstance(layers, str) else list(layers or [])
    names = list(dict.fromkeys(obj_layers + extra))
    if needs_output is None:
        needs_output = bool(getattr(objective, "needs_output", not names))
    ts = _as_list(transforms)
    posts = _as_list(post_step)
    pre = preprocess if preprocess is not None else (lambda t: t)
    params = [p for p in param.parameters() if p.requires_grad]
    if not params and steps > 0:
        raise InputError("the parameterisation has no trainable parameters")
    opt = optimizer(params) if optimizer is not None else torch.optim.Adam(params, lr=lr)
    project = getattr(param, "project", None)

    history = torch.zeros(steps, 0)
    with capture(model, names or None, clone=True) as cap:
        names = list(cap.layers)
        stop = truncate and not needs_output and bool(names)
        with seeded(seed, dev):
            rows: list[torch.Tensor] = []
            for step in Track(range(steps), desc, enabled=progress, tty_only=True, unit="steps"):
                opt.zero_grad(set_to_none=True)
                images = param()
                inputs = images
                for t in ts:
                    inputs = t(inputs)
                out = _forward(model, cap, pre(inputs), stop, names)
                acts = Activations(cap, images, inputs, out, step)
                score = torch.as_tensor(objective(acts))
                if score.ndim == 0:
                    score = score.expand(images.shape[0]) / images.shape[0]
                loss = -score.sum()
                if not loss.requires_grad:
                    raise MethodError(
                        "the objective does not depend on the image (no gradient); check its layer"
                    )
                loss.backward()
                opt.step()
                with torch.no_grad():
                    if project is not None:
                        project()
                    for f in posts:
                        f(step, param)
                rows.append(score.detach().float().cpu())
            if rows:
                history = torch.stack(rows)
        # Final evaluation without transforms.
        with torch.no_grad():
            images = param().detach()
            out = _forward(model, cap, pre(images), stop, names)
            acts = Activations(cap, images, images, out, steps)
            final = torch.as_tensor(objective(acts)).detach().float()
            if final.ndim == 0:
                final = final.expand(images.shape[0]) / images.shape[0]
    return OptimizationResult(
        images=images.float().cpu(),
        history=history,
        final=final.cpu(),
        output=None if out is None else out.detach().float().cpu(),
        truncated=stop,
        layers=tuple(names),
    )
