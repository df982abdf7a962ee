"""A CPU fast path: the backbone as one ONNX graph in the model folder, for ``backend="onnx"``.

:func:`export_onnx` traces a loaded model's backbone — the decoder with its bi-directional
layers — from token ids to the last hidden states and writes it to ``onnx/model.onnx`` in the
folder the model was saved to, where :class:`~bellm_st.module.BeLLMEncoder` with
``backend="onnx"`` (and sentence-transformers' ``SentenceTransformer(folder, backend="onnx")``)
finds it. The template, tokenizer, pooling and normalisation stay in the module, shared by
both backends, so the vectors are the same (fp32, measured in ``docs/BENCHMARKS.md``).
:func:`shipped_onnx_folder` exports a shipped model once, on first use, into the cache.

Why a traced graph keeps the bi-directional layers: the patch acts in forward pre-hooks that
build the non-causal mask from the mask the model built, and ``torch.export`` records whatever
the hooks compute, so the graph holds one causal mask for the lower layers and one
bi-directional mask for the patched ones. Padding stays data: the same graph serves left and
right padding and batches without any.

Needs the ``onnx`` extra: ``pip install 'bellm-st[onnx]'``.
"""

from __future__ import annotations

import importlib
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from sentence_transformers import SentenceTransformer

from bellm_st.model import bellm_encoder
from bellm_st.module import CONFIG_FILE, BeLLMEncoder, preprocess_texts
from bellm_st.onnx_backbone import BIDIRECTIONAL_METADATA, GRAPH_FILE, GRAPH_INPUTS, GRAPH_OUTPUT

EXPORT_SAMPLE_TEXTS = ("A man is playing a guitar on the stage tonight.", "Hello.")
SHIPPED_EXPORTS = "onnx"  # the cache's folder of exported shipped models, beside the converted bases

logger = logging.getLogger(__name__)


def require_extra(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"{error}; the ONNX path needs its extra: pip install 'bellm-st[onnx]'") from error


class BackboneGraph(torch.nn.Module):
    """What is exported: the backbone, bi-directional layers included; token ids in, last hidden states out."""

    def __init__(self, encoder: BeLLMEncoder):
        super().__init__()
        self.backbone = encoder.auto_model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


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
    if encoder.backend != "torch":
        raise ValueError(f"the model already runs an exported graph (backend={encoder.backend!r}); "
                         "export from the model loaded with backend='torch'")
    if hasattr(encoder.auto_model, "peft_config"):
        raise ValueError(
            "the model still carries a LoRA adapter; call model[0].merge_adapter() before exporting "
            "(the graph should hold the merged weights, not the adapter's extra matrices)"
        )
    parameter = next(encoder.parameters())
    if parameter.device.type != "cpu" or parameter.dtype != torch.float32:
        raise ValueError(
            f"the model is on {parameter.device} in {parameter.dtype}; export an fp32 CPU model: "
            "bellm_st.load(name, device='cpu') (or model.to('cpu', torch.float32))"
        )
    return encoder


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


def export_onnx(model: SentenceTransformer, folder: str | os.PathLike) -> Path:
    """Add ``model``'s backbone as ``onnx/model.onnx`` to the folder it was saved to (``model.save(folder)``).

    The graph takes batches of any size and length (dynamic axes); loading the folder with
    ``backend="onnx"`` then gives ``model.encode``'s embeddings from ONNX Runtime. An existing
    graph is never written over. Returns the graph's path.
    """
    require_extra("onnxscript")
    encoder = check_exportable(model)
    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{folder} holds no saved BeLLM model ({CONFIG_FILE}); save it there first: "
                                "model.save(folder), or use `bellm-st export --onnx MODEL FOLDER`")
    graph_path = folder / GRAPH_FILE
    if graph_path.exists():
        raise FileExistsError(
            f"{graph_path} exists already; delete the onnx/ folder to export again (nothing was written)"
        )
    # Two lengths, so the sample has padding; always padded (the graph takes padded batches) even
    # if the module packs its batches (batch_layout).
    sample = preprocess_texts(
        encoder.tokenizer, list(EXPORT_SAMPLE_TEXTS), encoder.template, None, encoder.max_seq_length, encoder.append_eos
    )
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    was_training = encoder.training
    graph = BackboneGraph(encoder).eval()  # shares the encoder's backbone: it is in eval mode too
    try:
        with torch.no_grad(), without_harmless_export_warnings():
            program = torch.onnx.export(
                graph,
                tuple(sample[name] for name in GRAPH_INPUTS),
                input_names=list(GRAPH_INPUTS),
                output_names=[GRAPH_OUTPUT],
                dynamic_shapes={name: {0: batch, 1: sequence} for name in GRAPH_INPUTS},
                dynamo=True,
                verbose=False,
            )
    finally:
        encoder.train(was_training)
    program.model.metadata_props[BIDIRECTIONAL_METADATA] = ",".join(map(str, encoder.bidirectional_layer_indices))
    graph_path.parent.mkdir(exist_ok=True)
    program.save(str(graph_path), external_data=True)
    return graph_path


def shipped_onnx_folder(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """A shipped model or base as an exported folder with its graph, written on first use into the cache.

    Like a converted base (:func:`bellm_st.bases.cached_folder`): exported once, in a temporary
    folder renamed into place, under a lock; named with the bellm-st version, whose shipped
    adapters and defaults it holds.
    """
    import bellm_st
    from bellm_st.bases import cache_root, cached_folder
    from bellm_st.export import export_merged

    target = cache_root(cache_dir) / SHIPPED_EXPORTS / f"{name}-{bellm_st.__version__}"

    def export(work_dir: Path) -> Path:
        logger.warning("exporting %s to ONNX once (a few minutes on a small CPU); later loads reuse %s", name, target)
        return export_merged(name, work_dir / "model", onnx=True, cache_dir=cache_dir)

    return cached_folder(target, export)
