"""Overlay PNG of a few test images: the image, its ground-truth mask, the predicted mask (at the original size).

The predicted masks are the test run's `<image stem>_seg.png` files (configs/segmentation.yaml, `mask_saver`).
Images with a non-empty ground truth come first (an empty mask shows nothing), then the others, in manifest order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bundle.data.image_io import load_label_map, load_radiograph


def predicted_mask_path(mask_dir: str | Path, image_path: str) -> Path:
    name = os.path.basename(image_path)
    for suffix in (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".bmp", ".tif", ".tiff"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return Path(mask_dir) / f"{name}_seg.png"


def write_overlay(
    items: Sequence[dict], mask_dir: str | Path, out: str | Path, count: int = 4, title: str = ""
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [it for it in items if np.any(load_label_map(it["label"]))][:count]
    chosen += [it for it in items if it not in chosen][: count - len(chosen)]
    fig, axes = plt.subplots(len(chosen), 3, figsize=(7.5, 2.6 * len(chosen)), squeeze=False)
    for row, item in zip(axes, chosen):
        image = load_radiograph(item["image"])
        truth = load_label_map(item["label"]) > 0
        pred = load_label_map(predicted_mask_path(mask_dir, item["image"])) > 0
        dice = 2 * (truth & pred).sum() / max(truth.sum() + pred.sum(), 1) if truth.any() or pred.any() else 1.0
        for ax, mask, name, colour in (
            (row[0], None, f"{item['id']}", None),
            (row[1], truth, "ground truth", (0.1, 0.9, 0.1)),
            (row[2], pred, f"prediction (Dice {dice:.2f})", (1.0, 0.2, 0.2)),
        ):
            ax.imshow(image, cmap="gray", vmin=0, vmax=1)
            if mask is not None:
                rgba = np.zeros(mask.shape + (4,))
                rgba[mask] = (*colour, 0.45)
                ax.imshow(rgba)
            ax.set_title(name, fontsize=8)
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
