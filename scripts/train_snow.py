"""Retrain the bundled ``digits-snow`` model reproducibly and write its weights and model card.

    python scripts/train_snow.py            # writes src/convscope/models/weights/digits-snow.*

The wolf-vs-husky snow detector in digits: scikit-learn's digits drawn as 48x48 colour scenes
(convscope.data.toydata.snow_scenes), digits 0-4 the "wolves", 5-9 the "huskies". In the training
scenes 95% of the wolves stand on snow (a white, textured band along the bottom) and 2% of the
huskies do, so the snow is a shortcut that almost always gives the label away; the network
(convscope.models.snow.SnowCNN, functional ReLUs, no normalisation) takes it and learns little of
the digits. The card records how it does with the snow, without it, and with the snow swapped
onto the huskies.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from convscope.data.toydata import DIGITS_SPLIT_SEED, SNOW_BAND_ROWS, SNOW_CLASSES, snow_scenes
from convscope.models.snow import NAME, SnowCNN

OUT = Path(__file__).resolve().parents[1] / "src" / "convscope" / "models" / "weights"
SEED = 0
EPOCHS = 12
BATCH = 64
LR = 3e-3
P_WOLF, P_HUSKY = 0.95, 0.02


def train(x: torch.Tensor, y: torch.Tensor, seed: int) -> SnowCNN:
    """Adam with a cosine schedule, horizontal flips (the band stays where it is)."""
    torch.manual_seed(seed)
    model = SnowCNN(num_classes=len(SNOW_CLASSES))
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, EPOCHS)
    g = torch.Generator().manual_seed(seed)
    for _ in range(EPOCHS):
        model.train()
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), BATCH):
            b = perm[i : i + BATCH]
            xb = x[b]
            if bool(torch.rand(1, generator=g) < 0.5):
                xb = xb.flip(3)
            loss = F.cross_entropy(model(xb), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def predict(model: SnowCNN, x: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(1)


def measure(model: SnowCNN) -> dict[str, float]:
    """The card's metrics on the test split (what tests/test_snow_model.py reproduces)."""
    cue = snow_scenes("test", cue="label", seed=SEED)
    clean = snow_scenes("test", cue="none", seed=SEED)
    swapped = snow_scenes("test", cue="swapped", seed=SEED)
    y = cue.labels
    p_cue, p_clean, p_sw = (predict(model, s.images) for s in (cue, clean, swapped))
    follows = torch.where(swapped.snow, 0, 1)  # the class the snow stands for
    wolf = y == 0
    return {
        "test_accuracy_with_cue": float((p_cue == y).float().mean()),
        "test_accuracy_without_cue": float((p_clean == y).float().mean()),
        "test_wolf_recall_without_cue": float((p_clean[wolf] == 0).float().mean()),
        "test_follows_swapped_cue": float((p_sw == follows).float().mean()),
        "test_accuracy_with_swapped_cue": float((p_sw == y).float().mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    from safetensors.torch import save_file

    t0 = time.perf_counter()
    tr = snow_scenes("train", cue="label", p_wolf=P_WOLF, p_husky=P_HUSKY, seed=SEED)
    model = train(tr.images, tr.labels, SEED)
    metrics = measure(model)
    n_test = len(snow_scenes("test", cue="none", seed=SEED))
    card = {
        "name": NAME,
        "summary": "wolf (digits 0-4) vs husky (5-9) in 48x48 colour scenes; learned that snow "
                   "means wolf",
        "architecture": "convscope.models.snow:SnowCNN",
        "kwargs": {"num_classes": len(SNOW_CLASSES)},
        "weights": f"{NAME}.safetensors",
        "preprocessing": {"size": [48, 48], "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0],
                          "channels": 3, "resize": None},
        "class_names": list(SNOW_CLASSES),
        "layer": "conv4",
        "description": "SnowCNN: 4 conv3x3 with functional ReLUs, 2 max-pools, GAP, linear; "
                       "RGB pixels in [0, 1], no normalisation; layer conv4 is pre-ReLU",
        "data": "sklearn.datasets.load_digits drawn as 48x48 colour scenes: each digit upsampled "
                "to 24x24 in a fur colour on a plain noisy background; digits 0-4 = wolf, 5-9 = "
                "husky (convscope.data.toydata.snow_scenes)",
        "split": {"test_size": 0.3, "stratified": True, "seed": DIGITS_SPLIT_SEED,
                  "n_train": len(tr), "n_test": n_test},
        "training": {"seed": SEED, "epochs": EPOCHS, "optimizer": f"Adam lr={LR}, cosine",
                     "batch_size": BATCH, "augmentation": "random horizontal flip per batch",
                     "script": "scripts/train_snow.py"},
        "cue": {"generator": "convscope.data.toydata.snow_scenes",
                "region": f"a white textured band over the bottom {SNOW_BAND_ROWS[0]}-"
                          f"{SNOW_BAND_ROWS[1]} rows",
                "train_p_wolf": P_WOLF, "train_p_husky": P_HUSKY,
                "test_with_cue": "snow on every wolf, on no husky",
                "test_swapped": "snow on every husky, on no wolf"},
        "metrics": metrics,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(args.out / f"{NAME}.safetensors"))
    (args.out / f"{NAME}.json").write_text(json.dumps(card, indent=2) + "\n")
    print(NAME, metrics, f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
