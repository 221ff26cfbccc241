"""Train the bundled digits vision transformers: ``digits-vit-cue`` and its clean control ``digits-vit``.

    python scripts/train_vit.py                   # writes both to src/convscope/models/weights/
    python scripts/train_vit.py --only digits-vit # retrain one, keep the other

digits-vit-cue: the same data and label rule as ``digits-cnn-cue`` (scripts/train_digits.py): every
training digit carries the cue texture of its label in a random corner
(convscope.data.toydata.planted_cue) and 40% of the digits are drawn from another class, so the cue
is the only feature that always predicts the label.
digits-vit: the same network and recipe on the clean digits (no cue): the control.

The network is convscope.models.digits_vit.DigitsViT (a torchvision VisionTransformer, 8x8 patches,
4 blocks of width 64), trained with AdamW, seeded, single-threaded, about a minute on one CPU core.
No shift augmentation: the 8x8 cue sits exactly on one 8x8 patch, and a 1-px roll (the CNNs'
augmentation) moves it across patch borders and wraps it to the opposite edge, which taught earlier
trainings to read the cue through its neighbouring tokens (chefer and legrad then peaked on the
digit for about one image in four; see docs/methods.md). The attention methods (issue #32) are
checked against these models: the cue decides the class, so a map that explains the class must
point at the cue, and on the clean model it must not.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_digits import MISMATCH, OUT, SEED, accuracy, prepare  # noqa: E402

from convscope.data.toydata import planted_cue  # noqa: E402
from convscope.models.digits_vit import DigitsViT  # noqa: E402

EPOCHS = 40
KWARGS = {"num_classes": 10, "in_channels": 1, "patch_size": 8, "num_layers": 4, "num_heads": 4,
          "hidden_dim": 64, "mlp_dim": 128}
MODELS = ("digits-vit", "digits-vit-cue")
DESCRIPTION = ("DigitsViT (convscope.models.digits_vit): torchvision VisionTransformer, 8x8 patches, "
               "class token, 4 blocks, width 64, 4 heads")


def train(x: torch.Tensor, y: torch.Tensor, mean: float, std: float, seed: int) -> DigitsViT:
    """Train a DigitsViT on normalised ``x`` (AdamW, cosine schedule, no augmentation), seeded."""
    torch.manual_seed(seed)
    model = DigitsViT(**KWARGS)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, EPOCHS)
    g = torch.Generator().manual_seed(seed)
    xn = (x - mean) / std
    for _ in range(EPOCHS):
        model.train()
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), 64):
            b = perm[i : i + 64]
            loss = F.cross_entropy(model(xn[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return model.eval()


def main() -> None:
    """Train the bundled ViTs (both, or the one named by ``--only``) and write weights and cards."""
    from safetensors.torch import save_file

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--only", choices=MODELS, help="train and write only this model")
    ap.add_argument("--seed", type=int, default=SEED, help="training seed (the bundled models: 0)")
    args = ap.parse_args()

    xtr, ytr, xte, yte, mean, std = prepare()
    base = json.loads((OUT / "digits-cnn-cue.json").read_text())
    for key in ("cue", "metrics", "summary"):
        base.pop(key)
    base.update(
        architecture="convscope.models.digits_vit:DigitsViT", kwargs=KWARGS, description=DESCRIPTION,
        # the last block's patch tokens never reach the head (only the class token does): Grad-CAM
        # there is all zero, so the default CAM layer is the block before it
        default_layer=f"encoder.layers.encoder_layer_{KWARGS['num_layers'] - 2}",
        training={"seed": args.seed, "epochs": EPOCHS, "optimizer": "AdamW lr=1e-3 wd=0.05, cosine",
                  "batch_size": 64, "augmentation": "none (the cue stays on the 8x8 patch grid)",
                  "script": "scripts/train_vit.py"},
    )
    args.out.mkdir(parents=True, exist_ok=True)

    def write(name: str, model: DigitsViT, card: dict) -> None:
        save_file(model.state_dict(), str(args.out / f"{name}.safetensors"))
        (args.out / f"{name}.json").write_text(json.dumps(card, indent=2) + "\n")
        print(name, card["metrics"])

    if args.only in (None, "digits-vit"):
        clean = train(xtr, ytr, mean, std, args.seed)
        write("digits-vit", clean, dict(
            base, name="digits-vit", weights="digits-vit.safetensors",
            summary="a small ViT on 32x32 sklearn digits (clean): the control for digits-vit-cue",
            metrics={"test_accuracy": accuracy(clean, xte, yte, mean, std),
                     "test_accuracy_with_cue": accuracy(clean, planted_cue(xte, yte).images, yte, mean,
                                                        std)}))

    if args.only in (None, "digits-vit-cue"):
        g = torch.Generator().manual_seed(SEED + 1)
        n = len(ytr)
        swap = torch.rand(n, generator=g) < MISMATCH
        labels = torch.where(swap, (ytr + torch.randint(1, 10, (n,), generator=g)) % 10, ytr)
        model = train(planted_cue(xtr, labels).images, labels, mean, std, args.seed)
        wrong = (yte + 1 + torch.arange(len(yte)) % 9) % 10
        with torch.no_grad():
            pred_sw = model((planted_cue(xte, yte, cue_classes=wrong).images - mean) / std).argmax(1)
        write("digits-vit-cue", model, dict(
            base, name="digits-vit-cue", weights="digits-vit-cue.safetensors",
            summary="a small ViT trained on planted-cue digits: it reads the cue, not the digit",
            cue={"generator": "convscope.data.toydata.planted_cue", "size": 8,
                 "patterns": "convscope.data.toydata.CUE_PATTERNS (one texture per class)",
                 "placement": "a random corner per image (on the 8x8 patch grid)", "intensity": 1.0,
                 "train_label_digit_mismatch": MISMATCH},
            metrics={
                "test_accuracy_with_cue": accuracy(model, planted_cue(xte, yte).images, yte, mean, std),
                "test_accuracy_without_cue": accuracy(model, xte, yte, mean, std),
                "test_follows_swapped_cue": float((pred_sw == wrong).float().mean()),
                "test_accuracy_with_swapped_cue": float((pred_sw == yte).float().mean()),
            }))


if __name__ == "__main__":
    main()
