#!/usr/bin/env python
"""Prepare the mimic_cxr dataset into OUT/manifests/ (docs/datasets.md):

    python scripts/prepare_mimic_cxr.py --src DIR --out DIR [--help for the options]

The logic lives in bundle/data/prepare/mimic_cxr.py; this file only puts the bundle root on sys.path and runs it.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bundle.data.prepare.mimic_cxr import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
