"""A CPU fast path: the whole encoder as one ONNX graph, run by ONNX Runtime.

:func:`export_onnx` traces a loaded model — backbone with its bi-directional layers, pooling and
any modules after it — from token ids to the sentence embedding, and writes a folder holding the
graph, the tokenizer and the BeLLM settings. :class:`OnnxEncoder` loads that folder and encodes
texts without torch in the forward pass; it tokenises with the same function as
:class:`~bellm_st.module.BeLLMEncoder`, so both give the same vectors (fp32, measured in
``docs/BENCHMARKS.md``).

Why a traced graph keeps the bi-directional layers: the patch acts in forward pre-hooks that
build the non-causal mask from the mask the model built, and ``torch.export`` records whatever
the hooks compute, so the graph holds one causal mask for the lower layers and one
bi-directional mask for the patched ones. Padding stays data: the same graph serves left and
right padding and batches without any.

Needs the ``onnx`` extra: ``pip install 'bellm-st[onnx]'``.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoTokenizer

from bellm_st.inputs import validate_texts
from bellm_st.model import bellm_encoder
from bellm_st.module import BeLLMEncoder, preprocess_texts
from bellm_st.prompts import resolve_prompt

ONNX_FILE = "model.onnx"
ONNX_CONFIG_FILE = "bellm_onnx.json"
EXPORT_SAMPLE_TEXTS = ("A man is playing a guitar on the stage tonight.", "Hello.")


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"{error}; the ONNX path needs its extra: pip install 'bellm-st[onnx]'") from error


@contextmanager
def without_harmless_export_warnings() -> Iterator[None]:
    """Hide the exporter's warnings that say nothing about this graph (seen with torch 2.13).

    - "torchvision is not installed. Skipping torchvision::nms" (and three more ops): the
      exporter's registry of every op it knows; a text encoder uses none of torchvision's.
    - "`isinstance(treespec, LeafSpec)` is deprecated": torch's own code, copying a tree spec.
    - "The axis name: batch will not be used, since it shares the same shape constraints with
      another axis: batch": every input names its axes with the same two dimensions, so the
      graph has one ``batch`` and one ``sequence`` axis, as intended.

    Any other warning still shows.
    """

    def not_torchvision(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("torchvision is not installed")

    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    registry_log.addFilter(not_torchvision)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning)
            warnings.filterwarnings(
                "ignore", r"# The axis name: \w+ will not be used, since it shares the same shape constraints", UserWarning
            )
            yield
    finally:
        registry_log.removeFilter(not_torchvision)


class SentenceEmbeddingGraph(torch.nn.Module):
    """The part of a SentenceTransformer that is exported: token tensors in, sentence embedding out."""

    def __init__(self, model: SentenceTransformer):
        super().__init__()
        self.stages = torch.nn.ModuleList(list(model))

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, text_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        features = {"input_ids": input_ids, "attention_mask": attention_mask}
        if text_mask is not None:
            features["text_mask"] = text_mask
        for stage in self.stages:
            features = stage(features)
        return features["sentence_embedding"]


def graph_input_names(encoder: BeLLMEncoder) -> list[str]:
    """The graph's inputs: the text mask only where pooling reads it."""
    return ["input_ids", "attention_mask"] + (["text_mask"] if encoder.pooling == "mean_text" else [])


def check_exportable(model: Any) -> BeLLMEncoder:
    """The model's BeLLM module, or an error saying why this model cannot be exported as it is."""
    encoder = bellm_encoder(model)
    if encoder is None:
        what = (f"a SentenceTransformer whose first module is {type(model[0]).__name__}"
                if isinstance(model, SentenceTransformer) and len(model) else type(model).__name__)
        raise TypeError(
            f"export_onnx needs a bellm-st SentenceTransformer (from bellm_st.load or bellm_st.build), got {what}; "
            "build one from a plain checkpoint with bellm_st.build(path)"
        )
    if hasattr(encoder.auto_model, "peft_config"):
        raise ValueError(
            "the model still carries a LoRA adapter; call model[0].merge_adapter() before exporting "
            "(the graph should hold the merged weights, not the adapter's extra matrices)"
        )
    parameter = next(model.parameters())
    if parameter.device.type != "cpu" or parameter.dtype != torch.float32:
        raise ValueError(
            f"the model is on {parameter.device} in {parameter.dtype}; export an fp32 CPU model: "
            "bellm_st.load(name, device='cpu') (or model.to('cpu', torch.float32))"
        )
    return encoder


