"""CheXpert v1.0 (small or full) -> classification manifest of the 5 competition tasks (MGCA protocol).

Input: the CheXpert-v1.0[-small] folder with train.csv, valid.csv and the train/ and valid/ image folders.
Frontal views only ("Frontal/Lateral" == "Frontal"). Labels per task: 1 positive, 0 negative, -1 uncertain, blank
not mentioned. Uncertain follows the task's policy (U-Ones: Atelectasis, Edema, Pleural Effusion -> 1; U-Zeros:
Cardiomegaly, Consolidation -> 0; configurable), blank -> 0 (MGCA fills blanks with 0). Splits (MGCA): test = the
official valid.csv; validation = 5,000 random frontal training images; the rest is training. Labels are multi-hot
float vectors in TASKS order.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from bundle.data.label_fractions import seeded_order_key
from bundle.data.prepare.common import (
    LOG,
    ManifestOutput,
    PreparationError,
    PreparationReport,
    SkipLog,
    add_image_check_argument,
    make_parser,
    progress,
    read_csv_rows,
    record_arguments,
    relative_path,
    require_file,
    run_main,
    write_outputs,
)

TASKS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
DEFAULT_U_ONES = ["Atelectasis", "Edema", "Pleural Effusion"]
DEFAULT_U_ZEROS = ["Cardiomegaly", "Consolidation"]
LABEL_VALUES = {"1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0, "-1": -1.0, "-1.0": -1.0, "": None}


def uncertainty_policy(u_ones: Sequence[str], u_zeros: Sequence[str]) -> dict[str, float]:
    """{task: value given to an uncertain (-1) label}; every task must be in exactly one of the two lists."""
    unknown = sorted((set(u_ones) | set(u_zeros)) - set(TASKS))
    both = sorted(set(u_ones) & set(u_zeros))
    missing = [t for t in TASKS if t not in u_ones and t not in u_zeros]
    if unknown or both or missing:
        raise PreparationError(
            f"uncertainty policy: unknown tasks {unknown}, tasks in both lists {both}, "
            f"tasks in neither {missing} (tasks: {TASKS})"
        )
    return {t: (1.0 if t in u_ones else 0.0) for t in TASKS}


def map_labels(row: dict[str, str], policy: dict[str, float]) -> list[float]:
    """Multi-hot labels of one CSV row; raises ValueError naming the task with an unreadable value."""
    labels = []
    for task in TASKS:
        raw = row[task]
        if raw not in LABEL_VALUES:
            raise ValueError(f"{task}={raw!r}")
        value = LABEL_VALUES[raw]
        labels.append(0.0 if value is None else policy[task] if value == -1.0 else value)
    return labels


def image_relpath(csv_path_value: str) -> PurePosixPath:
    """The image path inside the CheXpert folder: the CSV's Path starts with the folder name, which is dropped."""
    parts = PurePosixPath(csv_path_value.replace("\\", "/")).parts
    if parts and parts[0].lower().startswith("chexpert-v1.0"):
        parts = parts[1:]
    return PurePosixPath(*parts)


def read_split(
    csv_path: Path,
    src: Path,
    out: Path,
    policy: dict[str, float],
    check_images: bool,
    skips: SkipLog,
    report: PreparationReport,
) -> list[dict]:
    items, seen = [], {}
    for line, row in progress(read_csv_rows(csv_path, ["Path", "Frontal/Lateral"] + TASKS), desc=csv_path.name):
        rel = image_relpath(row["Path"])
        record = f"{csv_path.name}:{line} {rel}"
        if row["Frontal/Lateral"] != "Frontal":
            report.filtered[f"not frontal ({csv_path.name})"] += 1
            continue
        try:
            labels = map_labels(row, policy)
        except ValueError as error:
            skips.skip("unreadable label value", record, str(error))
            continue
        item_id = str(rel.with_suffix(""))
        if item_id in seen:
            if seen[item_id] != labels:
                raise PreparationError(f"{csv_path}:{line}: {rel} is listed twice with different labels")
            skips.skip("duplicate row (identical)", record)
            continue
        seen[item_id] = labels
        path = src / rel
        if check_images and not path.is_file():
            skips.skip("image listed but missing", record, str(path))
            continue
        items.append({"image": relative_path(path, out), "label": labels, "id": item_id})
    return items


