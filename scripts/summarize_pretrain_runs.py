#!/usr/bin/env python
"""Markdown table of the local-loss diagnostics of finished pretraining runs, read from their history.jsonl.

    python scripts/summarize_pretrain_runs.py NAME=RUN_DIR [NAME=RUN_DIR ...]

RUN_DIR is a run's output_dir (holding history.jsonl). Columns: the last validation record (local report top-1 with
its chance, centroid usage, in-batch retrieval top-1) and the mean of the last 20 training steps (report loss, image
loss, token std ratio, token cosine within an image, z2 std ratio, f_RI cosine within an image, A1 / A2 entropy).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.engines.progress import read_history  # noqa: E402

VAL = (
    ("val_local_top1", "val local top-1"),
    ("val_local_chance_top1", "chance"),
    ("val_centroid_usage", "val centroid usage"),
    ("val_i2t_top1", "val i2t top-1"),
    ("val_t2i_top1", "val t2i top-1"),
)
TRAIN = (
    ("loss_report", "loss_report"),
    ("loss_img", "loss_img"),
    ("diag_tok_std", "token std"),
    ("diag_tok_cos_within", "token cos within"),
    ("diag_z2_std", "z2 std"),
    ("diag_fri_cos_within", "f_RI cos within"),
    ("diag_a1_entropy", "A1 entropy"),
    ("diag_a2_entropy", "A2 entropy"),
)


def row(name: str, run_dir: str) -> str:
    train, val = read_history(str(Path(run_dir) / "history.jsonl"))
    last = val[-1] if val else {}
    cells = [f"{last[k]:.3f}" if last.get(k) is not None else "-" for k, _ in VAL]
    tail = train[-20:]
    for key, _ in TRAIN:
        values = [r[key] for r in tail if r.get(key) is not None]
        cells.append(f"{statistics.mean(values):.3f}" if values else "-")
    return f"| {name} | " + " | ".join(cells) + " |"


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    print("| run | " + " | ".join(label for _, label in VAL + TRAIN) + " |")
    print("|---|" + "---|" * (len(VAL) + len(TRAIN)))
    for spec in argv:
        name, _, run_dir = spec.partition("=")
        print(row(name, run_dir or name))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
