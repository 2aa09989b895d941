"""The phantom renderer (bundle/data/phantom.py): every finding is measurably visible at 128 and 224 px.

Paired comparisons: the renderer draws anatomy, findings and noise from three independent streams, so with the same
seed a phantom with a finding and one without are the same patient with the same noise; their difference is the
finding's own sign, and it must lie where the ground truth says.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from bundle.data.demo_classes import CLASS_INDEX, mesh_to_finding
from bundle.data.phantom import PhantomRenderer, render_phantom


def rendered(terms, size, seed):
    findings = [mesh_to_finding(t) for t in terms]
    renderer = PhantomRenderer(findings, size, np.random.default_rng(seed))
    return renderer, renderer.render()


@pytest.mark.parametrize("size", [128, 224])
@pytest.mark.parametrize(
    "term, cls, sign",
    [
        ("Pleural Effusion/left/moderate", "pleural_effusion", +1),
        ("Opacity/lung/base/right", "lung_opacity", +1),
        ("Density/retrocardiac", "lung_opacity", +1),
        ("Pulmonary Atelectasis/base/left", "atelectasis", +1),
        ("Nodule/lung/upper lobe/right", "nodule_mass", +1),
        ("Calcified Granuloma/lung/upper lobe/left", "calcified_granuloma", +1),
        ("Pneumothorax/apex/right/moderate", "pneumothorax", -1),
    ],
)
def test_mask_findings_change_the_pixels_under_their_mask(size, term, cls, sign):
    for seed in (1, 2, 3):
        renderer, with_it = rendered([term], size, seed)
        _, without = rendered([], size, seed)
        mask = with_it.label_map == CLASS_INDEX[cls]
        assert mask.sum() >= 4, f"{cls} at {size} px drew {mask.sum()} pixels"
        diff = with_it.image[mask].astype(float).mean() - without.image[mask].astype(float).mean()
        assert sign * diff > 12, f"{cls} at {size} px, seed {seed}: mean change {diff:.1f} grey levels"
        assert with_it.drawn == [cls]
        # the change is where the mask is: most of it inside the mask grown by 4 pixels
        change = np.abs(with_it.image.astype(float) - without.image.astype(float))
        near = binary_dilation(mask, iterations=4)
        if cls == "pneumothorax":  # the collapsed lung inside the rim is drawn a little denser too
            near |= renderer.lung[-1] > 0.05
        assert change[near].sum() > 0.8 * change.sum()


def test_calcified_granuloma_is_brighter_and_smaller_than_a_nodule():
    for seed in range(3):
        _, calc = rendered(["Calcified Granuloma/lung/upper lobe/right"], 224, seed)
        _, nod = rendered(["Nodule/lung/upper lobe/right"], 224, seed)
        calc_mask = calc.label_map == CLASS_INDEX["calcified_granuloma"]
        nod_mask = nod.label_map == CLASS_INDEX["nodule_mass"]
        assert calc.image[calc_mask].mean() > nod.image[nod_mask].mean()
        assert calc_mask.sum() < nod_mask.sum()


def measured_ctr(renderer) -> float:
    """Widest heart extent over the outer extent of the lungs, both measured on the drawn masks (body units)."""
    X = renderer.f.X
    heart = renderer.heart > 0.5
    lungs = (renderer.lung[-1] > 0.5) | (renderer.lung[1] > 0.5)
    return float((X[heart].max() - X[heart].min()) / (X[lungs].max() - X[lungs].min()))


def test_cardiothoracic_ratio_follows_the_severity():
    ratios = {}
    for label, terms in (
        ("normal", []),
        ("mild", ["Cardiomegaly/mild"]),
        ("moderate", ["Cardiomegaly/moderate"]),
        ("severe", ["Cardiomegaly/severe"]),
    ):
        ratios[label] = [measured_ctr(rendered(terms, 224, seed)[0]) for seed in range(4)]
    assert max(ratios["normal"]) < 0.5 < min(ratios["mild"])
    for label, nominal in (("mild", 0.55), ("moderate", 0.60), ("severe", 0.65)):
        assert all(abs(r - nominal) < 0.04 for r in ratios[label]), (label, ratios[label])
    assert np.mean(ratios["mild"]) < np.mean(ratios["moderate"]) < np.mean(ratios["severe"])


def test_emphysema_and_hypoinflation_change_lung_size_and_darkness():
    for seed in range(3):
        base_r, base = rendered([], 224, seed)
        emph_r, emph = rendered(["Emphysema"], 224, seed)
        hypo_r, _ = rendered(["Lung/hypoinflation"], 224, seed)
        area = {
            name: float(((r.lung[-1] > 0.5) | (r.lung[1] > 0.5)).sum())
            for name, r in (("base", base_r), ("emph", emph_r), ("hypo", hypo_r))
        }
        assert area["emph"] > 1.1 * area["base"] > 1.1 * area["hypo"]
        lungs = (base_r.lung[-1] > 0.5) | (base_r.lung[1] > 0.5)
        assert emph.image[lungs].mean() < base.image[lungs].mean() - 5  # darker lungs


def test_edema_devices_hernia_fracture_scoliosis_are_drawn():
    for seed in range(2):
        _, base = rendered([], 224, seed)
        r, edema = rendered(["Pulmonary Edema"], 224, seed)
        perihilar = (
            (np.abs(r.f.X - 0.3 * np.sign(r.f.X)) < 0.15)
            & (np.abs(r.f.Y - 0.5) < 0.15)
            & ((r.lung[-1] > 0.5) | (r.lung[1] > 0.5))
        )
        assert edema.image[perihilar].mean() > base.image[perihilar].mean() + 10
        for term in (
            "Implanted Medical Device/left",
            "Catheters, Indwelling/right",
            "Tube, Inserted",
            "Surgical Instruments",
        ):
            _, dev = rendered([term], 224, seed)
            brighter = (dev.image.astype(int) - base.image.astype(int)) > 50
            assert brighter.sum() > 20, term
        r, hernia = rendered(["Hernia, Hiatal"], 224, seed)
        heart = r.heart > 0.9
        assert ((base.image.astype(int) - hernia.image.astype(int))[heart] > 50).sum() > 30  # gas bubble
        r, fracture = rendered(["Fractures, Bone/ribs/left"], 224, seed)
        x, y = fracture.details["fracture_rib_pixel"]
        assert x > 112  # patient left: image right
        changed = np.abs(fracture.image.astype(int) - base.image.astype(int)) > 10
        rows, cols = np.nonzero(changed)
        assert len(rows) > 40  # a visible break and step of the rib ...
        assert np.hypot(cols - x, rows - y).max() < 40  # ... at the fracture site only
        r, _ = rendered(["Scoliosis"], 224, seed)
        assert np.abs(r.spine_center).max() * r.f.hw > 0.08 * r.f.hw > 5  # > 5 px lateral deviation


def test_anatomy_and_exposure_vary_between_samples():
    images = [render_phantom([], 128, np.random.default_rng(seed)).image.astype(float) for seed in range(8)]
    means = [im.mean() for im in images]
    assert np.std(means) > 3
    assert min(np.abs(a - b).mean() for i, a in enumerate(images) for b in images[i + 1 :]) > 3


def test_same_generator_state_gives_the_same_phantom():
    a = render_phantom([mesh_to_finding("Opacity/lung/base/left")], 160, np.random.default_rng(7))
    b = render_phantom([mesh_to_finding("Opacity/lung/base/left")], 160, np.random.default_rng(7))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label_map, b.label_map) and a.boxes == b.boxes
    with pytest.raises(ValueError, match="too small"):
        render_phantom([], 32, np.random.default_rng(0))
