"""Loss-curve figure of a pretraining run, drawn from the run's history.jsonl (see progress.TrainingHistoryWriter)."""

from __future__ import annotations

import os

import numpy as np

from bundle.engines.progress import read_history

TRAIN_TERMS = ("loss", "loss_img", "loss_report", "loss_global", "loss_recon")


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over up to `window` values (same length as the input)."""
    values = np.asarray(values, dtype=np.float64)
    if window <= 1 or values.size == 0:
        return values
    csum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, values.size + 1)
    lo = np.maximum(idx - window, 0)
    return (csum[idx] - csum[lo]) / (idx - lo)


def _series(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r["iteration"], r[key]) for r in records if r.get(key) is not None]
    if not pts:
        return np.zeros(0), np.zeros(0)
    x, y = zip(*pts)
    return np.asarray(x), np.asarray(y, dtype=np.float64)


def plot_pretrain_curves(history_path: str, png_path: str, smooth: int = 10, title: str | None = None) -> str:
    """Write a PNG with training loss terms, validation loss and validation retrieval top-1 (with chance)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, val = read_history(history_path)
    if not train and not val:
        raise ValueError(f"{history_path} holds no training or validation record")
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    ax = axes[0]
    for key in TRAIN_TERMS:
        x, y = _series(train, key)
        if x.size and np.any(y != 0):
            ax.plot(x, moving_average(y, smooth), label=key, lw=1.5 if key == "loss" else 1.0)
    stage2 = [r["iteration"] for r in train if r.get("stage") == 2]
    for a in axes[:2]:
        if stage2:
            a.axvline(min(stage2), color="grey", ls="--", lw=1)
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"training loss (moving average of {smooth})")
    ax.legend(fontsize=8)
    ax.set_title("training")

    ax = axes[1]
    for key in ("val_loss", "val_loss_img", "val_loss_report", "val_loss_global", "val_loss_recon"):
        x, y = _series(val, key)
        if x.size and np.any(y != 0):
            ax.plot(x, y, marker="o", label=key)
    ax.set_xlabel("iteration (validation after each epoch)")
    ax.set_ylabel("validation loss")
    ax.legend(fontsize=8)
    ax.set_title("validation loss (dashed: stage 2 starts)")

    ax = axes[2]
    for key in ("val_i2t_top1", "val_t2i_top1", "val_i2t_top5", "val_t2i_top5"):
        x, y = _series(val, key)
        if x.size:
            ax.plot(x, y, marker="o", label=key)
    for key, style in (("val_chance_top1", ":"), ("val_chance_top5", "-.")):
        x, y = _series(val, key)
        if x.size:
            ax.plot(x, y, color="black", ls=style, label=key.replace("val_", ""))
    ax.set_xlabel("iteration")
    ax.set_ylabel("in-batch retrieval accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("validation image-report retrieval")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(png_path)), exist_ok=True)
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path
