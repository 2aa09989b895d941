"""MIMIC-CXR preparation on a fixture in the real layout (gzipped metadata/split CSVs, files/pXX/pSUBJECT/sSTUDY)."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import pytest
from test_prepare_fixtures import load_json, run_script, sha256_of_ids, write_gray

pytest.importorskip("bundle.data.manifest")
reports = pytest.importorskip("bundle.data.reports")

SPLITS = ("training", "validation", "test")
REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset ascites  // eval for infection

 TECHNIQUE:  Chest PA and lateral

 FINDINGS:

 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows.

 IMPRESSION:

 No acute cardiopulmonary process.
"""
REPORT_2 = """ FINDINGS: Heart size is mildly enlarged. Small left pleural effusion.
 IMPRESSION: 1. Mild cardiomegaly. 2. Small left effusion.
"""
NO_SECTIONS = """                                 FINAL REPORT
 WET READ: no acute process, see final report.
"""
TOO_SHORT = " IMPRESSION: No.\n"

# dicom_id, subject, study, view, official split (None: not in the split CSV), report text (None: no file), image?
RECORDS = [
    ("d01", "10000032", "50000001", "PA", "train", REPORT, True),
    ("d02", "10000032", "50000001", "LATERAL", "train", REPORT, True),
    ("d03", "10000032", "50000001", "AP", "train", REPORT, True),  # same study: same report
    ("d04", "10000764", "50000002", "PA", "validate", REPORT_2, True),
    ("d05", "11000011", "50000003", "AP", "test", REPORT_2, True),
    ("d06", "11000011", "50000004", "PA", "test", NO_SECTIONS, True),
    ("d07", "12000000", "50000005", "PA", "train", None, True),
    ("d08", "12000000", "50000006", "PA", "train", REPORT, False),
    ("d09", "12000000", "50000007", "", "train", REPORT, True),
    ("d10", "10000764", "50000008", "PA", None, REPORT, True),
    ("d12", "12000000", "50000010", "PA", "train", TOO_SHORT, True),
]


def build_mimic(src: Path) -> None:
    files = src / "files"
    src.mkdir(parents=True)
    with (
        gzip.open(src / "mimic-cxr-2.0.0-metadata.csv.gz", "wt", newline="") as meta,
        gzip.open(src / "mimic-cxr-2.0.0-split.csv.gz", "wt", newline="") as split,
    ):
        m, s = csv.writer(meta), csv.writer(split)
        m.writerow(
            [
                "dicom_id",
                "subject_id",
                "study_id",
                "PerformedProcedureStepDescription",
                "ViewPosition",
                "Rows",
                "Columns",
            ]
        )
        s.writerow(["dicom_id", "study_id", "subject_id", "split"])
        for dicom_id, subject, study, view, official, text, has_image in RECORDS:
            m.writerow([dicom_id, subject, study, "CHEST (PA AND LAT)", view, 24, 20])
            if official:
                s.writerow([dicom_id, study, subject, official])
            study_dir = files / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
            if text is not None:
                study_dir.parent.mkdir(parents=True, exist_ok=True)
                study_dir.with_suffix(".txt").write_text(text)
            if has_image:
                write_gray(study_dir / f"{dicom_id}.jpg", 24, 20)
        # an image whose split-CSV row names another study: must not be paired with that study's report
        m.writerow(["d11", "10000764", "50000009", "", "PA", 24, 20])
        s.writerow(["d11", "50000002", "10000764", "train"])
        write_gray(files / "p10" / "p10000764" / "s50000009" / "d11.jpg", 24, 20)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("mimic")
    build_mimic(root / "src")
    code = run_script("mimic_cxr", "--src", str(root / "src"), "--out", str(root / "out"))
    return root, code


def test_cli_pretraining_manifest(prepared):
    root, code = prepared
    assert code == 0
    manifest = load_json(root / "out" / "manifests" / "pretrain.json")
    assert {s: sorted(it["id"] for it in manifest[s]) for s in SPLITS} == {
        "training": ["d01", "d03"],
        "validation": ["d04", "d05"],
        "test": [],
    }
    items = {it["id"]: it for s in SPLITS for it in manifest[s]}
    assert items["d01"]["image"] == "../src/files/p10/p10000032/s50000001/d01.jpg"
    report = items["d01"]["report"]
    assert report == reports.report_from_sections(reports.extract_sections(REPORT)) == items["d03"]["report"]
    # IMPRESSION first, then FINDINGS
    assert report.index("No acute cardiopulmonary") < report.index("There is no focal consolidation")
    assert "INDICATION" not in report and "ascites" not in report
    assert "Mild cardiomegaly" in items["d04"]["report"]
    assert "fractions" not in manifest["meta"]


def test_summary_counts(prepared):
    root, _ = prepared
    summary = load_json(root / "out" / "manifests" / "summary_mimic_cxr.json")
    reasons = {r: v["count"] for r, v in summary["skipped"]["reasons"].items()}
    assert reasons == {
        "no FINDINGS or IMPRESSION section": 1,
        "report file missing": 1,
        "image listed but missing": 1,
        "no split assigned": 1,
        "split CSV and metadata disagree on subject/study": 1,
        "report too short (fewer than MIN_REPORT_TOKENS tokens)": 1,
    }
    assert summary["filtered"] == {"view LATERAL": 1, "view (blank)": 1}
    entry = summary["manifests"]["pretrain"]["splits"]["training"]
    assert entry == {"count": 2, "sha256": sha256_of_ids(["d01", "d03"])}
    assert summary["notes"]["subjects"] == 3


def test_keep_test_and_separate_reports_folder(prepared, tmp_path):
    root, _ = prepared
    assert (
        run_script(
            "mimic_cxr",
            "--src",
            str(root / "src"),
            "--reports",
            str(root / "src"),
            "--out",
            str(tmp_path),
            "--keep_test",
        )
        == 0
    )
    manifest = load_json(tmp_path / "manifests" / "pretrain.json")
    assert [sorted(it["id"] for it in manifest[s]) for s in SPLITS] == [["d01", "d03"], ["d04"], ["d05"]]


def test_missing_view_column_is_an_error(prepared, tmp_path, caplog):
    src = tmp_path / "src"
    (src / "files").mkdir(parents=True)
    with gzip.open(src / "mimic-cxr-2.0.0-metadata.csv.gz", "wt") as f:
        f.write("dicom_id,subject_id,study_id\nd1,10000032,50000001\n")
    with gzip.open(src / "mimic-cxr-2.0.0-split.csv.gz", "wt") as f:
        f.write("dicom_id,study_id,subject_id,split\nd1,50000001,10000032,train\n")
    assert run_script("mimic_cxr", "--src", str(src), "--out", str(tmp_path / "out")) == 2
    assert "missing column(s) ['ViewPosition']" in caplog.text
