"""Detection end to end without torchvision: the torchvision-free FPN extractor and ATSS matching in training and
inference, frozen vs fine-tuned encoder, the ViT adapter, and a tiny train / evaluate / infer run of the configs."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.bundle import ConfigParser
from monai.utils import OptionalImportError
from test_detection_fixtures import ROOT, write_tiny_detection_dataset

from bundle.downstream.detection_detector import DetectionLoss, TorchvisionFreeRetinaNetDetector, build_detector
from bundle.downstream.detection_network import EncoderRetinaNet, build_anchor_generator, default_anchor_sizes
from bundle.networks.image_encoders import build_image_encoder

torch.set_num_threads(1)


def _detector(encoder, mode="frozen", num_classes=2):
    network = EncoderRetinaNet(encoder, num_classes, num_anchors=9, mode=mode, fpn_channels=8)
    return network, build_detector(network, build_anchor_generator(default_anchor_sizes(1.0)), score_thresh=0.0)


def _batch():
    torch.manual_seed(0)
    images = torch.rand(2, 1, 64, 64) * 2 - 1
    targets = [
        {"box": torch.tensor([[8.0, 10.0, 30.0, 28.0]]), "label": torch.tensor([1])},
        {"box": torch.zeros(0, 4), "label": torch.zeros(0, dtype=torch.long)},
    ]  # an image without boxes
    return images, targets


def test_parent_detector_needs_torchvision_for_anchor_matching():
    # Why the override exists: MONAI's own method tests isinstance(matcher, torchvision Matcher) first.
    assert "torchvision" not in sys.modules
    network, detector = _detector(build_image_encoder("resnet18", 1, 64))
    images, targets = _batch()
    anchors = detector.anchor_generator(
        images, [torch.zeros(2, 8, 8, 8), torch.zeros(2, 8, 4, 4), torch.zeros(2, 8, 2, 2)]
    )
    with pytest.raises(OptionalImportError):
        RetinaNetDetector.compute_anchor_matched_idxs(detector, anchors, targets, [64, 16, 4])
    matched = detector.compute_anchor_matched_idxs(anchors, targets, [64, 16, 4])
    assert matched[0].max() == 0 and (matched[1] == -1).all()  # the box is matched; the empty image is background


def test_frozen_encoder_trains_the_head_only_and_loss_falls():
    encoder = build_image_encoder("resnet18", 1, 64)
    network, detector = _detector(encoder, "frozen")
    assert isinstance(detector, TorchvisionFreeRetinaNetDetector)
    frozen = {k: v.clone() for k, v in encoder.state_dict().items()}
    head = network.classification_head.cls_logits.weight.clone()
    optimizer = torch.optim.Adam(network.trainable_parameters(), lr=1e-2)
    images, targets = _batch()
    loss_fn, losses = DetectionLoss(), []
    detector.train()
    for _ in range(12):
        optimizer.zero_grad()
        loss = loss_fn(detector(images, targets))
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0]
    assert all(torch.equal(frozen[k], v) for k, v in encoder.state_dict().items())  # weights and BN statistics
    assert not torch.equal(head, network.classification_head.cls_logits.weight)
    detector.eval()
    with torch.no_grad():
        predictions = detector(images)
    assert len(predictions) == 2 and predictions[0]["box"].shape[1] == 4
    assert set(predictions[0]) == {"box", "label", "label_scores"}


def test_fine_tune_moves_the_encoder():
    encoder = build_image_encoder("resnet18", 1, 64)
    network, detector = _detector(encoder, "fine_tune")
    before = encoder.backbone.conv1.weight.clone()
    optimizer = torch.optim.SGD(network.trainable_parameters(), lr=0.1)
    images, targets = _batch()
    detector.train()
    DetectionLoss()(detector(images, targets)).backward()
    optimizer.step()
    assert not torch.equal(before, encoder.backbone.conv1.weight)


def test_vit_multiscale_adapter_gives_three_levels_and_trains():
    encoder = build_image_encoder(
        "vit_b16", 1, 64, vit_hidden_size=32, vit_mlp_dim=64, vit_num_layers=1, vit_num_heads=2
    )
    network, detector = _detector(encoder, "frozen")
    maps = network.feature_extractor(torch.zeros(1, 1, 64, 64))
    assert [tuple(m.shape[-2:]) for m in maps.values()] == [(8, 8), (4, 4), (2, 2)]  # strides 8, 16, 32
    images, targets = _batch()
    detector.train()
    loss = DetectionLoss()(detector(images, targets))
    loss.backward()
    assert network.feature_extractor.body.adapter["layer2"].weight.grad is not None
    assert all(p.grad is None for p in encoder.parameters())


def _parser(files, **settings) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(ROOT / "configs" / f) for f in files])
    for key, value in settings.items():
        parser[key] = value
    return parser


def test_tiny_train_evaluate_infer_through_the_configs(tmp_path):
    data = tmp_path / "data"
    write_tiny_detection_dataset(data)
    torch.save(build_image_encoder("resnet18", 1, 64).state_dict(), tmp_path / "image_encoder.pt")
    common = dict(
        bundle_root=str(ROOT),
        dataset_dir=str(data),
        encoder_name="resnet18",
        encoder_image_size=64,
        encoder_weights=str(tmp_path / "image_encoder.pt"),
        detection_image_size=64,
        fpn_channels=8,
        batch_size=4,
        num_workers=0,
        output_dir=str(tmp_path / "run"),
        device="cpu",
    )
    train = _parser(["common.yaml", "detection.yaml"], max_epochs=2, **common)
    train.get_parsed_content("initialize")
    train.get_parsed_content("run")
    run = tmp_path / "run"
    assert (run / "model.pt").is_file()
    metrics = dict(line.split(",") for line in (run / "test" / "metrics.csv").read_text().split())
    assert set(metrics) == {"test_mAP_40_75", "test_mAP_50", "test_mAP_50_95"}
    assert all(0.0 <= float(v) <= 1.0 for v in metrics.values())
    records = json.loads((run / "test" / "predictions.json").read_text())
    assert [r["id"] for r in records] == ["d016", "d017", "d018", "d019"]
    assert records[2]["box"] == [] and len(records[1]["box"]) == 2  # ground truth in the manifest convention
    assert (run / "test" / "overlay.png").stat().st_size > 2000

    evaluate = _parser(["common.yaml", "detection.yaml", "evaluate_detection.yaml"], test_split="validation", **common)
    evaluate.get_parsed_content("run")
    assert len(json.loads((run / "eval" / "predictions.json").read_text())) == 4

    infer = _parser(
        ["inference_detection.yaml"],
        bundle_root=str(ROOT),
        input_dir=str(data / "images"),
        output_dir=str(tmp_path / "infer"),
        ckpt_file=str(run / "model.pt"),
        class_names=["bright", "grey"],
        encoder_name="resnet18",
        encoder_image_size=64,
        detection_image_size=64,
        fpn_channels=8,
        score_thresh=0.0,
        device="cpu",
    )
    infer.get_parsed_content("detector_ops")  # what MONAI Label runs after building the detector
    infer.get_parsed_content("run")
    records = json.loads((tmp_path / "infer" / "predictions.json").read_text())
    assert len(records) == 20
    boxes = torch.tensor([b for r in records for b in r["pred_box"]])
    assert len(boxes) > 0
    # images are 80 rows x 64 columns: x (columns) within 0..64 and y (rows) within 0..80, original pixels
    assert boxes[:, 0].min() >= 0 and boxes[:, 2].max() <= 64 and boxes[:, 3].max() <= 80
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    # the MONAI Label path: the detector with its sliding-window inferer, then postprocessing, on one image
    item = infer.get_parsed_content("preprocessing")({"image": str(data / "images" / "d001.png")})
    detector = infer.get_parsed_content("detector")
    detector.eval()
    with torch.no_grad():
        out = detector(item["image"][None], use_inferer=True)[0]
    restored = infer.get_parsed_content("postprocessing")({"image": item["image"], **out})
    assert restored["box"].shape[1] == 4 and restored["box"][:, 2].max() <= 64 and restored["box"][:, 3].max() <= 80
    assert "torchvision" not in sys.modules


def test_grid_runner_writes_tables_plot_and_overlay(tmp_path):
    import importlib.util

    data = tmp_path / "data"
    write_tiny_detection_dataset(data)
    spec = importlib.util.spec_from_file_location("evaluate_transfer", ROOT / "scripts" / "evaluate_transfer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = tmp_path / "results"
    code = module.main(
        [
            "--task",
            "detection",
            "--dataset_dir",
            str(data),
            "--dataset",
            "tiny",
            "--encoder",
            "random",
            "--encoder_name",
            "resnet18",
            "--encoder_image_size",
            "64",
            "--image_size",
            "64",
            "--fpn_channels",
            "8",
            "--fractions",
            "0.1",
            "--seeds",
            "0",
            "1",
            "--max_epochs",
            "1",
            "--min_steps",
            "2",
            "--batch_size",
            "4",
            "--results_dir",
            str(results),
            "--work_dir",
            str(tmp_path / "runs"),
        ]
    )
    assert code == 0
    text = (results / "tiny_detection.md").read_text()
    assert "| random | 0.1 | 0 | 2 |" in text and "| random | 0.1 | 1 | 2 |" in text
    assert "2 / 2" in text  # 2 training images, batch 4: one step per epoch, raised to 2 epochs by min_steps
    assert text.count("(n=2)") == 3  # one cell per metric table
    assert (results / "tiny_detection.png").stat().st_size > 1000
    assert (results / "tiny_detection_overlay.png").stat().st_size > 1000
