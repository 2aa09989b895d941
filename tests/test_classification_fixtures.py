"""Tiny classification datasets (32-px PNGs + manifest with label fractions) for the classification tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from bundle.data.label_fractions import fractions_meta, nested_fraction_subsets
from bundle.data.manifest import write_manifest

ROOT = Path(__file__).resolve().parents[1]
META = str(ROOT / "metadata.json")
LOGGING = str(ROOT / "configs" / "logging.conf")
CONFIGS = [str(ROOT / "configs" / "common.yaml"), str(ROOT / "configs" / "classification.yaml")]


def label_for(task: str, index: int, num_classes: int):
    if task == "multiclass":
        return index % num_classes
    if task == "binary":
        return [float(index % 2)]
    return [float((index >> c) & 1) for c in range(num_classes)]


def write_tiny_classification_dataset(
    root: Path,
    task: str = "multilabel",
    num_classes: int = 3,
    sizes=(("training", 12), ("validation", 6), ("test", 6)),
    side: int = 32,
) -> Path:
    """PNG images whose brightness pattern depends on the label (so a probe can learn something) and a manifest."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    splits, index = {}, 0
    for split, n in sizes:
        items = []
        for _ in range(n):
            label = label_for(task, index, num_classes)
            image = rng.integers(0, 60, (side, side)).astype(np.uint8)
            image[: side // 2] += np.uint8(100 * (np.argmax(label) if task == "multiclass" else label[0]))
            name = f"images/{split}_{index:03d}.png"
            Image.fromarray(image).save(root / name)
            items.append({"id": f"{split}_{index:03d}", "image": name, "label": label})
            index += 1
        splits[split] = items
    names = ["pneumonia"] if task == "binary" else [f"finding_{c}" for c in range(num_classes)]
    subsets = nested_fraction_subsets(splits["training"], (0.01, 0.1, 1.0), seed=0, label_key=None)
    meta = {"class_names": names, "fractions": fractions_meta(subsets), "fraction_seed": 0}
    path = root / "manifests" / "classification.json"
    write_manifest(path, splits, meta)
    return path


def tiny_overrides(dataset_dir: Path, output_dir: Path, **extra) -> dict:
    overrides = {
        "dataset_dir": str(dataset_dir),
        "output_dir": str(output_dir),
        "bundle_root": str(ROOT),
        "image_size": 36,
        "crop_size": 32,
        "encoder_name": "resnet18",
        "encoder_source": "random",
        "batch_size": 4,
        "val_batch_size": 4,
        "num_workers": 0,
        "max_epochs": 2,
        "device": "cpu",
        "learning_rate": 1e-2,
    }
    overrides.update(extra)
    return overrides
