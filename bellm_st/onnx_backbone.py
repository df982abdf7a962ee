"""The backbone run by ONNX Runtime: what :class:`~bellm_st.module.BeLLMEncoder` calls with ``backend="onnx"``.

The graph (written by ``bellm-st export --onnx`` or :func:`bellm_st.fast.export_onnx`) takes
token ids and the attention mask and returns the last hidden states, the bi-directional layers
included; the template, tokenizer, pooling and normalisation stay in the module, the same code
for both backends. It lives in the model folder at ``onnx/model.onnx``, where
sentence-transformers' own ONNX backend looks; ``model_kwargs={"file_name": ...}`` picks another
graph of that folder (the int8 one, ``onnx/model_int8.onnx``).

Threads are set here rather than left to ONNX Runtime, whose defaults misjudge small machines:
it counts the host's cores, not the CPUs a container or an affinity mask allows, and its idle
threads spin, taking the cores that tokenisation and the module's torch code need between runs.

This file travels in exported folders with the other method files, so it needs nothing of
bellm-st; ONNX Runtime is imported only when a graph loads.
"""

from __future__ import annotations

import importlib
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, PretrainedConfig
from transformers.modeling_outputs import BaseModelOutput

GRAPH_FOLDER = "onnx"
GRAPH_FILE = f"{GRAPH_FOLDER}/model.onnx"
GRAPH_INPUTS = ("input_ids", "attention_mask")
GRAPH_OUTPUT = "last_hidden_state"
# The graph's record of the layers it was exported with, checked against the folder's settings.
BIDIRECTIONAL_METADATA = "bellm_st.bidirectional_layer_indices"
EXPORT_COMMAND = "bellm-st export --onnx MODEL FOLDER"
ONNX_MODEL_KWARGS = ("file_name", "provider", "session_options")
# Set by the loaders for torch checkpoints (trust and safetensors); a graph loads no pickle and runs no code.
LOADER_KWARGS = ("trust_remote_code", "use_safetensors")
CGROUP_CPU_LIMIT = Path("/sys/fs/cgroup/cpu.max")


def require_onnxruntime() -> Any:
    try:
        return importlib.import_module("onnxruntime")
    except ImportError as error:
        raise ImportError(
            f"{error}; backend='onnx' needs ONNX Runtime: pip install onnxruntime (or 'bellm-st[onnx]')"
        ) from error


def usable_cpus() -> int:
    """The CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (containers)."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = CGROUP_CPU_LIMIT.read_text().split()
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return count


def small_machine_options(onnxruntime: Any) -> Any:
    """Session options that hold on a few shared cores: torch's thread count within the usable CPUs, no spinning.

    torch's count is the process's thread budget (``torch.set_num_threads``, ``OMP_NUM_THREADS``),
    so both runtimes share one setting; idle threads sleep instead of spinning, as OpenMP's passive
    wait policy does (docs/BENCHMARKS.md measures both choices).
    """
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = max(1, min(torch.get_num_threads(), usable_cpus()))
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def graph_path(folder: Path, file_name: str) -> Path:
    """The graph ``file_name`` names in the folder's ``onnx/`` (``model_int8.onnx`` or ``onnx/model_int8.onnx``)."""
    name = file_name.removeprefix(f"{GRAPH_FOLDER}/")
    if Path(name).name != name:
        raise ValueError(f"file_name={file_name!r} must name a file of the {GRAPH_FOLDER}/ folder, e.g. {GRAPH_FILE!r}")
    path = folder / GRAPH_FOLDER / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} holds no ONNX graph {path.relative_to(folder)}; write it with `{EXPORT_COMMAND}` "
            "(or bellm_st.fast.export_onnx(model, folder)), or load the folder with backend='torch'"
        )
    return path


class OnnxBackbone:
    """The decoder's forward pass as one ONNX graph: called like the torch backbone, returns ``last_hidden_state``."""

    def __init__(self, folder: Path, graph: Path, config: PretrainedConfig, session: Any):
        self.folder = folder
        self.graph = graph
        self.config = config
        self.session = session
        recorded = session.get_modelmeta().custom_metadata_map.get(BIDIRECTIONAL_METADATA)
        self.bidirectional_layer_indices = None if recorded is None else tuple(
            int(index) for index in recorded.split(",") if index
        )

    @classmethod
    def load(
        cls,
        folder: str | os.PathLike,
        file_name: str = GRAPH_FILE,
        provider: str = "CPUExecutionProvider",
        session_options: Any = None,
        trust_remote_code: bool = False,
        **torch_only: Any,
    ) -> OnnxBackbone:
        """Open the graph of a saved model folder; ``session_options`` replaces :func:`small_machine_options`."""
        torch_only = {key: value for key, value in torch_only.items() if key not in LOADER_KWARGS}
        if torch_only:
            raise ValueError(
                f"model_kwargs {sorted(torch_only)} do not apply to backend='onnx' (the graph keeps its own precision "
                f"and attention); it takes {', '.join(ONNX_MODEL_KWARGS)}"
            )
        onnxruntime = require_onnxruntime()
        folder = Path(folder)
        graph = graph_path(folder, file_name)
        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
        options = small_machine_options(onnxruntime) if session_options is None else session_options
        session = onnxruntime.InferenceSession(str(graph), options, providers=[provider])
        return cls(folder, graph, config, session)

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **unused: Any) -> BaseModelOutput:
        feeds = {"input_ids": input_ids.cpu().numpy(), "attention_mask": attention_mask.cpu().numpy()}
        (hidden_states,) = self.session.run([GRAPH_OUTPUT], feeds)
        return BaseModelOutput(last_hidden_state=torch.from_numpy(hidden_states))

    def save_pretrained(self, output_path: str | os.PathLike, **unused: Any) -> None:
        """The backbone's part of a saved folder: its config and the ``onnx/`` folder the graph came from."""
        self.config.save_pretrained(output_path)
        target = Path(output_path) / GRAPH_FOLDER
        if self.graph.parent.resolve() != target.resolve():
            shutil.copytree(self.graph.parent, target, dirs_exist_ok=True)

    def __repr__(self) -> str:
        return f"OnnxBackbone({self.graph})"
