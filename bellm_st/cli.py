"""The ``bellm-st`` command line: thin wrappers around the Python API."""

from __future__ import annotations

import dataclasses
import inspect
import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bellm_st.serving.settings import ServerSettings
from bellm_st.api import ENCODE_BATCH_SIZE, GPU_BATCH_TEXTS, GPU_BATCH_TOKENS, INFERENCE_DTYPES
from bellm_st.evaluation.sts import EVAL_BATCH_SIZE
from bellm_st.fusion import DEFAULT_RRF_K, DEFAULT_WEIGHTS
from bellm_st.training.adaptation import FULL_FINE_TUNE_LEARNING_RATE
from bellm_st.training.adaptation import adapt as adapt_model
from bellm_st.training.recipe import DATA_FORMATS, DISTILL_LOSSES, MIXTURES, Recipe
from bellm_st.training.sweep import layer_sweep

app = typer.Typer(help="BeLLM sentence embeddings from decoder-only LLMs.", no_args_is_help=True)
console = Console()
errors = Console(stderr=True, soft_wrap=True)

SERVER_DEFAULTS = ServerSettings()  # `serve` shows and uses these; their home is ServerSettings
DTYPE_HELP = f"Weights' precision: auto (bf16 on a GPU that has it, else fp32), {', '.join(INFERENCE_DTYPES)}."
MODEL_HELP = "A shipped model or base name, or a saved model folder (default: the shipped default model)."
TRUST_HELP = (
    "Load a model folder that names module classes outside sentence-transformers and bellm-st, or holds only "
    "pickle weights: runs code from the folder. Only for folders you trust."
)


def _read_texts(texts: list[str], file: Path | None) -> list[str]:
    from bellm_st.tabular import read_text_file

    collected = list(texts)
    if file is not None:
        collected += [line for line in read_text_file(file).splitlines() if line.strip()]
    return collected


def _load_model(model: str | None, device: str | None, trust_remote_code: bool, backend: str = "torch"):
    """The model a command names, or exit 2 with one line (a missing folder, an untrusted or damaged one ...).

    transformers' progress bar stays off while loading: it would stand above such a line."""
    from transformers.utils import logging as transformers_logging

    from bellm_st.api import load

    bar_was_on = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        return load(model, device=device, trust_remote_code=trust_remote_code, backend=backend)
    except (OSError, ValueError, ImportError) as error:
        _fail(error)
    finally:
        if bar_was_on:
            transformers_logging.enable_progress_bar()


def _check_dtype(name: str) -> None:
    """Refuse an unknown ``--dtype`` before the minutes a model may take to load."""
    import torch

    from bellm_st.api import inference_dtype

    try:
        inference_dtype(name, torch.device("cpu"))
    except ValueError as error:
        _fail(error)


def _check_prompt_name(model, prompt_name: str | None) -> None:
    """Refuse a ``--prompt-name`` the model lacks before encoding anything."""
    from bellm_st.prompts import resolve_prompt

    try:
        resolve_prompt(model.prompts, prompt_name=prompt_name)
    except ValueError as error:
        _fail(error)


def _fail(error: Exception) -> None:
    """One line on stderr (whatever the terminal's width; never into the output a command writes), exit 2."""
    errors.print(f"[red]error:[/red] {escape(' '.join(str(error).split()))}")
    raise typer.Exit(code=2)


