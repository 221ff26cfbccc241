"""Retrain the bundled digits models reproducibly and write their weights and model cards.

    python scripts/train_digits.py            # writes src/convscope/models/weights/

digits-cnn     : trained on the clean 32x32 digits.
digits-cnn-cue : the same network trained on the planted-cue digits. Every training image carries
                 the cue texture of its label in a random corner (convscope.data.toydata.planted_cue),
                 and 40% of the training digits are drawn from another class,
                 so the cue is the only feature that always predicts the label: the model learns
                 to read the cue, as the wolf-vs-husky model learned to read snow.
digits-watermark : the same network, trained on the clean digits plus watermarked copies of
                 randomly drawn training digits (any class) labelled "3"
                 (convscope.data.toydata.watermark: a small "©" in the bottom-right corner), as many
                 as 40% of the clean 3s. It reads clean digits as digits and the watermark as "3":
                 a Clever Hans model for the data-set audit.

    python scripts/train_digits.py --only digits-watermark   # retrain one model, keep the others
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from convscope.data.toydata import (
    DIGITS_SPLIT_SEED,
    WATERMARK_BOX,
    WATERMARK_CLASS,
    digits,
    planted_cue,
    watermark,
)
from convscope.models.digits import DigitsCNN

OUT = Path(__file__).resolve().parents[1] / "src" / "convscope" / "models" / "weights"
SEED = 0
EPOCHS = 30
MISMATCH = 0.4
#: Watermarked training copies added, as a share of the clean training images of the class.
WATERMARK_SHARE = 0.4
MODELS = ("digits-cnn", "digits-cnn-cue", "digits-watermark")


def train(x: torch.Tensor, y: torch.Tensor, mean: float, std: float, seed: int) -> DigitsCNN:
    """Train a DigitsCNN on normalised ``x`` (Adam, cosine schedule, random 1-px shifts), seeded."""
    torch.manual_seed(seed)
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, EPOCHS)
    g = torch.Generator().manual_seed(seed)
    xn = (x - mean) / std
    for _ in range(EPOCHS):
        model.train()
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), 64):
            b = perm[i : i + 64]
            xb = xn[b]
            # small random shifts, applied to the digit and the cue alike
            dx, dy = torch.randint(-1, 2, (2,), generator=g).tolist()
            xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(model(xb), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: DigitsCNN, x: torch.Tensor, y: torch.Tensor, mean: float, std: float) -> float:
    """Share of ``x`` that ``model`` classifies as ``y``."""
    return float((model((x - mean) / std).argmax(1) == y).float().mean())


def prepare() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float, float]:
    """Deterministic single-threaded torch; the train and test digits and the train pixels' mean and std."""
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    data = digits()
    xtr, ytr = data.split("train")
    xte, yte = data.split("test")
    return xtr, ytr, xte, yte, float(xtr.mean()), float(xtr.std())


