"""Teacher distillation: a stronger model's cached vectors supervise the student beside the BeLLM objective.

The teacher's vectors come from :class:`bellm_st.training.teacher.TeacherVectors` (computed once, on
disk). :class:`WithTeacherVectors` wraps the collator's ``preprocess_fn`` and puts each column's
teacher vectors into its features under :data:`TEACHER_KEY`; :func:`split_teacher_features` takes
them out again before the student sees the features. No teacher runs during a step.

Losses, by ``Recipe.distill_loss`` (all but the embedding ones work for a teacher of any size):

- ``kl``: in-batch similarity distillation. Each row's similarity distribution (softmax of cosine
  similarities times ``scale``) over the batch's candidates: the student's against the teacher's
  (KL divergence). One column: every text against every other text of the batch; several
  columns: the first column against all the others (queries against their documents).
- ``similarity``: the mean squared difference of the same cosine similarity matrices.
- ``projection``: a learned linear projection of the student's vector onto the teacher's size,
  mean squared error (sentence-transformers' ``EmbedDistillLoss``); the projection lives on the
  loss and is dropped after training.
- ``cosine`` / ``mse``: each text's two vectors compared directly (student and teacher of one size).
- ``margin`` (``bellm-st adapt --teacher``): for ``anchor, positive, negative`` batches, the
  student's margin cos(a, p) - cos(a, n) against the teacher's, sentence-transformers'
  ``MarginMSELoss`` (the GPL recipe), both in logit units (times ``scale``) so the part weighs
  about as much as the contrastive loss beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.losses import EmbedDistillLoss, MarginMSELoss
from sentence_transformers.util import cos_sim, pairwise_cos_sim
from torch import Tensor, nn

from bellm_st.training.teacher import TeacherVectors

TEACHER_KEY = "teacher.embedding"
DISTILL_LOSSES = ("kl", "similarity", "projection", "cosine", "mse", "margin")
SAME_SIZE_LOSSES = ("cosine", "mse")
DEFAULT_DISTILL_SCALE = 20.0  # inverse temperature of the kl loss: the contrastive loss's scale


@dataclass
class WithTeacherVectors:
    """A collator's ``preprocess_fn``: the student's features of a column plus the teacher's cached vectors."""

    student_preprocess: Callable[..., dict[str, Any]]
    vectors: TeacherVectors

    def __call__(self, inputs: Sequence[Any], prompt: str | None = None, **kwargs) -> dict[str, Any]:
        features = self.student_preprocess(inputs, prompt=prompt, **kwargs)
        return {**features, TEACHER_KEY: self.vectors.lookup(list(inputs))}


def split_teacher_features(columns: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Tensor | None]]:
    """Each column's features for the student, and its teacher vectors (None where the collator added none)."""
    student = [{key: value for key, value in features.items() if key != TEACHER_KEY} for features in columns]
    return student, [features.get(TEACHER_KEY) for features in columns]


def similarity_logits(embeddings: list[Tensor], scale: float) -> Tensor:
    """Scaled cosine similarities: one column against itself (its diagonal masked), else the first against the rest."""
    if len(embeddings) == 1:
        scores = cos_sim(embeddings[0], embeddings[0]) * scale
        return scores.masked_fill(torch.eye(len(scores), dtype=torch.bool, device=scores.device), float("-inf"))
    return cos_sim(embeddings[0], torch.cat(embeddings[1:])) * scale


def similarity_kl(student: list[Tensor], teacher: list[Tensor], scale: float) -> Tensor:
    """KL(teacher || student) of each row's similarity distribution over the batch's candidates, averaged over rows."""
    student_log = torch.log_softmax(similarity_logits(student, scale), dim=-1)
    teacher_log = torch.log_softmax(similarity_logits(teacher, scale), dim=-1)
    finite = torch.isfinite(teacher_log)
    terms = teacher_log.exp() * (teacher_log - student_log)
    return torch.where(finite, terms, torch.zeros_like(terms)).sum(dim=-1).mean()


def similarity_mse(student: list[Tensor], teacher: list[Tensor]) -> Tensor:
    """Mean squared difference of the student's and the teacher's cosine similarity matrices over all texts."""
    student_all, teacher_all = torch.cat(student), torch.cat(teacher)
    return nn.functional.mse_loss(cos_sim(student_all, student_all), cos_sim(teacher_all, teacher_all))


class TeacherDistillation(nn.Module):
    """The weighted distillation part of a loss: a batch's student embeddings against the teacher's vectors.

    Args:
        model: the student SentenceTransformer.
        teacher_dimension: the size of the teacher's vectors.
        weight: the part's weight beside the objective's parts.
        loss: one of :data:`DISTILL_LOSSES`.
        scale: the inverse temperature of ``kl``.
    """

    def __init__(
        self, model: SentenceTransformer, teacher_dimension: int, weight: float, loss: str = "kl",
        scale: float = DEFAULT_DISTILL_SCALE,
    ):
        super().__init__()
        if loss not in DISTILL_LOSSES:
            raise ValueError(f"distill_loss={loss!r}; use one of {', '.join(DISTILL_LOSSES)}")
        self.weight, self.loss, self.scale = weight, loss, scale
        self.embedding_loss = None
        # Margins in the contrastive loss's logit units (cosine times scale), so the part weighs like the others.
        self.margin_loss = MarginMSELoss(model, similarity_fct=lambda a, b: pairwise_cos_sim(a, b) * scale) if loss == "margin" else None
        student_size = model.get_embedding_dimension()
        if loss in SAME_SIZE_LOSSES:
            if student_size != teacher_dimension:
                raise ValueError(
                    f"distill_loss={loss!r} compares embeddings, but the teacher gives {teacher_dimension}-d vectors and "
                    f"the student {student_size}-d; use distill_loss='kl', 'similarity' or 'projection'"
                )
            self.embedding_loss = EmbedDistillLoss(model, distance_metric=loss)
        elif loss == "projection":
            self.embedding_loss = EmbedDistillLoss(model, distance_metric="mse", projection_dim=teacher_dimension)

    def forward(self, student_embeddings: list[Tensor], teacher_embeddings: list[Tensor | None]) -> Tensor:
        if any(vectors is None for vectors in teacher_embeddings):
            raise ValueError(
                "the batch carries no teacher vectors; train with bellm_st.training.train (its collator adds them) "
                "or preprocess with WithTeacherVectors"
            )
        reference = student_embeddings[0]
        teacher = [vectors.to(device=reference.device, dtype=reference.dtype) for vectors in teacher_embeddings]
        if self.loss == "kl":
            loss = similarity_kl(student_embeddings, teacher, self.scale)
        elif self.loss == "similarity":
            loss = similarity_mse(student_embeddings, teacher)
        elif self.loss == "margin":
            if len(teacher) < 3:
                raise ValueError("distill_loss='margin' needs anchor, positive and negative columns")
            margins = self.scale * torch.stack(
                [pairwise_cos_sim(teacher[0], teacher[1]) - pairwise_cos_sim(teacher[0], negative) for negative in teacher[2:]], dim=1
            )
            loss = self.margin_loss.compute_loss_from_embeddings(student_embeddings, margins)
        else:
            if self.loss == "projection":
                # Normalised: the teacher's vectors are unit length (MiniLM), the student's are not.
                student_embeddings = [nn.functional.normalize(e, dim=-1) for e in student_embeddings]
                teacher = [nn.functional.normalize(e, dim=-1) for e in teacher]
            loss = self.embedding_loss.compute_loss_from_embeddings(student_embeddings, teacher)
        return self.weight * loss