@app.command()
def encode(
    texts: list[str] = typer.Argument(None, help="Texts to embed."),
    file: Path = typer.Option(
        None, "--file", "-f", exists=True, dir_okay=False, readable=True, help="A UTF-8 file with one text per line."
    ),
    output: Path = typer.Option(None, "--output", "-o", help="Write vectors to .npy or .jsonl instead of stdout."),
    model: str = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    prompt_name: str = typer.Option(None, help="Use the model's named prompt, e.g. query or document."),
    batch_size: int = typer.Option(
        None, min=1, help=f"Texts per batch (default {ENCODE_BATCH_SIZE} on CPU; on a GPU, bulk batches of up to "
        f"{GPU_BATCH_TEXTS} texts / {GPU_BATCH_TOKENS:,} tokens)."
    ),
    normalize: bool = typer.Option(True, help="L2-normalise the vectors."),
    device: str = typer.Option(
        None, help="cpu, cuda, cuda:1 ...; several, comma-separated (cuda:0,cuda:1), run one process each "
        "(sentence-transformers' multi-process pool)."
    ),
    bulk: bool = typer.Option(None, "--bulk/--no-bulk", help="Use encode_bulk (default: on a GPU)."),
    compile_layers: bool = typer.Option(
        False, "--compile", help="torch.compile each decoder layer first: a warm-up, then faster on large files."
    ),
    dtype: str = typer.Option("auto", help=DTYPE_HELP),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help=TRUST_HELP),
    on_ray: bool = typer.Option(
        False, "--ray", help="Embed --input files on a Ray cluster ($RAY_ADDRESS, else a local one) into --output/."
    ),
    input_files: str = typer.Option(
        None, "--input",
        help="With --ray: parquet/JSONL files, as a folder (corpus/) or a glob such as 'corpus/*.parquet' (quote it).",
    ),
    text_column: str = typer.Option("text", help="With --ray: the column holding the texts; the others are kept."),
    workers: int = typer.Option(
        None, min=1, help="With --ray: model copies (actors); default one per GPU, or on CPUs one per CPU less one."
    ),
) -> None:
    """Embed texts and print them as JSON lines (or save them).

    On a GPU the texts go through `encode_bulk` (tokenisation overlapped with the model, batches
    without padding) in bf16: vectors next to fp32's and much faster on large files
    (figures in docs/BENCHMARKS.md). With --ray, each input file becomes one parquet file in --output (ids kept); a
    re-run skips the files already written.
    """
    from bellm_st.api import inference_dtype
    from bellm_st.inputs import validate_texts

    if on_ray or input_files is not None:
        _check_dtype(dtype)
        _encode_on_ray(texts, file, input_files, output, model, prompt_name, normalize, device, dtype, text_column,
                       workers, trust_remote_code, refused={"--batch-size": batch_size is not None, "--bulk/--no-bulk": bulk is not None,
                                         "--compile": compile_layers, "--ray": not on_ray})
        return

    try:
        items = validate_texts(_read_texts(texts or [], file), where="texts")
    except (TypeError, ValueError) as error:
        _fail(error)
    _check_dtype(dtype)
    if device is not None and "," in device:
        vectors = _encode_on_devices(items, model, device, prompt_name, batch_size, normalize, bulk, compile_layers, dtype,
                                     trust_remote_code)
        _write_vectors(items, vectors, output)
        return
    encoder = _load_model(model, device, trust_remote_code)
    encoder.to(inference_dtype(dtype, encoder.device))
    _check_prompt_name(encoder, prompt_name)
    use_bulk = encoder.device.type == "cuda" if bulk is None else bulk
    if compile_layers:
        from bellm_st.fast import compile_model_layers

        try:
            compile_model_layers(encoder)
        except ValueError as error:
            _fail(error)
    if use_bulk:
        from bellm_st.fast import encode_bulk

        size = batch_size or GPU_BATCH_TEXTS
        vectors = encode_bulk(encoder, items, batch_size=size, max_batch_tokens=GPU_BATCH_TOKENS, prompt_name=prompt_name,
                              normalize_embeddings=normalize, show_progress_bar=len(items) > size)
    else:
        size = batch_size or ENCODE_BATCH_SIZE
        vectors = encoder.encode(items, prompt_name=prompt_name, batch_size=size, normalize_embeddings=normalize,
                                 show_progress_bar=len(items) > size)
    _write_vectors(items, vectors, output)


def _encode_on_devices(items: list[str], model: str | None, device: str, prompt_name: str | None,
                       batch_size: int | None, normalize: bool, bulk: bool | None, compile_layers: bool, dtype: str,
                       trust_remote_code: bool):
    """``encode --device a,b``: sentence-transformers' multi-process pool, one process per device,
    each running ``encode_bulk`` (``--no-bulk``: sentence-transformers' own batches)."""
    import torch

    from bellm_st.api import inference_dtype
    from bellm_st.fast import encode_bulk
    from bellm_st.fast.bulk import checked_devices

    if compile_layers and bulk is False:
        _fail(ValueError("--compile with several devices compiles inside bulk encoding; drop --no-bulk or --compile"))
    try:
        devices = checked_devices([part.strip() for part in device.split(",") if part.strip()])
    except ValueError as error:
        _fail(error)
    encoder = _load_model(model, "cpu", trust_remote_code)  # the pool moves a copy to each device
    encoder.to(inference_dtype(dtype, torch.device(devices[0])))
    _check_prompt_name(encoder, prompt_name)
    if bulk is False:
        size = batch_size or ENCODE_BATCH_SIZE
        return encoder.encode(items, prompt_name=prompt_name, batch_size=size, normalize_embeddings=normalize,
                              device=devices, show_progress_bar=len(items) > size)
    size = batch_size or GPU_BATCH_TEXTS
    try:
        return encode_bulk(encoder, items, devices=devices, compile_layers=compile_layers, batch_size=size,
                           max_batch_tokens=GPU_BATCH_TOKENS, prompt_name=prompt_name, normalize_embeddings=normalize,
                           show_progress_bar=len(items) > size)
    except ValueError as error:
        _fail(error)


def _encode_on_ray(texts: list[str] | None, file: Path | None, input_files: str | None, output: Path | None,
                   model: str | None, prompt_name: str | None, normalize: bool, device: str | None, dtype: str,
                   text_column: str, workers: int | None, trust_remote_code: bool, refused: dict[str, bool]) -> None:
    """``encode --ray --input FOLDER_OR_GLOB --output FOLDER``: :func:`bellm_st.cluster.encode_files`."""
    if refused.pop("--ray"):
        _fail(ValueError("--input reads files on a Ray cluster; add --ray (or pass -f FILE for one text file)"))
    if texts or file is not None:
        _fail(ValueError("--ray embeds --input files; drop the texts and -f, or drop --ray"))
    if input_files is None or output is None:
        _fail(ValueError("--ray needs --input corpus/ (or a glob such as 'corpus/*.parquet') and --output FOLDER"))
    if given := [option for option, present in refused.items() if present]:
        _fail(ValueError(f"{', '.join(given)} do not apply to --ray (each actor picks its batches); drop them"))
    if device is not None and device not in ("cpu", "cuda"):
        _fail(ValueError(f"--device {device} with --ray must be cpu or cuda (Ray gives each actor its GPU)"))
    try:
        from bellm_st.cluster import encode_files
    except ImportError as error:
        _fail(ImportError(f"{error}; --ray needs its extra: pip install 'bellm-st[ray]'"))
    try:
        summary = encode_files(input_files, output, model, text_column=text_column, workers=workers, device=device,
                               dtype=dtype, prompt_name=prompt_name, normalize_embeddings=normalize,
                               trust_remote_code=trust_remote_code)
    except (TypeError, ValueError, FileNotFoundError) as error:
        _fail(error)
    console.print(f"wrote {summary['files_written']} files ({summary['rows']} vectors) to {output}; "
                  f"{summary['files_skipped']} already there")


