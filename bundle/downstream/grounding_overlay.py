"""PNG grid of grounding examples: the radiograph, the sentence's A1 map as a translucent heat map, the ground-truth
region's outline and the map's maximum, titled with the sentence and whether the pointing game hit."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bundle.downstream.grounding import pointing_location


def plot_grounding_examples(examples: Sequence[dict], path: str | Path, columns: int = 4) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = int(np.ceil(len(examples) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, ex in zip(axes.flat, examples):
        heat = ex["map"]
        span = heat.max() - heat.min()
        heat = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
        ax.imshow(ex["image"], cmap="gray", vmin=0, vmax=1)
        ax.imshow(heat, cmap="jet", alpha=0.35, vmin=0, vmax=1)
        ax.contour(ex["region"].astype(float), levels=[0.5], colors="white", linewidths=1.0)
        r, c = pointing_location(ex["map"])
        ax.plot(c, r, marker="x", color="white" if ex.get("model_pointing") else "red", markersize=9, mew=2)
        hit = "hit" if ex.get("model_pointing") else "miss"
        ax.set_title("\n".join(textwrap.wrap(f"{ex['text']} [{ex.get('class')}, {hit}]", 34)), fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
