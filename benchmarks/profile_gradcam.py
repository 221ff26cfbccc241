"""Where one Grad-CAM call's time goes, stage by stage, beside TorchCAM and a bare forward (issue #29).

One ``cs.explain(model, x, method="gradcam")`` on torchvision resnet18 (random weights), 224 px,
batch 1, layer ``layer4``. Every stage of the call is wrapped in a timer (and a
``torch.profiler.record_function`` label), by patching the functions the facade and the CAM
engine call; nothing in convscope changes. The forward pass inside the call is split where the
captured layer fires (below: no graph; above: with a graph), by a forward hook of this script's
own. In the same run, interleaved, the script times:

* a bare forward pass under ``torch.no_grad()`` (the benchmark's "forward" reference);
* a bare forward pass in grad mode with the weights' ``requires_grad`` on (what TorchCAM's
  documented use, ``extractor(targets, model(x))``, runs: it builds a graph through the whole
  network), and the same with the weights frozen;
* TorchCAM 0.5.0's GradCAM call, split into its ``model(x)`` and its extractor call.

Then ``torch.profiler`` (CPU activities) over a few calls of each gives the operator table. Timings
are medians over interleaved repetitions; ``--clock cpu`` (``time.process_time``) counts the CPU
time of the process, which a shared machine moves less than wall time.

Usage: ``python benchmarks/profile_gradcam.py [--reps 30] [--threads 1] [--clock cpu]``.
Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import torch

import convscope as cs
import convscope.core.hooks as hooks_mod
import convscope.methods.attribution._cam_engine as eng
import convscope.methods.attribution.cam as cam_mod
import convscope.methods.explain as facade

CLOCK: Callable[[], float] = time.perf_counter
TIMES: dict[str, float] = defaultdict(float)


INSIDE = [False]  # counting only inside the convscope call (torch.autograd.grad is patched for all)
LABELS = [False]  # a record_function label per stage (only under torch.profiler: it costs per call)


def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with its inclusive time added to ``TIMES[name]`` (inside the convscope call)."""

    def wrapper(*a: Any, **k: Any) -> Any:
        if not INSIDE[0]:
            return fn(*a, **k)
        t0 = CLOCK()
        with torch.profiler.record_function(f"cs::{name}") if LABELS[0] else contextlib.nullcontext():
            try:
                return fn(*a, **k)
            finally:
                TIMES[name] += CLOCK() - t0

    return wrapper


def timed_cm(name: str, cm: Callable[..., Any]) -> Callable[..., Any]:
    """A context-manager factory whose enter and exit are timed apart."""

    @contextlib.contextmanager
    def wrapper(*a: Any, **k: Any) -> Iterator[Any]:
        t0 = CLOCK()
        inner = cm(*a, **k)
        value = inner.__enter__()
        TIMES[f"{name} enter"] += CLOCK() - t0
        try:
            yield value
        except BaseException as e:
            t1 = CLOCK()
            if not inner.__exit__(type(e), e, e.__traceback__):
                raise
            TIMES[f"{name} exit"] += CLOCK() - t1
        else:
            t1 = CLOCK()
            inner.__exit__(None, None, None)
            TIMES[f"{name} exit"] += CLOCK() - t1

    return wrapper


def instrument() -> None:
    """Patch the stages of the facade and of the CAM engine with timers."""
    for name in ("get_method", "check_method_options", "load_model", "as_inputs", "resolve_layers",
                 "verdict", "warn_unreliable", "Explanation", "MethodContext", "clean_outputs"):
        setattr(facade, name, timed(f"facade.{name}", getattr(facade, name)))
    facade.state_guard = timed_cm("facade.state_guard", facade.state_guard)
    facade.seeded = timed_cm("facade.seeded", facade.seeded)
    facade.Progress = timed("facade.Progress()", facade.Progress)
    cls = cs.models.LoadedModel
    cls.info = timed("facade.model_info", cls.info)
    cls.fill_from_input = timed("facade.fill_from_input", cls.fill_from_input)
    eng.capture = timed_cm("engine.capture", eng.capture)
    eng.layer_pass = timed("engine.layer_pass", eng.layer_pass)
    eng.grid_layout = timed("engine.grid_layout", eng.grid_layout)
    eng.to_grid = timed("engine.to_grid", eng.to_grid)
    eng._upsample = timed("engine.upsample", eng._upsample)
    eng.MethodOutput = timed("engine.MethodOutput", eng.MethodOutput)
    cam_mod._gradcam_rule = timed("engine.rule", cam_mod._gradcam_rule)
    hooks_mod.Capture.run_above = timed("engine.run_above (forward)", hooks_mod.Capture.run_above)
    torch.autograd.grad = timed("engine.autograd.grad", torch.autograd.grad)
    eng.MethodContext.scores = timed("engine.ctx.scores", eng.MethodContext.scores)
    info = facade.get_method("gradcam")
    object.__setattr__(info, "func", timed("facade.method (whole)", info.func))  # a frozen dataclass