def patient_of(item_id: str) -> str:
    """ "train/patient00001/study1/view1_frontal" -> "patient00001"."""
    return PurePosixPath(item_id).parts[1]


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("chexpert", __doc__.splitlines()[0])
    parser.add_argument("--u_ones", default=",".join(DEFAULT_U_ONES), help="tasks whose uncertain label becomes 1")
    parser.add_argument("--u_zeros", default=",".join(DEFAULT_U_ZEROS), help="tasks whose uncertain label becomes 0")
    parser.add_argument("--val_size", type=int, default=5000, help="frontal training images held out for validation")
    parser.add_argument(
        "--val_split_by",
        choices=("image", "patient"),
        default="image",
        help="image: MGCA's random images; patient: whole patients until val_size images are reached",
    )
    add_image_check_argument(parser)
    return parser


def choose_validation(items: list[dict], val_size: int, by: str, seed: int) -> set[str]:
    """Ids of the validation images: the first `val_size` in the seeded order (of images, or of whole patients)."""
    if not 0 < val_size < len(items):
        raise PreparationError(f"--val_size {val_size} must be between 1 and the {len(items)} usable training images")
    if by == "image":
        return set(sorted((it["id"] for it in items), key=lambda i: seeded_order_key(seed, i))[:val_size])
    by_patient: dict[str, list[str]] = {}
    for item in items:
        by_patient.setdefault(patient_of(item["id"]), []).append(item["id"])
    chosen: set[str] = set()
    for patient in sorted(by_patient, key=lambda p: seeded_order_key(seed, p)):
        if len(chosen) >= val_size:
            break
        chosen.update(by_patient[patient])
    return chosen


def prepare(args: argparse.Namespace) -> dict:
    src, out = Path(args.src), Path(args.out)
    policy = uncertainty_policy(
        [t.strip() for t in args.u_ones.split(",") if t.strip()],
        [t.strip() for t in args.u_zeros.split(",") if t.strip()],
    )
    skips = SkipLog(strict=args.strict)
    report = PreparationReport("chexpert", str(src), args.seed, record_arguments(args), skips)
    check = not args.no_image_check
    train = read_split(require_file(src / "train.csv", "CheXpert train.csv"), src, out, policy, check, skips, report)
    test = read_split(require_file(src / "valid.csv", "CheXpert valid.csv"), src, out, policy, check, skips, report)
    validation_ids = choose_validation(train, args.val_size, args.val_split_by, args.seed)
    splits = {
        "training": [it for it in train if it["id"] not in validation_ids],
        "validation": [it for it in train if it["id"] in validation_ids],
        "test": test,
    }
    patients = {name: {patient_of(it["id"]) for it in items} for name, items in splits.items()}
    report.notes["patients_in_training_and_validation"] = len(patients["training"] & patients["validation"])
    meta = {
        "source": "CheXpert v1.0 (train.csv, valid.csv); official valid.csv used as test",
        "class_names": TASKS,
        "label_type": "multi_hot",
        "image_format": "original JPG files",
        "label_policy": {"uncertain (-1)": {t: int(v) for t, v in policy.items()}, "blank": 0, "views": "frontal only"},
        "validation": f"{args.val_size} training images chosen by {args.val_split_by}",
    }
    output = ManifestOutput(
        "classification",
        "classification",
        splits,
        meta,
        classes_of=lambda it: [t for t, v in zip(TASKS, it["label"]) if v] or ["(no positive task)"],
        stratum_of=lambda it: tuple(it["label"]),
    )
    LOG.info("chexpert: %s", {k: len(v) for k, v in splits.items()})
    return write_outputs(out, report, [output])


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(prepare, build_parser(), argv)
