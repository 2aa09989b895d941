"""Report parsing (bundle/data/reports.py) on real-looking report text: MIMIC-CXR free text with upper-case headers,
IU XML AbstractText sections, numbered lists, "XXXX"/"___" de-identification marks, empty sections, non-ASCII
characters, decimals, and reports that reduce to nothing. Expected values are written out by hand from method.md 1."""

from __future__ import annotations

import importlib.util
import os
import tarfile

import pytest

from bundle.data.reports import (
    MIN_REPORT_TOKENS,
    IUReport,
    ReportParseError,
    count_report_tokens,
    extract_sections,
    is_usable_report,
    parse_iu_report_xml,
    report_from_sections,
    split_sentences,
)

MIMIC_REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset of cough, evaluate for pneumonia

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  ___

 FINDINGS:
 
 The lungs are clear without focal consolidation.  Heart size is
 normal.  A 2.5 cm nodule projects over the right upper lobe.
 
 IMPRESSION:
 
 1. No acute cardiopulmonary process.
 2. Right upper lobe nodule, recommend CT
"""  # noqa: W293 (the blank lines with a space are part of the real report layout)

IU_XML = """<?xml version="1.0" encoding="utf-8"?>
<eCitation>
   <IUXRId id="77"/>
   <MedlineCitation Owner="Indiana University">
      <Article PubModel="Electronic">
         <Abstract>
            <AbstractText Label="COMPARISON">None.</AbstractText>
            <AbstractText Label="INDICATION">XXXX-year-old male, chest pain.</AbstractText>
            <AbstractText Label="FINDINGS">The heart is mildly enlarged. There are no XXXX of a pleural
            effusion. Calcified granuloma in the right upper lobe.</AbstractText>
            <AbstractText Label="IMPRESSION">1. Mild cardiomegaly. 2. No acute disease.</AbstractText>
         </Abstract>
      </Article>
   </MedlineCitation>
   <MeSH>
      <major>Cardiomegaly/mild</major>
      <major>Calcified Granuloma/lung/upper lobe/right</major>
      <minor>ignored</minor>
   </MeSH>
   <parentImage id="CXR77_IM-2300-1001"><figureId>F1</figureId></parentImage>
   <parentImage id="CXR77_IM-2300-2001"><figureId>F2</figureId></parentImage>
