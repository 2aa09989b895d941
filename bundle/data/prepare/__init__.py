"""Preparation of the real datasets into the bundle's manifests (docs/datasets.md).

One module per dataset (mimic_cxr, chexpert, rsna, siim, covidx, object_cxr), each with a `main(argv)` that the thin
command-line scripts `scripts/prepare_<dataset>.py` call; shared helpers live in `common` (CSV reading, skip policy,
deterministic splits, summaries), `rle` (SIIM run-length masks) and `masks` (box rasterisation, mask PNGs).
"""
