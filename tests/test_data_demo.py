"""The demo dataset generator (bundle/data/demo_dataset.py, scripts/make_demo_data.py) on hand-written IU-format
report XMLs: manifests, pairing of every image with its own report, splits by report, determinism across worker
counts, the skip policy, bad input, and the command line. Small sizes keep it fast."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bundle.data.demo_classes import CLASS_INDEX, CLASS_NAMES, findings_from_mesh, multi_hot
from bundle.data.demo_dataset import (
    SKIP_NO_SECTIONS,
    SKIP_NO_SENTENCE,
    SKIP_UNREADABLE,
    DemoDataError,
    DemoReport,
    load_reports,
    make_demo_dataset,
    render_sample,
    split_by_report,
)
from bundle.data.manifest import ManifestError, load_manifest
from bundle.data.reports import parse_iu_report_xml

ROOT = Path(__file__).resolve().parents[1]
XML = """<?xml version="1.0" encoding="utf-8"?>
<eCitation><IUXRId id="{n}"/><MedlineCitation><Article><Abstract>
<AbstractText Label="FINDINGS">{findings}</AbstractText><AbstractText Label="IMPRESSION">{impression}</AbstractText>
</Abstract></Article></MedlineCitation><MeSH>{mesh}</MeSH></eCitation>"""
REPORTS = {  # report number: (findings, impression, MeSH majors)
    3: (
        "The heart is enlarged. Small right pleural effusion.",
        "Cardiomegaly. Right effusion.",
        ["Cardiomegaly/moderate", "Pleural Effusion/right/small"],
    ),
    5: ("Heart size normal. Lungs are clear.", "No acute disease.", ["normal"]),
    8: (
        "Calcified granuloma in the left upper lobe. Right basilar opacity.",
        "No acute process.",
        ["Calcified Granuloma/lung/upper lobe/left", "Opacity/lung/base/right"],
    ),
    12: (
        "1 cm nodule in the right upper lobe. XXXX sternotomy wires.",
        "Right upper lobe nodule.",
        ["Nodule/lung/upper lobe/right", "Surgical Instruments", "Spine/degenerative"],
    ),
    13: ("Right apical pneumothorax.", "Moderate right pneumothorax.", ["Pneumothorax/apex/right/moderate"]),
    21: (
        "Hyperexpanded lungs. Thoracic scoliosis.",
        "Emphysema. Scoliosis.",
        ["Emphysema", "Scoliosis", "Lung/hyperdistention"],
    ),
    34: ("Plate-like atelectasis at the left base.", "Left basilar atelectasis.", ["Pulmonary Atelectasis/base/left"]),
    40: (
        "Low lung volumes. Pacemaker in place.",
        "Hypoinflation. Pacemaker.",
        ["Lung/hypoinflation", "Implanted Medical Device/left"],
    ),
    41: ("", "", ["normal"]),  # neither section: skipped
    42: ("XXXX.", "Normal.", ["normal"]),  # no usable sentence: skipped
}


def write_reports(folder: Path, reports=REPORTS, broken=(99,)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for n, (findings, impression, mesh) in reports.items():
        majors = "".join(f"<major>{m}</major>" for m in mesh)
        (folder / f"{n}.xml").write_text(
            XML.format(n=n, findings=findings, impression=impression, mesh=majors), encoding="utf-8"
        )
    for n in broken:  # unreadable XML: skipped
        (folder / f"{n}.xml").write_text("<eCitation><Abstract><AbstractText Label='FINDINGS'>cut", encoding="utf-8")
    return folder


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    base = tmp_path_factory.mktemp("demo")
    reports = write_reports(base / "xml")
    summary = make_demo_dataset(base / "out", reports, variants=2, size=96, seed=3, workers=1)
    return base, summary


def read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------------------------- manifests
def test_skips_are_counted_by_reason(demo):
    _, summary = demo
    assert summary["skipped"] == {SKIP_NO_SECTIONS: 1, SKIP_NO_SENTENCE: 1, SKIP_UNREADABLE: 1}
    assert summary["reports"] == 8 and summary["samples"] == 16


def test_manifests_have_every_task_meta_and_ids(demo):
    base, _ = demo
    out = base / "out"
    for name in ("pretrain", "classification", "segmentation", "detection"):
        content = read(out / "manifests" / f"{name}.json")
        meta = content["meta"]
        assert meta["class_names"] == list(CLASS_NAMES) and meta["split_seed"] == 3
        assert meta["script_version"] and "Indiana University" in meta["source"]
        ids = [it["id"] for s in ("training", "validation", "test") for it in content[s]]
        assert sorted(ids) == sorted(f"{n}_{v}" for n in REPORTS if n not in (41, 42) for v in (0, 1))
        for split in ("training", "validation", "test"):
            for item in load_manifest(out / "manifests" / f"{name}.json", split):  # files exist
                assert os.path.isfile(item["image"])
    assert "x = column" in read(out / "manifests" / "detection.json")["meta"]["box_convention"]


def test_every_image_is_paired_with_its_own_report(demo):
    """Report text from the sample's own XML (parsed independently) and pixels re-rendered from that report."""
    base, _ = demo
    out = base / "out"
    pretrain = read(out / "manifests" / "pretrain.json")
    items = [it for s in ("training", "validation", "test") for it in pretrain[s]]
    texts = {it["report"] for it in items}
    assert len(texts) == 8  # eight distinct reports, never a neighbour's text
    for item in items:
        number, variant = item["id"].rsplit("_", 1)
        assert item["image"] == f"images/{item['id']}.png"
        own = parse_iu_report_xml(base / "xml" / f"{number}.xml")
        assert item["report"] == own.text
        findings, not_drawn = findings_from_mesh(own.mesh_major)
        again = render_sample(DemoReport(number, own.text, own.mesh_major, findings, not_drawn), int(variant), 96, 3)
        assert np.array_equal(np.asarray(Image.open(out / item["image"])), again.image)