def export_onnx(model: SentenceTransformer, output_dir: str | os.PathLike) -> Path:
    """Write ``model`` as an ONNX folder that :class:`OnnxEncoder` loads, for fast CPU inference.

    The graph takes batches of any size and length (dynamic axes) and gives the same
    embeddings as ``model.encode``; the bi-directional layers are part of it. Returns the folder.
    """
    _require("onnxscript")
    encoder = check_exportable(model)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    names = graph_input_names(encoder)
    # Two lengths, so the sample has padding; always padded (the graph takes padded batches) even
    # if the module packs its batches (batch_layout).
    sample = preprocess_texts(
        encoder.tokenizer, list(EXPORT_SAMPLE_TEXTS), encoder.template, None, encoder.max_seq_length, encoder.append_eos
    )
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    was_training = model.training
    graph = SentenceEmbeddingGraph(model).eval()  # shares the model's modules: the model is in eval mode too
    try:
        with torch.no_grad(), without_harmless_export_warnings():
            torch.onnx.export(
                graph,
                tuple(sample[name] for name in names),
                str(output_dir / ONNX_FILE),
                input_names=names,
                output_names=["sentence_embedding"],
                dynamic_shapes={name: {0: batch, 1: sequence} for name in names},
                dynamo=True,
                external_data=True,
                verbose=False,
            )
    finally:
        model.train(was_training)
    encoder.tokenizer.save_pretrained(str(output_dir))
    settings = {
        "inputs": names,
        "template": encoder.template,
        "max_seq_length": encoder.max_seq_length,
        "append_eos": encoder.append_eos,
        "bidirectional_layers": encoder.bidirectional_layers,
        "pooling": encoder.pooling,
        "embedding_dimension": model.get_embedding_dimension(),
        "prompts": {name: prompt for name, prompt in model.prompts.items() if prompt},
        "default_prompt_name": getattr(model, "default_prompt_name", None),
    }
    (output_dir / ONNX_CONFIG_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    return output_dir


def export_merged_onnx(name_or_path: str, output_dir: str | os.PathLike, trust_remote_code: bool = False) -> Path:
    """Load a shipped model, base or saved folder on CPU, merge any adapter, and export it (the CLI's path).

    ``trust_remote_code`` is :func:`bellm_st.load`'s; ``output_dir`` must be new or empty."""
    from bellm_st.api import load
    from bellm_st.export import require_new_folder

    require_new_folder(output_dir)
    model = load(name_or_path, device="cpu", trust_remote_code=trust_remote_code)
    if (encoder := bellm_encoder(model)) is not None:
        encoder.merge_adapter()
    return export_onnx(model, output_dir)  # explains what else it was given


class OnnxEncoder:
    """Encode texts with a folder written by :func:`export_onnx`, through ONNX Runtime on CPU.

    Args:
        folder: the exported folder.
        threads: ONNX Runtime's intra-op threads (default: its own choice, one per physical core).
        session_options: a full ``onnxruntime.SessionOptions`` instead (``threads`` is then ignored).
    """

    def __init__(self, folder: str | os.PathLike, threads: int | None = None, session_options: Any = None):
        onnxruntime = _require("onnxruntime")
        folder = Path(folder)
        config_path = folder / ONNX_CONFIG_FILE
        if not config_path.is_file() or not (folder / ONNX_FILE).is_file():
            raise FileNotFoundError(
                f"{folder} is not an exported bellm-st ONNX folder (no {ONNX_CONFIG_FILE} or {ONNX_FILE}); "
                "write one with bellm_st.fast.export_onnx(model, folder) or `bellm-st export --onnx`"
            )
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads={threads!r} must be a positive int (or None for ONNX Runtime's default)")
        settings = json.loads(config_path.read_text(encoding="utf-8"))
        self.folder = folder
        self.input_names: list[str] = settings["inputs"]
        self.template: str = settings["template"]
        self.max_seq_length: int = settings["max_seq_length"]
        self.append_eos: bool = settings["append_eos"]
        self.bidirectional_layers = settings["bidirectional_layers"]
        self.pooling: str = settings["pooling"]
        self.prompts: dict[str, str] = settings["prompts"]
        self.default_prompt_name: str | None = settings["default_prompt_name"]
        self.embedding_dimension: int = settings["embedding_dimension"]
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
        if session_options is None:
            session_options = onnxruntime.SessionOptions()
            session_options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
            if threads is not None:
                session_options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(
            str(folder / ONNX_FILE), session_options, providers=["CPUExecutionProvider"]
        )

    def get_embedding_dimension(self) -> int:
        return self.embedding_dimension

    def resolve_prompt(self, prompt_name: str | None, prompt: str | None) -> str | None:
        """The prompt for one call, chosen the way sentence-transformers chooses it."""
        if prompt_name is not None and prompt is not None:
            raise ValueError(f"give prompt_name={prompt_name!r} or prompt={prompt!r}, not both")
        return resolve_prompt(self.prompts, self.default_prompt_name, prompt, prompt_name)

    def preprocess(self, texts: Sequence[str], prompt: str | None = None) -> dict[str, torch.Tensor]:
        return preprocess_texts(self.tokenizer, texts, self.template, prompt, self.max_seq_length, self.append_eos)

    def encode(
        self,
        sentences: str | Sequence[str],
        batch_size: int = 32,
        prompt_name: str | None = None,
        prompt: str | None = None,
        normalize_embeddings: bool = False,
    ) -> np.ndarray:
        """Embeddings as a float32 array, one row per text (one vector for a single string).

        Texts are batched by length, as sentence-transformers does, so little compute goes
        into padding.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be a positive int")
        single = isinstance(sentences, str)
        texts = validate_texts([sentences] if single else sentences, where="sentences")
        template_prompt = self.resolve_prompt(prompt_name, prompt)
        order = np.argsort([-len(text) for text in texts], kind="stable")
        vectors = np.empty((len(texts), self.embedding_dimension), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            features = self.preprocess([texts[row] for row in rows], template_prompt)
            feeds = {name: features[name].numpy() for name in self.input_names}
            vectors[rows] = self.session.run(None, feeds)[0]
        if normalize_embeddings:
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors[0] if single else vectors
