"""Training glue: a recipe in, a saved BeLLM model (with recipe, card and dev scores) out.

Everything heavy is sentence-transformers' and transformers' own machinery: the
``SentenceTransformerTrainer`` runs the loop, checkpoints, resumes and evaluates; under
``torchrun``/``accelerate launch`` the same code trains data-parallel. This module only wires the
recipe to it, so a run on a laptop and one on a GPU node differ in the device alone.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset, DatasetDict
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.base.evaluation import SequentialEvaluator
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import TrainerCallback, set_seed
from transformers.trainer_callback import TrainerState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

import bellm_st
from bellm_st.api import has_native_bf16
from bellm_st.evaluation.sts import evaluate_sts_files, read_scored_pairs, sts_evaluator
from bellm_st.fast import PackedRows, attention_without_cudnn, compile_decoder_layers, uncompile_decoder_layers
from bellm_st.model import bellm_encoder, encoder_of
from bellm_st.training.data import dataset_name, load_source
from bellm_st.training.distillation import WithTeacherVectors
from bellm_st.training.pool import dataset_texts, distillation_tasks
from bellm_st.training.teacher import TeacherVectors, load_teacher
from bellm_st.training.lora import add_lora
from bellm_st.training.tasks import TaskLengthCollator, check_task_columns, model_prompts, task_loss, task_prompts
from bellm_st.training.model_card import add_card_section, render_card_section
from bellm_st.training.recipe import RECIPE_FILE, Recipe

logger = logging.getLogger(__name__)

CHECKPOINT_FOLDER = "checkpoints"
SCORES_FILE = "dev_scores.json"
EVAL_HISTORY_FILE = "eval_history.json"
RUN_TIME_FIELDS = ("data_dir", "packing_row_length", "compile_layers", "dataloader_workers")  # may change on resume: they do not change what is learned


@dataclass
class TrainingResult:
    """Where the model went and how it did."""

    output_dir: Path
    global_step: int
    training_loss: float
    dev_scores: dict[str, float]
    data_rows: dict[str, int]


def training_datasets(
    recipe: Recipe, data_dir: str | os.PathLike | None, in_memory: Mapping[str, Dataset] | None = None
) -> dict[str, Dataset]:
    """Every training file as a dataset keyed by a short name (the mixture the trainer samples from).

    ``in_memory`` holds datasets already built for some of the recipe's paths (``bellm-st adapt``
    builds its weak pairs before their file is written); those paths are not read.
    """
    datasets: dict[str, Dataset] = {}
    for source in recipe.train_data:
        path = recipe.resolve(source.path, data_dir)
        name = dataset_name(path)
        if name in datasets:
            raise ValueError(f"two training files are both called {name!r}; rename one so the mixture can tell them apart")
        given = (in_memory or {}).get(source.path)
        datasets[name] = given if given is not None else load_source(source, path, recipe.seed)
    return datasets


def dev_evaluator(
    recipe: Recipe, data_dir: str | os.PathLike | None, model: SentenceTransformer | None = None
) -> SequentialEvaluator | None:
    """STS dev evaluators (STS-B dev and SICK dev by default), plus retrieval on ``eval_retrieval`` if set,
    run every ``eval_steps``; None without either."""
    evaluators = [sts_evaluator(read_scored_pairs(recipe.resolve(path, data_dir))) for path in recipe.dev_data]
    if recipe.eval_retrieval is not None:
        from bellm_st.evaluation.retrieval import read_beir_folder, retrieval_evaluator

        folder = recipe.resolve(recipe.eval_retrieval, data_dir)
        evaluators.append(retrieval_evaluator(read_beir_folder(folder, recipe.eval_retrieval_split), model, recipe.batch_size))
    if not evaluators:
        return None
    return SequentialEvaluator(evaluators, main_score_function=lambda scores: sum(scores) / len(scores))


def enable_activation_checkpointing(model: SentenceTransformer) -> None:
    """Recompute the backbone's activations in backward instead of storing them (less memory, more compute).

    Enabled on the backbone itself rather than through ``TrainingArguments``: transformers 5.17's
    Trainer passes ``every_n_layers`` to the model's method, which sentence-transformers 6.0.1's
    does not accept. Non-reentrant checkpointing lets gradients reach the LoRA weights of a frozen
    backbone. transformers renamed the method to ``activation_checkpointing_enable`` in 5.2x.
    """
    backbone = encoder_of(model).decoder
    if hasattr(backbone, "activation_checkpointing_enable"):
        backbone.activation_checkpointing_enable({"use_reentrant": False})
    else:
        backbone.gradient_checkpointing_enable({"use_reentrant": False})


def dataloader_workers(recipe: Recipe, on_gpu: bool) -> int:
    """Processes that tokenise and pack the next batches while the GPU trains (recipe value, or automatic).

    Automatic: 4 on a GPU machine with at least 8 cores, where the main process would otherwise
    tokenise between steps; none on CPU, where the workers would take the training's own cores.
    """
    if recipe.dataloader_workers is not None:
        return recipe.dataloader_workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores_per_process = cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # torchrun: one process per GPU
    return 4 if on_gpu and cores_per_process >= 8 else 0


def training_arguments(
    recipe: Recipe, checkpoint_dir: Path, has_evaluator: bool, use_cpu: bool
) -> SentenceTransformerTrainingArguments:
    """The trainer's arguments from the recipe: bf16 on GPUs that compute in it natively, fp32 elsewhere."""
    on_gpu = not use_cpu and torch.cuda.is_available()
    bf16 = on_gpu and has_native_bf16("cuda")
    return SentenceTransformerTrainingArguments(
        output_dir=str(checkpoint_dir),
        num_train_epochs=recipe.epochs,
        max_steps=recipe.max_steps,
        per_device_train_batch_size=recipe.batch_size,
        per_device_eval_batch_size=recipe.batch_size,
        learning_rate=recipe.learning_rate,
        weight_decay=recipe.weight_decay,
        warmup_steps=recipe.warmup_ratio,
        bf16=bf16,
        seed=recipe.seed,
        data_seed=recipe.seed,
        batch_sampler=recipe.batch_sampler,
        multi_dataset_batch_sampler=recipe.mixture,
        eval_strategy="steps" if has_evaluator else "no",
        eval_steps=recipe.eval_steps,
        eval_on_start=has_evaluator and recipe.eval_retrieval is not None,  # the curve's step 0
        save_strategy="steps",
        save_steps=recipe.save_steps,
        save_total_limit=recipe.save_total_limit,
        logging_steps=recipe.logging_steps,
        report_to="none",
        use_cpu=use_cpu,
        dataloader_num_workers=dataloader_workers(recipe, on_gpu),
        ddp_find_unused_parameters=False,  # every LoRA weight is used each step: skip DDP's extra graph walk
    )


