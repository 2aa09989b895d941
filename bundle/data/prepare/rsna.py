"""RSNA Pneumonia Detection Challenge (stage 2 training set) -> classification, detection and segmentation manifests.

Input (Kaggle `rsna-pneumonia-detection-challenge`): stage_2_train_labels.csv (patientId, x, y, width, height,
Target; one row per box, one row with an empty box for a negative image) and stage_2_train_images/<patientId>.dcm.
One image per patientId, so the split by patient is a split by image: 70/15/15, stratified by Target, seeded.
The manifests point at the original DICOM files (the bundle's image loader reads DICOM; boxes are in their pixels).
Segmentation masks (boxes rasterised, masks.py) are written to OUT/masks/rsna/<patientId>.png.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
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
    split_proportions,
    stratified_group_split,
    write_outputs,
)
from bundle.data.prepare.masks import dicom_size, rasterise_boxes, write_mask_png

CLASS_NAMES = ["pneumonia"]
COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
BOX_CONVENTION = (
    "[x1, y1, x2, y2] in pixels of the stored DICOM image, x = column, y = row, x2 = x + width, "
    "y2 = y + height (stage_2_train_labels.csv); box_label indexes class_names"
)


@dataclass
class PatientLabels:
    target: int | None = None
    boxes: list[list[float]] = field(default_factory=list)
    problem: tuple[str, str] | None = None  # (reason, detail) of the first defect found in its rows


def _box_from_row(row: dict) -> list[float]:
    x, y, w, h = (float(row[k]) for k in ("x", "y", "width", "height"))
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        raise ValueError(f"x={row['x']} y={row['y']} width={row['width']} height={row['height']}")
    return [x, y, x + w, y + h]


def parse_labels(csv_path: Path) -> dict[str, PatientLabels]:
    """Group the label rows by patientId; defects are recorded per patient (never a partial box list)."""
    patients: dict[str, PatientLabels] = {}
    for line, row in read_csv_rows(csv_path, COLUMNS):
        patient = patients.setdefault(row["patientId"], PatientLabels())
        if patient.problem:
            continue
        target = row["Target"]
        has_box = any(row[k] for k in ("x", "y", "width", "height"))
        if target not in ("0", "1"):
            patient.problem = ("malformed row", f"line {line}: Target={target!r}")
        elif patient.target is not None and int(target) != patient.target:
            patient.problem = ("conflicting Target values", f"line {line}")
        elif target == "0" and has_box:
            patient.problem = ("negative row with a box", f"line {line}")
        elif target == "0" and patient.target == 0:
            patient.problem = ("duplicate negative row", f"line {line}")
        elif target == "1":
            try:
                patient.boxes.append(_box_from_row(row))
            except ValueError as error:
                patient.problem = ("malformed box", f"line {line}: {error}")
        patient.target = int(target) if target in ("0", "1") else patient.target
    return patients


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("rsna", __doc__.splitlines()[0])
    parser.add_argument("--labels", type=Path, help="stage_2_train_labels.csv (default: SRC/stage_2_train_labels.csv)")
    parser.add_argument("--images", type=Path, help="the DICOM folder (default: SRC/stage_2_train_images)")
    parser.add_argument("--val_fraction", type=float, default=0.15)
    parser.add_argument("--test_fraction", type=float, default=0.15)
    parser.add_argument("--no_segmentation", action="store_true", help="skip the masks and the segmentation manifest")
    return parser


def prepare(args: argparse.Namespace) -> dict:
    src, out = Path(args.src), Path(args.out)
    labels_csv = require_file(args.labels or src / "stage_2_train_labels.csv", "RSNA label file")
    images_dir = Path(args.images or src / "stage_2_train_images")
    if not images_dir.is_dir():
        raise PreparationError(f"RSNA image folder not found: {images_dir}")
    skips = SkipLog(strict=args.strict)
    report = PreparationReport("rsna", str(src), args.seed, record_arguments(args), skips)

    patients = parse_labels(labels_csv)
    usable: dict[str, tuple[Path, int, list[list[float]], tuple[int, int]]] = {}
    for pid, labels in progress(sorted(patients.items()), desc="rsna images"):
        if labels.problem:
            skips.skip(labels.problem[0], pid, labels.problem[1])
            continue
        path = images_dir / f"{pid}.dcm"
        if not path.is_file():
            skips.skip("image listed but missing", pid, str(path))
            continue
        try:
            rows, cols = dicom_size(path)
        except Exception as error:  # pydicom raises several types for a broken file
            skips.skip("unreadable DICOM header", pid, f"{type(error).__name__}: {error}")
            continue
        outside = [b for b in labels.boxes if b[0] < 0 or b[1] < 0 or b[2] > cols or b[3] > rows]
        if outside:
            skips.skip("box outside the image", pid, f"{outside[0]} in a {cols}x{rows} image")
            continue
        usable[pid] = (path, labels.target, labels.boxes, (rows, cols))
    listed = {f"{pid}.dcm" for pid in patients}
    report.notes["dicoms_without_label_rows"] = sum(
        1 for name in os.listdir(images_dir) if name.endswith(".dcm") and name not in listed
    )
    report.notes["boxes"] = sum(len(v[2]) for v in usable.values())

    proportions = split_proportions(validation=args.val_fraction, test=args.test_fraction)
    assignment = stratified_group_split({pid: v[1] for pid, v in usable.items()}, proportions, args.seed)
    classification, detection, segmentation = ({s: [] for s in proportions} for _ in range(3))
    for pid in progress(sorted(usable), desc="rsna items"):
        path, target, boxes, (rows, cols) = usable[pid]
        split, image = assignment[pid], relative_path(path, out)
        classification[split].append({"image": image, "label": [float(target)], "id": pid})
        detection[split].append({"image": image, "box": boxes, "box_label": [0] * len(boxes), "id": pid})
        if not args.no_segmentation:
            mask_path = out / "masks" / "rsna" / f"{pid}.png"
            write_mask_png(rasterise_boxes(boxes, rows, cols), mask_path)
            segmentation[split].append({"image": image, "label": relative_path(mask_path, out), "id": pid})

    positive = {pid for pid, v in usable.items() if v[1] == 1}
    stratum = lambda item: item["id"] in positive  # noqa: E731 - same strata (hence same fractions) in all manifests
    source = "RSNA Pneumonia Detection Challenge, stage 2 training set (stage_2_train_labels.csv + DICOMs)"
    common_meta = {"source": source, "class_names": CLASS_NAMES, "image_format": "original DICOM files"}
    outputs = [
        ManifestOutput(
            "classification",
            "classification",
            classification,
            dict(common_meta, label_type="multi_hot", label_policy="Target 1 -> [1.0], Target 0 -> [0.0]"),
            classes_of=lambda it: ["pneumonia" if it["label"][0] else "no_pneumonia"],
            stratum_of=stratum,
        ),
        ManifestOutput(
            "detection",
            "detection",
            detection,
            dict(common_meta, box_convention=BOX_CONVENTION),
            classes_of=lambda it: (
                ["box"] * len(it["box"]) + ["image_with_boxes" if it["box"] else "image_without_boxes"]
            ),
            stratum_of=stratum,
        ),
    ]
    if not args.no_segmentation:
        outputs.append(
            ManifestOutput(
                "segmentation",
                "segmentation",
                segmentation,
                dict(
                    common_meta,
                    mask_format="PNG, uint8, size of the image",
                    mask_values={"0": "background", "1": "inside a pneumonia box"},
                    mask_rule="pixel columns floor(x1)..ceil(x2)-1 and rows floor(y1)..ceil(y2)-1 of every box",
                ),
                classes_of=lambda it: ["pneumonia" if it["id"] in positive else "no_pneumonia"],
                stratum_of=stratum,
            )
        )
    LOG.info("rsna: %d of %d patients usable", len(usable), len(patients))
    return write_outputs(out, report, outputs)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(prepare, build_parser(), argv)