def test_labels_masks_and_boxes_follow_the_report(demo):
    base, _ = demo
    out = base / "out"
    labels = {
        it["id"]: it["label"]
        for s in ("training", "validation", "test")
        for it in read(out / "manifests" / "classification.json")[s]
    }
    det = {
        it["id"]: it for s in ("training", "validation", "test") for it in read(out / "manifests" / "detection.json")[s]
    }
    expected = {
        3: {"cardiomegaly", "pleural_effusion"},
        5: set(),
        8: {"calcified_granuloma", "lung_opacity"},
        12: {"nodule_mass", "support_devices"},
        13: {"pneumothorax"},
        21: {"emphysema", "scoliosis"},
        34: {"atelectasis"},
        40: {"hypoinflation", "support_devices"},
    }
    for n, classes in expected.items():
        for v in (0, 1):
            sid = f"{n}_{v}"
            assert labels[sid] == multi_hot(classes)
            assert (labels[sid][CLASS_INDEX["no_finding"]] == 1.0) == (not classes)
            mask = np.asarray(Image.open(out / "masks" / f"{sid}.png"))
            assert mask.shape == (96, 96)
            present = {CLASS_NAMES[i] for i in np.unique(mask) if i}
            assert present == classes & {
                "pleural_effusion",
                "lung_opacity",
                "atelectasis",
                "nodule_mass",
                "calcified_granuloma",
                "pneumothorax",
            }
            for box, label in zip(det[sid]["box"], det[sid]["box_label"]):
                x1, y1, x2, y2 = box
                assert 0 <= x1 < x2 <= 96 and 0 <= y1 < y2 <= 96
                assert (mask[y1:y2, x1:x2] == label).any()  # the box covers pixels of its own class
            assert {CLASS_NAMES[b] for b in det[sid]["box_label"]} == classes & {
                "lung_opacity",
                "nodule_mass",
                "calcified_granuloma",
            }
    samples = read(out / "manifests" / "demo_samples.json")
    assert samples["12_0"]["not_drawn"] == ["Spine/degenerative"]  # listed, so nobody believes it is drawn


def test_sides_are_patient_sides(demo):
    """Patient right is the image's left: the right effusion and the right nodule lie left of the midline."""
    base, _ = demo
    for sid, cls in (("3_0", "pleural_effusion"), ("12_0", "nodule_mass"), ("13_1", "pneumothorax")):
        mask = np.asarray(Image.open(base / "out" / "masks" / f"{sid}.png")) == CLASS_INDEX[cls]
        assert np.nonzero(mask)[1].mean() < 48
    granuloma = np.asarray(Image.open(base / "out" / "masks" / "8_0.png")) == CLASS_INDEX["calcified_granuloma"]
    assert np.nonzero(granuloma)[1].mean() > 48  # left upper lobe: image right


# ----------------------------------------------------------------------------------------------- splits, determinism
def test_splits_are_by_report_and_proportional():
    ids = [str(i) for i in range(1, 1001)]
    a = split_by_report(ids, seed=0)
    assert a == split_by_report(list(reversed(ids)), seed=0)  # order of the input does not matter
    counts = {s: sum(1 for v in a.values() if v == s) for s in ("training", "validation", "test")}
    assert counts == {"training": 800, "validation": 100, "test": 100}
    assert a != split_by_report(ids, seed=1)


