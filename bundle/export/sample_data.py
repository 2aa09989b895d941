"""A few synthetic items in the form MONAI Label's BundleTrainTask hands a bundle (`train#dataset#data`): what the
export's check_properties(train) instantiates the trainer with, since an exported bundle ships no data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def sample_items(task: str, num_classes: int, folder: str | Path, n: int = 2, side: int = 40) -> list[dict]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        image = rng.integers(0, 60, (side, side + 8)).astype(np.uint8)
        image[8:20, 10:24] = 220
        Image.fromarray(image).save(folder / f"image_{i}.png")
        item = {"image": str(folder / f"image_{i}.png"), "id": f"image_{i}"}
        if task == "segmentation":
            mask = np.zeros(image.shape, np.uint8)
            mask[8:20, 10:24] = 1 + i % num_classes
            Image.fromarray(mask).save(folder / f"label_{i}.png")
            item["label"] = str(folder / f"label_{i}.png")
        elif task == "classification":
            item["label"] = [float((i + c) % 2) for c in range(num_classes)]
        else:  # detection: [x1, y1, x2, y2] pixels, box_label = the class's manifest id (0 .. C-1 by default)
            item.update(box=[[10.0, 8.0, 24.0, 20.0]], box_label=[i % num_classes])
        items.append(item)
    return items
