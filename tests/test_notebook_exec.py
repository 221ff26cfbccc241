"""A real Jupyter notebook, executed by a real IPython kernel (nbclient), shows convscope's results.

The kernel runs on this interpreter (``sys.executable``) and imports convscope from the same
source tree as the tests. The last cell plots with pyplot: if anything in convscope had switched
matplotlib's backend (as ``matplotlib.use("Agg")`` once did), that plot would come back as text
only, without a picture.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import sys
from pathlib import Path

import nbformat  # nbformat, nbclient and ipykernel come with the dev extra
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient
from PIL import Image

import convscope as cs

CELLS = [
    "%matplotlib inline",
    "import convscope as cs\ncs.__file__",
    "from PIL import Image\n"
    "from convscope.data.toydata import digits, planted_cue\n"
    "lm = cs.load_model('digits-cnn-cue')\n"
    "x, y = digits().split('test')\n"
    "cue = planted_cue(x[:1], y[:1])\n"
    "img = Image.fromarray((cue.images[0, 0].numpy() * 255).round().astype('uint8'), 'L')\n"
    "e = cs.explain(lm, img, method='gradcam')\n"
    "e",
    "e.figure()",
    "from convscope.frontends.report import explain_report\n"
    "explain_report(lm, [img], methods=['saliency', 'gradcam'], fast=True, labels=['digit'])",
    "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])",
]


def _run_notebook(tmp_path: Path) -> list:
    """Execute CELLS in a fresh kernel started from this interpreter; the executed cells."""
    kernels = tmp_path / "kernels"
    (kernels / "convscope-test").mkdir(parents=True)
    (kernels / "convscope-test" / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "convscope test", "language": "python",
    }))
    src = str(Path(cs.__file__).resolve().parents[1])  # the tree the tests import convscope from
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # as a notebook starts: no Agg
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])])
    env["JUPYTER_RUNTIME_DIR"] = str(tmp_path / "runtime")  # connection files stay in tmp_path
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in CELLS]
    km = KernelManager(kernel_name="convscope-test",
                       kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))
    # generous limits: a cold start imports torch; a slow CI machine must not fail on time
    client = NotebookClient(nb, km=km, timeout=300, startup_timeout=120,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=env)
    return nb.cells


def _result(outputs: list) -> dict:
    """The mime bundle of a cell's last-expression value (its ``execute_result``)."""
    (res,) = [o for o in outputs if o["output_type"] == "execute_result"]
    return res["data"]


def _pngs(outputs: list, kinds: tuple[str, ...]) -> list[Image.Image]:
    out = []
    for o in outputs:
        if o["output_type"] in kinds and "image/png" in o.get("data", {}):
            out.append(Image.open(io.BytesIO(base64.b64decode(o["data"]["image/png"]))))
    return out


def test_results_show_inline_in_an_executed_notebook(tmp_path):
    cells = _run_notebook(tmp_path)
    def progress_only(o: dict) -> bool:  # the report's progress lines reach the notebook (#19)
        lines = o.get("text", "").strip().splitlines()
        return bool(lines) and all(ln.startswith("convscope: report: methods: ") for ln in lines)

    for c in cells:  # no cell failed or wrote to stderr (a warning, a traceback), progress aside
        assert all(o["output_type"] != "error" and (o.get("name") != "stderr" or progress_only(o))
                   for o in c.outputs), c.outputs
    assert any(o.get("name") == "stderr" and progress_only(o) for o in cells[4].outputs), cells[4].outputs
    _, path, expl, fig, report, plot = cells
    # the kernel imported convscope from the same source tree as this test
    shown = _result(path.outputs)["text/plain"].strip("'\"")
    assert Path(shown).resolve() == Path(cs.__file__).resolve()
    # the explanation: a picture (the overlay) and an HTML block with embedded images
    (pic,) = _pngs(expl.outputs, ("execute_result",))
    assert pic.format == "PNG" and min(pic.size) >= 224
    html = _result(expl.outputs)["text/html"]
    assert re.search(r'<img[^>]+src="data:image/png;base64,', html) and "gradcam" in html
    # the figure: exactly one picture (no second copy left open in pyplot), three panels wide
    figs = _pngs(fig.outputs, ("execute_result", "display_data"))
    assert len(figs) == 1 and figs[0].width > 2 * figs[0].height
    # the report: its whole page in an iframe, with both methods' panels
    rep = _result(report.outputs)["text/html"]
    assert rep.startswith("<iframe") and "srcdoc=" in rep
    assert rep.count('figure class=&quot;method&quot;') == 2
    # pyplot still plots inline: the backend convscope found is the backend it left
    assert len(_pngs(plot.outputs, ("display_data",))) == 1, plot.outputs
