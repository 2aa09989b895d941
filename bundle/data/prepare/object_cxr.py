"""Object-CXR (foreign objects on chest X-rays, MIDL 2020) -> detection manifest.

Input: train.csv and dev.csv (image_name, annotation) with the JPGs in train/ and dev/. An annotation is a list of
shapes separated by ";", each "TYPE c1 c2 ...": type 0 rectangle and 1 ellipse give "x1 y1 x2 y2" (the corners of
the rectangle / of the ellipse's bounding box), type 2 polygon gives "x1 y1 x2 y2 ... xn yn"; empty = no object.
Each shape becomes its tight box [min x, min y, max x, max y] in pixels of the JPG. The official dev set is the test
set (the challenge's test set was never released); train.csv is split 90/10 into training/validation, stratified by
"has objects", seeded. A shape reaching past the image border is clipped to it (counted in the notes).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

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
from bundle.data.prepare.masks import image_size

CLASS_NAMES = ["foreign_object"]
SHAPE_NAMES = {0: "rectangle", 1: "ellipse", 2: "polygon"}
BOX_CONVENTION = (
    "[x1, y1, x2, y2] in pixels of the stored JPG, x = column, y = row: the tight box of each "
    "annotated shape (rectangle corners, ellipse bounding box, polygon extent); box_label indexes "
    "class_names"
)


class AnnotationError(ValueError):
    """An annotation string that does not follow the Object-CXR shape format."""


def parse_annotation(text: str) -> list[list[float]]:
    """The tight [x1, y1, x2, y2] box of every shape in an Object-CXR annotation string ([] when empty)."""
    pieces = [piece.strip() for piece in text.split(";")]
    if pieces[-1] == "":
        pieces = pieces[:-1]  # an empty annotation (no object), or a trailing ";"
    boxes = []
    for index, shape in enumerate(pieces):
        tokens = shape.split()
        if not tokens:
            raise AnnotationError(f"empty shape #{index + 1}")
        try:
            kind = int(tokens[0])
            coords = [float(t) for t in tokens[1:]]
        except ValueError:
            raise AnnotationError(f"shape #{index + 1} {shape.strip()!r}: non-numeric value") from None
        if kind not in SHAPE_NAMES:
            raise AnnotationError(f"shape #{index + 1}: unknown type {kind} (0 rectangle, 1 ellipse, 2 polygon)")
        if kind in (0, 1) and len(coords) != 4:
            raise AnnotationError(f"shape #{index + 1}: a {SHAPE_NAMES[kind]} needs 4 numbers, got {len(coords)}")
        if kind == 2 and (len(coords) % 2 or len(coords) < 6):
            raise AnnotationError(f"shape #{index + 1}: a polygon needs >= 3 x/y pairs, got {len(coords)} numbers")
        if not all(math.isfinite(c) for c in coords):
            raise AnnotationError(f"shape #{index + 1}: non-finite coordinate")
        xs, ys = coords[0::2], coords[1::2]
        box = [min(xs), min(ys), max(xs), max(ys)]
        if box[2] <= box[0] or box[3] <= box[1]:
            raise AnnotationError(f"shape #{index + 1}: zero-area {SHAPE_NAMES[kind]} {box}")
        boxes.append(box)
    return boxes


def clip_box(box: list[float], height: int, width: int) -> list[float] | None:
    """The box clipped to the image, or None when nothing of it is inside."""
    x1, y1 = max(0.0, box[0]), max(0.0, box[1])
    x2, y2 = min(float(width), box[2]), min(float(height), box[3])
    return [x1, y1, x2, y2] if x2 > x1 and y2 > y1 else None


def read_annotation_csv(csv_path: Path) -> tuple[dict[str, str], dict[str, int]]:
    """({image file name: annotation}, {name: row count} of identically repeated rows).

    Accepts the `image_name` column (the release) or `image_path` (the challenge README)."""
    with open(csv_path, encoding="utf-8") as f:
        header = [h.strip() for h in f.readline().split(",")]
    name_column = "image_name" if "image_name" in header else "image_path"
    annotations: dict[str, str] = {}
    duplicates: dict[str, int] = {}
    for line, row in read_csv_rows(csv_path, (name_column, "annotation")):
        name = PurePosixPath(row[name_column].replace("\\", "/")).name
        if name in annotations:
            if annotations[name] != row["annotation"]:
                raise PreparationError(f"{csv_path}:{line}: {name} is listed twice with different annotations")
            duplicates[name] = duplicates.get(name, 1) + 1
            continue
        annotations[name] = row["annotation"]
    return annotations, duplicates


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("object_cxr", __doc__.splitlines()[0])
    parser.add_argument("--val_fraction", type=float, default=0.1, help="share of train.csv used for validation")
    return parser


def _load_split(src: Path, name: str, out: Path, skips: SkipLog, report: PreparationReport) -> list[dict]:
    csv_path = require_file(src / f"{name}.csv", f"Object-CXR {name}.csv")
    annotations, duplicates = read_annotation_csv(csv_path)
    for image_name, count in sorted(duplicates.items()):
        skips.skip("duplicate row (identical)", f"{name}/{image_name}", f"{count} rows")
    items = []
    for image_name, text in progress(sorted(annotations.items()), desc=f"object-cxr {name}"):
        record = f"{name}/{image_name}"
        try:
            boxes = parse_annotation(text)
        except AnnotationError as error:
            skips.skip("malformed annotation", record, str(error))
            continue
        path = src / name / image_name
        if not path.is_file():
            skips.skip("image listed but missing", record, str(path))
            continue
        try:
            height, width = image_size(path)
        except OSError as error:
            skips.skip("unreadable image", record, str(error))
            continue
        clipped = [clip_box(b, height, width) for b in boxes]
        if any(c is None for c in clipped):
            skips.skip("annotation outside the image", record, f"{width}x{height} image")
            continue
        report.notes["shapes_clipped_to_the_image"] += sum(c != b for c, b in zip(clipped, boxes))
        items.append(
            {
                "image": relative_path(path, out),
                "box": clipped,
                "box_label": [0] * len(clipped),
                "id": PurePosixPath(image_name).stem,
            }
        )
    return items


def prepare(args: argparse.Namespace) -> dict:
    src, out = Path(args.src), Path(args.out)
    skips = SkipLog(strict=args.strict)
    report = PreparationReport("object_cxr", str(src), args.seed, record_arguments(args), skips)
    report.notes["shapes_clipped_to_the_image"] = 0
    train_items = _load_split(src, "train", out, skips, report)
    test_items = _load_split(src, "dev", out, skips, report)
    by_id = {item["id"]: item for item in train_items}
    assignment = stratified_group_split(
        {i: bool(it["box"]) for i, it in by_id.items()}, split_proportions(validation=args.val_fraction), args.seed
    )
    splits = {"training": [], "validation": [], "test": test_items}
    for item_id, item in by_id.items():
        splits[assignment[item_id]].append(item)
    meta = {
        "source": "Object-CXR (train.csv/dev.csv + JPGs); dev set used as test",
        "class_names": CLASS_NAMES,
        "box_convention": BOX_CONVENTION,
        "image_format": "original JPG files",
    }
    output = ManifestOutput(
        "detection",
        "detection",
        splits,
        meta,
        classes_of=lambda it: ["box"] * len(it["box"]) + ["image_with_boxes" if it["box"] else "image_without_boxes"],
        stratum_of=lambda it: bool(it["box"]),
    )
    LOG.info("object-cxr: %d training+validation, %d test images", len(train_items), len(test_items))
    return write_outputs(out, report, [output])


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(prepare, build_parser(), argv)