</eCitation>
"""


# ----------------------------------------------------------------------------------------------- sections
def test_mimic_sections_are_keyed_by_upper_case_header_and_whitespace_collapsed():
    sections = extract_sections(MIMIC_REPORT)
    assert sections["EXAMINATION"] == "CHEST (PA AND LAT)"
    assert sections["INDICATION"] == "___F with new onset of cough, evaluate for pneumonia"
    assert sections["FINDINGS"] == (
        "The lungs are clear without focal consolidation. Heart size is normal. "
        "A 2.5 cm nodule projects over the right upper lobe."
    )
    assert sections["IMPRESSION"] == "1. No acute cardiopulmonary process. 2. Right upper lobe nodule, recommend CT"
    assert "FINAL REPORT" not in " ".join(sections)


def test_report_text_is_impression_then_findings():
    text = report_from_sections(extract_sections(MIMIC_REPORT))
    # the impression does not end with "." so a sentence boundary is added before FINDINGS
    assert text.startswith("1. No acute cardiopulmonary process. 2. Right upper lobe nodule, recommend CT. The lungs")
    assert text.endswith("right upper lobe.")
    assert "INDICATION" not in text and "cough" not in text


def test_headers_on_one_line_and_aliases():
    sections = extract_sections("FINDINGS: Heart normal. IMPRESSIONS: No acute disease.")
    assert sections == {"FINDINGS": "Heart normal.", "IMPRESSION": "No acute disease."}
    both = extract_sections("FINDINGS AND IMPRESSION: Lungs are clear.")
    assert both["FINDINGS"] == both["IMPRESSION"] == "Lungs are clear."
    assert extract_sections("CONCLUSION: stable")["IMPRESSION"] == "stable"


def test_empty_sections_and_missing_sections():
    sections = extract_sections("FINDINGS:\n\n IMPRESSION: No acute disease.\n")
    assert sections["FINDINGS"] == ""
    assert report_from_sections(sections) == "No acute disease."
    assert report_from_sections(extract_sections("INDICATION: cough\nCOMPARISON: none")) == ""
    assert report_from_sections({}) == ""
    assert report_from_sections({"FINDINGS": "  Heart   normal. "}) == "Heart normal."


def test_text_without_headers_is_preamble_only():
    sections = extract_sections("the lungs are clear. no effusion.")
    assert sections == {"PREAMBLE": "the lungs are clear. no effusion."}
    assert report_from_sections(sections) == ""


# ----------------------------------------------------------------------------------------------- sentences
def test_sentences_of_a_mimic_report():
    text = report_from_sections(extract_sections(MIMIC_REPORT))
    assert split_sentences(text) == [
        "no acute cardiopulmonary process",
        "right upper lobe nodule recommend ct",
        "the lungs are clear without focal consolidation",
        "heart size is normal",
        "a 2 5 cm nodule projects over the right upper lobe",  # decimal point is not a sentence end
    ]


def test_numbered_list_without_periods_splits_at_the_markers():
    text = "1. No pneumothorax\n2. Stable small left effusion\n3) Mild cardiomegaly"
    assert split_sentences(text) == ["no pneumothorax", "stable small left effusion", "mild cardiomegaly"]


def test_numbers_that_are_not_list_markers_stay_in_the_sentence():
    assert split_sentences("Compared to 2 prior studies, there are 3 nodules.") == [
        "compared to 2 prior studies there are 3 nodules"
    ]


def test_deidentification_marks_are_removed():
    text = "Normal chest x-XXXX. There are no XXXX of a pleural effusion. Seen by Dr. ___ on ___."
    # "___ on ___" keeps one token and is dropped as a sentence
    assert split_sentences(text) == ["normal chest x", "there are no of a pleural effusion", "seen by dr"]
    # the plain \w+ rule (drop_deid=False) keeps them
    assert split_sentences("There are no XXXX of effusion.", drop_deid=False) == ["there are no xxxx of effusion"]


def test_non_ascii_characters():
    # NFKC folds the "ﬁ" ligature and full-width letters; accented letters are word characters
    text = "Rückenlage ohne Erguss. Café-au-lait spots noted. ﬁndings ＯＫ here. Angle 30° – stable…"
    assert split_sentences(text) == [
        "rückenlage ohne erguss",
        "café au lait spots noted",
        "findings ok here",
        "angle 30 stable",
    ]


def test_short_sentences_are_dropped_and_short_reports_unusable():
    assert split_sentences("Normal. Heart size normal. Ok.") == ["heart size normal"]
    assert MIN_REPORT_TOKENS == 3
    assert is_usable_report("No acute disease.")
    assert not is_usable_report("Heart normal.")  # 2 tokens < 3
    assert not is_usable_report("Normal. Clear. Stable.")  # every sentence has 1 token
    assert count_report_tokens("Normal. Heart size normal.") == 3


@pytest.mark.parametrize("text", ["", "   \n ", "XXXX. XXXX XXXX.", "1. 2. 3.", "___ ___. ...", "-- ** --"])
def test_reports_that_reduce_to_nothing(text):
    assert split_sentences(text) == []
    assert not is_usable_report(text)


# ----------------------------------------------------------------------------------------------- IU XML
def test_iu_xml_from_path_uses_the_file_stem(tmp_path):
    path = tmp_path / "1234.xml"
    path.write_text(IU_XML, encoding="utf-8")
    report = parse_iu_report_xml(path)
    assert isinstance(report, IUReport)
    assert report.report_id == "1234"  # the stem, not the IUXRId inside
    assert report.findings == (
        "The heart is mildly enlarged. There are no XXXX of a pleural effusion. "
        "Calcified granuloma in the right upper lobe."
    )
    assert report.impression == "1. Mild cardiomegaly. 2. No acute disease."
    assert report.mesh_major == ["Cardiomegaly/mild", "Calcified Granuloma/lung/upper lobe/right"]
    assert report.images == ["CXR77_IM-2300-1001", "CXR77_IM-2300-2001"]
    assert report.sections["INDICATION"] == "XXXX-year-old male, chest pain."
    assert split_sentences(report.text) == [
        "mild cardiomegaly",
        "no acute disease",
        "the heart is mildly enlarged",
        "there are no of a pleural effusion",
        "calcified granuloma in the right upper lobe",
    ]


def test_iu_xml_from_bytes_uses_the_iuxrid_or_the_given_id():
    assert parse_iu_report_xml(IU_XML.encode()).report_id == "77"
    assert parse_iu_report_xml(IU_XML.encode(), report_id="9").report_id == "9"


def test_iu_xml_with_empty_sections():
    xml = IU_XML.replace('<AbstractText Label="FINDINGS">', '<AbstractText Label="FINDINGS"/><X>').replace(
        "right upper lobe.</AbstractText>", "right upper lobe.</X>"
    )
    report = parse_iu_report_xml(xml.encode())
    assert report.findings == ""
    assert report.text == "1. Mild cardiomegaly. 2. No acute disease."


def test_unreadable_or_malformed_xml_names_the_file(tmp_path):
    bad = tmp_path / "55.xml"
    bad.write_text("<eCitation><Abstract><AbstractText Label='FINDINGS'>cut off", encoding="utf-8")
    with pytest.raises(ReportParseError, match="55.xml.*malformed"):
        parse_iu_report_xml(bad)
    with pytest.raises(ReportParseError, match="56.xml.*cannot read"):
        parse_iu_report_xml(tmp_path / "56.xml")
    with pytest.raises(ReportParseError, match="no report id"):
        parse_iu_report_xml(b"<eCitation/>")


def test_real_iu_report_from_the_installed_package_if_present():
    spec = importlib.util.find_spec("torchxrayvision")  # located, never imported
    if spec is None:
        pytest.skip("torchxrayvision (data file only) not installed")
    tgz = os.path.join(list(spec.submodule_search_locations)[0], "data", "NLMCXR_reports.tgz")
    with tarfile.open(tgz, "r:gz") as tar:
        member = next(m for m in tar if m.name.endswith("/1.xml"))
        report = parse_iu_report_xml(tar.extractfile(member).read(), report_id="1")
    assert report.mesh_major == ["normal"]
    assert report.findings.startswith("The cardiac silhouette")
    sentences = split_sentences(report.text)
    assert sentences[0] == "normal chest x"  # "Normal chest x-XXXX." without the de-identification mark
    assert all(len(s.split()) >= 2 for s in sentences)
