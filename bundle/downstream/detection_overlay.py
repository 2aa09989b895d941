"""An overlay PNG of predicted (red, with scores) and true (green) boxes on the original images."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from bundle.data.image_io import load_radiograph


def save_overlay(records: Sequence[dict], path: str | Path, score_thresh: float = 0.3, columns: int = 4) -> Path:
    """records: DetectionSaver's entries (image path, pred_box / pred_score / pred_label, box / box_label)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    records = list(records)
    if not records:
        raise ValueError("no records to draw")
    columns = min(columns, len(records))
    rows = math.ceil(len(records) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, rec in zip(axes.flat, records):
        ax.imshow(load_radiograph(rec["image"]), cmap="gray", vmin=0, vmax=1)
        for x1, y1, x2, y2 in rec["box"]:
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="lime", linewidth=1.2))
        shown = 0
        for (x1, y1, x2, y2), name, score in zip(rec["pred_box"], rec["pred_label"], rec["pred_score"]):
            if score < score_thresh:
                continue
            shown += 1
            ax.add_patch(
                Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="red", linewidth=1.0, linestyle="--")
            )
            ax.text(x1, y1 - 1, f"{name} {score:.2f}", color="red", fontsize=5, va="bottom")
        ax.set_title(f"{rec['id']}: {len(rec['box'])} true, {shown} pred >= {score_thresh:g}", fontsize=7)
    fig.suptitle("green: true boxes; red dashed: predictions", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