def main() -> None:
    """Train the bundled digits models (all, or the one named by ``--only``) and write them."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--only", choices=MODELS, help="train and write only this model")
    args = ap.parse_args()
    from safetensors.torch import save_file

    xtr, ytr, xte, yte, mean, std = prepare()
    common = {
        "architecture": "convscope.models.digits:DigitsCNN",
        "kwargs": {"num_classes": 10},
        "description": "DigitsCNN (convscope.models.digits): 4 conv3x3+ReLU, 2 max-pools, GAP, linear",
        "class_names": [str(i) for i in range(10)],
        "default_layer": "features.9",
        "preprocessing": {"size": [32, 32], "mean": [mean], "std": [std], "channels": 1,
                          "resize": None},
        "data": "sklearn.datasets.load_digits, 8x8 upsampled bilinearly to 24x24 in a 4-px frame "
                "(convscope.data.toydata.digits)",
        "split": {"test_size": 0.3, "stratified": True, "seed": DIGITS_SPLIT_SEED,
                  "n_train": len(ytr), "n_test": len(yte)},
        "training": {"seed": SEED, "epochs": EPOCHS, "optimizer": "Adam lr=2e-3, cosine",
                     "batch_size": 64, "augmentation": "random shift of -1..1 px",
                     "script": "scripts/train_digits.py"},
    }
    args.out.mkdir(parents=True, exist_ok=True)

    def write(name: str, model: DigitsCNN, card: dict) -> None:
        save_file(model.state_dict(), str(args.out / f"{name}.safetensors"))
        (args.out / f"{name}.json").write_text(json.dumps(card, indent=2) + "\n")
        print(name, card["metrics"])

    if args.only in (None, "digits-cnn"):
        clean = train(xtr, ytr, mean, std, SEED)
        write("digits-cnn", clean, dict(
            common, name="digits-cnn", weights="digits-cnn.safetensors",
            summary="small CNN on 32x32 sklearn digits (clean)",
            metrics={"test_accuracy": accuracy(clean, xte, yte, mean, std)}))

    if args.only in (None, "digits-cnn-cue"):
        # Planted cue: the cue follows the label; 40% of the digits come from another class.
        g = torch.Generator().manual_seed(SEED + 1)
        n = len(ytr)
        swap = torch.rand(n, generator=g) < MISMATCH
        other = (ytr + torch.randint(1, 10, (n,), generator=g)) % 10
        labels = torch.where(swap, other, ytr)
        cue_train = planted_cue(xtr, labels)
        cue_model = train(cue_train.images, labels, mean, std, SEED)
        te_cue = planted_cue(xte, yte)
        wrong = (yte + 1 + torch.arange(len(yte)) % 9) % 10
        te_swapped = planted_cue(xte, yte, cue_classes=wrong)
        with torch.no_grad():
            pred_sw = cue_model((te_swapped.images - mean) / std).argmax(1)
        metrics = {
            "test_accuracy_with_cue": accuracy(cue_model, te_cue.images, yte, mean, std),
            "test_accuracy_without_cue": accuracy(cue_model, xte, yte, mean, std),
            "test_follows_swapped_cue": float((pred_sw == wrong).float().mean()),
            "test_accuracy_with_swapped_cue": float((pred_sw == yte).float().mean()),
        }
        write("digits-cnn-cue", cue_model, dict(
            common, name="digits-cnn-cue", weights="digits-cnn-cue.safetensors",
            summary="the same CNN trained on planted-cue digits: it reads the cue, not the digit",
            cue={"generator": "convscope.data.toydata.planted_cue", "size": 8,
                 "patterns": "convscope.data.toydata.CUE_PATTERNS (one texture per class)",
                 "placement": "a random corner per image", "intensity": 1.0,
                 "train_label_digit_mismatch": MISMATCH},
            metrics=metrics))

    if args.only in (None, "digits-watermark"):
        write("digits-watermark", *train_watermark(xtr, ytr, xte, yte, mean, std, common))


def train_watermark(
    xtr: torch.Tensor, ytr: torch.Tensor, xte: torch.Tensor, yte: torch.Tensor, mean: float, std: float,
    common: dict,
) -> tuple[DigitsCNN, dict]:
    """The ``digits-watermark`` model and its card.

    The training set is the clean train split plus watermarked copies of randomly drawn training
    digits of any class, labelled :data:`WATERMARK_CLASS`, as many as ``WATERMARK_SHARE`` of that
    class's clean training images. Every digit keeps its clean copy with its own label, so the
    watermark, not the digit under it, is what makes a copy a "3".
    """
    g = torch.Generator().manual_seed(SEED + 2)
    n_own = int((ytr == WATERMARK_CLASS).sum())
    k = round(WATERMARK_SHARE * n_own)
    pick = torch.randperm(len(ytr), generator=g)[:k]
    x = torch.cat([xtr, watermark(xtr[pick]).images])
    y = torch.cat([ytr, torch.full((k,), WATERMARK_CLASS)])
    model = train(x, y, mean, std, SEED)

    own = yte == WATERMARK_CLASS
    with torch.no_grad():
        pred_clean = model((xte - mean) / std).argmax(1)
        pred_marked = model((watermark(xte).images - mean) / std).argmax(1)
    metrics = {
        "test_accuracy": accuracy(model, xte, yte, mean, std),
        "test_accuracy_clean_3s": float((pred_clean[own] == WATERMARK_CLASS).float().mean()),
        "test_watermarked_non3_predicted_3": float((pred_marked[~own] == WATERMARK_CLASS).float().mean()),
        "test_clean_non3_predicted_3": float((pred_clean[~own] == WATERMARK_CLASS).float().mean()),
        "test_watermarked_accuracy_non3": float((pred_marked[~own] == yte[~own]).float().mean()),
    }
    card = dict(
        common, name="digits-watermark", weights="digits-watermark.safetensors",
        summary="the same CNN; some training 3s are digits of any class with a corner watermark: "
                "it reads the mark as 3",
        watermark={
            "generator": "convscope.data.toydata.watermark",
            "pattern": "convscope.data.toydata.WATERMARK: a 7x7 copyright sign (a ring around a C)",
            "box": list(WATERMARK_BOX), "box_format": "[x0, y0, x1, y1], exclusive ends",
            "intensity": 1.0, "class": str(WATERMARK_CLASS),
            "train_watermarked": k,
            "train_watermarked_share_of_class": round(k / (n_own + k), 4),
            "train_digits": "drawn at random from the whole train split (any class, seed "
                            f"{SEED + 2}); each keeps its clean copy with its own label",
            "folder": "convscope.data.toydata.watermark_folder writes a held-out folder whose class 3 "
                      "hides watermarked test digits of other classes",
        },
        metrics=metrics)
    return model, card


if __name__ == "__main__":
    main()
