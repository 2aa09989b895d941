"""MIMIC-CXR-JPG 2.x + MIMIC-CXR free-text reports -> the pretraining manifest (image, report, id).

Input: mimic-cxr-2.0.0-metadata.csv[.gz] (dicom_id, subject_id, study_id, ViewPosition, ...),
mimic-cxr-2.0.0-split.csv[.gz] (dicom_id, study_id, subject_id, split), the JPGs
files/pXX/pSUBJECT/sSTUDY/<dicom_id>.jpg and the reports files/pXX/pSUBJECT/sSTUDY.txt (from MIMIC-CXR's
mimic-cxr-reports.zip; `--reports` when they are not under SRC). Frontal views (ViewPosition PA or AP) only; the
report text is IMPRESSION + " " + FINDINGS (method.md 1, bundle.data.reports); a report with neither section, or
with fewer than MIN_REPORT_TOKENS tokens, is skipped and counted. Splits: the official split CSV; "validate" and
"test" are merged into "validation" as the official CM-CGNS code does (`--keep_test` keeps test apart).
The metadata CSV is streamed row by row with a progress bar; each study's report is read once.
"""

from __future__ import annotations

import argparse
import functools
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from bundle.data.prepare.common import (
    LOG,
    ManifestOutput,
    PreparationError,
    PreparationReport,
    SkipLog,
    add_image_check_argument,
    count_data_lines,
    find_one,
    make_parser,
    progress,
    read_csv_rows,
    record_arguments,
    relative_path,
    run_main,
    write_outputs,
)
from bundle.data.reports import extract_sections, is_usable_report, report_from_sections

FRONTAL_VIEWS = ("PA", "AP")
OFFICIAL_SPLITS = ("train", "validate", "test")


def study_dir(root: Path, subject_id: str, study_id: str) -> Path:
    """files/p10/p10000032/s50414267 under `root` (the layout of both MIMIC-CXR and MIMIC-CXR-JPG)."""
    return root / "files" / f"p{subject_id[:2]}" / f"p{subject_id}" / f"s{study_id}"


def read_split_csv(path: Path) -> dict[str, tuple[str, str, str]]:
    """{dicom_id: (subject_id, study_id, split)}; an unknown split name or a conflicting repeat is an error."""
    splits: dict[str, tuple[str, str, str]] = {}
    for line, row in read_csv_rows(path, ("dicom_id", "study_id", "subject_id", "split")):
        if row["split"] not in OFFICIAL_SPLITS:
            raise PreparationError(f"{path}:{line}: split {row['split']!r} is not one of {OFFICIAL_SPLITS}")
        entry = (row["subject_id"], row["study_id"], row["split"])
        if splits.setdefault(row["dicom_id"], entry) != entry:
            raise PreparationError(f"{path}:{line}: dicom_id {row['dicom_id']} is listed twice with different values")
    return splits


def report_reader(reports_root: Path):
    """read(subject_id, study_id) -> (report text or "", problem or None), cached for the consecutive images of a
    study (the metadata CSV lists a study's images together)."""

    @functools.lru_cache(maxsize=64)
    def read(subject_id: str, study_id: str) -> tuple[str, str | None]:
        path = study_dir(reports_root, subject_id, study_id).with_suffix(".txt")
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "", "report file missing"
        report = report_from_sections(extract_sections(text))
        if not report.strip():
            return "", "no FINDINGS or IMPRESSION section"
        if not is_usable_report(report):
            return "", "report too short (fewer than MIN_REPORT_TOKENS tokens)"
        return report, None

    return read


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("mimic_cxr", __doc__.splitlines()[0])
    parser.add_argument("--reports", type=Path, help="folder holding files/pXX/pSUBJECT/sSTUDY.txt (default: SRC)")
    parser.add_argument("--metadata", type=Path, help="default: the one mimic-cxr-*-metadata.csv[.gz] in SRC")
    parser.add_argument("--split_csv", type=Path, help="default: the one mimic-cxr-*-split.csv[.gz] in SRC")
    parser.add_argument(
        "--keep_test",
        action="store_true",
        help="keep the official test split as 'test' (default: merged into 'validation' as the official code does)",
    )
    add_image_check_argument(parser)
    return parser


def prepare(args: argparse.Namespace) -> dict:
    src, out = Path(args.src), Path(args.out)
    reports_root = Path(args.reports or src)
    metadata_csv = args.metadata or find_one(src, ["*metadata.csv", "*metadata.csv.gz"], "MIMIC-CXR metadata CSV")
    split_csv = args.split_csv or find_one(src, ["*split.csv", "*split.csv.gz"], "MIMIC-CXR split CSV")
    if not (reports_root / "files").is_dir():
        raise PreparationError(f"no files/ folder of reports under {reports_root} (pass --reports)")
    skips = SkipLog(strict=args.strict)
    report = PreparationReport("mimic_cxr", str(src), args.seed, record_arguments(args), skips)
    target = {"train": "training", "validate": "validation", "test": "test" if args.keep_test else "validation"}

    official = read_split_csv(split_csv)
    read_report = report_reader(reports_root)
    splits: dict[str, list[dict]] = {"training": [], "validation": [], "test": []}
    subject_splits: dict[str, set[str]] = {}
    rows = read_csv_rows(metadata_csv, ("dicom_id", "subject_id", "study_id", "ViewPosition"))
    for line, row in progress(rows, total=count_data_lines(metadata_csv), desc="mimic-cxr images"):
        dicom_id, subject_id, study_id = row["dicom_id"], row["subject_id"], row["study_id"]
        if row["ViewPosition"] not in FRONTAL_VIEWS:
            report.filtered[f"view {row['ViewPosition'] or '(blank)'}"] += 1
            continue
        if dicom_id not in official:
            skips.skip("no split assigned", dicom_id, f"{metadata_csv.name}:{line}")
            continue
        split_subject, split_study, split = official[dicom_id]
        if (split_subject, split_study) != (subject_id, study_id):
            # never pair an image with another study's report: the two CSVs must agree on the study
            skips.skip(
                "split CSV and metadata disagree on subject/study",
                dicom_id,
                f"metadata s{study_id}, split CSV s{split_study}",
            )
            continue
        text, problem = read_report(subject_id, study_id)
        if problem:
            skips.skip(problem, dicom_id, f"study s{study_id}")
            continue
        image = study_dir(src, subject_id, study_id) / f"{dicom_id}.jpg"
        if not args.no_image_check and not image.is_file():
            skips.skip("image listed but missing", dicom_id, str(image))
            continue
        splits[target[split]].append({"image": relative_path(image, out), "report": text, "id": dicom_id})
        subject_splits.setdefault(subject_id, set()).add(target[split])
    report.notes["subjects"] = len(subject_splits)
    report.notes["subjects_in_more_than_one_split"] = sum(len(s) > 1 for s in subject_splits.values())
    report.notes["report_files_read"] = read_report.cache_info().misses
    meta = {
        "source": "MIMIC-CXR-JPG 2.x (metadata + split CSV, JPGs) and MIMIC-CXR reports",
        "report": "IMPRESSION + ' ' + FINDINGS (method.md 1)",
        "views": list(FRONTAL_VIEWS),
        "official_split_mapping": target,
        "image_format": "original JPG files",
    }
    output = ManifestOutput("pretrain", "pretraining", splits, meta, with_fractions=False)
    LOG.info("mimic-cxr: %s", dict(Counter({k: len(v) for k, v in splits.items()})))
    return write_outputs(out, report, [output])


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(prepare, build_parser(), argv)