class BF16AdapterInputsCallback(TrainerCallback):
    """Feed LoRA adapters bf16 activations during training steps, instead of fp32 copies.

    PEFT keeps adapter weights in fp32 (the optimizer needs the precision) and casts every
    adapter's input to fp32; autocast then casts it back to bf16 for the matrix multiply. Those
    two copies of each linear layer's input cost about a quarter of a step on a small model.
    Under autocast the weights are cast instead (a few kB each). Outside training steps (the dev
    evaluation runs without autocast) PEFT's casting is back on, because a bf16 input meeting an
    fp32 weight without autocast is an error.
    """

    def __init__(self, model: torch.nn.Module):
        self.adapters = [module for module in model.modules() if isinstance(module, BaseTunerLayer)]

    def _cast_inputs(self, enabled: bool) -> None:
        for module in self.adapters:
            module.cast_input_dtype_enabled = enabled

    def on_step_begin(self, args, state, control, **kwargs):
        self._cast_inputs(False)
        return control

    def on_step_end(self, args, state, control, **kwargs):
        self._cast_inputs(True)
        return control

    on_train_end = on_step_end


class EvalHistoryCallback(TrainerCallback):
    """Write every evaluation's scores, step by step, to ``eval_history.json`` (a steps curve; kept across resumes)."""

    def __init__(self, path: Path):
        self.path = path

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if state.is_world_process_zero and metrics:
            history = json.loads(self.path.read_text(encoding="utf-8")) if self.path.exists() else []
            history = [entry for entry in history if entry["step"] != state.global_step]
            scores = {key.removeprefix("eval_"): value for key, value in metrics.items() if isinstance(value, (int, float))}
            history.append({"step": state.global_step, **scores})
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(sorted(history, key=lambda e: e["step"]), indent=2) + "\n", encoding="utf-8")
        return control