def test_variants_of_a_report_share_its_split(demo):
    base, _ = demo
    content = read(base / "out" / "manifests" / "pretrain.json")
    split_of = {}
    for split in ("training", "validation", "test"):
        for item in content[split]:
            number = item["id"].rsplit("_", 1)[0]
            assert split_of.setdefault(number, split) == split


def test_byte_identical_output_for_any_worker_count(demo, tmp_path):
    base, _ = demo
    make_demo_dataset(tmp_path / "two", base / "xml", variants=2, size=96, seed=3, workers=2)
    assert tree_digest(tmp_path / "two") == tree_digest(base / "out")
    make_demo_dataset(tmp_path / "other", base / "xml", variants=2, size=96, seed=4, workers=1)
    assert (tmp_path / "other" / "images" / "5_0.png").read_bytes() != (
        base / "out" / "images" / "5_0.png"
    ).read_bytes()


# ----------------------------------------------------------------------------------------------- bad input
def test_strict_mode_names_the_report(tmp_path):
    folder = write_reports(tmp_path / "xml", {7: REPORTS[5]}, broken=(55,))
    with pytest.raises(DemoDataError, match="report 55 .*unreadable"):
        make_demo_dataset(tmp_path / "out", folder, size=96, workers=1, strict=True)
    only_bad = write_reports(tmp_path / "bad", {42: REPORTS[42]}, broken=())
    with pytest.raises(DemoDataError, match="no usable report"):
        make_demo_dataset(tmp_path / "out2", only_bad, size=96, workers=1)
    with pytest.raises(DemoDataError, match="reports not found"):
        make_demo_dataset(tmp_path / "out3", tmp_path / "missing.tgz", size=96, workers=1)
    (tmp_path / "junk.tgz").write_bytes(b"not a tar")
    with pytest.raises(DemoDataError, match="junk.tgz: not a readable"):
        make_demo_dataset(tmp_path / "out4", tmp_path / "junk.tgz", size=96, workers=1)


def test_missing_or_corrupt_generated_image_is_named(demo, tmp_path):
    import shutil

    from bundle.data.image_io import LoadRadiographd, RadiographReadError

    base, _ = demo
    copy = tmp_path / "copy"
    shutil.copytree(base / "out", copy)
    item = load_manifest(copy / "manifests" / "pretrain.json", "training")[0]
    Path(item["image"]).write_bytes(b"\x89PNG broken")
    with pytest.raises(RadiographReadError, match=f"item {item['id']}"):
        LoadRadiographd("image")(item)
    os.remove(item["image"])
    with pytest.raises(ManifestError, match=f"item {item['id']} \\(training\\): image file not found"):
        load_manifest(copy / "manifests" / "pretrain.json", "training")


# ----------------------------------------------------------------------------------------------- real reports, CLI
def test_real_iu_reports_in_number_order_with_the_empty_report_skipped():
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None:
        pytest.skip("torchxrayvision (data file only) not installed")
    from bundle.data.demo_dataset import SkipLog, default_reports_path

    skips = SkipLog()
    reports = load_reports(default_reports_path(), num_reports=20, skips=skips)
    # 16.xml has empty FINDINGS and IMPRESSION elements (checked by hand); 1..20 otherwise in numeric order
    assert [r.report_id for r in reports] == [str(i) for i in range(1, 21) if i != 16]
    assert skips.counts == {SKIP_NO_SECTIONS: 1} and skips.examples[SKIP_NO_SECTIONS] == ["16"]
    assert reports[0].mesh_major == ["normal"] and reports[0].findings == []


