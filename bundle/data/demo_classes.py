"""The demo dataset's fixed class list and the mapping from Indiana University MeSH `<major>` terms to drawn findings.

A MeSH major term is "Head/qualifier/qualifier...", e.g. "Opacity/lung/base/left", "Cardiomegaly/mild",
"Calcinosis/lung/hilum/lymph nodes/right". The head picks the class (MESH_TO_CLASS, plus a few rules in
`mesh_to_finding`); the qualifiers give the side, the zone, the severity and "multiple". Terms that map to no class
(degenerative spine, tortuous aorta, "normal", ...) are not drawn and are listed per sample as not drawn.

Sides are the PATIENT's: on a frontal (PA) radiograph the patient's right is on the IMAGE's left.
"""

from __future__ import annotations

from dataclasses import dataclass

# Fixed order: the multi-hot label index and the label-map id (0 = background, which is also "no_finding").
CLASS_NAMES = (
    "no_finding",  # 0: no drawn finding (derived; also the background id of the label maps)
    "cardiomegaly",  # 1: cardiothoracic ratio 0.55 / 0.60 / 0.65 (mild / moderate / severe)
    "pleural_effusion",  # 2: basal opacity with a meniscus, blunted costophrenic angle          (mask)
    "lung_opacity",  # 3: blurred patchy opacity in the named zone                              (mask, box)
    "atelectasis",  # 4: plate-like linear band, usually basal                                  (mask)
    "nodule_mass",  # 5: round soft-tissue density                                              (mask, box)
    "calcified_granuloma",  # 6: small, very bright, sharp round density                                (mask, box)
    "pneumothorax",  # 7: lucent rim without lung markings, visible pleural line                 (mask)
    "emphysema",  # 8: larger, darker lungs with few markings, flat low diaphragm
    "edema",  # 9: perihilar haze, prominent vessels, basal interstitial (Kerley) lines
    "support_devices",  # 10: pacemaker box and lead, catheters, tubes, surgical clips
    "fracture",  # 11: broken, displaced rib
    "scoliosis",  # 12: laterally curved spine
    "hiatal_hernia",  # 13: retrocardiac gas bubble with an air-fluid level
    "hypoinflation",  # 14: small lungs, high diaphragm
)
CLASS_INDEX = {name: i for i, name in enumerate(CLASS_NAMES)}
MASK_CLASSES = ("pleural_effusion", "lung_opacity", "atelectasis", "nodule_mass", "calcified_granuloma", "pneumothorax")
BOX_CLASSES = ("lung_opacity", "nodule_mass", "calcified_granuloma")

# MeSH head (case-insensitive) -> class; a few heads need their qualifiers (see mesh_to_finding).
MESH_TO_CLASS = {
    "cardiomegaly": "cardiomegaly",
    "pleural effusion": "pleural_effusion",
    "opacity": "lung_opacity",
    "airspace disease": "lung_opacity",
    "consolidation": "lung_opacity",
    "pneumonia": "lung_opacity",
    "infiltrate": "lung_opacity",
    "pulmonary atelectasis": "atelectasis",
    "nodule": "nodule_mass",
    "mass": "nodule_mass",
    "granuloma": "nodule_mass",
    "calcified granuloma": "calcified_granuloma",
    "granulomatous disease": "calcified_granuloma",
    "pneumothorax": "pneumothorax",
    "hydropneumothorax": "pneumothorax",
    "hemopneumothorax": "pneumothorax",
    "emphysema": "emphysema",
    "pulmonary emphysema": "emphysema",
    "bullous emphysema": "emphysema",
    "pulmonary disease, chronic obstructive": "emphysema",
    "lung, hyperlucent": "emphysema",
    "pulmonary edema": "edema",
    "pulmonary congestion": "edema",
    "heart failure": "edema",
    "catheters, indwelling": "support_devices",
    "implanted medical device": "support_devices",
    "surgical instruments": "support_devices",
    "tube, inserted": "support_devices",
    "medical device": "support_devices",
    "stents": "support_devices",
    "sutures": "support_devices",
    "fractures, bone": "fracture",
    "scoliosis": "scoliosis",
    "hernia, hiatal": "hiatal_hernia",
}