class SaveRecipeCallback(TrainerCallback):
    """Put ``recipe.json`` into every checkpoint, so a resumed run can prove it continues the same recipe."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.recipe.save(Path(args.output_dir) / f"checkpoint-{state.global_step}")
        return control


def is_complete_checkpoint(folder: Path) -> bool:
    """Whether a checkpoint was written to the end: transformers writes ``trainer_state.json`` last.

    A run killed while saving leaves a folder with only some files (or a cut-off state file).
    """
    try:
        TrainerState.load_from_json(str(folder / "trainer_state.json"))
    except (OSError, ValueError):
        return False
    return True


def last_complete_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The highest-step checkpoint that is complete; incomplete later ones are skipped with a warning.

    Chosen over writing under a temporary name and renaming: that would mean replacing the
    trainer's private save method, whereas the trainer's own write order already marks a
    complete checkpoint. A skipped folder is overwritten when the resumed run reaches its step.
    """
    pattern = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
    steps = {int(m.group(1)): path for path in checkpoint_dir.iterdir() if path.is_dir() and (m := pattern.match(path.name))}
    for step in sorted(steps, reverse=True):
        if is_complete_checkpoint(steps[step]):
            return steps[step]
        logger.warning("%s is incomplete (the run stopped while saving it); resuming from an earlier one", steps[step])
    return None