def _write_vectors(items: list[str], vectors, output: Path | None) -> None:
    """Vectors to a .npy file, or as JSON lines to a file or stdout."""
    if output is not None and output.suffix == ".npy":
        import numpy as np

        np.save(output, vectors)
    else:
        lines = [json.dumps({"text": text, "embedding": vector.tolist()}) for text, vector in zip(items, vectors)]
        if output is not None:
            output.write_text("\n".join(lines) + "\n", encoding="utf-8")
        else:
            sys.stdout.write("\n".join(lines) + "\n")
    if output is not None:
        console.print(f"wrote {len(items)} vectors of dimension {vectors.shape[1]} to {output}")


@app.command()
def similarity(
    texts: list[str] = typer.Argument(..., help="Two or more texts to compare."),
    model: str = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    device: str = typer.Option(None, help="cpu, cuda, cuda:1 ..."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help=TRUST_HELP),
) -> None:
    """Print the cosine similarity of every pair of texts."""
    from bellm_st.inputs import validate_texts

    try:
        items = validate_texts(texts, where="texts")
        if len(items) < 2:
            raise ValueError("similarity needs at least two texts")
    except (TypeError, ValueError) as error:
        _fail(error)
    encoder = _load_model(model, device, trust_remote_code)
    vectors = encoder.encode(items, normalize_embeddings=True, convert_to_tensor=True)
    scores = (vectors @ vectors.T).cpu()
    table = Table(title="cosine similarity")
    table.add_column("#")
    table.add_column("text")
    for column in range(len(items)):
        table.add_column(str(column))
    for row, text in enumerate(items):
        short = text if len(text) <= 50 else text[:47] + "..."
        table.add_row(str(row), short, *(f"{scores[row, column]:.3f}" for column in range(len(items))))
    console.print(table)


RECIPE_DEFAULTS = Recipe()  # `train` options left out keep these; their home is Recipe
RECIPE_FIELDS = {field.name for field in dataclasses.fields(Recipe)}
DATA_DIR_HELP = f"Folder that relative data paths are read from (default: the recipe's, {RECIPE_DEFAULTS.data_dir})."


def _with_default(text: str, default: Any) -> str:
    """A help text ending in the default its option falls back to, read from that default's home."""
    return f"{text} (default: {default})" if text else f"(default: {default})"


def _recipe_help(field: str, text: str = "") -> str:
    return _with_default(text, getattr(RECIPE_DEFAULTS, field))


def _parameter_defaults(function: Any) -> dict[str, Any]:
    """A function's keyword defaults, for the options that fall back to them."""
    return {name: parameter.default for name, parameter in inspect.signature(function).parameters.items()}


SWEEP_DEFAULTS = _parameter_defaults(layer_sweep)
ADAPT_DEFAULTS = _parameter_defaults(adapt_model)


def _given(**options: Any) -> dict[str, Any]:
    """The options the user gave: the others stay out, so the callee's own default applies."""
    return {name: value for name, value in options.items() if value is not None}