def run(args: argparse.Namespace) -> None:
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    lm = cs.load_model(net, class_names=[f"class {i}" for i in range(1000)], default_layer="layer4")
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        targets = net(x).argmax(1).tolist()
    tt = torch.tensor(targets)

    def fwd_nograd() -> None:
        with torch.no_grad():
            net(x)

    def fwd_grad_weights() -> None:  # TorchCAM's model(x): a graph through the whole network
        net(x).gather(1, tt[:, None]).sum()

    def fwd_grad_frozen() -> None:
        flags = [p.requires_grad_(False) for p in net.parameters()]
        try:
            net(x)
        finally:
            for p in flags:
                p.requires_grad_(True)

    from torchcam.methods import GradCAM

    extractor = GradCAM(net, "layer4")
    extractor._hooks_enabled = False
    tc_parts: dict[str, float] = defaultdict(float)

    def torchcam() -> None:
        extractor._hooks_enabled = True
        try:
            t0 = CLOCK()
            scores = net(x)
            t1 = CLOCK()
            extractor(targets, scores)
            t2 = CLOCK()
        finally:
            extractor._hooks_enabled = False
        tc_parts["TorchCAM model(x) (grad mode, full graph)"] += t1 - t0
        tc_parts["TorchCAM extractor(targets, scores)"] += t2 - t1

    def convscope_call() -> None:
        INSIDE[0] = True
        try:
            cs.explain(lm, x, method="gradcam", target=targets, batch_size=1)
        finally:
            INSIDE[0] = False

    fns = {"forward, no_grad": fwd_nograd, "forward, grad mode, weights require grad": fwd_grad_weights,
           "forward, grad mode, weights frozen": fwd_grad_frozen, "TorchCAM GradCAM call": torchcam,
           "convscope explain gradcam": convscope_call}
    # the split of convscope's forward at the layer: a hook of this script's own on layer4
    below: list[float] = []
    marks: dict[str, float] = {}

    def pre_root(_m: torch.nn.Module, _i: Any) -> None:
        marks["start"] = CLOCK()

    def at_layer(_m: torch.nn.Module, _i: Any, _o: Any) -> None:
        marks["layer"] = CLOCK()

    h1 = net.register_forward_pre_hook(pre_root)
    h2 = net.layer4.register_forward_hook(at_layer, prepend=True)
    instrument()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for fn in fns.values():  # warm up
            fn()
        TIMES.clear()
        tc_parts.clear()
        per: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(args.reps):
            for k, fn in fns.items():
                t0 = CLOCK()
                fn()
                per[k].append(CLOCK() - t0)
                if k == "convscope explain gradcam":
                    below.append(marks["layer"] - marks["start"])
    h1.remove()
    h2.remove()
    med = {k: statistics.median(v) for k, v in per.items()}
    fwd = med["forward, no_grad"]
    print(f"## Calls (median ms over {args.reps} interleaved repetitions, {args.clock} clock, "
          f"{torch.get_num_threads()} threads)\n")
    print("| run | ms | / forward no_grad |\n|---|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v * 1e3:.2f} | {v / fwd:.3f}x |")
    print("\n## Stages of the convscope call (mean ms per call; inclusive, nested stages indented)\n")
    print("| stage | ms | share of call |\n|---|---|---|")
    call = statistics.mean(per["convscope explain gradcam"])
    rows = dict(TIMES)
    rows["engine.forward below layer4 (no graph)"] = len(below) and sum(below)
    for k in sorted(rows, key=lambda k: -rows[k]):
        v = rows[k] / args.reps
        print(f"| {k} | {v * 1e3:.3f} | {v / call:.1%} |")
    for k, v in tc_parts.items():
        print(f"| {k} | {v / args.reps * 1e3:.3f} | |")
    print(f"\nconvscope call mean {call * 1e3:.2f} ms; TorchCAM call mean "
          f"{statistics.mean(per['TorchCAM GradCAM call']) * 1e3:.2f} ms\n")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        LABELS[0] = True
        for k in ("forward, no_grad", "TorchCAM GradCAM call", "convscope explain gradcam"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    for _ in range(args.profile):
                        fns[k]()
            print(f"### torch.profiler: {k} ({args.profile} calls)\n")
            print("```")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
            print("```\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="cpu")
    ap.add_argument("--profile", type=int, default=5, help="calls under torch.profiler (0: none)")
    ap.add_argument("--rows", type=int, default=25)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.perf_counter if args.clock == "wall" else time.process_time
    run(args)


if __name__ == "__main__":
    main()
