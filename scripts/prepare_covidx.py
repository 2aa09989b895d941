#!/usr/bin/env python
"""Prepare the covidx dataset into OUT/manifests/ (docs/datasets.md):

    python scripts/prepare_covidx.py --src DIR --out DIR [--help for the options]

The logic lives in bundle/data/prepare/covidx.py; this file only puts the bundle root on sys.path and runs it.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bundle.data.prepare.covidx import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
