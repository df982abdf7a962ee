"""The BeLLM training objective: in-batch contrastive + angle (+ optional CoSENT), in one loss module.

BeLLM fine-tunes with AnglE's objective. Each part is a sentence-transformers loss; this module
only embeds every column once and hands the same embeddings to each part, so adding the angle
loss costs no extra forward pass:

- contrastive (``MultipleNegativesRankingLoss``, scale 20): for ``anchor, positive[, negative]``
  batches, the positive must beat every other candidate in the batch and the hard negatives.
- angle (``AnglELoss``) and CoSENT (``CoSENTLoss``): ranking losses over pairs. Contrastive
  batches are read as pairs (anchor, positive) = 1 and (anchor, negative) = 0; graded
  ``sentence1, sentence2, score`` batches use their scores. Without a hard negative all pairs are
  positives, where a ranking loss has nothing to rank, so it is skipped.

The loss returns its weighted parts as a dict; the trainer sums them and logs each one. With a
teacher (:mod:`bellm_st.training.distillation`) a ``distill`` part joins them; a task that learns
from the teacher alone (the distillation pool) has every other weight at 0.

Matryoshka training (``matryoshka_dims``) computes every part again on the first d dimensions of
the same embeddings, re-normalised (sentence-transformers' ``shrink``), and sums over the sizes, as
``MatryoshkaLoss`` does. It lives here rather than as a ``MatryoshkaLoss`` wrapper because that
wrapper adds up plain tensors and would lose the named parts the trainer logs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.losses.merged_forward import embed_columns
from sentence_transformers.sentence_transformer.losses import AnglELoss, CoSENTLoss, MultipleNegativesRankingLoss
from sentence_transformers.sentence_transformer.losses.matryoshka import shrink
from torch import Tensor, nn

from bellm_st.fast.packing import is_packed, merge_packed
from bellm_st.training.distillation import TeacherDistillation, split_teacher_features


def contrastive_batch_as_pairs(embeddings: list[Tensor]) -> tuple[list[Tensor], Tensor]:
    """(anchor, positive, negative...) columns -> (left, right) pairs labelled 1 for positives, 0 for negatives."""
    anchors, candidates = embeddings[0], embeddings[1:]
    left = anchors.repeat(len(candidates), 1)
    right = torch.cat(candidates, dim=0)
    labels = torch.zeros(right.shape[0], device=right.device)
    labels[: anchors.shape[0]] = 1.0
    return [left, right], labels


class BeLLMLoss(nn.Module):
    """Weighted sum of the contrastive, angle and CoSENT losses over one shared embedding pass.

    Args:
        model: the SentenceTransformer being trained.
        contrastive_weight, angle_weight, cosent_weight: weights of the parts; 0 turns a part off.
        contrastive_scale, angle_scale, cosent_scale: inverse temperatures (20 in BeLLM/AnglE).
        gather_across_devices: under distributed training, rank every GPU's texts as negatives in
            the contrastive part (a larger effective batch); no effect on one device.
        matryoshka_dims: also train the first d dimensions for each d (e.g. ``[64, 128, 256]``);
            None trains the full vector only.
        distillation: a teacher's part (on the full vectors), or None to train without one.
    """

    def __init__(
        self,
        model: SentenceTransformer,
        contrastive_weight: float = 1.0,
        angle_weight: float = 1.0,
        cosent_weight: float = 0.0,
        contrastive_scale: float = 20.0,
        angle_scale: float = 20.0,
        cosent_scale: float = 20.0,
        gather_across_devices: bool = False,
        matryoshka_dims: list[int] | None = None,
        distillation: TeacherDistillation | None = None,
    ):
        super().__init__()
        if min(contrastive_weight, angle_weight, cosent_weight) < 0:
            raise ValueError("loss weights must be >= 0; use 0 to turn a part off")
        if max(contrastive_weight, angle_weight, cosent_weight) == 0 and distillation is None:
            raise ValueError("every loss weight is 0 and there is no teacher: the loss would have nothing to learn from")
        if matryoshka_dims:
            size = model.get_embedding_dimension()
            if max(matryoshka_dims) > size or min(matryoshka_dims) < 1:
                raise ValueError(f"matryoshka_dims={list(matryoshka_dims)} must lie in 1..{size}, the model's embedding size")
        self.matryoshka_dims = sorted(set(matryoshka_dims), reverse=True) if matryoshka_dims else None
        self.model = model
        # Read now: under DDP the trainer swaps self.model for the wrapped model, which has no modules to index.
        self.pad_token_id = getattr(getattr(model[0], "tokenizer", None), "pad_token_id", None) or 0
        self.weights = {"contrastive": contrastive_weight, "angle": angle_weight, "cosent": cosent_weight}
        self.contrastive = MultipleNegativesRankingLoss(
            model, scale=contrastive_scale, gather_across_devices=gather_across_devices
        )
        self.angle = AnglELoss(model, scale=angle_scale)
        self.cosent = CoSENTLoss(model, scale=cosent_scale)
        self.distillation = distillation

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None) -> dict[str, Tensor]:
        columns, teacher_columns = split_teacher_features(list(sentence_features))
        embeddings = self.embed(columns)
        parts = self.compute_loss_from_embeddings(embeddings, labels)
        if self.distillation is not None:
            parts["distill"] = self.distillation(embeddings, teacher_columns)
        return parts

    def embed(self, columns: list[dict[str, Tensor]]) -> list[Tensor]:
        """One embedding tensor per text column: packed columns in one forward pass, others as sentence-transformers does."""
        if not all(is_packed(features) for features in columns):
            return embed_columns(self.model, columns)
        merged = merge_packed(columns, self.pad_token_id)
        embeddings = self.model(merged)["sentence_embedding"]
        return list(embeddings.split([len(features["attention_mask"]) for features in columns]))

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor | None) -> dict[str, Tensor]:
        """The weighted parts that apply to this batch's shape, summed over the Matryoshka sizes if any."""
        if not self.matryoshka_dims:
            return self.parts_for(embeddings, labels)
        totals: dict[str, Tensor] = {}
        for dim in self.matryoshka_dims:
            for name, value in self.parts_for([shrink(column, dim) for column in embeddings], labels).items():
                totals[name] = totals[name] + value if name in totals else value
        return totals

    def parts_for(self, embeddings: list[Tensor], labels: Tensor | None) -> dict[str, Tensor]:
        """The weighted parts that apply to this batch's shape (contrastive needs unlabelled columns)."""
        parts: dict[str, Tensor] = {}
        if labels is None:
            if self.weights["contrastive"] > 0:
                parts["contrastive"] = self.weights["contrastive"] * self.contrastive.compute_loss_from_embeddings(
                    embeddings, labels
                )
            pairs, pair_labels = contrastive_batch_as_pairs(embeddings) if len(embeddings) > 2 else (None, None)
        else:
            if len(embeddings) != 2:
                raise ValueError(f"scored data must have two text columns and a score, got {len(embeddings)} text columns")
            pairs, pair_labels = embeddings, labels.float()
        if pairs is not None:
            for name, loss in (("angle", self.angle), ("cosent", self.cosent)):
                if self.weights[name] > 0:
                    parts[name] = self.weights[name] * loss.compute_loss_from_embeddings(pairs, pair_labels)
        if not parts and self.distillation is None:
            raise ValueError(
                "no loss part applies to this batch: graded pairs need angle_weight or cosent_weight > 0, "
                "pairs without a hard negative need contrastive_weight > 0"
            )
        return parts

    def get_config_dict(self) -> dict[str, Any]:
        return {
            **{f"{name}_weight": weight for name, weight in self.weights.items()},
            "contrastive_scale": self.contrastive.scale,
            "angle_scale": self.angle.scale,
            "cosent_scale": self.cosent.scale,
            "gather_across_devices": self.contrastive.gather_across_devices,
            "matryoshka_dims": self.matryoshka_dims,
            **({"distill_weight": self.distillation.weight, "distill_loss": self.distillation.loss,
                "distill_scale": self.distillation.scale}
               if self.distillation is not None else {}),
        }

    @property
    def citation(self) -> str:
        return self.angle.citation
