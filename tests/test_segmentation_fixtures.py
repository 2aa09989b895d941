"""Tiny segmentation datasets (PNG images with bright squares, label-map PNG masks, manifest with label fractions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from bundle.data.label_fractions import fractions_meta, nested_fraction_subsets
from bundle.data.manifest import write_manifest

ROOT = Path(__file__).resolve().parents[1]
META = str(ROOT / "metadata.json")
LOGGING = str(ROOT / "configs" / "logging.conf")
CONFIGS = [str(ROOT / "configs" / "common.yaml"), str(ROOT / "configs" / "segmentation.yaml")]


def draw_item(rng, height: int, width: int, class_ids=(1,)):
    """A noisy image with bright squares and the matching label map (class id under each square); some empty."""
    image = rng.integers(0, 50, (height, width)).astype(np.uint8)
    mask = np.zeros((height, width), np.uint8)
    for cid in class_ids:
        if rng.random() < 0.3:
            continue  # an empty class in this image (empty masks occur)
        side = int(rng.integers(6, max(7, min(height, width) // 3)))
        r, c = int(rng.integers(0, height - side)), int(rng.integers(0, width - side))
        image[r : r + side, c : c + side] = 220
        mask[r : r + side, c : c + side] = cid
    return image, mask


def write_tiny_segmentation_dataset(
    root: Path,
    sizes=(("training", 12), ("validation", 4), ("test", 4)),
    shape=(40, 48),
    mask_classes=None,
    seed: int = 0,
) -> Path:
    """Images of `shape` (rows, columns: not square, so resizing and padding matter) and a segmentation manifest.
    mask_classes: {name: id} written into meta.mask_classes (demo style); default: SIIM-style mask_values 0/1."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    ids = list(mask_classes.values()) if mask_classes else [1]
    splits, index = {}, 0
    for split, n in sizes:
        items = []
        for _ in range(n):
            image, mask = draw_item(rng, *shape, class_ids=ids)
            name = f"{split}_{index:03d}"
            Image.fromarray(image).save(root / "images" / f"{name}.png")
            Image.fromarray(mask).save(root / "masks" / f"{name}.png")
            items.append({"id": name, "image": f"images/{name}.png", "label": f"masks/{name}.png"})
            index += 1
        splits[split] = items
    subsets = nested_fraction_subsets(splits["training"], (0.01, 0.1, 1.0), seed=0, label_key=None)
    meta = {"fractions": fractions_meta(subsets), "fraction_seed": 0}
    if mask_classes:
        meta.update(class_names=["background"] + list(mask_classes), mask_classes=dict(mask_classes))
    else:
        meta.update(class_names=["pneumothorax"], mask_values={"0": "background", "1": "pneumothorax"})
    path = root / "manifests" / "segmentation.json"
    write_manifest(path, splits, meta)
    return path


def tiny_overrides(dataset_dir: Path, output_dir: Path, **extra) -> dict:
    overrides = {
        "dataset_dir": str(dataset_dir),
        "output_dir": str(output_dir),
        "bundle_root": str(ROOT),
        "image_size": 48,
        "crop_size": 32,
        "encoder_name": "resnet18",
        "encoder_source": "random",
        "encoder_image_size": 32,
        "decoder_channels": [16, 16, 8, 8, 8],
        "batch_size": 4,
        "val_batch_size": 4,
        "num_workers": 0,
        "max_epochs": 2,
        "device": "cpu",
        "learning_rate": 1e-2,
    }
    overrides.update(extra)
    return overrides
