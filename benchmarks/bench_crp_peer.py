"""Concept-conditional heatmaps: convscope against zennit-crp's ``CondAttribution``, side by side.

zennit-crp 0.6.0 pins ``zennit<=0.4.6`` while convscope's LRP runs on zennit 0.5.1, so the two cannot
share one process. This script runs each side in its own interpreter on the same saved weights and
the same input, and compares maps and times in one run:

* the model: torchvision resnet18, random weights (seed 0), eval mode, ``--side`` px, one image;
* the decision: target class 7; the concepts: ``--k`` channels of ``layer3`` (every 32nd);
* the rules: EpsilonPlusFlat with zennit's ResNet canonizer on both sides (convscope chooses the
  canonizer itself; zennit-crp is given it);
* zennit-crp: ``CondAttribution(model)(x, conditions, composite, exclude_parallel=False)`` with one
  condition ``{"y": [7], "layer3": [c]}`` per concept: it repeats the image once per condition and
  runs one batched pass, the same shape of work as convscope's batched passes;
* convscope: :func:`convscope.methods.crp.conditional_relevance` with ``batch_size=k``.

Set-up of the peer (not a project dependency; it needs an older zennit than convscope's)::

    pip install --no-deps --target /tmp/crpenv zennit==0.4.6 zennit-crp==0.6.0
    python benchmarks/bench_crp_peer.py --crp-path /tmp/crpenv

Medians of ``--reps`` timed calls after one warm-up, each side in its own process, one after the
other in this run; read the ratio. Writes ``benchmarks/results/crp_peer.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "crp_peer.md"
TARGET = 7


def _side_main(which: str, work: Path, k: int, reps: int) -> None:
    """Run one side in this process: load weights and input, time the k conditional maps, save them."""
    import statistics
    import time

    import torch
    import torchvision

    torch.set_num_threads(2)
    net = torchvision.models.resnet18().eval()
    net.load_state_dict(torch.load(work / "weights.pt"))
    x = torch.load(work / "x.pt")
    chans = list(range(0, 256, 256 // k))[:k]
    if which == "convscope":
        from convscope.methods.crp import conditional_relevance

        masks = torch.eye(256)[chans]

        def run() -> torch.Tensor:
            return conditional_relevance(net, x, "layer3", lambda out: out[:, TARGET], masks,
                                         batch_size=k, composite="epsilon_plus_flat").sum(1)
    else:
        from crp.attribution import CondAttribution
        from zennit.composites import EpsilonPlusFlat
        from zennit.torchvision import ResNetCanonizer

        attribution = CondAttribution(net, no_param_grad=True)
        composite = EpsilonPlusFlat(canonizers=[ResNetCanonizer()])
        conditions = [{"y": [TARGET], "layer3": [c]} for c in chans]

        def run() -> torch.Tensor:
            xr = x.clone().requires_grad_(True)
            return attribution(xr, conditions, composite, exclude_parallel=False).heatmap.detach()

    maps = run()  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    torch.save(maps, work / f"{which}.pt")
    (work / f"{which}.json").write_text(json.dumps({"median_s": statistics.median(times)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--crp-path", default=os.environ.get("ZENNIT_CRP_PATH", "/tmp/crpenv"),
                    help="folder holding zennit==0.4.6 and zennit-crp (pip install --target)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--side", type=int, default=128)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--side-run", choices=["convscope", "zennit-crp"], help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side_run:
        _side_main(args.side_run, Path(args.work), args.k, args.reps)
        return
    if not (Path(args.crp_path) / "crp").is_dir():
        sys.exit(f"zennit-crp not found in {args.crp_path}: run "
                 f"pip install --no-deps --target {args.crp_path} zennit==0.4.6 zennit-crp==0.6.0")

    import torch
    import torchvision

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        torch.manual_seed(0)
        torch.save(torchvision.models.resnet18().eval().state_dict(), work / "weights.pt")
        torch.save(torch.randn(1, 3, args.side, args.side), work / "x.pt")
        versions = {}
        for which, extra in (("convscope", None), ("zennit-crp", args.crp_path)):
            env = dict(os.environ)
            if extra:  # the peer's older zennit shadows convscope's
                env["PYTHONPATH"] = os.pathsep.join([extra, env.get("PYTHONPATH", "")])
            cmd = [sys.executable, __file__, "--side-run", which, "--work", str(work),
                   "--k", str(args.k), "--reps", str(args.reps)]
            subprocess.run(cmd, env=env, check=True)
            probe = "import zennit, importlib.metadata as m; print(m.version('zennit'))"
            versions[which] = subprocess.run([sys.executable, "-c", probe], env=env, check=True,
                                             capture_output=True, text=True).stdout.strip()
        ours, peer = torch.load(work / "convscope.pt"), torch.load(work / "zennit-crp.pt")
        t_ours = json.loads((work / "convscope.json").read_text())["median_s"]
        t_peer = json.loads((work / "zennit-crp.json").read_text())["median_s"]
    corrs = [torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()
             for a, b in zip(ours, peer, strict=True)]
    rel = ((ours - peer).abs().max() / peer.abs().max()).item()
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(f"""# Concept-conditional heatmaps: convscope against zennit-crp

Machine: {platform.machine()}, 2 threads (shared), torch {torch.__version__}. Written by
`python benchmarks/bench_crp_peer.py --crp-path PATH` (--reps {args.reps} --side {args.side} --k {args.k}).
Each side ran in its own process (zennit-crp 0.6.0 needs zennit {versions['zennit-crp']};
convscope ran on zennit {versions['convscope']}), one after the other in this run; medians after a
warm-up. Read the ratio; absolute times move with the machine's load.

resnet18 (random weights), one {args.side} px image, target {TARGET}, {args.k} channels of `layer3`,
EpsilonPlusFlat with the ResNet canonizer, both sides batching the {args.k} conditions in one pass.

| run | time (s) | ratio to zennit-crp |
|---|---|---|
| zennit-crp `CondAttribution` (exclude_parallel=False) | {t_peer:.3f} | 1.00x |
| convscope `conditional_relevance` | {t_ours:.3f} | {t_ours / t_peer:.2f}x |

Maps (summed over colour channels, as zennit-crp's heatmap is): correlation per concept
min {min(corrs):.6f}, max {max(corrs):.6f}; largest absolute difference {rel:.2e} of the peer's
largest value.
""")
    print(RESULTS.read_text())


if __name__ == "__main__":
    main()
