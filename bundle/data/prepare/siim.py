"""SIIM-ACR Pneumothorax Segmentation (stage 1 training set) -> segmentation manifest with PNG masks.

Input: train-rle.csv (ImageId, EncodedPixels; "-1" = no pneumothorax; several rows of one image are several objects,
united) and the DICOMs in nested folders (dicom-images-train/<study>/<series>/<ImageId>.dcm). The RLE is the
competition's relative, column-major format on the stored image (rle.py; 1024x1024 in the release).
The split is made over unique ImageIds (MGCA splits CSV rows, which puts one image's rows in different splits):
70/15/15, stratified by positive/negative, seeded. MGCA balances the training set to all positives plus as many
negatives drawn at random (`--no_balance` keeps every training image); validation and test are never balanced.
The manifest points at the original DICOMs; masks go to OUT/masks/siim/<ImageId>.png (0 background, 1 pneumothorax).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from bundle.data.prepare.common import (
    LOG,
    ManifestOutput,
    PreparationError,
    PreparationReport,
    SkipLog,
    make_parser,
    progress,
    read_csv_rows,
    record_arguments,
    relative_path,
    require_file,
    run_main,
    seeded_sample,
    split_proportions,
    stratified_group_split,
    write_outputs,
)
from bundle.data.prepare.masks import dicom_size, write_mask_png
from bundle.data.prepare.rle import EMPTY, RLEError, decode_union

CLASS_NAMES = ["pneumothorax"]
COLUMNS = ("ImageId", "EncodedPixels")


def parse_rle_csv(csv_path: Path) -> dict[str, list[str]]:
    """{ImageId: [EncodedPixels of each row]} in file order."""
    rles: dict[str, list[str]] = {}
    for _, row in read_csv_rows(csv_path, COLUMNS):
        rles.setdefault(row["ImageId"], []).append(row["EncodedPixels"])
    return rles


def index_dicoms(images_dir: Path) -> dict[str, Path]:
    """{file stem: path} of every .dcm under `images_dir`; two files with one stem are an error (ambiguous image)."""
    found: dict[str, Path] = {}
    for root, _, files in os.walk(images_dir):
        for name in files:
            if not name.endswith(".dcm"):
                continue
            stem, path = name[: -len(".dcm")], Path(root) / name
            if stem in found:
                raise PreparationError(f"two DICOM files for image {stem}: {found[stem]} and {path}")
            found[stem] = path
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("siim", __doc__.splitlines()[0])
    parser.add_argument("--rle_csv", type=Path, help="train-rle.csv (default: SRC/train-rle.csv)")
    parser.add_argument(
        "--images", type=Path, help="DICOM folder, searched recursively (default: SRC/dicom-images-train)"
    )
    parser.add_argument("--val_fraction", type=float, default=0.15)
    parser.add_argument("--test_fraction", type=float, default=0.15)
    parser.add_argument(
        "--no_balance",
        action="store_true",
        help="keep every training image (default: MGCA's all positives + as many random negatives)",
    )
    return parser


def prepare(args: argparse.Namespace) -> dict:
    src, out = Path(args.src), Path(args.out)
    csv_path = require_file(args.rle_csv or src / "train-rle.csv", "SIIM RLE file")
    images_dir = Path(args.images or src / "dicom-images-train")
    if not images_dir.is_dir():
        raise PreparationError(f"SIIM DICOM folder not found: {images_dir}")
    skips = SkipLog(strict=args.strict)
    report = PreparationReport("siim", str(src), args.seed, record_arguments(args), skips)

    rles = parse_rle_csv(csv_path)
    dicoms = index_dicoms(images_dir)
    # pass 1: validate every image's rows against its DICOM size (masks are decoded, checked and dropped)
    usable: dict[str, tuple[Path, bool, tuple[int, int]]] = {}
    for image_id, rows in progress(sorted(rles.items()), desc="siim check"):
        negative = [r for r in rows if r == EMPTY]
        if negative and len(negative) != len(rows):
            skips.skip("both '-1' and RLE rows", image_id, f"{len(rows)} rows")
            continue
        if len(negative) > 1:
            skips.skip("duplicate '-1' rows", image_id, f"{len(rows)} rows")
            continue
        if image_id not in dicoms:
            skips.skip("image listed but missing", image_id, f"no {image_id}.dcm under {images_dir}")
            continue
        try:
            height, width = dicom_size(dicoms[image_id])
        except Exception as error:  # pydicom raises several types for a broken file
            skips.skip("unreadable DICOM header", image_id, f"{type(error).__name__}: {error}")
            continue
        try:
            decode_union(rows, height, width)
        except RLEError as error:
            skips.skip("malformed RLE", image_id, str(error))
            continue
        usable[image_id] = (dicoms[image_id], not negative, (height, width))
    report.notes["dicoms_without_rle_rows"] = len(set(dicoms) - set(rles))
    report.notes["rle_rows_of_usable_positive_images"] = sum(len(rles[i]) for i, v in usable.items() if v[1])

    proportions = split_proportions(validation=args.val_fraction, test=args.test_fraction)
    assignment = stratified_group_split({i: v[1] for i, v in usable.items()}, proportions, args.seed)
    if not args.no_balance:
        train_pos = [i for i in usable if assignment[i] == "training" and usable[i][1]]
        train_neg = [i for i in usable if assignment[i] == "training" and not usable[i][1]]
        kept = set(seeded_sample(train_neg, len(train_pos), args.seed))
        for image_id in train_neg:
            if image_id not in kept:
                del assignment[image_id]
        report.filtered["training negatives left out by balancing"] = len(train_neg) - len(kept)

    # pass 2: write the masks of the images that are in the manifest
    splits: dict[str, list[dict]] = {s: [] for s in proportions}
    for image_id in progress(sorted(assignment), desc="siim masks"):
        path, _, (height, width) = usable[image_id]
        mask_path = out / "masks" / "siim" / f"{image_id}.png"
        write_mask_png(decode_union(rles[image_id], height, width), mask_path)
        splits[assignment[image_id]].append(
            {"image": relative_path(path, out), "label": relative_path(mask_path, out), "id": image_id}
        )

    positive = {i for i, v in usable.items() if v[1]}
    meta = {
        "source": "SIIM-ACR Pneumothorax Segmentation, stage 1 (train-rle.csv + DICOMs)",
        "class_names": CLASS_NAMES,
        "image_format": "original DICOM files",
        "mask_format": "PNG, uint8, size of the image",
        "mask_values": {"0": "background", "1": "pneumothorax"},
        "training_balanced": not args.no_balance,
    }
    output = ManifestOutput(
        "segmentation",
        "segmentation",
        splits,
        meta,
        classes_of=lambda it: ["pneumothorax" if it["id"] in positive else "no_pneumothorax"],
        stratum_of=lambda it: it["id"] in positive,
    )
    LOG.info("siim: %d of %d images usable", len(usable), len(rles))
    return write_outputs(out, report, [output])


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(prepare, build_parser(), argv)