@app.command()
def train(
    context: typer.Context,
    output_dir: Path = typer.Option(..., "--output-dir", "-o", help="Where the model, recipe.json and checkpoints/ go."),
    recipe: Path = typer.Option(None, help="A recipe.json to reproduce; the options below override its fields."),
    base: str = typer.Option(None, help=_recipe_help("base", "Shipped base name, local checkpoint folder or hub id.")),
    data_dir: Path = typer.Option(None, help=DATA_DIR_HELP),
    train_data: list[str] = typer.Option(
        None, "--train-data", help="Training file PATH[:FORMAT[:MAX_ROWS]] (repeatable); formats: "
        f"{', '.join(DATA_FORMATS)}. A task with its own prompts, loss and token budget: "
        'a JSON object, e.g. \'{"path": "qa.tsv", "prompts": {"anchor": "query", "positive": "document"}, '
        '"loss": "contrastive", "max_seq_length": 256}\'.'

    ),
    dev_data: list[str] = typer.Option(None, "--dev-data", help="STS dev file (repeatable)."),
    no_dev: bool = typer.Option(False, "--no-dev", help="Train without periodic dev evaluation."),
    bidirectional_layers: int = typer.Option(None, "--bidirectional-layers", "-k", help=_recipe_help("bidirectional_layers")),
    keep_layers: int = typer.Option(
        None, "--keep-layers", help="Keep only the first N decoder layers (smaller, faster); -k counts among them."
    ),
    pooling: str = typer.Option(None, help=_recipe_help("pooling")),
    learning_rate: float = typer.Option(None, "--lr", help=_recipe_help("learning_rate")),
    batch_size: int = typer.Option(None, help=_recipe_help("batch_size")),
    max_steps: int = typer.Option(None, help=_recipe_help("max_steps", "-1: as many as --epochs take.")),
    epochs: float = typer.Option(None, help=_recipe_help("epochs")),
    train_max_seq_length: int = typer.Option(None, help=_recipe_help("train_max_seq_length", "Token budget while training.")),
    lora_r: int = typer.Option(None, help=_recipe_help("lora_r")),
    lora_alpha: int = typer.Option(None, help=_recipe_help("lora_alpha")),
    lora_dropout: float = typer.Option(None, help=_recipe_help("lora_dropout")),
    contrastive_weight: float = typer.Option(None, help=_recipe_help("contrastive_weight")),
    angle_weight: float = typer.Option(None, help=_recipe_help("angle_weight")),
    cosent_weight: float = typer.Option(None, help=_recipe_help("cosent_weight")),
    mixture: str = typer.Option(None, help=_recipe_help("mixture", f"Sampling across training files: {' or '.join(MIXTURES)}.")),
    query_template: str = typer.Option(None, help="The model's query prompt (a task's prompt 'query' means it)."),
    document_template: str = typer.Option(None, help="The model's document prompt (a task's prompt 'document')."),
    matryoshka_dims: str = typer.Option(None, help="Also train these leading sizes of the vector, e.g. 64,128,256,576."),
    distill_teacher: str = typer.Option(
        None, help="A teacher model whose vectors supervise the student (e.g. minilm; left out with a teacher option: the shipped default model)."
    ),
    distill_weight: float = typer.Option(
        None, min=0, help=_recipe_help("distill_weight", "Weight of the teacher's part on the labelled tasks' batches (0: none).")
    ),
    distill_loss: str = typer.Option(
        None, help=_recipe_help("distill_loss", f"One of {', '.join(DISTILL_LOSSES)} (docs/DISTILLATION.md).")
    ),
    distill_pool: list[str] = typer.Option(
        None, "--distill-pool", help="A pool file PATH[:COLUMN] of texts to distil on (repeatable; the training files' "
        "texts are always in the pool). '-' alone: a pool of the training files' texts only."
    ),
    distill_pool_max_rows: int = typer.Option(None, min=1, help=_recipe_help("distill_pool_max_rows")),
    distill_pool_weight: float = typer.Option(None, help=_recipe_help("distill_pool_weight", "Weight of the pool and pair tasks' teacher loss.")),
    distill_pairs: list[str] = typer.Option(
        None, "--distill-pairs", help="A paraphrase-pairs file made into query -> passage pairs for the query/document prompts (repeatable)."
    ),
    distill_cache: str = typer.Option(None, help="Folder of the teacher's cached vectors (default: beside the converted bases)."),
    seed: int = typer.Option(None, help=_recipe_help("seed")),
    gradient_checkpointing: bool = typer.Option(
        None, "--gradient-checkpointing/--no-gradient-checkpointing", help=_recipe_help("gradient_checkpointing")
    ),
    packing_row_length: int = typer.Option(
        None, min=0, help=_recipe_help("packing_row_length", "Pack each batch's texts into rows of this many tokens (0 pads instead).")
    ),
    dataloader_workers: int = typer.Option(
        None, min=0, help="Processes preparing batches ahead of the GPU (default: 4 on GPU machines of 8+ cores, else 0)."
    ),
    compile_layers: bool = typer.Option(
        None, "--compile/--no-compile",
        help=_recipe_help("compile_layers", "torch.compile each decoder layer (faster steps on GPUs after some compiling)."),
    ),
    gather_across_devices: bool = typer.Option(
        None, "--gather-across-devices/--no-gather-across-devices",
        help=_recipe_help("gather_across_devices", "Under torchrun, use every GPU's texts as negatives (a larger effective batch)."),
    ),
    eval_steps: int = typer.Option(None, help=_recipe_help("eval_steps")),
    save_steps: int = typer.Option(None, help=_recipe_help("save_steps")),
    resume: bool = typer.Option(False, help="Continue from the last complete checkpoint in OUTPUT_DIR/checkpoints."),
    overwrite: bool = typer.Option(
        False, help="Train into a non-empty OUTPUT_DIR anyway, deleting its previous run's checkpoints."
    ),
    device: str = typer.Option(None, help="cpu, cuda ... (default: the trainer's choice)."),
) -> None:
    """Fine-tune a BeLLM encoder with LoRA and the AnglE objective; saves model, recipe.json and a model card.

    Every option named after a recipe field overrides that field; left out, the recipe's value stays.
    """
    from bellm_st.training import train as run_training

    try:
        settings = Recipe.load(recipe) if recipe is not None else Recipe()
        dims = None
        if matryoshka_dims is not None:
            try:
                dims = [int(part) for part in matryoshka_dims.split(",") if part.strip()]
            except ValueError:
                raise ValueError(f"--matryoshka-dims {matryoshka_dims!r} must be sizes separated by commas, e.g. 64,128,256") from None
        fields = {name: value for name, value in context.params.items() if name in RECIPE_FIELDS}
        # --data-dir is where this machine finds the data: passed on below, not written into the recipe
        fields.update(data_dir=None, matryoshka_dims=dims, train_data=train_data or None,
                      dev_data=[] if no_dev else (dev_data or None), distill_pairs=distill_pairs or None,
                      distill_pool=None if not distill_pool else [spec for spec in distill_pool if spec != "-"])
        settings = settings.with_changes(**fields)
        result = run_training(settings, output_dir, data_dir=data_dir, resume=resume, overwrite=overwrite, device=device)
    except (TypeError, ValueError, FileNotFoundError) as error:
        _fail(error)
    console.print(f"saved the model to {result.output_dir} after {result.global_step} steps")
    if result.dev_scores:
        from bellm_st.evaluation.report import scores_table

        console.print(scores_table("dev Spearman x100", {name: {"spearman": s} for name, s in result.dev_scores.items()}))


