"""The CM-CGNS model: encoders, projections, sentence features, cross-modal attention and all losses (method.md 2-4).

Every method switch is one constructor argument; the defaults are the fixed mode. configs/official.yaml lists the
values that reproduce the published code (docs/method_switches.md has the table). The stage (1 or 2) is a buffer,
so it is saved with the state dict; set it with `set_stage`. The k-means state lives in
`self.report_loss.state` (bundle/losses/cluster_state.py).

Stage-2-only parameters: `self.decoder` (the CM-MIR decoder) receives gradients only in stage 2.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bundle.engines.options import bool_arguments
from bundle.losses.cluster_report_loss import ClusterGuidedReportLoss
from bundle.losses.diagnostics import REPORT_DIAGNOSTIC_KEYS, local_diagnostics
from bundle.losses.global_contrastive import GlobalContrastiveLoss
from bundle.losses.local_image_loss import LocalImageSimSiamLoss
from bundle.losses.reconstruction_loss import reconstruction_l1_loss, token_mask_to_pixels
from bundle.networks.attention_pool import MeanQueryAttentionPool
from bundle.networks.cross_modal_attention import SigmoidCrossModalAttention
from bundle.networks.image_encoders import RESNETS, build_image_encoder
from bundle.networks.reconstruction_decoder import (
    ResNetReconstructionDecoder,
    ViTReconstructionDecoder,
    mask_image_tokens,
)
from bundle.networks.sentence_features import (
    sentence_keys,
    sentence_layout,
    sentence_means,
    sentence_tokens,
    valid_rows,
)
from bundle.networks.text_encoder import TextEncoder


def _projection(in_dim: int, out_dim: int) -> nn.Linear:
    layer = nn.Linear(in_dim, out_dim)
    nn.init.normal_(layer.weight, std=in_dim**-0.5)
    return layer


@bool_arguments  # `--network_def#sync_centroids false` arrives as a string
class CMCGNS(nn.Module):
    """CM-CGNS for image-report pretraining.

    Args (encoders):
        text_model_dir: local transformers model directory (required).
        image_encoder: "resnet50" | "resnet18" | "vit_b16".
        image_size: square crop side fed to the model (224).
        image_in_channels: conv1 / patch-embedding input channels; 1-channel images are repeated when this is 3.
        image_pretrained_weights: local torchvision-format ResNet state dict (ImageNet), or None.
        vit_patch_size, vit_hidden_size, vit_mlp_dim, vit_num_layers, vit_num_heads: ViT size (ViT-B/16 default).
        freeze_text_layers: freeze the text embeddings and the first n layers (0 = train all).
        cache_text_features: with every text layer frozen, compute each report's token features once, in eval
            mode, and reuse them (a speed switch: the features are those of the frozen model without dropout;
            bundle/networks/text_feature_cache.py). text_cache_max_rows bounds the cache (None: no bound).
        embed_dim: D, the joint embedding width.
        pool_num_heads: heads of the image and sentence attention pools.
    Args (global loss, 4.1):
        temperature_init: initial tau (0.1). max_logit_scale: clamp for exp(logit_scale); None = no clamp (official).
    Args (report loss, 4.4): num_clusters, cluster_temperature, kmeans_start_cosine, kmeans_gate_on, kmeans_start_step,
        centroid_lr,
        centroid_update ("mean" | "sum"), centroid_init ("faiss" | "greedy"), kmeans_bank_batches,
        kmeans_iterations, kmeans_seed, sync_centroids, hard_negative_mode ("multiplicative" | "additive"),
        hard_negative_weight, hard_negative_bias, bml_alpha, bml_beta, bml_weight, bml_reduction ("masked" | "all").
        report_duplicate_negatives: "keep" (published) | "drop": the same sentence in another report is no negative
            of the report loss (ClusterGuidedReportLoss.duplicate_negatives).
    Args (CM-MIR, 4.5): recon_mask_mode ("positions" | "official"), recon_mask_ratio, recon_scale (10),
        recon_out_channels, decoder_channels, decoder_relu_before_output, vit_decoder_num_heads,
        vit_decoder_num_layers, vit_decoder_ff_dim, vit_decoder_dropout, vit_decoder_share_layer_weights,
        vit_decoder_batch_first.
    Args (4.6): weight_img, weight_report, weight_global, weight_recon; stage (1 or 2).
    Args (against collapse, docs/method_notes.md): predictor_norm ("none" | "batchnorm", the SimSiam predictor of 4.3);
        cross_attention_logit_scale (None = the published 1/sqrt(D); a number, or "sqrt_embed_dim" = sqrt(D), the
        initial learnable scale of the 4.2 attention logits), learn_cross_attention_scale,
        cross_attention_normalisation ("sigmoid" published | "softmax": A1 / A2 sum to 1 over tokens / sentences).
    compute_diagnostics: add the collapse and alignment diagnostics (bundle/losses/diagnostics.py) to the output.
    """

    def __init__(
        self,
        text_model_dir: str | Path,
        image_encoder: str = "resnet50",
        image_size: int = 224,
        image_in_channels: int = 1,
        image_pretrained_weights: str | Path | None = None,
        vit_patch_size: int = 16,
        vit_hidden_size: int = 768,
        vit_mlp_dim: int = 3072,
        vit_num_layers: int = 12,
        vit_num_heads: int = 12,
        freeze_text_layers: int = 0,
        cache_text_features: bool = False,
        text_cache_max_rows: int | None = None,
        embed_dim: int = 768,
        pool_num_heads: int = 8,
        temperature_init: float = 0.1,
        max_logit_scale: float | None = 100.0,
        num_clusters: int = 128,
        cluster_temperature: float = 0.1,
        kmeans_start_cosine: float = 0.4,
        kmeans_gate_on: str = "cosine",
        kmeans_start_step: int = 1000,
        centroid_lr: float = 0.001,
        centroid_update: str = "mean",
        centroid_init: str = "faiss",
        kmeans_bank_batches: int = 10,
        kmeans_iterations: int = 20,
        kmeans_seed: int = 0,
        sync_centroids: bool = True,
        hard_negative_mode: str = "additive",
        hard_negative_weight: float = 3.0,
        hard_negative_bias: float = 0.0,
        bml_alpha: float = 0.2,
        bml_beta: float = 0.5,
        bml_weight: float = 1e-4,
        bml_reduction: str = "masked",
        report_duplicate_negatives: str = "keep",
        recon_mask_mode: str = "positions",
        recon_mask_ratio: float = 0.5,
        recon_scale: float = 10.0,
        recon_out_channels: int = 1,
        decoder_channels: tuple[int, ...] | list[int] = (512, 256, 128, 64),
        decoder_relu_before_output: bool = False,
        vit_decoder_num_heads: int = 8,
        vit_decoder_num_layers: int = 6,
        vit_decoder_ff_dim: int = 2048,
        vit_decoder_dropout: float = 0.1,
        vit_decoder_share_layer_weights: bool = False,
        vit_decoder_batch_first: bool = True,
        weight_img: float = 1.0,
        weight_report: float = 1.0,
        weight_global: float = 1.0,
        weight_recon: float = 1.0,
        predictor_norm: str = "batchnorm",
        cross_attention_logit_scale: float | str | None = "sqrt_embed_dim",
        learn_cross_attention_scale: bool = True,
        cross_attention_normalisation: str = "sigmoid",
        compute_diagnostics: bool = True,
        stage: int = 1,
    ):
        super().__init__()
        self.image_encoder = build_image_encoder(
            image_encoder,
            in_channels=image_in_channels,
            image_size=image_size,
            pool_num_heads=pool_num_heads,
            pretrained_weights=image_pretrained_weights,
            vit_patch_size=vit_patch_size,
            vit_hidden_size=vit_hidden_size,
            vit_mlp_dim=vit_mlp_dim,
            vit_num_layers=vit_num_layers,
            vit_num_heads=vit_num_heads,
        )
        self.encoder_kind = "resnet" if image_encoder in RESNETS else "vit"
        self.text_encoder = TextEncoder(
            text_model_dir,
            freeze_layers=freeze_text_layers,
            cache_features=cache_text_features,
            cache_max_rows=text_cache_max_rows,
        )
        width = self.image_encoder.feature_dim
        self.local_image_projection = _projection(width, embed_dim)
        self.global_image_projection = _projection(width, embed_dim)
        self.local_text_projection = _projection(self.text_encoder.hidden_size, embed_dim)
        self.sentence_pool = MeanQueryAttentionPool(embed_dim, num_heads=pool_num_heads)
        if cross_attention_logit_scale == "sqrt_embed_dim":
            cross_attention_logit_scale = embed_dim**0.5  # the usual scaling for inputs of unit-variance entries
        self.cross_attention = SigmoidCrossModalAttention(
            embed_dim,
            logit_scale=cross_attention_logit_scale,
            learn_logit_scale=learn_cross_attention_scale,
            normalisation=cross_attention_normalisation,
        )
        self.global_loss = GlobalContrastiveLoss(temperature_init, max_logit_scale)
        self.image_loss = LocalImageSimSiamLoss(embed_dim, predictor_norm=predictor_norm)
        self.report_loss = ClusterGuidedReportLoss(
            embed_dim=embed_dim,
            num_clusters=num_clusters,
            temperature=cluster_temperature,
            start_cosine=kmeans_start_cosine,
            gate_on=kmeans_gate_on,
            start_step=kmeans_start_step,
            centroid_lr=centroid_lr,
            centroid_update=centroid_update,
            centroid_init=centroid_init,
            bank_batches=kmeans_bank_batches,
            kmeans_iterations=kmeans_iterations,
            kmeans_seed=kmeans_seed,
            sync_centroids=sync_centroids,
            hard_negative_mode=hard_negative_mode,
            hard_negative_weight=hard_negative_weight,
            hard_negative_bias=hard_negative_bias,
            bml_alpha=bml_alpha,
            bml_beta=bml_beta,
            bml_weight=bml_weight,
            bml_reduction=bml_reduction,
            duplicate_negatives=report_duplicate_negatives,
        )
        grid = self.image_encoder.grid_size
        if self.encoder_kind == "resnet":
            self.decoder = ResNetReconstructionDecoder(
                embed_dim, grid, image_size, recon_out_channels, tuple(decoder_channels), decoder_relu_before_output
            )
        else:
            self.decoder = ViTReconstructionDecoder(
                embed_dim,
                grid,
                image_size,
                recon_out_channels,
                tuple(decoder_channels),
                decoder_relu_before_output,
                num_heads=vit_decoder_num_heads,
                num_layers=vit_decoder_num_layers,
                ff_dim=vit_decoder_ff_dim,
                dropout=vit_decoder_dropout,
                share_layer_weights=vit_decoder_share_layer_weights,
                batch_first=vit_decoder_batch_first,
            )
        if recon_mask_mode not in ("positions", "official"):
            raise ValueError(f"recon_mask_mode must be 'positions' or 'official', got {recon_mask_mode!r}")
        self.recon_mask_mode, self.recon_mask_ratio, self.recon_scale = recon_mask_mode, recon_mask_ratio, recon_scale
        self.weights = {"img": weight_img, "report": weight_report, "global": weight_global, "recon": weight_recon}
        self.compute_diagnostics = compute_diagnostics
        self.register_buffer("stage", torch.tensor(1, dtype=torch.long))
        self.set_stage(stage)

    # ------------------------------------------------------------------------------------------------ stage
    def set_stage(self, stage: int) -> None:
        """Stage 1: L_img + L_report + L_global. Stage 2 adds the CM-MIR reconstruction loss."""
        if int(stage) not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {stage}")
        self.stage.fill_(int(stage))
        self._stage_on_host = int(stage)

    @property
    def current_stage(self) -> int:
        """The stage as a Python int: the buffer is read (a device sync) only after a state dict was loaded."""
        if self._stage_on_host is None:
            self._stage_on_host = int(self.stage)
        return self._stage_on_host

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._stage_on_host = None  # the loaded buffer is the truth

    def stage_parameters(self, stage: int) -> list[nn.Parameter]:
        """Trainable parameters that receive gradients in `stage` (the decoder only in stage 2)."""
        decoder = {id(p) for p in self.decoder.parameters()}
        return [p for p in self.parameters() if p.requires_grad and (stage == 2 or id(p) not in decoder)]

    # ------------------------------------------------------------------------------------------------ forward
    def encode(self, image, input_ids, attention_mask, token_type_ids=None):
        """The encoders only: (local image features [B, P, F], global image feature [B, F], tokens [B, L, H])."""
        local, global_ = self.image_encoder(image)
        return local, global_, self.text_encoder(input_ids, attention_mask, token_type_ids)

    def forward(
        self,
        image: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        sentence_index: torch.Tensor | None = None,
        return_attention: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Total loss of the current stage, each term, retrieval accuracies, k-means status; attention maps on request.

        image [B, C, H, W] in [-1, 1]; input_ids / attention_mask / token_type_ids / sentence_index [B, L].
        Every report must have at least one sentence. "logit_scale" is the effective exp(logit_scale).
        """
        if sentence_index is None:
            raise ValueError("sentence_index is required (see bundle/data/tokenization.py)")
        local, global_, tokens = self.encode(image, input_ids, attention_mask, token_type_ids)
        return self.losses_from_features(
            image, local, global_, tokens, sentence_index, return_attention, input_ids=input_ids
        )

    def losses_from_features(
        self,
        image: torch.Tensor,
        local_features: torch.Tensor,
        global_feature: torch.Tensor,
        token_features: torch.Tensor,
        sentence_index: torch.Tensor,
        return_attention: bool = False,
        input_ids: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Everything after the encoders (projections, sentence features, attention, all losses); input_ids are
        needed only for report_duplicate_negatives "drop" (the sentence keys)."""
        image_tokens, image_global, sentences, layout, report_global = self._project(
            local_features, global_feature, token_features, sentence_index
        )
        valid = layout.valid

        attention = self.cross_attention(image_tokens, sentences, valid)
        loss_img = self.image_loss(image_tokens, attention.text_to_image)
        keys = None
        if self.report_loss.duplicate_negatives == "drop":
            if input_ids is None:
                raise ValueError('report_duplicate_negatives "drop" needs input_ids (the sentence keys)')
            keys = sentence_keys(input_ids, layout)
        report = self.report_loss(
            valid_rows(sentences, layout), valid_rows(attention.image_to_text, layout), sentence_keys=keys
        )
        global_ = self.global_loss(image_global, report_global)

        zero = image_tokens.new_zeros(())
        loss_recon, loss_recon_masked = zero, zero
        w = self.weights
        total = w["img"] * loss_img + w["report"] * report["loss"] + w["global"] * global_["loss"]
        if self.current_stage == 2:
            loss_recon, loss_recon_masked = self._reconstruction(image, image_tokens, attention.text_to_image)
            total = total + w["recon"] * loss_recon

        out = {
            "loss": total,
            "loss_img": loss_img,
            "loss_report": report["loss"],
            "loss_global": global_["loss"],
            "loss_recon": loss_recon,
            "loss_recon_masked": loss_recon_masked,
            "bml": report["bml"],
            "kmeans_initialized": report["kmeans_initialized"],
            "centroid_usage": report["centroid_usage"],
        }
        out.update({k: v for k, v in global_.items() if k != "loss"})
        if self.compute_diagnostics:
            out.update({k: report[k] for k in REPORT_DIAGNOSTIC_KEYS})
            out.update(
                local_diagnostics(
                    image_tokens,
                    attention.text_to_image,
                    attention.image_to_text,
                    attention.attn_image_to_text,
                    attention.attn_text_to_image,
                    valid,
                )
            )
        if return_attention:
            out["attn_image_to_text"] = attention.attn_image_to_text
            out["attn_text_to_image"] = attention.attn_text_to_image
            out["sentence_mask"] = valid
        return out

    def _project(self, local_features, global_feature, token_features, sentence_index):
        """The L2-normalised embeddings: image tokens [B, P, D], image vector [B, D], sentences [B, S, D] with their
        layout (layout.valid: the validity mask [B, S]), report vector [B, D]."""
        image_tokens, image_global = self._project_image(local_features, global_feature)
        sentences, layout, report_global = self._project_text(token_features, sentence_index)
        return image_tokens, image_global, sentences, layout, report_global

    def _project_image(self, local_features, global_feature):
        image_tokens = F.normalize(self.local_image_projection(local_features), dim=-1)
        image_global = F.normalize(self.global_image_projection(global_feature), dim=-1)
        return image_tokens, image_global

    def _project_text(self, token_features, sentence_index):
        # Only tokens inside a sentence reach a loss ([CLS], [SEP] and padding do not): project just those.
        if token_features.shape[:2] != sentence_index.shape:
            raise ValueError(
                f"tokens {tuple(token_features.shape)} and sentence_index {tuple(sentence_index.shape)} disagree"
            )
        layout = sentence_layout(sentence_index)
        token_embed = F.normalize(self.local_text_projection(sentence_tokens(token_features, layout)), dim=-1)
        sentences, valid = sentence_means(token_embed, layout)
        report_global = F.normalize(self.sentence_pool(sentences, valid), dim=-1)
        return sentences, layout, report_global

    @torch.no_grad()
    def embed_image(self, image):
        """Image side of the joint space (zero-shot, retrieval without reports): image_global [B, D] and
        image_tokens [B, P, D], L2-normalised."""
        image_tokens, image_global = self._project_image(*self.image_encoder(image))
        return {"image_global": image_global, "image_tokens": image_tokens}

    @torch.no_grad()
    def embed_text(self, input_ids, attention_mask, token_type_ids=None, sentence_index=None):
        """Text side of the joint space (class prompts, grounding phrases): report_global [B, D], sentences
        [B, S, D] and sentence_mask [B, S], L2-normalised."""
        if sentence_index is None:
            raise ValueError("sentence_index is required (see bundle/data/tokenization.py)")
        tokens = self.text_encoder(input_ids, attention_mask, token_type_ids)
        sentences, layout, report_global = self._project_text(tokens, sentence_index)
        return {"report_global": report_global, "sentences": sentences, "sentence_mask": layout.valid}

    @torch.no_grad()
    def sentence_attention(self, image_tokens, sentences, sentence_mask):
        """A1, the sentence-to-region weights [B, S, P] of the cross-modal attention (method.md 4.2), for image
        tokens [B, P, D] and sentences [B, S, D] from embed_image / embed_text (the same B)."""
        return self.cross_attention(image_tokens, sentences, sentence_mask).attn_image_to_text

    @torch.no_grad()
    def embed(self, image, input_ids, attention_mask, token_type_ids=None, sentence_index=None):
        """Joint-space embeddings without any loss (retrieval, zero-shot, grounding): a dict with image_global
        [B, D], report_global [B, D], image_tokens [B, P, D], sentences [B, S, D], sentence_mask [B, S] and the
        sentence-to-region weights attn_image_to_text (A1) [B, S, P]."""
        if sentence_index is None:
            raise ValueError("sentence_index is required (see bundle/data/tokenization.py)")
        local, global_, tokens = self.encode(image, input_ids, attention_mask, token_type_ids)
        image_tokens, image_global, sentences, layout, report_global = self._project(
            local, global_, tokens, sentence_index
        )
        valid = layout.valid
        attention = self.cross_attention(image_tokens, sentences, valid)
        return {
            "image_global": image_global,
            "report_global": report_global,
            "image_tokens": image_tokens,
            "sentences": sentences,
            "sentence_mask": valid,
            "attn_image_to_text": attention.attn_image_to_text,
        }

    def _reconstruction(self, image, image_tokens, text_to_image):
        if self.training:
            masked, token_mask = mask_image_tokens(
                image_tokens, self.recon_mask_ratio, self.recon_mask_mode, self.encoder_kind
            )
        else:
            masked, token_mask = image_tokens, None
        reconstruction = self.decoder(masked, text_to_image)
        pixel_mask = None
        if token_mask is not None:
            pixel_mask = token_mask_to_pixels(token_mask, self.image_encoder.grid_size, reconstruction.shape[-2:])
        return reconstruction_l1_loss(reconstruction, image, self.recon_scale, pixel_mask)
