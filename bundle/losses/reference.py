"""REFERENCE ONLY: straightforward per-report / per-row loops, NOT used in training.

Each function mirrors one batched component of the model the way the published code writes it (a Python loop over
the reports of the batch, or over the rows of the cluster loss) and uses the SAME modules (same parameters), so the
tests can assert that the batched code computes the same numbers, and scripts/benchmark_alignment_loss.py can time
both. Single process only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bundle.losses.local_image_loss import LocalImageSimSiamLoss
from bundle.networks.attention_pool import MeanQueryAttentionPool
from bundle.networks.cross_modal_attention import SigmoidCrossModalAttention


def loop_gather_sentences(tokens: torch.Tensor, sentence_index: torch.Tensor) -> list[torch.Tensor]:
    """Per report, per sentence number: the mean of its tokens; sentence numbers without tokens are skipped."""
    reports = []
    for b in range(tokens.shape[0]):
        rows = []
        for k in range(1, int(sentence_index[b].max()) + 1):
            members = torch.where(sentence_index[b] == k)[0]
            if members.numel() == 0:
                continue
            rows.append(tokens[b, members].mean(dim=0, keepdim=True))
        reports.append(torch.cat(rows, dim=0))
    return reports


def loop_attention_pool(pool: MeanQueryAttentionPool, reports: list[torch.Tensor]) -> torch.Tensor:
    """One report at a time, full self-attention over [mean; tokens] (sequence first), output of the mean token."""
    outputs = []
    for tokens in reports:
        x = tokens.unsqueeze(1)  # [T, 1, C]
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
        if pool.positional_embedding is not None:
            x = x + pool.positional_embedding[:, None, :]
        y, _ = F.multi_head_attention_forward(
            query=x,
            key=x,
            value=x,
            embed_dim_to_check=x.shape[-1],
            num_heads=pool.num_heads,
            q_proj_weight=pool.q_proj.weight,
            k_proj_weight=pool.k_proj.weight,
            v_proj_weight=pool.v_proj.weight,
            in_proj_weight=None,
            in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
            bias_k=None,
            bias_v=None,
            add_zero_attn=False,
            dropout_p=0.0,
            out_proj_weight=pool.c_proj.weight,
            out_proj_bias=pool.c_proj.bias,
            use_separate_proj_weight=True,
            training=False,
            need_weights=False,
        )
        outputs.append(y[0])
    return torch.cat(outputs, dim=0)


def loop_cross_attention(attn: SigmoidCrossModalAttention, image_tokens: torch.Tensor, reports: list[torch.Tensor]):
    """Per report: (f_IR [S_b, D], f_RI [P, D], A1 [S_b, P], A2 [P, S_b]) lists."""
    f_ir, f_ri, a1s, a2s = [], [], [], []
    for image, sentences in zip(image_tokens, reports):
        a1 = torch.sigmoid(attn.q_text(sentences) @ attn.k_image(image).T * attn.scale)
        a2 = torch.sigmoid(attn.q_image(image) @ attn.k_text(sentences).T * attn.scale)
        f_ir.append(a1 @ attn.v_image(image))
        f_ri.append(a2 @ attn.v_text(sentences))
        a1s.append(a1)
        a2s.append(a2)
    return f_ir, f_ri, a1s, a2s


def loop_simsiam(loss: LocalImageSimSiamLoss, image_tokens: torch.Tensor, text_to_image: list[torch.Tensor]):
    """Mean over images of the per-image SimSiam loss."""
    total = 0.0
    batch_norm = any(isinstance(m, torch.nn.BatchNorm1d) for m in loss.predictor)
    if batch_norm:  # BatchNorm's statistics are over all B*P tokens of a branch by definition: predict once
        all_x, all_y = loss.predict(image_tokens), loss.predict(torch.stack(list(text_to_image)))
    for b, (image, text) in enumerate(zip(image_tokens, text_to_image)):
        p_x, p_y = (all_x[b], all_y[b]) if batch_norm else (loss.predictor(image), loss.predictor(text))
        total = (
            total
            - (
                F.cosine_similarity(p_x, text.detach(), dim=-1).mean()
                + F.cosine_similarity(p_y, image.detach(), dim=-1).mean()
            )
            * 0.5
        )
    return total / image_tokens.shape[0]


def loop_global_loss(image_embed: torch.Tensor, text_embed: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE, one row at a time (single process)."""
    total = 0.0
    n = image_embed.shape[0]
    for i in range(n):
        total = total - F.log_softmax(scale * image_embed[i] @ text_embed.T, dim=0)[i]
        total = total - F.log_softmax(scale * text_embed[i] @ image_embed.T, dim=0)[i]
    return total / (2 * n)