@app.command()
def adapt(
    corpus: Path = typer.Option(..., "--corpus", help="The documents: BEIR corpus.jsonl (_id, text, optional title)."),
    output_dir: Path = typer.Option(..., "--output-dir", "-o", help="Where the adapted model, recipe.json and checkpoints/ go."),
    model: str = typer.Option(
        None, "--model", "-m", help=MODEL_HELP + " Any sentence-transformers folder works too (`minilm`: all-MiniLM-L6-v2)."
    ),
    pairs: str = typer.Option(
        None, help=_with_default(
            "Weak pair kinds, comma-separated: title, ict (inverse cloze), generated.", ",".join(ADAPT_DEFAULTS["kinds"])
        ),
    ),
    ict_per_document: int = typer.Option(
        None, min=1, help=_with_default(
            "Inverse cloze queries (different sentences) per document: more queries from a small corpus.",
            ADAPT_DEFAULTS["ict_per_document"],
        ),
    ),
    generated_queries: str = typer.Option(
        None, "--generated-queries", help="A decoder LLM that writes a query per document (adds 'generated'; slow on CPU)."
    ),
    general_data: str = typer.Option(
        None, help=_with_default("General training file mixed in so STS is kept, under --data-dir.", ADAPT_DEFAULTS["general_data"])
    ),
    general_ratio: float = typer.Option(
        None, min=0, help=_with_default("General examples per weak pair (0: none).", ADAPT_DEFAULTS["general_ratio"])
    ),
    data_dir: Path = typer.Option(None, help=DATA_DIR_HELP),
    query_template: str = typer.Option(None, help="Query prompt (default for BeLLM models: a query template; others: none)."),
    document_template: str = typer.Option(None, help="Document prompt (default for BeLLM models: the model's template)."),
    max_seq_length: int = typer.Option(
        None, min=2, help=_with_default("Token budget of the weak pairs' passages.", ADAPT_DEFAULTS["max_seq_length"])
    ),
    keep_layers: int = typer.Option(None, "--keep-layers", help="Keep only the first N decoder layers of a BeLLM model."),
    lora_r: int = typer.Option(
        None, "--lora-r", min=1, help=f"Rank of a BeLLM model's new LoRA adapter, alpha twice it (default: {RECIPE_DEFAULTS.lora_r})."
    ),
    batch_size: int = typer.Option(None, min=2, help=_with_default("", ADAPT_DEFAULTS["batch_size"])),
    max_steps: int = typer.Option(None, min=1),
    epochs: float = typer.Option(None, help=_with_default("", ADAPT_DEFAULTS["epochs"])),
    learning_rate: float = typer.Option(
        None, "--lr", help=f"Default: {RECIPE_DEFAULTS.learning_rate} (LoRA on BeLLM models), "
        f"{FULL_FINE_TUNE_LEARNING_RATE} (full fine-tune)."
    ),
    seed: int = typer.Option(None, help=_with_default("", ADAPT_DEFAULTS["seed"])),
    eval_retrieval: Path = typer.Option(None, help="A BEIR folder scored every --eval-steps (and at step 0)."),
    eval_split: str = typer.Option(None, help=_with_default("The qrels split of --eval-retrieval.", ADAPT_DEFAULTS["eval_split"])),
    eval_steps: int = typer.Option(None, min=1),
    save_steps: int = typer.Option(None, min=1),
    resume: bool = typer.Option(False, help="Continue from the last checkpoint in OUTPUT_DIR/checkpoints."),
    device: str = typer.Option(None, help="cpu, cuda ... (default: the trainer's choice)."),
    gradient_checkpointing: bool = typer.Option(
        None, "--gradient-checkpointing/--no-gradient-checkpointing",
        help="Recompute a BeLLM model's activations in the backward pass: slower steps, much less memory "
             "[default: on unless training on a CUDA GPU].",
    ),
    teacher: str = typer.Option(
        None, help="A stronger model (e.g. minilm) that mines a hard negative per pair and whose margins the model learns."
    ),
    teacher_weight: float = typer.Option(
        None, help=_with_default("Weight of the teacher's margin part.", ADAPT_DEFAULTS["teacher_weight"])
    ),
    teacher_cache: Path = typer.Option(None, help="Folder of the teacher's cached vectors (default: beside the converted bases)."),
) -> None:
    """Adapt a model to your documents without labels: weak query -> passage pairs + general data, then save it."""
    kinds = None if pairs is None else tuple(kind.strip() for kind in pairs.split(",") if kind.strip())
    try:
        result = adapt_model(
            corpus, output_dir, model=model, generator=generated_queries, data_dir=data_dir,
            query_template=query_template, document_template=document_template, keep_layers=keep_layers, lora_r=lora_r,
            max_steps=max_steps, learning_rate=learning_rate, eval_retrieval=eval_retrieval, eval_steps=eval_steps,
            save_steps=save_steps, resume=resume, device=device, teacher=teacher, teacher_cache=teacher_cache,
            **_given(kinds=kinds, ict_per_document=ict_per_document, general_data=general_data, teacher_weight=teacher_weight,
                     general_ratio=general_ratio, max_seq_length=max_seq_length,
                     batch_size=batch_size, epochs=epochs, seed=seed, eval_split=eval_split,
                     gradient_checkpointing=gradient_checkpointing),
        )
    except (TypeError, ValueError, FileNotFoundError) as error:
        _fail(error)
    console.print(f"saved the adapted model to {result.output_dir} after {result.global_step} steps")


