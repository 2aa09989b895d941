#!/usr/bin/env python
"""Draw the loss curves of a pretraining run from its history.jsonl into a PNG.

    python scripts/plot_pretrain_curves.py --history runs/pretrain_demo/history.jsonl \
        --out runs/pretrain_demo/loss_curves.png
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bundle.engines.plotting import plot_pretrain_curves  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--history", required=True, help="history.jsonl written by TrainingHistoryWriter")
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--smooth", type=int, default=10, help="moving-average window of the training curves")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.history):
        print(f"no history file at {args.history}", file=sys.stderr)
        return 1
    print(plot_pretrain_curves(args.history, args.out, smooth=args.smooth))
    return 0


if __name__ == "__main__":
    sys.exit(main())
