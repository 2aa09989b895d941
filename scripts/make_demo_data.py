#!/usr/bin/env python
"""Generate the embedded demo dataset (docs/demo_data.md): real IU report text + report-driven phantom radiographs.

    python scripts/make_demo_data.py --out demo_data [--reports PATH] [--num-reports N] [--variants K] [--size S]
                                     [--seed X] [--workers W] [--strict] [--contact-sheet PNG]

Writes DIR/images/<id>.png, DIR/masks/<id>.png and DIR/manifests/{pretrain,classification,segmentation,detection}.json
(id = <IU report number>_<variant>); the logic lives in bundle/data/demo_dataset.py.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bundle.data.demo_dataset import DemoDataError, make_demo_dataset  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="make_demo_data.py",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", required=True, help="output dataset directory (dataset_dir of the workflows)")
    parser.add_argument(
        "--reports",
        default=None,
        help="NLMCXR_reports.tgz or a folder of IU report XMLs (default: the copy in torchxrayvision)",
    )
    parser.add_argument("--num-reports", type=int, default=None, help="use the first N report files (default: all)")
    parser.add_argument("--variants", type=int, default=1, help="phantoms per report")
    parser.add_argument("--size", type=int, default=256, help="image size in pixels (square)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the phantoms and of the splits")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: min(2, CPUs))")
    parser.add_argument("--strict", action="store_true", help="stop at the first unusable report instead of skipping")
    parser.add_argument("--contact-sheet", default=None, help="also write a 16-sample contact sheet PNG here")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"
    )
    try:
        make_demo_dataset(
            args.out,
            args.reports,
            args.num_reports,
            args.variants,
            args.size,
            args.seed,
            args.workers,
            args.strict,
            args.contact_sheet,
        )
    except DemoDataError as e:
        logging.getLogger("bundle.data.demo").error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