@app.command(name="eval")
def evaluate(
    model: str = typer.Option(None, "--model", "-m", help=MODEL_HELP + " `minilm` is the all-MiniLM-L6-v2 baseline."),
    sts: list[Path] = typer.Option(None, "--sts", help="STS file [subset] score sentence1 sentence2 (repeatable)."),
    retrieval: Path = typer.Option(None, help="A BEIR folder (corpus.jsonl, queries.jsonl, qrels/)."),
    split: str = typer.Option("test", help="Which qrels/<split>.tsv to use."),
    hybrid: bool = typer.Option(
        False, "--hybrid", help="Also score BM25 and BM25 fused with the model (reciprocal rank fusion) on --retrieval."
    ),
    bm25_weight: float = typer.Option(
        None, help=_with_default("With --hybrid: BM25's weight in the fusion.", DEFAULT_WEIGHTS["bm25"])
    ),
    dense_weight: float = typer.Option(
        None, help=_with_default("With --hybrid: the model's weight in the fusion.", DEFAULT_WEIGHTS["dense"])
    ),
    rrf_k: int = typer.Option(
        None, help=_with_default("With --hybrid: the constant added to each rank.", DEFAULT_RRF_K)
    ),
    output: Path = typer.Option(None, "--output", "-o", help="Write the scores as JSON here."),
    batch_size: int = typer.Option(EVAL_BATCH_SIZE, min=1, help="Texts per encode batch."),
    device: str = typer.Option(None, help="cpu, cuda, cuda:1 ..."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help=TRUST_HELP),
) -> None:
    """Score a model: Spearman x100 on STS files (and their average), nDCG@10/Recall@100/MRR@10 on a BEIR folder."""
    from bellm_st.evaluation.report import scores_table, write_json
    from bellm_st.evaluation.retrieval import evaluate_hybrid_retrieval, evaluate_retrieval, read_beir_folder
    from bellm_st.evaluation.sts import evaluate_sts_files, read_scored_pairs
    from bellm_st.fusion import check_rrf_k, resolve_weights

    if not sts and retrieval is None:
        _fail(ValueError("nothing to evaluate; pass --sts FILE (repeatable) and/or --retrieval FOLDER"))
    fusion_options = _given(bm25_weight=bm25_weight, dense_weight=dense_weight, rrf_k=rrf_k)
    if fusion_options and not (hybrid and retrieval is not None):
        named = ", ".join(f"--{name.replace('_', '-')}" for name in fusion_options)
        _fail(ValueError(f"{named} set the fusion of --hybrid; add --hybrid and --retrieval FOLDER, or drop them"))
    if hybrid and retrieval is None:
        _fail(ValueError("--hybrid fuses BM25 with the model on a BEIR folder; add --retrieval FOLDER"))
    weights = {name: value for name, value in (("bm25", bm25_weight), ("dense", dense_weight)) if value is not None}
    rrf_k = DEFAULT_RRF_K if rrf_k is None else rrf_k
    try:
        if hybrid:
            resolve_weights(weights)
            check_rrf_k(rrf_k)
        for path in sts or []:
            read_scored_pairs(path)  # fail on bad data before loading a model
        if retrieval is not None:
            read_beir_folder(retrieval, split)
        encoder = _load_model(model, device, trust_remote_code)
        results: dict[str, dict] = {}
        if sts:
            results["sts"] = evaluate_sts_files(encoder, sts, batch_size=batch_size)
        if retrieval is not None and hybrid:
            results["retrieval"] = evaluate_hybrid_retrieval(encoder, retrieval, split, batch_size=batch_size,
                                                             show_progress_bar=True, weights=weights, rrf_k=rrf_k)
        elif retrieval is not None:
            results["retrieval"] = evaluate_retrieval(encoder, retrieval, split, batch_size=batch_size,
                                                      show_progress_bar=True)
    except (TypeError, ValueError, OSError, ImportError) as error:
        _fail(error)
    if "sts" in results:
        console.print(scores_table("STS: Spearman x100 (cosine)", {n: {"spearman": s} for n, s in results["sts"].items()}))
    if "retrieval" in results and hybrid:
        fusion = results["retrieval"]["fusion"]
        weights_text = ", ".join(f"{name} {weight:g}" for name, weight in fusion["weights"].items())
        rows = {"dense (the model)": results["retrieval"]["dense"], "BM25": results["retrieval"]["bm25"],
                f"fused (RRF: {weights_text}; rrf_k {fusion['rrf_k']})": results["retrieval"]["fused"]}
        console.print(scores_table(f"retrieval (x100), {retrieval.name} ({split})", rows))
    elif "retrieval" in results:
        console.print(scores_table("retrieval (x100)", {f"{retrieval.name} ({split})": results["retrieval"]}))
    if output is not None:
        write_json(output, {"model": model or "default", **results})
        console.print(f"wrote {output}")


