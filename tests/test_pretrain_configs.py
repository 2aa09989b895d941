"""Model-zoo style config tests: ConfigWorkflow with overrides, check_properties, initialize/run/finalize of
configs/pretrain.yaml (two stages, real CM-CGNS, tiny sizes) and of configs/evaluate_pretrain.yaml on its output."""

from __future__ import annotations

import inspect
import json
import os

import pytest
import torch
import yaml
from monai.bundle import ConfigWorkflow
from test_pretrain_fixtures import ROOT, tiny_dataset, tiny_overrides, tiny_text_model  # noqa: F401

from bundle.engines.preflight import ResumeCheckpointError, TextModelDirError
from bundle.engines.progress import read_history

torch.set_num_threads(1)
PRETRAIN = str(ROOT / "configs" / "pretrain.yaml")
EVALUATE = str(ROOT / "configs" / "evaluate_pretrain.yaml")
META = str(ROOT / "metadata.json")
LOGGING = str(ROOT / "configs" / "logging.conf")


def raised_by_config(error_type, match, call):
    """MONAI wraps errors of config expressions in RuntimeError; the bundle's own error is the cause."""
    with pytest.raises((error_type, RuntimeError)) as info:
        call()
    error = info.value if isinstance(info.value, error_type) else info.value.__cause__
    assert isinstance(error, error_type), repr(info.value)
    assert match in str(error)
    return error


def tensorboard_tags(log_dir) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for name in os.listdir(log_dir):
        if name.startswith("events.out.tfevents"):
            events = EventAccumulator(str(log_dir / name))
            events.Reload()
            tags |= set(events.Tags()["scalars"])
    return tags


def workflow(config_files, workflow_type="train", **overrides) -> ConfigWorkflow:
    return ConfigWorkflow(
        config_file=config_files, meta_file=META, logging_file=LOGGING, workflow_type=workflow_type, **overrides
    )


def _yaml(name):
    with open(ROOT / "configs" / name, encoding="utf-8") as f:
        return yaml.safe_load(f)


def test_common_ids_are_identical_in_pretrain_config():
    common, pretrain = _yaml("common.yaml"), _yaml("pretrain.yaml")
    for key, value in common.items():
        if key != "imports":
            assert pretrain.get(key) == value, f"configs/pretrain.yaml and configs/common.yaml disagree on {key}"


def test_network_def_lists_every_cmcgns_switch_with_its_default():
    from bundle.networks.cmcgns import CMCGNS

    network_def = _yaml("pretrain.yaml")["network_def"]
    params = inspect.signature(CMCGNS.__init__).parameters
    switches = {n: p.default for n, p in params.items() if n != "self"}
    assert set(switches) == set(network_def) - {"_target_"}
    referenced = {"text_model_dir": "@text_model_dir", "image_size": "@crop_size", "kmeans_seed": "@seed"}
    for name, default in switches.items():
        if name in referenced:
            assert network_def[name] == referenced[name]
        else:
            value = network_def[name]
            assert (list(value) if isinstance(value, (list, tuple)) else value) == (
                list(default) if isinstance(default, tuple) else default
            ), name