SIDES = {"right": "right", "left": "left", "bilateral": "bilateral"}
ZONES = {
    "apex": "upper",
    "upper lobe": "upper",
    "middle lobe": "middle",
    "lingula": "middle",
    "hilum": "hilum",
    "base": "lower",
    "lower lobe": "lower",
    "retrocardiac": "retrocardiac",
}
SEVERITIES = {
    "borderline": "borderline",
    "mild": "mild",
    "small": "mild",
    "moderate": "moderate",
    "severe": "severe",
    "large": "severe",
}


@dataclass(frozen=True)
class Finding:
    """One finding to draw: its class and the qualifiers the report's MeSH term names (None = not named)."""

    cls: str
    side: str | None = None  # "right" / "left" / "bilateral" (patient sides)
    zone: str | None = None  # "upper" / "middle" / "lower" / "hilum" / "retrocardiac"
    severity: str | None = None  # "borderline" / "mild" / "moderate" / "severe"
    multiple: bool = False
    detail: str = ""  # e.g. the device kind or "mass"
    term: str = ""  # the MeSH term it came from


def _first(qualifiers: list[str], table: dict) -> str | None:
    for q in qualifiers:
        if q in table:
            return table[q]
    return None


def mesh_to_finding(term: str) -> Finding | None:
    """The finding a MeSH major term asks to draw, or None when the term is not drawn."""
    parts = [p.strip().lower() for p in term.split("/") if p.strip()]
    if not parts:
        return None
    head, qualifiers = parts[0], parts[1:]
    side = _first(qualifiers, SIDES)
    zone = _first(qualifiers, ZONES)
    severity = _first(qualifiers, SEVERITIES)
    multiple = any(q in ("multiple", "scattered", "diffuse") for q in qualifiers)
    cls, detail = MESH_TO_CLASS.get(head), ""
    if head == "lung":
        cls = (
            "hypoinflation"
            if "hypoinflation" in qualifiers
            else "emphysema"
            if "hyperdistention" in qualifiers
            else None
        )
    elif head in ("cardiac shadow", "heart") and "enlarged" in qualifiers:
        cls = "cardiomegaly"
    elif head == "costophrenic angle" and "blunted" in qualifiers:
        cls, severity = "pleural_effusion", severity or "mild"  # blunting = a small effusion
    elif head == "density" and ("lung" in qualifiers or zone == "retrocardiac"):
        cls = "nodule_mass" if "round" in qualifiers else "lung_opacity"
    elif head == "calcinosis" and ("lung" in qualifiers or "lymph nodes" in qualifiers):
        cls = "calcified_granuloma"
        zone = zone or ("hilum" if "lymph nodes" in qualifiers or "mediastinum" in qualifiers else None)
    if cls is None:
        return None
    if head == "mass":
        detail = "mass"
    elif cls == "support_devices":
        detail = (
            "pacemaker"
            if head == "implanted medical device" and "aortic valve" not in qualifiers
            else "valve"
            if "aortic valve" in qualifiers
            else "tube"
            if head == "tube, inserted"
            else "clips"
            if head in ("surgical instruments", "sutures", "stents")
            else "catheter"
        )
    if severity == "borderline":
        return None  # "borderline" cardiomegaly / effusion is not a definite finding: not drawn, listed as such
    return Finding(cls=cls, side=side, zone=zone, severity=severity, multiple=multiple, detail=detail, term=term)


def findings_from_mesh(terms: list[str]) -> tuple[list[Finding], list[str]]:
    """(findings to draw, terms not drawn) for one report's MeSH major terms; "normal" counts as neither."""
    findings, not_drawn = [], []
    for term in terms:
        finding = mesh_to_finding(term)
        if finding is not None:
            findings.append(finding)
        elif term.strip().lower() != "normal":
            not_drawn.append(term)
    return findings, not_drawn


def multi_hot(classes) -> list[float]:
    """The label vector over CLASS_NAMES; no_finding is 1.0 exactly when no other class is present."""
    present = set(classes) - {"no_finding"}
    unknown = present - set(CLASS_NAMES)
    if unknown:
        raise ValueError(f"unknown demo classes {sorted(unknown)}")
    vec = [1.0 if name in present else 0.0 for name in CLASS_NAMES]
    vec[CLASS_INDEX["no_finding"]] = 0.0 if present else 1.0
    return vec