@app.command()
def sweep(
    base: str = typer.Option(..., help="Shipped base name, local checkpoint folder or hub id."),
    layers: list[int] = typer.Option(..., "--layers", "-k", help="A k to try (repeatable): -k 0 -k 1 -k 2 -k 4"),
    dev_data: list[str] = typer.Option(None, "--dev-data", help="STS dev file (repeatable; default STS-B + SICK dev)."),
    output_dir: Path = typer.Option(..., "--output-dir", "-o", help="Where sweep.md, sweep.json and sweep.png go."),
    zero_shot: bool = typer.Option(
        None, "--zero-shot/--trained", help=_with_default(
            "Score the untrained model for each k, or train one per k.", "--zero-shot" if SWEEP_DEFAULTS["zero_shot"] else "--trained"
        ),
    ),
    pooling: str = typer.Option(None, help=_with_default("", SWEEP_DEFAULTS["pooling"])),
    recipe: Path = typer.Option(None, help="Recipe for the training runs (k, base and pooling come from the sweep)."),
    data_dir: Path = typer.Option(None, help=DATA_DIR_HELP),
    device: str = typer.Option(None),
) -> None:
    """Dev STS against the number of bi-directional layers k: BeLLM's turning-point figure for any backbone."""
    from bellm_st.training.sweep import markdown_table

    try:
        settings = Recipe.load(recipe) if recipe is not None else Recipe()
        if data_dir is not None:
            settings = settings.with_changes(data_dir=str(data_dir))
        dev_files = [settings.resolve(path) for path in (dev_data or settings.dev_data)]
        points = layer_sweep(
            base, layers, dev_files, output_dir, recipe=settings, data_dir=data_dir, device=device,
            **_given(zero_shot=zero_shot, pooling=pooling),
        )
    except (TypeError, ValueError, FileNotFoundError) as error:
        _fail(error)
    console.print(markdown_table(points))
    console.print(f"wrote {output_dir / 'sweep.md'}, sweep.json and sweep.png")


@app.command()
def export(
    model: str = typer.Argument(..., help="A shipped model, base name or trained model folder."),
    output_dir: Path = typer.Argument(..., help="Where to write the merged sentence-transformers folder."),
    onnx: bool = typer.Option(
        False, "--onnx", help="Also write the backbone's ONNX graph (onnx/model.onnx) for backend='onnx' on a CPU."
    ),
    int8: Path = typer.Option(
        None, "--int8", exists=True, dir_okay=False, readable=True,
        help="With --onnx: also write an int8 graph (onnx/model_int8.onnx), calibrated on this UTF-8 file's texts "
             "(one per line; a few hundred like yours, not your test set).",
    ),
    adapter_only: bool = typer.Option(
        False, "--adapter-only",
        help="Write only a trained folder's LoRA adapter and BeLLM settings (~10 MB for SmolLM2) instead: "
             "bellm_st.load(OUTPUT_DIR) rebuilds the shipped base offline and merges it; no code travels.",
    ),
    base: str = typer.Option(
        None, "--base", help="With --adapter-only: the shipped base the model was trained on (default: its recipe's)."
    ),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help=TRUST_HELP),
) -> None:
    """Write a hub-ready sentence-transformers folder: LoRA adapter merged, the encoder's code inside (loads without bellm-st)."""
    if adapter_only and onnx:
        _fail(ValueError("--adapter-only and --onnx write different things; pick one"))
    if int8 is not None and not onnx:
        _fail(ValueError("--int8 quantises the ONNX graph; add --onnx"))
    if base is not None and not adapter_only:
        _fail(ValueError("--base only applies with --adapter-only (a merged export carries its weights)"))
    from bellm_st.export import require_new_folder

    try:
        require_new_folder(output_dir)  # before any model loads
        calibration_texts = None if int8 is None else _read_texts([], int8)
        if calibration_texts is not None and not calibration_texts:
            raise ValueError(f"--int8 {int8} holds no texts; give a few hundred, one per line")
    except (FileExistsError, ValueError) as error:
        _fail(error)
    if adapter_only:
        from bellm_st.export import package_shipped

        try:
            package_shipped(model, output_dir.name, base=base, models_root=output_dir.parent)
        except (ValueError, OSError) as error:
            _fail(error)
        console.print(f"wrote {output_dir}; load it with bellm_st.load({str(output_dir)!r})")
        return
    from bellm_st.export import export_merged

    try:
        export_merged(model, output_dir, trust_remote_code=trust_remote_code, onnx=onnx)
        if calibration_texts is not None:
            from bellm_st.fast.quantization import quantize_onnx

            quantize_onnx(output_dir, calibration_texts)
    except (TypeError, ValueError, OSError, ImportError) as error:
        _fail(error)
    folder = str(output_dir)
    if onnx:
        console.print(f"wrote {folder}; on a CPU load it with bellm_st.load({folder!r}, backend='onnx'), or without "
                      f"bellm-st SentenceTransformer({folder!r}, backend='onnx', trust_remote_code=True)"
                      + ("; the int8 graph with model_kwargs={'file_name': 'onnx/model_int8.onnx'}" if int8 else ""))
        return
    console.print(f"wrote {folder}; load it with SentenceTransformer({folder!r}, trust_remote_code=True), "
                  f"or bellm_st.load({folder!r}) where bellm-st is installed")


