#!/usr/bin/env python
"""Write a randomly initialised BERT-base-sized text model with a real word-piece tokenizer (dry runs, benchmarks):

    python scripts/make_random_text_model.py --out /tmp/random_bert_base [--layers 12 --width 768]

The logic lives in bundle/networks/random_text_model.py.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bundle.networks.random_text_model import write_random_bert  # noqa: E402

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--width", type=int, default=768)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    print(write_random_bert(a.out, a.layers, a.width, a.seed))
