"""Self-distillation: a teacher's embeddings supervise the student beside the BeLLM objective.

Meant for pruned students (:mod:`bellm_st.pruning`): the unpruned model of the same recipe (or the
shipped default) knows what the dropped layers added, and pulling the student's embeddings
towards it recovers some of that. The teacher is any sentence-transformers model; it tokenises
each training text itself (in the collator, beside the student, so data-loader workers do it
ahead of the step) and embeds it under ``no_grad`` during the step. Its inputs travel inside each
column's features under :data:`TEACHER_PREFIX` keys, which :func:`split_teacher_features` takes
out again before the student sees them.

Losses, by ``Recipe.distill_loss``: ``cosine``/``mse`` are sentence-transformers'
``EmbedDistillLoss`` on each text's pair of embeddings (student and teacher of the same size);
``similarity`` is the mean squared difference of the two models' cosine similarity matrices
over every text of the batch, which works for a teacher of any size (e.g. all-MiniLM-L6-v2).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.losses.merged_forward import embed_columns
from sentence_transformers.sentence_transformer.losses import EmbedDistillLoss
from sentence_transformers.util import cos_sim
from torch import Tensor, nn

from bellm_st.model import bellm_encoder

TEACHER_PREFIX = "teacher."


def load_teacher(name_or_path: str | None, device: str, dtype: torch.dtype) -> SentenceTransformer:
    """The frozen teacher: a shipped model, a saved folder, a baseline shortcut (``minilm``) or, for
    None, the shipped default model."""
    from bellm_st.api import load

    teacher = load(name_or_path, device=device)
    if (encoder := bellm_encoder(teacher)) is not None:
        encoder.merge_adapter()
    teacher.to(dtype).eval().requires_grad_(False)
    return teacher


@dataclass
class WithTeacherInputs:
    """A collator's ``preprocess_fn``: the student's features of a column plus the teacher's, under
    :data:`TEACHER_PREFIX` keys. A BeLLM teacher reads the column's prompt as the student does;
    another model gets the plain texts (a BeLLM template would mean nothing to it)."""

    student_preprocess: Callable[..., dict[str, Any]]
    teacher: SentenceTransformer

    def __call__(self, inputs: Sequence[Any], prompt: str | None = None, **kwargs) -> dict[str, Any]:
        features = self.student_preprocess(inputs, prompt=prompt, **kwargs)
        teacher_prompt = prompt if bellm_encoder(self.teacher) is not None else None
        kwargs.pop("task", None)
        teacher_features = self.teacher.preprocess(inputs, prompt=teacher_prompt, **kwargs)
        return {**features, **{TEACHER_PREFIX + key: value for key, value in teacher_features.items()}}


def split_teacher_features(columns: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Each column's features for the student and for the teacher (empty dicts if the collator added none)."""
    student, teacher = [], []
    for features in columns:
        student.append({key: value for key, value in features.items() if not key.startswith(TEACHER_PREFIX)})
        teacher.append({key[len(TEACHER_PREFIX):]: value for key, value in features.items() if key.startswith(TEACHER_PREFIX)})
    return student, teacher


def similarity_distillation(student: list[Tensor], teacher: list[Tensor]) -> Tensor:
    """Mean squared difference of the student's and the teacher's cosine similarity matrices over all texts."""
    student_all = torch.cat(student)
    teacher_all = torch.cat(teacher).to(device=student_all.device, dtype=student_all.dtype)
    return nn.functional.mse_loss(cos_sim(student_all, student_all), cos_sim(teacher_all, teacher_all))


class TeacherDistillation(nn.Module):
    """The weighted distillation part of the loss: student embeddings of a batch against the teacher's.

    Args:
        model: the student SentenceTransformer.
        teacher: the frozen teacher (:func:`load_teacher`).
        weight: the part's weight beside the objective's parts.
        loss: ``cosine``, ``mse`` (each text's two embeddings; same size needed) or ``similarity``.
    """

    def __init__(self, model: SentenceTransformer, teacher: SentenceTransformer, weight: float, loss: str = "cosine"):
        super().__init__()
        self.teacher = teacher
        self.weight = weight
        self.loss = loss
        self.embedding_loss = None
        if loss != "similarity":
            student_size, teacher_size = model.get_embedding_dimension(), teacher.get_embedding_dimension()
            if student_size != teacher_size:
                raise ValueError(
                    f"distill_loss={loss!r} compares embeddings, but the teacher gives {teacher_size}-d vectors and "
                    f"the student {student_size}-d; use distill_loss='similarity' or a teacher of the student's size"
                )
            self.embedding_loss = EmbedDistillLoss(model, distance_metric=loss)

    def train(self, mode: bool = True) -> TeacherDistillation:
        super().train(mode)
        self.teacher.eval()  # a teacher in training mode would add dropout noise to its targets
        return self

    def forward(self, student_embeddings: list[Tensor], teacher_columns: list[dict[str, Any]]) -> Tensor:
        if not all(teacher_columns):
            raise ValueError(
                "the batch carries no teacher inputs; train with bellm_st.training.train (its collator adds them) "
                "or preprocess with WithTeacherInputs"
            )
        with torch.no_grad():
            teacher_embeddings = embed_columns(self.teacher, teacher_columns)
        if self.embedding_loss is None:
            loss = similarity_distillation(student_embeddings, teacher_embeddings)
        else:
            loss = self.embedding_loss.compute_loss_from_embeddings(student_embeddings, teacher_embeddings)
        return self.weight * loss