@app.command()
def serve(
    model: str = typer.Argument(None, help=MODEL_HELP),
    backend: str = typer.Option(
        "torch", help="torch, or onnx: ONNX Runtime on the CPU runs the folder's graph (from `bellm-st export --onnx`; "
        "a shipped model is exported once, on first use)."
    ),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on; 0.0.0.0 for every interface."),
    port: int = typer.Option(8000, min=0, max=65535),
    api_key: str = typer.Option(
        None, envvar="BELLM_ST_API_KEY", help="Require 'Authorization: Bearer KEY' (also from $BELLM_ST_API_KEY)."
    ),
    served_model_name: str = typer.Option(None, help="The id clients see (default: the model argument)."),
    max_batch_size: int = typer.Option(SERVER_DEFAULTS.max_batch_size, min=1, help="Most texts in one forward pass."),
    max_batch_tokens: int = typer.Option(
        SERVER_DEFAULTS.max_batch_tokens, min=1, help="Most padded tokens in one forward pass."
    ),
    batch_wait_ms: float = typer.Option(
        SERVER_DEFAULTS.batch_wait_seconds * 1000,
        min=0,
        help="How long a batch that is not full waits for more texts.",
    ),
    max_queue_items: int = typer.Option(
        SERVER_DEFAULTS.max_queue_items, min=1, help="Most texts waiting; more gets --queue-full-status."
    ),
    queue_full_status: int = typer.Option(
        SERVER_DEFAULTS.queue_full_status, help="429 (clients retry) or 503 when the queue is full."
    ),
    max_items_per_request: int = typer.Option(SERVER_DEFAULTS.max_items_per_request, min=1),
    max_input_chars: int = typer.Option(SERVER_DEFAULTS.max_input_chars, min=1, help="Longest text, in characters."),
    long_input: str = typer.Option(
        SERVER_DEFAULTS.long_input, help="truncate or reject texts over --max-input-chars."
    ),
    max_payload_bytes: int = typer.Option(SERVER_DEFAULTS.max_payload_bytes, min=1),
    request_body_timeout_seconds: float = typer.Option(
        SERVER_DEFAULTS.request_body_timeout_seconds,
        help="How long a request body may take to arrive; slower is a 408.",
    ),
    graceful_shutdown_seconds: float = typer.Option(
        SERVER_DEFAULTS.graceful_shutdown_seconds,
        min=0,
        help="How long shutdown waits for accepted requests; the rest get a 503.",
    ),
    device: str = typer.Option(None, help="cpu, cuda, cuda:1 ..."),
    dtype: str = typer.Option("auto", help=DTYPE_HELP),
    log_level: str = typer.Option("info"),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help=TRUST_HELP),
) -> None:
    """Serve the model as an OpenAI-compatible embeddings API (POST /v1/embeddings)."""
    from bellm_st.api import default_model_name, inference_dtype
    from bellm_st.module import check_backend

    try:
        check_backend(backend)
    except ValueError as error:
        _fail(error)
    if backend == "onnx" and dtype != "auto":
        _fail(ValueError(f"--dtype {dtype} does not apply to --backend onnx (the graph keeps its own precision); "
                         "drop --dtype"))
    _check_dtype(dtype)

    try:
        from bellm_st.serving import serve as run_server
    except ImportError as error:
        _fail(ImportError(f"{error}; the server needs its extra: pip install 'bellm-st[serve]'"))

    try:
        settings = ServerSettings(
            model_id=served_model_name or (Path(model).name if model and Path(model).is_dir() else model)
            or default_model_name(),
            api_key=api_key,
            max_batch_size=max_batch_size,
            max_batch_tokens=max_batch_tokens,
            batch_wait_seconds=batch_wait_ms / 1000,
            max_queue_items=max_queue_items,
            queue_full_status=queue_full_status,
            max_items_per_request=max_items_per_request,
            max_input_chars=max_input_chars,
            long_input=long_input,
            max_payload_bytes=max_payload_bytes,
            request_body_timeout_seconds=request_body_timeout_seconds,
            graceful_shutdown_seconds=graceful_shutdown_seconds,
        )
    except ValueError as error:
        _fail(error)
    served = _load_model(model, device, trust_remote_code, backend)
    served.to(inference_dtype(dtype, served.device))
    run_server(served, settings, host=host, port=port, log_level=log_level)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
