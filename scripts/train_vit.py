"""Train the bundled ``digits-vit-cue`` model: a small ViT on the planted-cue digits.

    python scripts/train_vit.py            # writes src/convscope/models/weights/digits-vit-cue.*

The same data and label rule as ``digits-cnn-cue`` (scripts/train_digits.py): every training
digit carries the cue texture of its label in a random corner (convscope.data.toydata.planted_cue)
and 40% of the digits are drawn from another class, so the cue is the only feature that always
predicts the label. The network is convscope.models.digits_vit.DigitsViT (a torchvision
VisionTransformer, 8x8 patches, 4 blocks of width 64), trained with AdamW and random 1-px shifts.
The attention methods (issue #32) are checked against it: the cue decides the class, so a map
that explains the class must point at the cue.
"""

from __future__ import annotations

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


def train(x: torch.Tensor, y: torch.Tensor, mean: float, std: float, seed: int) -> DigitsViT:
    """Train a DigitsViT on normalised ``x`` (AdamW, cosine schedule, random 1-px shifts), seeded."""
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
            dx, dy = torch.randint(-1, 2, (2,), generator=g).tolist()
            xb = torch.roll(xn[b], shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(model(xb), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return model.eval()


def main() -> None:
    """Train digits-vit-cue and write its weights and card beside the other bundled models."""
    import argparse

    from safetensors.torch import save_file

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--patch-size", type=int, default=KWARGS["patch_size"])
    ap.add_argument("--layers", type=int, default=KWARGS["num_layers"])
    args = ap.parse_args()
    KWARGS.update(patch_size=args.patch_size, num_layers=args.layers)

    xtr, ytr, xte, yte, mean, std = prepare()
    g = torch.Generator().manual_seed(SEED + 1)
    n = len(ytr)
    swap = torch.rand(n, generator=g) < MISMATCH
    labels = torch.where(swap, (ytr + torch.randint(1, 10, (n,), generator=g)) % 10, ytr)
    model = train(planted_cue(xtr, labels).images, labels, mean, std, SEED)
    wrong = (yte + 1 + torch.arange(len(yte)) % 9) % 10
    with torch.no_grad():
        pred_sw = model((planted_cue(xte, yte, cue_classes=wrong).images - mean) / std).argmax(1)
    card = json.loads((OUT / "digits-cnn-cue.json").read_text())
    card.update(
        name="digits-vit-cue", weights="digits-vit-cue.safetensors",
        architecture="convscope.models.digits_vit:DigitsViT", kwargs=KWARGS,
        description="DigitsViT (convscope.models.digits_vit): torchvision VisionTransformer, 8x8 patches, "
                    "class token, 4 blocks, width 64, 4 heads",
        summary="a small ViT trained on planted-cue digits: it reads the cue, not the digit",
        # the last block's patch tokens never reach the head (only the class token does): Grad-CAM
        # there is all zero, so the default CAM layer is the block before it
        default_layer=f"encoder.layers.encoder_layer_{KWARGS['num_layers'] - 2}",
        metrics={
            "test_accuracy_with_cue": accuracy(model, planted_cue(xte, yte).images, yte, mean, std),
            "test_accuracy_without_cue": accuracy(model, xte, yte, mean, std),
            "test_follows_swapped_cue": float((pred_sw == wrong).float().mean()),
        },
    )
    card["training"] = {"seed": SEED, "epochs": EPOCHS, "optimizer": "AdamW lr=1e-3 wd=0.05, cosine",
                        "batch_size": 64, "augmentation": "random shift of -1..1 px",
                        "script": "scripts/train_vit.py"}
    args.out.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(args.out / "digits-vit-cue.safetensors"))
    (args.out / "digits-vit-cue.json").write_text(json.dumps(card, indent=2) + "\n")
    print("digits-vit-cue", card["metrics"])


if __name__ == "__main__":
    main()