@pytest.mark.slow
def test_pretrain_then_evaluate_config_workflows(tmp_path, tiny_dataset, tiny_text_model):  # noqa: F811
    overrides = tiny_overrides(tiny_dataset, tiny_text_model, tmp_path)
    trainer = workflow(PRETRAIN, **overrides)
    trainer.initialize()
    assert trainer.check_properties() == []
    trainer.run()
    trainer.finalize()

    models = tmp_path / "models"
    for name in ("last.pt", "stage1_best.pt", "stage1_last.pt", "stage2_best.pt", "model.pt", "image_encoder.pt"):
        assert (models / name).is_file(), name
    # the exported encoder is a plain state dict that loads strictly into the image encoder of a fresh model
    network = trainer.parser.get_parsed_content("network_def", instantiate=True)
    network.image_encoder.load_state_dict(torch.load(models / "image_encoder.pt", weights_only=True))
    whole = torch.load(models / "model.pt", weights_only=True)
    network.load_state_dict(whole)
    assert int(whole["stage"]) == 2 and bool(whole["report_loss.state.initialized"])
    last = torch.load(models / "last.pt", weights_only=True)
    assert last["trainer"]["iteration"] == 6 and int(last["model"]["stage"]) == 2
    assert {"optimizer", "lr_scheduler", "rng", "best_stage1", "best_stage2"} <= set(last)

    train_records, val_records = read_history(str(tmp_path / "runs" / "history.jsonl"))
    assert [r["iteration"] for r in train_records] == [1, 2, 3, 4, 5, 6]
    assert [r["stage"] for r in train_records] == [1, 1, 1, 2, 2, 2]
    assert all(r["loss_recon"] == 0 for r in train_records[:3]) and all(r["loss_recon"] > 0 for r in train_records[3:])
    for key in ("loss_img", "loss_report", "loss_global", "lr", "logit_scale", "kmeans_initialized", "centroid_usage"):
        assert all(key in r for r in train_records), key
    assert [r["epoch"] for r in val_records] == [1, 2]
    assert all(0 <= r["val_i2t_top1"] <= 1 and r["val_chance_top1"] == pytest.approx(0.25) for r in val_records)
    assert tensorboard_tags(tmp_path / "runs") >= {
        "loss",
        "loss_img",
        "loss_report",
        "loss_global",
        "loss_recon",
        "loss_recon_masked",
        "bml",
        "acc_i2t_top1",
        "acc_i2t_top5",
        "acc_t2i_top1",
        "acc_t2i_top5",
        "lr",
        "logit_scale",
        "kmeans_initialized",
        "centroid_usage",
        "val_loss",
        "val_i2t_top1",
        "val_i2t_top5",
        "val_t2i_top1",
        "val_t2i_top5",
        "val_chance_top1",
    }

    evaluator = workflow([PRETRAIN, EVALUATE], workflow_type="eval", **overrides, eval_dir=str(tmp_path / "eval"))
    evaluator.initialize()
    assert evaluator.check_properties() == []
    evaluator.run()
    evaluator.finalize()
    metrics = (tmp_path / "eval" / "metrics.csv").read_text()
    assert "val_loss" in metrics and "val_i2t_top1" in metrics and "val_chance_top1" in metrics

    # the evaluate config reproduces the validation loss its checkpoint had in training, and another checkpoint's
    def eval_loss(checkpoint, out):
        ev = workflow([PRETRAIN, EVALUATE], workflow_type="eval", **overrides, eval_dir=str(out),
                      eval_checkpoint=str(checkpoint))  # fmt: skip
        ev.initialize()
        ev.run()
        ev.finalize()
        rows = dict(line.split(",")[:2] for line in (out / "metrics.csv").read_text().split() if "," in line)
        return float(rows["val_loss"])

    models = tmp_path / "models"
    assert eval_loss(models / "model.pt", tmp_path / "e2") == pytest.approx(val_records[1]["val_loss"], rel=1e-4)
    assert eval_loss(models / "stage1_best.pt", tmp_path / "e1") == pytest.approx(val_records[0]["val_loss"], rel=1e-4)
    assert val_records[0]["val_loss"] != pytest.approx(val_records[1]["val_loss"], rel=1e-3)


def test_missing_text_model_dir_fails_before_any_data_is_read(tmp_path):
    # dataset_dir does not exist either: the text model error must come first, from `initialize`
    trainer = workflow(PRETRAIN, text_model_dir=str(tmp_path / "no_such_model"), dataset_dir=str(tmp_path / "none"))
    raised_by_config(TextModelDirError, "does not exist", trainer.initialize)


def test_text_model_dir_without_tokenizer_is_a_clear_error(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    trainer = workflow(PRETRAIN, text_model_dir=str(tmp_path / "model"), dataset_dir=str(tmp_path / "none"))
    raised_by_config(TextModelDirError, "lacks a tokenizer", trainer.initialize)


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path, tiny_text_model):  # noqa: F811
    trainer = workflow(
        PRETRAIN, text_model_dir=str(tiny_text_model), ckpt_dir=str(tmp_path), resume=True, max_length=24
    )  # the tiny model has 64 positions
    raised_by_config(ResumeCheckpointError, "no checkpoint", trainer.initialize)


@pytest.mark.slow
def test_official_override_runs_both_stages(tmp_path, tiny_dataset, tiny_text_model):  # noqa: F811
    official = str(ROOT / "configs" / "official.yaml")
    trainer = workflow([PRETRAIN, official], **tiny_overrides(tiny_dataset, tiny_text_model, tmp_path))
    trainer.initialize()
    assert trainer.check_properties() == []
    assert trainer.parser.get_parsed_content("stage2_init") == "last"
    trainer.run()
    trainer.finalize()
    whole = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert int(whole["stage"]) == 2 and (tmp_path / "models" / "stage1_last.pt").is_file()
