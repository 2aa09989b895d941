"""A 4 x 4 contact sheet of demo samples with their drawn findings, boxes and a report snippet (docs/demo_data.md).

Samples are chosen deterministically: for each finding class in turn, the first sample (in report-number order) that
shows it and is not chosen yet; then "no_finding" samples fill the sheet.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from bundle.data.demo_classes import CLASS_NAMES

SHEET_ORDER = (
    "cardiomegaly",
    "pleural_effusion",
    "lung_opacity",
    "atelectasis",
    "nodule_mass",
    "calcified_granuloma",
    "pneumothorax",
    "emphysema",
    "edema",
    "support_devices",
    "fracture",
    "scoliosis",
    "hiatal_hernia",
    "hypoinflation",
)


# words that locate the sentence about a drawn finding, so the snippet shows the report's own words for it
KEYWORDS = {
    "cardiomegaly": ("cardiomegaly", "heart", "cardiac"),
    "pleural_effusion": ("effusion", "costophrenic"),
    "lung_opacity": ("opacit", "consolidat", "airspace", "pneumonia", "infiltrat", "density"),
    "atelectasis": ("atelecta",),
    "nodule_mass": ("nodul", "mass", "granuloma", "density"),
    "calcified_granuloma": ("granulom", "calcif"),
    "pneumothorax": ("pneumothorax",),
    "emphysema": ("emphysema", "hyperexpan", "hyperinflat", "copd", "hyperlucen", "flatten", "obstructive"),
    "edema": ("edema", "congestion", "vascula", "failure"),
    "support_devices": (
        "pacemaker",
        "catheter",
        "tube",
        "clip",
        "sternotomy",
        "device",
        "wire",
        "port",
        "stent",
        "line",
        "valve",
    ),
    "fracture": ("fracture",),
    "scoliosis": ("scoliosis", "curvature"),
    "hiatal_hernia": ("hernia",),
    "hypoinflation": ("volume", "hypoinflat", "inflation", "low lung"),
}


def snippet_for(report: str, drawn: list[str], limit: int) -> str:
    """From the first non-negated sentence that names a drawn finding (else the start), about `limit` characters."""
    sentences = [s.strip() for s in report.split(". ") if s.strip()]
    start = 0
    words = [w for cls in drawn for w in KEYWORDS.get(cls, ())]
    for i, sentence in enumerate(sentences):
        lower = sentence.lower()
        if any(w in lower for w in words) and not lower.startswith(("no ", "there is no", "there are no")):
            start = i
            break
    text = ". ".join(sentences[start:])
    text = ("... " if start else "") + text
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _order(sample_id: str):
    report, _, variant = sample_id.rpartition("_")
    return (int(report), int(variant)) if report.isdigit() and variant.isdigit() else (10**12, 0)


def choose_samples(details: dict, count: int = 16) -> list[str]:
    ids = sorted(details, key=_order)
    chosen: list[str] = []
    for cls in SHEET_ORDER:
        for sid in ids:
            drawn = details[sid]["drawn"]
            # prefer samples where the class is the only drawn finding, so each tile shows one sign clearly
            if drawn == [cls] and sid not in chosen:
                chosen.append(sid)
                break
        else:
            for sid in ids:
                if cls in details[sid]["drawn"] and sid not in chosen:
                    chosen.append(sid)
                    break
        if len(chosen) >= count:
            return chosen
    for sid in ids:
        if len(chosen) >= count:
            break
        if not details[sid]["drawn"] and sid not in chosen:
            chosen.append(sid)
    return chosen


def write_contact_sheet(dataset_dir, out_path, count: int = 16, snippet_chars: int = 150) -> list[str]:
    """Draw the sheet to out_path (PNG); returns the sample ids shown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    from PIL import Image

    dataset_dir = Path(dataset_dir)
    details = json.loads((dataset_dir / "manifests" / "demo_samples.json").read_text(encoding="utf-8"))
    manifest = json.loads((dataset_dir / "manifests" / "pretrain.json").read_text(encoding="utf-8"))
    detection = json.loads((dataset_dir / "manifests" / "detection.json").read_text(encoding="utf-8"))
    reports = {it["id"]: it["report"] for split in ("training", "validation", "test") for it in manifest[split]}
    boxes = {
        it["id"]: (it["box"], it["box_label"])
        for split in ("training", "validation", "test")
        for it in detection[split]
    }
    chosen = choose_samples(details, count)
    cols = 4
    rows = (len(chosen) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 4.2, rows * 5.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, sid in zip(axes.ravel(), chosen):
        image = Image.open(dataset_dir / "images" / f"{sid}.png")
        ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        for (x1, y1, x2, y2), label in zip(*boxes[sid]):
            ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, lw=1.0, ec="tab:orange"))
            ax.text(x1, y1 - 2, CLASS_NAMES[label], color="tab:orange", fontsize=6)
        drawn = ", ".join(details[sid]["drawn"]) or "no drawn finding"
        snippet = snippet_for(reports[sid], details[sid]["drawn"], snippet_chars)
        ax.set_title(f"{sid}: {drawn}", fontsize=8, fontweight="bold")
        ax.text(
            0.0,
            -0.02,
            "\n".join(textwrap.wrap(snippet, 52)),
            transform=ax.transAxes,
            fontsize=6.5,
            va="top",
            ha="left",
            family="monospace",
        )
    fig.suptitle(
        "Demo phantoms (bundle/data/phantom.py) with their IU report text; patient right = image left", fontsize=11
    )
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=72, metadata={"Software": None})
    plt.close(fig)
    # grey images with a few coloured marks: a 256-colour palette keeps the documentation PNG small
    with Image.open(out_path) as sheet:
        small = sheet.convert("RGB").quantize(colors=256, method=Image.Quantize.MAXCOVERAGE, dither=Image.Dither.NONE)
    small.save(out_path, format="PNG", optimize=True)
    return chosen