def check_output_dir(output_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to train into a previous run's folder unless told to continue it or replace it.

    The trainer would otherwise delete that run's checkpoints as it rotates its own.
    """
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: continue the run in the output folder, or replace it")
    if not (resume or overwrite) and output_dir.is_dir() and any(output_dir.iterdir()):
        raise ValueError(
            f"{output_dir} is not empty (a previous run?); pass --resume to continue it, --overwrite to replace it "
            "(its checkpoints are deleted), or choose another --output-dir"
        )


def find_checkpoint(checkpoint_dir: Path, recipe: Recipe) -> str | None:
    """The last complete checkpoint of this run, after checking it was made with the same recipe."""
    last = last_complete_checkpoint(checkpoint_dir) if checkpoint_dir.is_dir() else None
    if last is None:
        return None
    saved = last / RECIPE_FILE
    if saved.exists():
        previous = Recipe.load(saved).to_dict()  # through the dataclass: fields added since then get their defaults
        current = recipe.to_dict()
        changed = sorted(key for key in current if key not in RUN_TIME_FIELDS and previous.get(key) != current[key])
        if changed:
            raise ValueError(
                f"{last} was trained with a different recipe (changed: {', '.join(changed)}); resume with "
                f"--recipe {saved}, or train into a new --output-dir"
            )
    return str(last)


def start_from_trained(recipe: Recipe, device: str, dtype: torch.dtype) -> SentenceTransformer:
    """``recipe.init_model`` ready to train: a BeLLM model's adapter merged and a fresh LoRA added;
    any other sentence-transformers model trained in full."""
    model = bellm_st.load(recipe.init_model, device=device)
    model.to(dtype)
    encoder = bellm_encoder(model)
    if encoder is None:
        if recipe.gradient_checkpointing or recipe.compile_layers or recipe.keep_layers is not None:
            raise ValueError(
                f"{recipe.init_model} is not a BeLLM model; drop --gradient-checkpointing, --compile and --keep-layers"
            )
        return model  # its token budget while training comes from the collator (train_max_seq_length)
    encoder.merge_adapter()  # its own max_seq_length stays: the collator gives training batches their budget
    if recipe.keep_layers is not None:
        encoder.keep_first_layers(recipe.keep_layers)
    trainable = add_lora(model, recipe.lora_r, recipe.lora_alpha, recipe.lora_dropout, recipe.lora_target_modules)
    logger.info("LoRA on %s: %d trainable parameters", recipe.init_model, trainable)
    return model


def build_trainable_model(recipe: Recipe, device: str) -> SentenceTransformer:
    """The BeLLM encoder of the recipe (or ``init_model``) with a fresh, seeded LoRA adapter; bf16 weights on GPU."""
    set_seed(recipe.seed)
    dtype = torch.bfloat16 if has_native_bf16(device) else torch.float32
    if recipe.init_model is not None:
        model = start_from_trained(recipe, device, dtype)
        if bellm_encoder(model) is None:
            return model
    else:
        model = bellm_st.build(
            recipe.base,
            bidirectional_layers=recipe.bidirectional_layers,
            keep_layers=recipe.keep_layers,
            pooling=recipe.pooling,
            template=recipe.template,
            append_eos=recipe.append_eos,
            max_seq_length=recipe.train_max_seq_length,
            device=device,
            dtype=dtype,
        )
        trainable = add_lora(model, recipe.lora_r, recipe.lora_alpha, recipe.lora_dropout, recipe.lora_target_modules)
        logger.info("LoRA: %d trainable parameters", trainable)
    if recipe.gradient_checkpointing:
        enable_activation_checkpointing(model)
    if recipe.compile_layers:
        compile_decoder_layers(encoder_of(model).decoder)
    return model


def teacher_vectors(recipe: Recipe, datasets: Iterable[Dataset], device: str) -> TeacherVectors:
    """The recipe's teacher with a vector for every text of every task: computed once (progress bar), then read
    from its cache folder by every later step and run. The teacher is let go once the vectors exist."""
    from bellm_st.api import default_model_name

    name = recipe.distill_teacher or default_model_name()
    vectors = TeacherVectors(load_teacher(recipe.distill_teacher, device), name, recipe.distill_cache)
    texts = [text for dataset in datasets for text in dataset_texts(dataset)]
    computed = vectors.ensure(texts)
    logger.info("teacher %s: %d text(s), %d newly encoded, cache %s", name, len(set(texts)), computed, vectors.folder)
    vectors.teacher = None
    return vectors


def train(
    recipe: Recipe,
    output_dir: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    device: str | None = None,
    callbacks: list[TrainerCallback] | None = None,
    card_notes: str = "",
    in_memory: Mapping[str, Dataset] | None = None,
) -> TrainingResult:
    """Fine-tune a BeLLM encoder with LoRA and the AnglE objective, then save model, recipe, card and scores.

    ``output_dir`` receives the final model (``bellm_st.load(output_dir)`` loads it) with
    ``recipe.json``, ``dev_scores.json`` and a model card; checkpoints go to
    ``output_dir/checkpoints``. ``resume=True`` continues from the last complete checkpoint there
    (adapter, optimizer, scheduler, data order and RNG state), after checking the recipe is
    unchanged. A non-empty ``output_dir`` is refused unless ``resume`` or ``overwrite`` (which
    deletes the previous run's checkpoints) says what to do with it. Each training file is a task
    (:mod:`bellm_st.training.tasks`); ``card_notes`` (markdown) goes into the model card's BeLLM section.
    """
    output_dir = Path(output_dir)
    checkpoint_dir = output_dir / CHECKPOINT_FOLDER
    check_output_dir(output_dir, resume, overwrite)
    if data_dir is not None:
        recipe = recipe.with_changes(data_dir=str(data_dir))
    resume_from = find_checkpoint(checkpoint_dir, recipe) if resume else None
    if resume and resume_from is None:
        logger.warning("no checkpoint in %s; starting from scratch", checkpoint_dir)

    datasets = training_datasets(recipe, data_dir, in_memory)
    sources = list(recipe.train_data)
    for source, name, dataset in distillation_tasks(recipe, data_dir, list(datasets.values())):
        sources.append(source)
        datasets[name] = dataset
    names = list(datasets)
    for source, name in zip(sources, names):
        check_task_columns(source, name, datasets[name].column_names)
    has_evaluator = bool(recipe.dev_data) or recipe.eval_retrieval is not None
    args = training_arguments(recipe, checkpoint_dir, has_evaluator, use_cpu=device == "cpu")
    vectors = teacher_vectors(recipe, datasets.values(), device or str(args.device)) if recipe.uses_teacher else None
    model = build_trainable_model(recipe, device or str(args.device))
    model.prompts = model_prompts(recipe, model)
    args.prompts = task_prompts(sources, names, model.prompts, model) or None
    evaluator = dev_evaluator(recipe, data_dir, model)
    multi_task = len(datasets) > 1 or any(
        source.prompts or source.max_seq_length or source.loss != "bellm" for source in sources
    )
    teacher_dimension = vectors.dimension if vectors is not None else None
    if multi_task:  # one loss per dataset: the trainer then tags each batch with its dataset's name
        train_dataset = DatasetDict(datasets)
        loss = {name: task_loss(model, recipe, source, teacher_dimension) for source, name in zip(sources, names)}
    else:
        train_dataset, loss = datasets[names[0]], task_loss(model, recipe, sources[0], teacher_dimension)
    collator = TaskLengthCollator(
        preprocess_fn=model.preprocess if vectors is None else WithTeacherVectors(model.preprocess, vectors),
        prompts=args.prompts,
        task_max_length={name: s.max_seq_length for s, name in zip(sources, names) if s.max_seq_length},
        default_max_length=recipe.train_max_seq_length,
    )
    if overwrite:  # only now that the new run's data and settings have been checked
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    extra_callbacks = [BF16AdapterInputsCallback(model)] if args.bf16 else []
    encoder = bellm_encoder(model)
    if encoder is not None:
        encoder.batch_layout = PackedRows(recipe.packing_row_length) if recipe.packing_row_length else None
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        loss=loss,
        evaluator=evaluator,
        data_collator=collator,
        callbacks=[
            SaveRecipeCallback(recipe), EvalHistoryCallback(output_dir / EVAL_HISTORY_FILE), *extra_callbacks,
            *(callbacks or []),
        ],
    )
    try:
        with attention_without_cudnn():  # cuDNN re-plans attention for every padded batch shape
            outcome = trainer.train(resume_from_checkpoint=resume_from)
    finally:
        # Back to an ordinary inference model, even after a failed run: padded batches, eager layers
        # (no recompiling for no-grad passes; the model pickles), PEFT's casting, the full token budget.
        for callback in extra_callbacks:
            callback.on_train_end(args, trainer.state, trainer.control)
        if encoder is not None:
            if recipe.init_model is None:
                encoder.max_seq_length = recipe.max_seq_length
            encoder.batch_layout = None
            uncompile_decoder_layers(encoder.decoder)
    data_rows = {source.path: len(dataset) for source, dataset in zip(sources, datasets.values())}
    dev_scores: dict[str, float] = {}
    if trainer.is_world_process_zero():
        dev_paths = [recipe.resolve(path, data_dir) for path in recipe.dev_data]
        dev_scores = evaluate_sts_files(model, dev_paths, batch_size=recipe.batch_size) if dev_paths else {}
        model.save(str(output_dir))
        recipe.save(output_dir)
        (output_dir / SCORES_FILE).write_text(json.dumps(dev_scores, indent=2) + "\n", encoding="utf-8")
        add_card_section(output_dir, render_card_section(recipe, data_rows, dev_scores, card_notes))
    return TrainingResult(output_dir, trainer.state.global_step, float(outcome.training_loss), dev_scores, data_rows)