def loop_cluster_report_loss(
    sentence_embed: torch.Tensor,
    image_to_text: torch.Tensor,
    centroids: torch.Tensor,
    initialized: bool,
    training: bool,
    temperature: float = 1.0,
    lr: float = 0.001,
    update_mode: str = "mean",
    hard_negative_mode: str = "multiplicative",
    hard_negative_weight: float = 3.0,
    hard_negative_bias: float = 0.0,
    alpha: float = 0.2,
    beta: float = 0.5,
    bml_weight: float = 1e-4,
    bml_reduction: str = "masked",
) -> dict[str, torch.Tensor]:
    """The report loss row by row (no start gate: pass an initialised or a not-initialised state).

    Returns loss, ce, bml and the centroids after this step (a new tensor; the input is not modified).
    """
    z1 = F.normalize(sentence_embed.float(), dim=-1)
    z2 = F.normalize(image_to_text.float(), dim=-1)
    n = z1.shape[0]
    c = torch.stack([z1[i] @ z2.T / temperature for i in range(n)])
    if not initialized:
        ce = torch.stack([-F.log_softmax(c[i], dim=0)[i] for i in range(n)]).mean()
        return {"loss": ce, "ce": ce, "bml": c.new_zeros(()), "centroids": centroids.clone()}

    centroids = centroids.clone()
    if training:
        with torch.no_grad():
            assign = F.normalize(z2, dim=-1) @ F.normalize(centroids, dim=-1).T
            assign = assign.argmax(dim=1)
            updated = centroids.clone()
            for k in range(centroids.shape[0]):
                members = z2.detach()[assign == k]
                if members.shape[0] == 0:
                    continue
                target = members.sum(0) / members.shape[0] if update_mode == "mean" else members.sum(0)
                updated[k] = lr * target + (1 - lr) * centroids[k]
            centroids = updated

    unit_centroids = F.normalize(centroids, dim=-1)
    nearest, hard = [], []
    for i in range(n):
        order = torch.argsort(unit_centroids @ z1[i].detach(), descending=True)
        nearest.append(int(order[0]))
        hard.append(centroids[order[1]])
    z3 = torch.stack(hard)

    nearest = torch.tensor(nearest)
    ce_terms, bml_sum, masked_count = [], c.new_zeros(()), 0
    for i in range(n):
        if hard_negative_mode == "multiplicative":
            h_row = F.cosine_similarity(z1[i].unsqueeze(0), z3, dim=-1) / temperature
            weights = [1.0] * n + [0.0] * i + [hard_negative_weight] + [0.0] * (n - i - 1)
            logits = torch.cat([c[i], h_row]) * torch.tensor(weights, dtype=c.dtype)
        else:
            own = F.cosine_similarity(z1[i], z3[i], dim=0) / temperature + hard_negative_bias
            logits = torch.cat([c[i], own.unsqueeze(0)])
        ce_terms.append(-F.log_softmax(logits, dim=0)[i])
        same = (nearest == nearest[i]).float()
        same[i] = 0.0
        delta = (c[i] - c[i, i]) * same
        terms = F.relu(delta + alpha) + F.relu(-delta - beta)
        bml_sum = bml_sum + (terms.sum() if bml_reduction == "all" else (terms * same).sum())
        masked_count += int(same.sum())
    ce = torch.stack(ce_terms).mean()
    if bml_reduction == "all":
        bml = bml_sum / (n * n)
    else:
        bml = bml_sum / masked_count if masked_count else c.new_zeros(())
    return {"loss": ce + bml_weight * bml, "ce": ce, "bml": bml, "centroids": centroids}


def loop_alignment_losses(model, local_features, global_feature, token_features, sentence_index) -> dict:
    """The stage-1 alignment losses of a CMCGNS model (everything after the encoders) with per-report loops.

    Does not modify the model's k-means state.
    """
    image_tokens = F.normalize(model.local_image_projection(local_features), dim=-1)
    image_global = F.normalize(model.global_image_projection(global_feature), dim=-1)
    token_embed = F.normalize(model.local_text_projection(token_features), dim=-1)
    reports = loop_gather_sentences(token_embed, sentence_index)
    report_global = F.normalize(loop_attention_pool(model.sentence_pool, reports), dim=-1)
    f_ir, f_ri, _, _ = loop_cross_attention(model.cross_attention, image_tokens, reports)
    loss_img = loop_simsiam(model.image_loss, image_tokens, f_ri)
    rl = model.report_loss
    state = rl.state
    report = loop_cluster_report_loss(
        torch.cat(reports),
        torch.cat(f_ir),
        state.centroids,
        state.is_initialized,
        rl.training,
        temperature=rl.temperature,
        lr=state.lr,
        update_mode=state.update_mode,
        hard_negative_mode=rl.hard_negative_mode,
        hard_negative_weight=rl.hard_negative_weight,
        hard_negative_bias=rl.hard_negative_bias,
        alpha=rl.bml_alpha,
        beta=rl.bml_beta,
        bml_weight=rl.bml_weight,
        bml_reduction=rl.bml_reduction,
    )
    loss_global = loop_global_loss(image_global, report_global, model.global_loss.scale())
    w = model.weights
    return {
        "loss": w["img"] * loss_img + w["report"] * report["loss"] + w["global"] * loss_global,
        "loss_img": loss_img,
        "loss_report": report["loss"],
        "loss_global": loss_global,
        "bml": report["bml"],
        "centroids": report["centroids"],
    }
