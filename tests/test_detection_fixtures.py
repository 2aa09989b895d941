"""A tiny detection dataset on disk: dark PNGs with bright rectangles at known boxes, some images without any."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from bundle.data.manifest import write_manifest

ROOT = Path(__file__).resolve().parents[1]


def write_tiny_detection_dataset(
    out: Path, sizes=(("training", 12), ("validation", 4), ("test", 4)), shape=(80, 64), seed: int = 0
) -> Path:
    """out/images/<id>.png ([H, W] = shape) and out/manifests/detection.json in the preparers' convention.

    Every third image has no box; the others one or two bright rectangles of class 0 or 1 ("class_names" index 1
    and 2, as the demo's box classes index a longer class list). Label fractions 0.1 / 1.0 are stored.
    """
    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    splits, n = {}, 0
    height, width = shape
    for split, count in sizes:
        items = []
        for _ in range(count):
            image = np.full(shape, 20, np.uint8)
            boxes, labels = [], []
            for k in range(0 if n % 3 == 0 else 1 + n % 2):
                bw, bh = int(rng.integers(10, 20)), int(rng.integers(10, 20))
                x1 = int(rng.integers(0, width // 2 - bw)) + (width // 2 if k else 0)
                y1 = int(rng.integers(0, height - bh))
                image[y1 : y1 + bh, x1 : x1 + bw] = 230 if k == 0 else 160
                boxes.append([x1, y1, x1 + bw, y1 + bh])
                labels.append(1 + k)
            sid = f"d{n:03d}"
            Image.fromarray(image).save(out / "images" / f"{sid}.png")
            items.append({"id": sid, "image": f"images/{sid}.png", "box": boxes, "box_label": labels})
            n += 1
        splits[split] = items
    training_ids = [it["id"] for it in splits["training"]]
    meta = {
        "dataset": "tiny",
        "task": "detection",
        "class_names": ["no_finding", "bright", "grey"],
        "box_classes": {"bright": 1, "grey": 2},
        "box_mode": "xyxy",
        "box_convention": "[x1, y1, x2, y2] in pixels of the stored image, x = column",
        "fractions": {"0.1": training_ids[1:3], "1.0": training_ids},
    }
    path = out / "manifests" / "detection.json"
    write_manifest(path, splits, meta)
    return path
