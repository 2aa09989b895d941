"""Grounding maps: token order, the token -> pixel-block mapping through the preprocessing's crop and padding (ResNet
and ViT grids), the pointing game and IoU on synthetic maps, the baselines; and configs/evaluate_grounding.yaml run
end to end on a tiny dataset with a drawn region."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow
from monai.transforms import Compose
from PIL import Image
from test_pretrain_fixtures import ROOT, tiny_overrides, tiny_text_model  # noqa: F401

from bundle.data.image_io import LoadRadiographd, radiograph_transforms
from bundle.downstream.grounding import (
    InputToImage,
    attention_to_input,
    box_region,
    centre_prior,
    grounding_scores,
    pointing_hit,
    thresholded_iou,
    token_grid,
    uniform_scores,
)
from bundle.networks.image_encoders import ResNetImageEncoder, ViTImageEncoder

torch.set_num_threads(1)


@pytest.mark.parametrize(
    "encoder, side",
    [
        (lambda: ResNetImageEncoder("resnet18", image_size=96, pool_num_heads=2), 3),
        (
            lambda: ViTImageEncoder(
                image_size=96, patch_size=16, hidden_size=16, mlp_dim=32, num_layers=1, num_heads=2
            ),
            6,
        ),
    ],
)
def test_token_index_is_row_major_over_the_encoder_grid(encoder, side):
    """Token r * w + c of the local features is the feature map's cell (r, c): the grid the maps are drawn on."""
    net = encoder().eval()
    image = torch.randn(2, 1, 96, 96)
    with torch.no_grad():
        local, _ = net(image)
        grid = net.forward_features(image)
    assert token_grid(local.shape[1]) == (side, side) and grid.shape[-2:] == (side, side)
    for r, c in [(0, 0), (0, side - 1), (side - 1, 1), (side // 2, side // 2)]:
        torch.testing.assert_close(local[:, r * side + c], grid[:, :, r, c])


@pytest.mark.parametrize("side, size", [(3, 96), (6, 96), (7, 224)])
def test_a_token_lights_its_own_pixel_block(side, size):
    block = size // side
    for r, c in [(0, 0), (side - 1, 0), (1, side - 1), (side // 2, side // 2)]:
        attention = torch.zeros(1, side * side)
        attention[0, r * side + c] = 1.0
        heat = attention_to_input(attention, (size, size))[0].numpy()
        pr, pc = np.unravel_index(int(np.argmax(heat)), heat.shape)
        assert r * block <= pr < (r + 1) * block and c * block <= pc < (c + 1) * block
        inside = heat[r * block : (r + 1) * block, c * block : (c + 1) * block].mean()
        assert inside > 2 * heat.mean()


def test_maps_return_to_the_stored_image_through_resize_pad_and_crop(tmp_path):
    """A 120 x 200 (rows x columns) image, image_size 112, crop 96: long side 200 -> 112 (scale 200 / 112), rows 120
    -> 67, padded symmetrically to 112 (22 rows above), centre crop 96 (8 off each side). So crop pixel (y, x) is
    stored pixel ((y + 8 - 22) * 120 / 67, (x + 8) * 200 / 112). The token of grid cell (r, c) of a 3 x 3 grid
    covers crop rows [32 r, 32 r + 32): its map's maximum must land in the stored-image block computed here."""
    path = tmp_path / "wide.png"
    Image.fromarray(np.full((120, 200), 128, dtype=np.uint8), mode="L").save(path)
    preprocessing = Compose(
        [LoadRadiographd(keys="image")] + radiograph_transforms(("image",), image_size=112, crop_size=96, train=False)
    )
    item = preprocessing({"image": str(path)})
    assert tuple(item["image"].shape) == (1, 96, 96)
    inverse = InputToImage(preprocessing)
    sy, sx = 120 / 67, 200 / 112
    for r, c in [(1, 0), (1, 2), (2, 1), (0, 1)]:
        attention = torch.zeros(1, 9)
        attention[0, r * 3 + c] = 1.0
        stored = inverse(attention_to_input(attention, (96, 96)), item["image"])
        assert stored.shape == (120, 200)
        pr, pc = np.unravel_index(int(np.argmax(stored)), stored.shape)
        rows = (max(0, (32 * r + 8 - 22) * sy) - 2, min(120, (32 * r + 32 + 8 - 22) * sy) + 2)
        cols = ((32 * c + 8) * sx - 2, (32 * c + 32 + 8) * sx + 2)
        assert rows[0] <= pr <= rows[1] and cols[0] <= pc <= cols[1], (r, c, pr, pc, rows, cols)
    # the crop removed 8 columns x 200 / 112 = 14 stored columns on each side: the map is 0 there
    ones = inverse(torch.ones(1, 96, 96), item["image"])
    assert ones[:, :12].max() == 0 and ones[:, -12:].max() == 0 and ones[60, 100] == pytest.approx(1.0, abs=1e-3)


def test_pointing_iou_mass_and_baselines_on_a_synthetic_map():
    region = np.zeros((10, 20), dtype=bool)
    region[2:5, 3:7] = True  # 12 of 200 pixels
    heat = np.zeros((10, 20))
    heat[3, 4] = 0.5  # peak 1.1 inside; the rest of the region 0.6 / 1.1 = 0.55 of the range, the outside 0
    heat[2:5, 3:7] += 0.6
    scores = grounding_scores(heat, region)
    assert scores["pointing"] == 1.0
    assert scores["iou"] == pytest.approx(1.0)  # normalised map >= 0.5 exactly on the region
    assert scores["mass"] == pytest.approx(1.0)
    far = np.zeros((10, 20))
    far[9, 19] = 1.0
    assert pointing_hit(far, region) == 0.0 and thresholded_iou(far, region) == 0.0
    # a flat 4 x 4 maximum in the corner (an upsampled corner token) points at its middle, not at pixel (0, 0)
    plateau = np.zeros((10, 20))
    plateau[:4, :4] = 1.0
    middle = np.zeros((10, 20), dtype=bool)
    middle[1:3, 1:3] = True
    assert pointing_hit(plateau, middle) == 1.0
    assert uniform_scores(region) == {"pointing": 0.06, "iou": 0.06, "mass": 0.06}
    centre = centre_prior((10, 20))
    assert np.unravel_index(int(np.argmax(centre)), centre.shape) in {(4, 9), (4, 10), (5, 9), (5, 10)}
    assert centre[0, 0] < centre[4, 9]
    with pytest.raises(ValueError, match="differ in shape"):
        pointing_hit(heat[:, :10], region)
    with pytest.raises(ValueError, match="empty ground-truth region"):
        pointing_hit(heat, np.zeros_like(region))


def test_boxes_become_regions_with_one_past_the_end_corners():
    region = box_region([[2, 1, 5, 3], [8, 8, 9.5, 9]], (10, 10))
    assert region[1:3, 2:5].all() and region.sum() == 6 + 2
    assert not region[3, 2] and not region[1, 5] and region[8, 9]


# ----------------------------------------------------------------------------------------------- workflow
def _grounding_dataset(root, rng):
    """Four 40 x 48 images; each with a bright disc whose label-map class id is 3, and a sentence naming it."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "manifests").mkdir()
    items = []
    for i in range(4):
        yy, xx = np.mgrid[:40, :48]
        cy, cx = 10 + 6 * i, 12 + 7 * i
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= 25
        pixels = (rng.random((40, 48)) * 60 + disc * 180).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(root / "images" / f"g{i}.png")
        Image.fromarray((disc * 3).astype(np.uint8), mode="L").save(root / "masks" / f"g{i}.png")
        phrases = [{"text": "small nodule in the left upper lobe", "class": "nodule", "class_id": 3}]
        items.append({"id": f"g{i}", "image": f"images/g{i}.png", "label": f"masks/g{i}.png", "phrases": phrases})
    manifest = {"training": [], "validation": [], "test": items, "meta": {"task": "grounding"}}
    (root / "manifests" / "grounding.json").write_text(json.dumps(manifest))
    return items


@pytest.mark.slow
def test_evaluate_grounding_config_scores_every_case_against_its_baselines(tmp_path, tiny_text_model):
    data = tmp_path / "data"
    items = _grounding_dataset(data, np.random.default_rng(0))
    overrides = tiny_overrides(data, tiny_text_model, tmp_path / "run")
    overrides.update(eval_dir=str(tmp_path / "eval"), grounding_examples=2)
    # a randomly initialised network as the "pretrained" checkpoint: the scores are then chance-like, but every
    # step (A1 per phrase, inverse preprocessing, regions, baselines) runs on the real classes
    parser_wf = ConfigWorkflow(
        config_file=[str(ROOT / "configs" / "pretrain.yaml"), str(ROOT / "configs" / "evaluate_grounding.yaml")],
        meta_file=str(ROOT / "metadata.json"),
        workflow_type="infer",
        **{k: v for k, v in overrides.items() if "#" not in k},
    )
    for key, value in overrides.items():
        parser_wf.parser[key] = value
    ckpt = tmp_path / "run" / "models" / "model.pt"
    ckpt.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(parser_wf.parser.get_parsed_content("network_def").state_dict(), ckpt)
    parser_wf.initialize()
    parser_wf.run()
    summary = json.loads((tmp_path / "eval" / "grounding_test.json").read_text())
    assert summary["cases"] == len(items) == 4
    rows = summary["per_case"]
    assert [r["id"] for r in rows] == ["g0", "g1", "g2", "g3"]
    for row in rows:  # the uniform baseline is the disc's area fraction of the 40 x 48 image, computed here
        assert row["uniform_pointing"] == pytest.approx(81 / (40 * 48))  # 81 pixels within radius 5
        assert row["model_pointing"] in (0.0, 1.0) and 0.0 <= row["model_mass"] <= 1.0
        assert row["model_token_pointing"] in (0.0, 1.0) and 0.0 < row["uniform_token_pointing"] <= 0.5
        assert row["uniform_token_pointing"] == pytest.approx(np.mean(row["fixed_token_hits"]))
    # the oracle fixed token: the best column of the per-case hits, at least the random token's and the centre's
    per_token = np.mean([r["fixed_token_hits"] for r in rows], axis=0)
    overall = summary["overall"]
    assert overall["best_fixed_token_pointing"] == pytest.approx(per_token.max())
    assert overall["best_fixed_token_pointing"] >= max(
        overall["uniform_token_pointing"], overall["centre_token_pointing"]
    )
    assert (tmp_path / "eval" / "grounding_test.png").stat().st_size > 1000
    assert math.isfinite(summary["overall"]["model_iou"])


def test_grounding_manifest_from_detection_boxes(tmp_path):
    import importlib.util

    from bundle.data.manifest import ManifestError, load_manifest
    from bundle.downstream.joint_space_workflows import _region

    spec = importlib.util.spec_from_file_location("mgm", ROOT / "scripts" / "make_grounding_manifest.py")
    mgm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mgm)
    content = {
        "meta": {"class_names": ["background", "pneumonia"]},
        "training": [],
        "validation": [],
        "test": [
            {"id": "a", "image": "images/a.png", "box": [[2, 1, 5, 3], [6, 6, 8, 8]], "box_label": [1, 1]},
            {"id": "b", "image": "images/b.png", "box": [], "box_label": []},
        ],
    }
    splits, meta = mgm.grounding_from_detection(content, {"pneumonia": "there is a pneumonia"})
    assert [it["id"] for it in splits["test"]] == ["a"] and meta["images_without_box"] == 1 and meta["cases"] == 1
    phrase = splits["test"][0]["phrases"][0]
    assert phrase == {
        "text": "there is a pneumonia",
        "class": "pneumonia",
        "class_id": 1,
        "box": [[2, 1, 5, 3], [6, 6, 8, 8]],
    }
    assert _region(splits["test"][0], phrase, (10, 10)).sum() == 6 + 4
    with pytest.raises(ManifestError, match="effusion"):
        mgm.grounding_from_detection(content, {"effusion": "x"})
    (tmp_path / "manifests").mkdir()
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((10, 10), dtype=np.uint8), mode="L").save(tmp_path / "images" / "a.png")
    mgm.write_manifest(tmp_path / "manifests" / "g.json", splits, meta)
    assert load_manifest(tmp_path / "manifests" / "g.json", "test")[0]["image"] == str(tmp_path / "images" / "a.png")


def test_token_pointing_works_at_the_resolution_of_the_grid():
    from bundle.downstream.grounding import centre_token, token_hits, token_index_map, token_pointing, token_uniform

    index = token_index_map(9, (96, 96))[0].numpy()
    assert index[0, 0] == 1 and index[40, 70] == 1 + 1 * 3 + 2 and index[95, 95] == 9
    region = np.zeros((96, 96), dtype=bool)
    region[30:34, 60:70] = True  # rows 30-33 straddle grid rows 0 and 1, columns 60-69 lie in grid column 1 and 2
    assert token_pointing(index, 1, region) == 1.0 and token_pointing(index, 4, region) == 1.0
    assert token_pointing(index, 0, region) == 0.0 and token_pointing(index, 8, region) == 0.0
    assert token_uniform(index, 9, region) == pytest.approx(4 / 9)
    assert token_hits(index, 9, region).tolist() == [0, 1, 1, 0, 1, 1, 0, 0, 0]  # blocks (0,1) (0,2) (1,1) (1,2)
    assert centre_token(9) == 4 and centre_token(16) == 10 and centre_token(196) == 7 * 14 + 7
    padded = index.copy()
    padded[:, :10] = 0  # what the inverse of a crop leaves outside the image: no token
    assert token_uniform(padded, 9, np.ones_like(region)) == 1.0