def test_command_line_from_a_fresh_process(tmp_path):
    folder = write_reports(tmp_path / "xml", {n: REPORTS[n] for n in (3, 5, 8)}, broken=())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "make_demo_data.py"),
        "--out",
        str(tmp_path / "out"),
        "--reports",
        str(folder),
        "--num-reports",
        "2",
        "--variants",
        "1",
        "--size",
        "64",
        "--seed",
        "5",
        "--workers",
        "1",
        "--contact-sheet",
        str(tmp_path / "sheet.png"),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "class frequencies" in result.stderr and "cardiomegaly" in result.stderr
    content = read(tmp_path / "out" / "manifests" / "pretrain.json")
    assert sorted(it["id"] for s in ("training", "validation", "test") for it in content[s]) == ["3_0", "5_0"]
    assert Image.open(tmp_path / "sheet.png").size[0] > 200
    bad = subprocess.run(
        cmd[:2] + ["--out", str(tmp_path / "o2"), "--reports", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert bad.returncode == 2 and "reports not found" in bad.stderr


def test_mesh_terms_map_to_findings_with_qualifiers():
    from bundle.data.demo_classes import mesh_to_finding

    f = mesh_to_finding("Costophrenic Angle/right/blunted")
    assert (f.cls, f.side, f.severity) == ("pleural_effusion", "right", "mild")
    f = mesh_to_finding("Calcinosis/lung/hilum/lymph nodes/right")
    assert (f.cls, f.side, f.zone) == ("calcified_granuloma", "right", "hilum")
    f = mesh_to_finding("Density/lung/middle lobe/right/round")
    assert (f.cls, f.zone) == ("nodule_mass", "middle")
    f = mesh_to_finding("Implanted Medical Device/left")
    assert (f.cls, f.detail, f.side) == ("support_devices", "pacemaker", "left")
    f = mesh_to_finding("Opacity/lung/base/bilateral/patchy/multiple")
    assert (f.cls, f.side, f.zone, f.multiple) == ("lung_opacity", "bilateral", "lower", True)
    assert mesh_to_finding("Lung/hypoinflation/mild").cls == "hypoinflation"
    assert mesh_to_finding("Lung/hyperdistention").cls == "emphysema"
    assert mesh_to_finding("Cardiac Shadow/enlarged/severe").severity == "severe"
    for term in (
        "Cardiomegaly/borderline",
        "Pleural Effusion/borderline",
        "Calcinosis/aorta",
        "Spine/degenerative",
        "normal",
        "Technical Quality of Image Unsatisfactory ",
    ):
        assert mesh_to_finding(term) is None, term
    findings, not_drawn = findings_from_mesh(["normal", "Aorta/tortuous", "Scoliosis"])
    assert [f.cls for f in findings] == ["scoliosis"] and not_drawn == ["Aorta/tortuous"]


# ----------------------------------------------------------------------------------------------- grounding cases
def test_grounding_manifest_names_the_sentence_of_each_drawn_mask_finding(demo):
    """Expected sentences read off REPORTS by hand (report text = IMPRESSION + ' ' + FINDINGS, cleaned)."""
    from bundle.data.image_io import load_label_map

    base, _ = demo
    content = read(base / "out" / "manifests" / "grounding.json")
    expected = {
        "3": {"pleural_effusion": "right effusion"},
        "8": {
            "calcified_granuloma": "calcified granuloma in the left upper lobe",
            "lung_opacity": "right basilar opacity",
        },
        "12": {"nodule_mass": "right upper lobe nodule"},
        "13": {"pneumothorax": "moderate right pneumothorax"},
        "34": {"atelectasis": "left basilar atelectasis"},
    }
    seen = set()
    for split in ("training", "validation", "test"):
        for item in load_manifest(base / "out" / "manifests" / "grounding.json", split):
            report_number = item["id"].split("_")[0]
            drawn = set(np.unique(load_label_map(item["label"])).tolist()) - {0}
            for phrase in item["phrases"]:
                assert phrase["class_id"] in drawn  # the region exists in this image's mask
                assert CLASS_NAMES[phrase["class_id"]] == phrase["class"]
                want = expected[report_number][phrase["class"]]
                assert phrase["text"] == want
                seen.add((report_number, phrase["class"]))
    # every expected case whose finding was drawn in at least one variant is there
    assert {("3", "pleural_effusion"), ("13", "pneumothorax"), ("34", "atelectasis")} <= seen
    assert content["meta"]["mask_findings_with_sentence"] <= content["meta"]["mask_findings_drawn"]
    assert not any(r in {"5", "21", "40"} for r, _ in seen)  # no mask finding in those reports


def test_grounding_sentence_skips_negated_mentions():
    from bundle.data.demo_grounding import affirmative_sentence

    sentences = ["no pleural effusion or pneumothorax", "small left effusion , no pneumothorax"]
    assert affirmative_sentence(sentences, "pleural_effusion") == (1, sentences[1])
    assert affirmative_sentence(sentences, "pneumothorax") is None
    assert affirmative_sentence(["stable 1 cm nodule"], "nodule_mass") == (0, "stable 1 cm nodule")
    assert affirmative_sentence(["the lungs are clear"], "lung_opacity") is None
