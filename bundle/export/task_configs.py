"""The configs of an exported task bundle, derived from the repository's own task configs (not written twice).

inference.yaml: configs/common.yaml + configs/inference_<task>.yaml (classification: configs/inference_classification
.yaml), merged into one file (MONAI Label's BundleInferTask reads exactly one), with the network hyper-parameters
fixed to the exported checkpoint's and the weights read from the bundle's models/model.pt.

train.yaml: configs/common.yaml + configs/<task>.yaml, made standalone: no manifest meta (the classes are literal),
the encoder built at random (models/model.pt holds every weight; MONAI Label inserts a CheckpointLoader for it),
checkpoints written to models/ (where inference reads them), no test section, and the early-stopping hook in `run`
(MONAI Label's BundleTrainTask runs `run` without `initialize`). `train#dataset#data` / `validate#dataset#data`
default to the splits of data/manifests/<task>.json and are what MONAI Label overrides with the datastore's
{"image", "label"} lists.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path

from monai.bundle import ConfigParser

from bundle.export.code_copy import rewrite

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
TASKS = ("classification", "segmentation", "detection")
DROPPED_IMPORT = "tokenization"  # the text model's helpers: no exported task reads a report

# ids that only the repository's workflows use (manifest meta, label fractions, the test split, pretrained encoders)
TRAIN_DROPPED = (
    "text_model_dir",
    "max_length",
    "manifest_meta",
    "data_fraction",
    "balance_training",
    "foreground_classes",
    "encoder_source",
    "encoder_weights",
    "encoder#weights",
    "test",
    "test_split",
    "eval_checkpoint",
    "eval_dir",
    "test_dir",
    "save_masks",
    "mask_saver",
    "test#sampler",
)
TRAIN_DATALISTS = {
    "segmentation": "$load_manifest(@manifest, 'training', dataset_dir=@dataset_dir)",
    "classification": "$check_classification_labels(load_manifest(@manifest, 'training', dataset_dir=@dataset_dir),"
    " @task, @num_classes, @manifest, 'training')",
    "detection": "$load_detection_items(@manifest, 'training', @dataset_dir, None, @missing_image, @bad_box)",
}


def _merged(files: Sequence[Path]) -> dict:
    """The files merged as `--config_file "[...]"` merges them, except that the import lists are concatenated."""
    merged, imports = {}, []
    for f in files:
        content = ConfigParser.load_config_file(str(f))
        imports += [i for i in content.pop("imports", []) if i not in imports]
        merged.update(content)
    merged["imports"] = [i for i in imports if DROPPED_IMPORT not in i]
    return merged


def _delete(config: dict, key: str) -> None:
    *parents, last = key.split("#")
    node = config
    for p in parents:
        node = node.get(p) if isinstance(node, Mapping) else None
    if isinstance(node, dict):
        node.pop(last, None)


def _rewritten(value):
    """`bundle.` -> `scripts.` in every string of a config (targets, imports, expressions)."""
    if isinstance(value, str):
        return rewrite(value)
    if isinstance(value, list):
        return [_rewritten(v) for v in value]
    if isinstance(value, dict):
        return {k: _rewritten(v) for k, v in value.items()}
    return value


def _apply(config: dict, values: Mapping[str, object], dropped: Sequence[str] = ()) -> dict:
    for key in dropped:
        _delete(config, key)
    parser = ConfigParser(copy.deepcopy(config))
    for key, value in values.items():
        parser[key] = value  # "#" paths set nested entries
    return _rewritten(parser.config)


def inference_config(task: str, values: Mapping[str, object]) -> dict:
    files = [CONFIGS / "common.yaml", CONFIGS / f"inference_{task}.yaml"]
    config = _merged([f for f in files if f.exists()])
    common = {
        "bundle_root": ".",
        "ckpt_dir": "$@bundle_root + '/models'",
        "dataset_dir": "$@bundle_root + '/data'",
    }
    return _apply(config, {**common, **values}, dropped=("text_model_dir", "max_length"))


def train_config(task: str, values: Mapping[str, object]) -> dict:
    config = _merged([CONFIGS / "common.yaml", CONFIGS / f"{task}.yaml"])
    fixed = {
        "bundle_root": ".",
        "ckpt_dir": "$@bundle_root + '/models'",
        "dataset_dir": "$@bundle_root + '/data'",
        "output_dir": "$@ckpt_dir",  # MONAI Label's inference reads models/model.pt: training writes it there
        "encoder#source": "random",  # every weight comes from models/model.pt
        "train#datalist": TRAIN_DATALISTS[task],
        "initialize": ["$monai.utils.set_determinism(seed=@seed)"],
        "run": ["$@validate#early_stop.set_trainer(@train#trainer)", "$@train#trainer.run()"],
        "finalize": [],
    }
    return _apply(config, {**fixed, **values}, dropped=TRAIN_DROPPED)


def multi_gpu_config(task: str) -> dict:
    """configs/multi_gpu_<task>.yaml without its test-split entries, the early-stop hook moved to `run` as above."""
    config = ConfigParser.load_config_file(str(CONFIGS / f"multi_gpu_{task}.yaml"))
    config = {k: v for k, v in config.items() if not k.startswith("test#")}
    # the early-stop hook moves to `run`; the test folder's makedirs goes with the test split it belongs to
    dropped = ("early_stop", "@eval_dir", "@test_dir")
    config["initialize"] = [i for i in config.get("initialize", []) if not any(d in i for d in dropped)]
    return _rewritten(config)
