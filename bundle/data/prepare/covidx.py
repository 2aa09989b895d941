"""COVIDx CXR (v6 and later releases) -> classification manifest.

Input: the list files train.txt and test.txt (rows `patient_id filename label source`, space separated) with the
images in train/ and test/. Labels: normal / pneumonia / COVID-19 in v6 and older releases (3 classes, MGCA's order
normal=0, pneumonia=1, COVID-19=2), positive / negative in CXR-2 and later (2 classes, negative=0, positive=1); the
scheme is recognised from the labels present and a mixture is an error. test.txt is the test set; train.txt is split
80/20 into training/validation by patient (no patient in both), stratified by label, seeded (`--val_list` uses an
official validation list, e.g. val.txt of CXR-3/4, instead). Labels are class indices (softmax, accuracy).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bundle.data.prepare.common import (
    LOG,
    ManifestOutput,
    PreparationError,
    PreparationReport,
    SkipLog,
    add_image_check_argument,
    make_parser,
    progress,
    record_arguments,
    relative_path,
    require_file,
    run_main,
    split_proportions,
    stratified_group_split,
    write_outputs,
)

SCHEMES = {
    "3-class (normal/pneumonia/COVID-19)": ["normal", "pneumonia", "COVID-19"],
    "binary (negative/positive)": ["negative", "positive"],
}


@dataclass(frozen=True)
class CovidxRow:
    patient_id: str
    filename: str
    label: str
    source: str
    line: int


def parse_list_file(path: Path, image_dir: Path, skips: SkipLog) -> list[CovidxRow]:
    """Rows of a COVIDx list file. A filename with spaces (more than 4 fields) is accepted only when the joined
    middle fields name an existing image; any other shape of row is a counted skip."""
    rows: list[CovidxRow] = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 4:
                skips.skip(
                    "malformed list row", f"{path.name}:{line_number}", f"{len(fields)} fields: {line.strip()!r}"
                )
                continue
            filename = " ".join(fields[1:-2])
            if len(fields) > 4 and not (image_dir / filename).is_file():
                skips.skip(
                    "malformed list row",
                    f"{path.name}:{line_number}",
                    f"{len(fields)} fields and no image named {filename!r}",
                )
                continue
            rows.append(CovidxRow(fields[0], filename, fields[-2], fields[-1], line_number))
    return rows


def label_scheme(labels: set[str]) -> tuple[str, list[str]]:
    """The class list whose names cover `labels` (case-insensitive); anything else is an error."""
    lowered = {label.lower() for label in labels}
    for name, classes in SCHEMES.items():
        if lowered <= {c.lower() for c in classes}:
            return name, classes
    raise PreparationError(f"COVIDx labels {sorted(labels)} match neither label scheme {list(SCHEMES.values())}")


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("covidx", __doc__.splitlines()[0])
    parser.add_argument("--train_list", type=Path, help="default: SRC/train.txt")
    parser.add_argument("--test_list", type=Path, help="default: SRC/test.txt")
    parser.add_argument(
        "--val_list",
        type=Path,
        help="an official validation list (images in SRC/val/) instead of the 80/20 split of train.txt",
    )
    parser.add_argument("--val_fraction", type=float, default=0.2)
    add_image_check_argument(parser)
    return parser


def _items(
    rows: list[CovidxRow],
    image_dir: Path,
    out: Path,
    classes: list[str],
    check_images: bool,
    skips: SkipLog,
    list_name: str,
) -> list[dict]:
    index = {c.lower(): i for i, c in enumerate(classes)}
    items, seen = [], {}
    for row in progress(rows, desc=f"covidx {list_name}"):
        record = f"{list_name}:{row.line} {row.filename}"
        if row.filename in seen:
            if seen[row.filename] != (row.patient_id, row.label):
                raise PreparationError(
                    f"{list_name}:{row.line}: {row.filename} is listed twice with different patient or label"
                )
            skips.skip("duplicate row (identical)", record)
            continue
        seen[row.filename] = (row.patient_id, row.label)
        path = image_dir / row.filename
        if check_images and not path.is_file():
            skips.skip("image listed but missing", record, str(path))
            continue
        items.append(
            {
                "image": relative_path(path, out),
                "label": index[row.label.lower()],
                "id": row.filename,
                "patient": row.patient_id,
            }
        )
    return items


def prepare(args: argparse.Namespace) -> dict:
    src, out = Path(args.src), Path(args.out)
    skips = SkipLog(strict=args.strict)
    report = PreparationReport("covidx", str(src), args.seed, record_arguments(args), skips)
    lists = {
        "train": require_file(args.train_list or src / "train.txt", "COVIDx train list"),
        "test": require_file(args.test_list or src / "test.txt", "COVIDx test list"),
    }
    if args.val_list:
        lists["val"] = require_file(args.val_list, "COVIDx validation list")
    rows = {name: parse_list_file(path, src / name, skips) for name, path in lists.items()}
    scheme, classes = label_scheme({row.label for r in rows.values() for row in r})
    items = {
        name: _items(r, src / name, out, classes, not args.no_image_check, skips, lists[name].name)
        for name, r in rows.items()
    }

    if args.val_list:
        splits = {"training": items["train"], "validation": items["val"], "test": items["test"]}
    else:
        # a patient's stratum: its sorted set of labels, so that a patient is never split and classes stay balanced
        patient_labels: dict[str, set[int]] = {}
        for item in items["train"]:
            patient_labels.setdefault(item["patient"], set()).add(item["label"])
        assignment = stratified_group_split(
            {p: tuple(sorted(s)) for p, s in patient_labels.items()},
            split_proportions(validation=args.val_fraction),
            args.seed,
        )
        splits = {"training": [], "validation": [], "test": items["test"]}
        for item in items["train"]:
            splits[assignment[item["patient"]]].append(item)
    patients = {name: {item["patient"] for item in split} for name, split in splits.items()}
    report.notes["label_scheme"] = scheme
    report.notes["patients_in_both_train_list_and_test"] = len(
        (patients["training"] | patients["validation"]) & patients["test"]
    )
    for split in splits.values():  # the patient id was only needed for the split
        for item in split:
            del item["patient"]
    meta = {
        "source": f"COVIDx CXR ({', '.join(p.name for p in lists.values())} + images)",
        "class_names": classes,
        "label_type": "class_index",
        "label_scheme": scheme,
        "image_format": "original PNG/JPG files",
    }
    output = ManifestOutput(
        "classification",
        "classification",
        splits,
        meta,
        classes_of=lambda it: [classes[it["label"]]],
        stratum_of=lambda it: it["label"],
    )
    LOG.info("covidx: %s, %s", scheme, {k: len(v) for k, v in splits.items()})
    return write_outputs(out, report, [output])


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(prepare, build_parser(), argv)
