"""Multi-task training: each training file is a task with its own prompts, loss and token budget.

Everything runs through sentence-transformers' own multi-dataset training: the datasets go to the
trainer as a ``DatasetDict`` with one loss per dataset and the ``prompts`` training argument as
``{dataset: {column: prompt}}``; its multi-dataset batch sampler draws each batch from one dataset,
so one task's texts never serve as another task's in-batch negatives. The one addition is
:class:`TaskLengthCollator`, which passes a task's own ``max_seq_length`` to the model's
``preprocess`` (``BeLLMEncoder`` and sentence-transformers' ``Transformer`` both accept
``max_length=``).

Prompts reach ``BeLLMEncoder.preprocess`` as ``prompt=``, where a full template with ``{text}``
replaces the model's template and a plain prefix goes in front of the text inside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator

from bellm_st.integration import check_template
from bellm_st.prompts import TEXT_SLOT
from bellm_st.training.distillation import TeacherDistillation
from bellm_st.training.objective import BeLLMLoss
from bellm_st.training.recipe import PROMPT_NAMES, DataSource, Recipe


def model_prompts(recipe: Recipe, model: SentenceTransformer) -> dict[str, str]:
    """The ``query``/``document`` prompts the trained model will carry: the recipe's, else the model's own."""
    prompts = dict(model.prompts or {})
    for name in PROMPT_NAMES:
        template = getattr(recipe, f"{name}_template")
        if template is not None:
            check_template(model, template, name)
            prompts[name] = template
    return prompts


def resolve_prompt(prompt: str, named: dict[str, str], source: DataSource, column: str) -> str:
    """A column's prompt as the model reads it: ``query``/``document`` become the model's prompt of that name."""
    if prompt in PROMPT_NAMES:
        if not named.get(prompt):  # sentence-transformers gives models empty "query"/"document" prompts
            raise ValueError(
                f"{source.path}: column {column!r} asks for the {prompt!r} prompt, but neither the recipe "
                f"({prompt}_template) nor the model defines one"
            )
        return named[prompt]
    return prompt


def task_prompts(
    sources: list[DataSource], names: list[str], named: dict[str, str], model: SentenceTransformer
) -> dict[str, dict[str, str]]:
    """``{dataset: {column: prompt}}`` for the trainer's ``prompts`` argument (datasets without prompts left out)."""
    prompts: dict[str, dict[str, str]] = {}
    for source, name in zip(sources, names):
        columns = {column: resolve_prompt(prompt, named, source, column) for column, prompt in source.prompts.items()}
        for column, prompt in columns.items():
            if TEXT_SLOT in prompt:
                check_template(model, prompt, "query" if column == "anchor" else "document")
        if columns:
            prompts[name] = columns
    return prompts


def task_loss(
    model: SentenceTransformer, recipe: Recipe, source: DataSource, teacher_dimension: int | None = None
) -> BeLLMLoss:
    """The loss of one task: the recipe's BeLLM objective, its in-batch contrastive part alone, or (``distill``
    tasks) the teacher's part alone; labelled tasks add the teacher's part when ``distill_weight`` > 0."""
    angle, cosent = (recipe.angle_weight, recipe.cosent_weight) if source.loss == "bellm" else (0.0, 0.0)
    contrastive = {"bellm": recipe.contrastive_weight, "contrastive": 1.0, "distill": 0.0}[source.loss]
    weight = recipe.distill_pool_weight if source.loss == "distill" else recipe.distill_weight
    if source.loss == "distill" and teacher_dimension is None:
        raise ValueError(f"{source.path}: loss 'distill' learns from a teacher; set distill_teacher (e.g. 'minilm')")
    return BeLLMLoss(
        model,
        contrastive_weight=contrastive,
        angle_weight=angle,
        cosent_weight=cosent,
        contrastive_scale=recipe.contrastive_scale,
        angle_scale=recipe.angle_scale,
        cosent_scale=recipe.cosent_scale,
        gather_across_devices=recipe.gather_across_devices,
        matryoshka_dims=recipe.matryoshka_dims,
        distillation=None if teacher_dimension is None or weight == 0 else TeacherDistillation(
            model, teacher_dimension, weight, recipe.distill_loss, recipe.distill_scale
        ),
    )


def check_task_columns(source: DataSource, name: str, columns: list[str]) -> None:
    """Refuse prompts for columns the file does not have (a typo would otherwise train without them)."""
    unknown = sorted(set(source.prompts) - set(columns))
    if unknown:
        raise ValueError(
            f"{source.path}: prompts name column(s) {', '.join(unknown)}, but the data has {', '.join(columns)}"
        )


@dataclass
class TaskLengthCollator(SentenceTransformerDataCollator):
    """sentence-transformers' collator, with a token budget per dataset (``{dataset: max_length}``).

    Batches come from one dataset each and carry its name, so the budget is read per batch;
    datasets without an entry get ``default_max_length`` (the recipe's ``train_max_seq_length``).
    """

    task_max_length: dict[str, int] = field(default_factory=dict, repr=False)
    default_max_length: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        name = features[0].get("dataset_name") if features else None
        self.max_length = self.task_max_length.get(name, self.default_max_length)
        return super().__call__(features)
