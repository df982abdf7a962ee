"""The training recipe: every choice that determines a trained model, as one JSON-able object.

A recipe is saved as ``recipe.json`` beside each trained model and inside every checkpoint, so
``bellm-st train --recipe recipe.json`` reproduces a run and a resumed run can check it continues
the same one. Data paths are stored relative to ``data_dir`` so a recipe travels between machines
(pass ``--data-dir`` where the data lives elsewhere).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bellm_st.api import DEFAULT_BASE, DEFAULT_BIDIRECTIONAL_LAYERS, DEFAULT_POOLING
from bellm_st.fast.packing import DEFAULT_ROW_LENGTH
from bellm_st.module import DEFAULT_MAX_SEQ_LENGTH
from bellm_st.pooling import check_pooling
from bellm_st.prompts import DEFAULT_TEMPLATE, TEXT_SLOT, Template
from bellm_st.pruning import DEFAULT_KEEP_LAYERS, check_bidirectional_fits, check_keep_layers
from bellm_st.training.distillation import DEFAULT_DISTILL_SCALE, DISTILL_LOSSES

RECIPE_FILE = "recipe.json"
DATA_FORMATS = ("auto", "triplets", "nli-triplets", "nli-pairs", "paraphrase-pairs", "scored-pairs")
MIXTURES = ("proportional", "round_robin")
# "bellm": the recipe's weighted contrastive + angle (+ CoSENT) objective; "contrastive": its
# in-batch contrastive part alone (MultipleNegativesRankingLoss), for query -> passage pairs;
# "distill": the teacher's part alone (the distillation pool and its query -> passage pairs).
TASK_LOSSES = ("bellm", "contrastive", "distill")
PROMPT_NAMES = ("query", "document")
BATCH_SAMPLERS = ("no_duplicates", "batch_sampler")



@dataclass
class DataSource:
    """One training file (one task): where it is, how to read it, and how to train on it.

    ``format="auto"`` recognises the format from the header (see :mod:`bellm_st.training.data`).
    ``prompts`` maps a column (``anchor``, ``positive``, ``negative``, ``sentence1``...) to a prompt:
    ``query`` or ``document`` (the recipe's ``query_template``/``document_template``), a full
    template with ``{text}`` or a plain prefix; columns not named get the model's own template.
    ``loss`` is one of :data:`TASK_LOSSES`; ``max_seq_length`` overrides the recipe's
    ``train_max_seq_length`` for this file's batches (e.g. 256 for passages).
    """

    path: str
    format: str = "auto"
    max_rows: int | None = None
    prompts: dict[str, str] = field(default_factory=dict)
    loss: str = "bellm"
    max_seq_length: int | None = None

    def __post_init__(self) -> None:
        if self.format not in DATA_FORMATS:
            raise ValueError(f"data format {self.format!r} is not known; use one of {', '.join(DATA_FORMATS)}")
        if self.max_rows is not None and self.max_rows < 1:
            raise ValueError(f"max_rows={self.max_rows} must be at least 1 (or left out to use every row)")
        if self.loss not in TASK_LOSSES:
            raise ValueError(f"loss {self.loss!r} of {self.path} is not known; use one of {', '.join(TASK_LOSSES)}")
        if self.max_seq_length is not None and (isinstance(self.max_seq_length, bool) or self.max_seq_length < 2):
            raise ValueError(f"max_seq_length={self.max_seq_length!r} of {self.path} must be at least 2 (or left out)")
        if not isinstance(self.prompts, dict) or not all(isinstance(v, str) and v for v in self.prompts.values()):
            raise ValueError(
                f"prompts of {self.path} must map column names to prompts, e.g. "
                '{"anchor": "query", "positive": "document"}; got ' + repr(self.prompts)
            )
        for column, prompt in self.prompts.items():
            if TEXT_SLOT in prompt:
                Template.parse(prompt)

    @classmethod
    def parse(cls, spec: str | dict[str, Any] | DataSource) -> DataSource:
        """Accept ``path``, ``path:format``, ``path:format:max_rows``, a JSON object or a dict from a recipe file."""
        if isinstance(spec, DataSource):
            return spec
        if isinstance(spec, str) and spec.lstrip().startswith("{"):
            try:
                spec = json.loads(spec)
            except json.JSONDecodeError as error:
                raise ValueError(f"cannot read the data spec {spec!r} as JSON ({error.msg})") from None
        if isinstance(spec, dict):
            unknown = set(spec) - {f.name for f in dataclasses.fields(cls)}
            if unknown:
                raise ValueError(
                    f"unknown data source field(s) {', '.join(sorted(unknown))}; use "
                    f"{', '.join(f.name for f in dataclasses.fields(cls))}"
                )
            return cls(**spec)
        parts = spec.split(":")
        if len(parts) == 1:
            return cls(spec)
        if len(parts) > 3 or (parts[1] and parts[1] not in DATA_FORMATS):
            raise ValueError(
                f"cannot read the data spec {spec!r}; write PATH, PATH:FORMAT or PATH:FORMAT:MAX_ROWS "
                f"(FORMAT empty or one of {', '.join(DATA_FORMATS)}), or a JSON object with prompts/loss/max_seq_length"
            )
        max_rows = parts[2] if len(parts) == 3 and parts[2] else None
        if max_rows is not None and not max_rows.isdigit():
            raise ValueError(f"MAX_ROWS in the data spec {spec!r} must be a whole number, got {max_rows!r}")
        return cls(parts[0], parts[1] or "auto", int(max_rows) if max_rows else None)


@dataclass
class Recipe:
    """Hyperparameters, data and seed of one BeLLM training run (defaults follow the BeLLM/AnglE recipe).

    The model fields default to :func:`bellm_st.build`'s defaults, so a trained model and a zero-shot
    one differ only by training. The command line's ``bellm-st train`` options default to these fields.
    """

    base: str = DEFAULT_BASE
    # Start from this trained model instead of building ``base`` (``bellm-st adapt``): a BeLLM
    # model has its adapter merged and gets a fresh LoRA adapter; any other sentence-transformers
    # model is fine-tuned in full. The BeLLM fields below (layers, pooling, template) then come
    # from that model.
    init_model: str | None = None
    # The trained model's "query" and "document" prompts (for encode_query/encode_document), and
    # what a DataSource's prompts "query"/"document" mean while training.
    query_template: str | None = None
    document_template: str | None = None
    bidirectional_layers: int | list[int] = DEFAULT_BIDIRECTIONAL_LAYERS
    # Keep only the first N decoder layers (bellm_st.pruning); bidirectional_layers are the last of those.
    keep_layers: int | None = DEFAULT_KEEP_LAYERS
    pooling: str = DEFAULT_POOLING
    template: str = DEFAULT_TEMPLATE
    append_eos: bool = False
    max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH
    train_max_seq_length: int = 64
    # NLI with hard negatives beat NLI + paraphrase pairs on the dev sets (docs/RESULTS.md).
    train_data: list[DataSource] = field(
        default_factory=lambda: [DataSource("nli/triplets.tsv", "nli-triplets"), DataSource("nli/pairs.tsv", "nli-pairs")]
    )
    dev_data: list[str] = field(default_factory=lambda: ["sts/stsb-dev.tsv", "sts/sick-dev.tsv"])
    data_dir: str = "../shared/data"
    mixture: str = "proportional"
    batch_sampler: str = "no_duplicates"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: str | list[str] = "all-linear"
    learning_rate: float = 2e-4
    batch_size: int = 128
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    epochs: float = 1.0
    max_steps: int = -1
    contrastive_weight: float = 1.0
    angle_weight: float = 1.0
    cosent_weight: float = 0.0
    contrastive_scale: float = 20.0
    # Matryoshka training: every loss part is also computed on the first d dimensions
    # (re-normalised) for each d here, e.g. [64, 128, 256, 576]; None trains the full vector only.
    matryoshka_dims: list[int] | None = None
    angle_scale: float = 20.0
    cosent_scale: float = 20.0
    # Teacher distillation (bellm_st.training.distillation, docs/DISTILLATION.md): a frozen teacher
    # (a sentence-transformers or BeLLM model; None: the shipped default model) encodes every text of
    # the run once into a cache (distill_cache; None: beside the converted bases). distill_weight adds
    # its part to the labelled tasks' batches; distill_pool (a list, [] for the training files' texts
    # alone; None: no pool) and distill_pairs (paraphrase files made into query -> passage pairs, read
    # with the query/document prompts) are tasks of their own that learn from the teacher alone, with
    # weight distill_pool_weight. distill_loss is one of DISTILL_LOSSES; distill_scale the kl loss's
    # inverse temperature.
    distill_teacher: str | None = None
    distill_weight: float = 0.0
    distill_loss: str = "kl"
    distill_scale: float = DEFAULT_DISTILL_SCALE
    distill_pool: list[str] | None = None
    distill_pool_max_rows: int | None = None
    distill_pool_weight: float = 1.0
    distill_pairs: list[str] = field(default_factory=list)
    distill_pair_sentences: int = 4
    distill_pairs_max_seq_length: int = 192
    distill_cache: str | None = None
    # With several GPUs (torchrun), each GPU's contrastive loss also ranks the other GPUs' texts
    # as negatives, so N GPUs train like one GPU with an N times larger batch.
    gather_across_devices: bool = False
    seed: int = 42
    # Texts of a batch go end to end into rows of this many tokens instead of being padded to the
    # longest (same gradients, far fewer tokens on short texts: docs/BENCHMARKS.md). 0 pads as
    # sentence-transformers does.
    packing_row_length: int = DEFAULT_ROW_LENGTH
    # torch.compile each decoder layer (bellm_st.fast.compile_decoder_layers): fused element-wise
    # work and fewer kernel launches, after some compiling. Off by default: it pays on GPUs.
    compile_layers: bool = False
    # Processes preparing batches ahead of the GPU; None: 4 on a GPU machine of 8+ cores, else 0.
    dataloader_workers: int | None = None
    gradient_checkpointing: bool = False
    eval_steps: int = 100
    # A BEIR folder to score retrieval on every eval_steps (and before the first step), with the
    # qrels split to use; the scores per step go to eval_history.json beside the model.
    eval_retrieval: str | None = None
    eval_retrieval_split: str = "test"
    save_steps: int = 100
    save_total_limit: int = 2
    logging_steps: int = 10

    def __post_init__(self) -> None:
        self.train_data = [DataSource.parse(source) for source in self.train_data]
        check_pooling(self.pooling)
        Template.parse(self.template)
        if not self.train_data:
            raise ValueError("train_data is empty; give at least one training file, e.g. nli/triplets.tsv")
        if self.mixture not in MIXTURES:
            raise ValueError(f"mixture={self.mixture!r}; use one of {', '.join(MIXTURES)}")
        if self.batch_sampler not in BATCH_SAMPLERS:
            raise ValueError(f"batch_sampler={self.batch_sampler!r}; use one of {', '.join(BATCH_SAMPLERS)}")
        for name in ("batch_size", "lora_r", "train_max_seq_length", "max_seq_length", "eval_steps", "save_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        if isinstance(self.packing_row_length, bool) or not isinstance(self.packing_row_length, int) or self.packing_row_length < 0:
            raise ValueError(f"packing_row_length={self.packing_row_length!r} must be 0 (pad) or a positive token count, e.g. 256")
        if self.dataloader_workers is not None and (
            isinstance(self.dataloader_workers, bool) or not isinstance(self.dataloader_workers, int) or self.dataloader_workers < 0
        ):
            raise ValueError(f"dataloader_workers={self.dataloader_workers!r} must be None (automatic) or an int >= 0")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate={self.learning_rate} must be positive, e.g. 2e-4")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio={self.warmup_ratio} must be in [0, 1), e.g. 0.05")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise ValueError("set max_steps > 0 or epochs > 0, or the run has nothing to do")
        for name in PROMPT_NAMES:
            if getattr(self, f"{name}_template") is not None and TEXT_SLOT in getattr(self, f"{name}_template"):
                Template.parse(getattr(self, f"{name}_template"))
        if self.matryoshka_dims is not None:
            self.matryoshka_dims = [int(dim) for dim in self.matryoshka_dims]
            if not self.matryoshka_dims or min(self.matryoshka_dims) < 1:
                raise ValueError(f"matryoshka_dims={self.matryoshka_dims} must be positive sizes, e.g. [64, 128, 256, 576]")
        check_keep_layers(self.keep_layers)
        if self.init_model is None:  # otherwise the layer choice comes from init_model
            check_bidirectional_fits(self.bidirectional_layers, self.keep_layers)
        if self.distill_loss not in DISTILL_LOSSES:
            raise ValueError(f"distill_loss={self.distill_loss!r}; use one of {', '.join(DISTILL_LOSSES)}")
        if self.distill_weight < 0:
            raise ValueError(f"distill_weight={self.distill_weight} must be >= 0 (0: no distillation)")
        if self.distill_teacher is not None and not self.uses_teacher:
            raise ValueError(
                f"distill_teacher={self.distill_teacher!r} is set but distill_weight=0 and there is no distill_pool or "
                "distill_pairs, so it would be ignored; give a distill_weight > 0 (e.g. 1.0) or a distill_pool (e.g. [])"
            )
        if self.distill_pool_weight <= 0 and (self.distill_pool is not None or self.distill_pairs):
            raise ValueError(f"distill_pool_weight={self.distill_pool_weight} must be > 0 when there is a distill_pool or distill_pairs")
        if self.distill_pool is not None and not all(isinstance(spec, str) and spec for spec in self.distill_pool):
            raise ValueError(f"distill_pool={self.distill_pool!r} must be a list of files (PATH or PATH:COLUMN); [] for the training files alone")
        if self.distill_pool_max_rows is not None and self.distill_pool_max_rows < 1:
            raise ValueError(f"distill_pool_max_rows={self.distill_pool_max_rows} must be at least 1 (or left out for the whole pool)")
        if self.distill_pair_sentences < 1 or self.distill_pairs_max_seq_length < 2:
            raise ValueError(
                f"distill_pair_sentences={self.distill_pair_sentences} must be >= 1 and "
                f"distill_pairs_max_seq_length={self.distill_pairs_max_seq_length} >= 2"
            )
        if self.distill_scale <= 0:
            raise ValueError(f"distill_scale={self.distill_scale} must be positive, e.g. {DEFAULT_DISTILL_SCALE}")
        weights = (self.contrastive_weight, self.angle_weight, self.cosent_weight)
        if min(weights) < 0 or max(weights) == 0:
            raise ValueError(
                f"loss weights contrastive={weights[0]}, angle={weights[1]}, cosent={weights[2]} must be >= 0 "
                "with at least one positive"
            )

    @property
    def uses_teacher(self) -> bool:
        """Whether a teacher takes part: a weight on the labelled tasks, a pool or query -> passage pairs."""
        return self.distill_weight > 0 or self.distill_pool is not None or bool(self.distill_pairs)

    def with_changes(self, **changes: Any) -> Recipe:
        """A copy with some fields replaced (``None`` values are ignored: "not given on the command line")."""
        given = {key: value for key, value in changes.items() if value is not None}
        unknown = set(given) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown recipe field(s) {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **given)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``recipe.json`` into ``folder``."""
        path = Path(folder) / RECIPE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Recipe:
        """Read a recipe file (or the ``recipe.json`` inside a model folder)."""
        path = Path(path)
        if path.is_dir():
            path = path / RECIPE_FILE
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"no recipe at {path}; give the recipe.json written beside a trained model") from None
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {error.lineno}: not valid JSON ({error.msg})") from None
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"{path}: unknown recipe field(s) {', '.join(sorted(unknown))}; check the spelling")
        return cls(**values)

    def resolve(self, relative: str, data_dir: str | os.PathLike | None = None) -> Path:
        """A data path as a file on this machine: absolute paths as they are, others under the data folder."""
        path = Path(relative)
        return path if path.is_absolute() else Path(data_dir or self.data_dir) / path
