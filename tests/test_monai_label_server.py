"""A real MONAI Label 0.8.5 server (the side environment of `make label-env`, which `make test` builds) serving the
three exported task bundles: each /infer reply equals the bundle's own inference on the same image, and one
BundleTrainTask epoch through /train rewrites the segmentation bundle's models/model.pt."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil

import numpy as np
import pytest
import torch
from export_fixtures import LABELS, settings, tiny_checkpoints
from label_server_fixtures import LABEL_PY, ROOT, post, running_server, write_studies
from monai.bundle import ConfigParser
from PIL import Image

from bundle.export.bundle_path import exported_bundle_on_path
from bundle.export.exporter import export_bundle

pytestmark = pytest.mark.slow


def own_inference(bundle_dir, image, output_dir):
    """The exported bundle's inference.yaml run in this process (its evaluator, CheckpointLoader and savers)."""
    parser = ConfigParser()
    parser.read_config(str(bundle_dir / "configs" / "inference.yaml"))
    parser.update({"bundle_root": str(bundle_dir), "output_dir": str(output_dir), "device": "cpu"})
    if bundle_dir.name.endswith("detection"):
        single = output_dir / "input"
        single.mkdir(parents=True)
        shutil.copy(image, single / image.name)
        parser["input_dir"] = str(single)
    else:
        parser["image_path"] = str(image)
    with exported_bundle_on_path(bundle_dir):
        parser.get_parsed_content("evaluator").run()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    if not LABEL_PY.exists():
        pytest.fail("the MONAI Label side environment is missing: run `make label-env` (make test builds it)")
    tmp = tmp_path_factory.mktemp("label")
    app = tmp / "app"
    (app / "model").mkdir(parents=True)
    shutil.copy(ROOT / "monai_label_app" / "main.py", app / "main.py")
    names = []
    for task, checkpoint in tiny_checkpoints(tmp / "checkpoints").items():
        names.append(export_bundle(settings(task), checkpoint, app / "model")["path"].name)
    studies = tmp / "studies"
    ids = write_studies(studies)
    with running_server(app, studies, names, tmp / "server.log") as url:
        yield {"url": url, "app": app, "studies": studies, "ids": ids, "tmp": tmp, "log": tmp / "server.log"}


def _bundle(served, task):
    return served["app"] / "model" / f"cxr_demo_{task}"


def test_segmentation_masks_equal_the_bundles_own_inference(served):
    bundle, replies = _bundle(served, "segmentation"), {}
    for image_id in served["ids"][:2]:
        png = post(
            f"{served['url']}/infer/{bundle.name}?image={image_id}&output=image",
            fields={"params": json.dumps({"result_dtype": "uint8"})},
        )
        served_mask = np.array(Image.open(io.BytesIO(png)))
        own = served["tmp"] / f"own_seg_{image_id}"
        own_inference(bundle, served["studies"] / f"{image_id}.png", own)
        own_mask = np.array(Image.open(own / f"{image_id}_seg.png"))
        assert served_mask.shape == own_mask.shape == (52, 60)  # the original rows x columns
        assert set(np.unique(served_mask)) <= {0, 1}
        np.testing.assert_array_equal(served_mask, own_mask)
        replies[image_id] = {"shape": list(served_mask.shape), "foreground_pixels": int(served_mask.sum())}
    print("segmentation replies:", replies)


def _json_reply_and_own_inference(served, task: str, own_name: str):
    """The server's JSON reply for the first demo image, and the folder of the bundle's own inference on it."""
    bundle = _bundle(served, task)
    image_id = served["ids"][0]
    reply = json.loads(post(f"{served['url']}/infer/{bundle.name}?image={image_id}&output=json", fields={}))
    own = served["tmp"] / own_name
    own_inference(bundle, served["studies"] / f"{image_id}.png", own)
    return reply, own


def test_classification_scores_equal_the_bundles_own_inference(served):
    reply, own = _json_reply_and_own_inference(served, "classification", "own_cls")
    with open(own / "predictions.csv") as f:
        row = next(csv.DictReader(f))
    expected = {name: float(row[name]) for name in LABELS["classification"]}
    served_scores = {p["label"]: p["score"] for p in reply["prediction"]}
    assert set(served_scores) == set(expected)
    for name, score in expected.items():
        assert served_scores[name] == pytest.approx(score, abs=1e-5)
    print("classification reply:", reply["prediction"])


def test_detection_boxes_equal_the_bundles_own_inference(served):
    reply, own = _json_reply_and_own_inference(served, "detection", "own_det")
    record = json.loads((own / "predictions.json").read_text())
    record = record[0] if isinstance(record, list) else record
    print("detection reply keys:", sorted(reply), "own keys:", sorted(record))
    served_boxes = np.asarray(reply["box"], dtype=float)
    assert len(served_boxes) > 0
    # MONAI Label's DetectionWriter returns boxes and labels (no scores); predictions.json rounds to 0.01 px
    np.testing.assert_allclose(served_boxes, np.asarray(record["pred_box"], dtype=float), atol=0.0051)
    assert [LABELS["detection"][int(i)] for i in reply["label"]] == record["pred_label"]
    print(f"detection reply: {len(served_boxes)} boxes, first 3:", {k: reply[k][:3] for k in ("box", "label")})


def test_one_training_epoch_through_the_train_endpoint(served):
    bundle = _bundle(served, "segmentation")
    model = bundle / "models" / "model.pt"
    before = hashlib.sha256(model.read_bytes()).hexdigest()
    request = {"device": "cpu", "max_epochs": 1, "val_split": 0.34, "multi_gpu": False, "pretrained": True}
    request.update(tracking="None", run_id="run")
    post(f"{served['url']}/train/{bundle.name}?run_sync=true", body=request, timeout=900)
    after = hashlib.sha256(model.read_bytes()).hexdigest()
    log = served["log"].read_text()
    assert after != before, f"training did not write models/model.pt:\n{log[-3000:]}"
    saved = torch.load(model, map_location="cpu", weights_only=True)
    state = saved.get("model", saved)  # ignite saves a lone object's state dict unwrapped; both load in MONAI Label
    assert any(k.startswith("decoder.") for k in state)
    assert "SupervisedTrainer - INFO - Epoch[1] Complete" in log, log[-3000:]
    # the server serves the retrained weights
    png = post(
        f"{served['url']}/infer/{bundle.name}?image={served['ids'][0]}&output=image",
        fields={"params": json.dumps({"result_dtype": "uint8"})},
    )
    assert np.array(Image.open(io.BytesIO(png))).shape == (52, 60)


def test_side_environment_recipe_is_pinned_and_keeps_torch_alone():
    lines = [ln.split("#")[0].strip() for ln in (ROOT / "requirements-label.txt").read_text().splitlines()]
    reqs = [ln for ln in lines if ln]
    assert reqs and all("==" in r for r in reqs), reqs
    assert not [r for r in reqs if r.lower().startswith(("torch==", "torchvision", "monailabel"))]
    makefile = (ROOT / "Makefile").read_text()
    assert "--no-deps monailabel==0.8.5" in makefile
    assert makefile.index("$(LABEL_PY) -m pip install --quiet torch==2.13.0") < makefile.index(
        "-r requirements-label.txt"
    )
    assert "test: install label-env" in makefile  # CI's `make test` builds the side environment itself
