#!/usr/bin/env python
"""Pre-resize the images of a prepared manifest into OUT/images/ with a new OUT/manifests/<name>.json
(docs/datasets.md, "Pre-resizing for throughput"):

    python scripts/resize_images.py --manifest DIR/manifests/pretrain.json --out DIR --size 256 [--help for the options]

The logic lives in bundle/data/prepare/resize_images.py; this file only puts the bundle root on sys.path and runs it.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bundle.data.prepare.resize_images import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
