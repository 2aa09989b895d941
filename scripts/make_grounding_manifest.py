#!/usr/bin/env python
"""A grounding manifest (configs/evaluate_grounding.yaml) from a detection manifest and one sentence per class:
every image with at least one box of the class becomes a case whose region is the union of those boxes.

RSNA pneumonia (boxes of scripts/prepare_rsna.py's detection manifest) with a pneumonia sentence:

    PYTHONPATH=$PWD python scripts/make_grounding_manifest.py --detection_manifest /data/rsna/manifests/detection.json \
        --sentence "pneumonia=there is an airspace opacity in the lung concerning for pneumonia" \
        --out /data/rsna/manifests/grounding.json

The sentence is the user's choice, not report text; it is written into the manifest's meta. Images without a box of
the class are not cases (they have no region to point at) and are counted in the meta.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bundle.data.manifest import ManifestError, read_manifest, write_manifest

SPLITS = ("training", "validation", "test")


def grounding_from_detection(content: dict, sentences: dict[str, str]) -> tuple[dict, dict]:
    """(splits, meta) of the grounding manifest for a detection manifest's content and {class name: sentence}."""
    meta = content.get("meta", {})
    names = meta.get("class_names")
    if not names:
        raise ManifestError("the detection manifest's meta has no 'class_names' (box_label indexes them)")
    unknown = [c for c in sentences if c not in names]
    if unknown:
        raise ManifestError(f"classes {unknown} are not in the detection manifest's class_names {names}")
    splits, counts = {}, {"cases": 0, "images_without_box": 0}
    for split in SPLITS:
        items = []
        for item in content.get(split, []):
            phrases = []
            for name, text in sentences.items():
                boxes = [b for b, lab in zip(item.get("box", []), item.get("box_label", [])) if names[int(lab)] == name]
                if boxes:
                    phrases.append({"text": text, "class": name, "class_id": names.index(name), "box": boxes})
            if phrases:
                items.append({"id": item["id"], "image": item["image"], "phrases": phrases})
                counts["cases"] += len(phrases)
            else:
                counts["images_without_box"] += 1
        splits[split] = items
    out_meta = {k: meta[k] for k in ("class_names", "source", "dataset", "box_convention") if k in meta}
    out_meta.update(
        task="grounding",
        region="union of the item's boxes of the phrase's class",
        sentences=dict(sentences),
        created_by="scripts/make_grounding_manifest.py",
        **counts,
    )
    return splits, out_meta


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--detection_manifest", required=True)
    p.add_argument("--sentence", action="append", required=True, help="CLASS=sentence (repeatable)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    sentences = {}
    for spec in args.sentence:
        name, sep, text = spec.partition("=")
        if not sep or not text.strip():
            raise SystemExit(f"--sentence {spec!r}: expected CLASS=sentence")
        sentences[name.strip()] = text.strip()
    splits, meta = grounding_from_detection(read_manifest(args.detection_manifest), sentences)
    write_manifest(args.out, splits, meta)
    print(f"wrote {args.out}: {meta['cases']} cases, {meta['images_without_box']} images without a box of the class")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
