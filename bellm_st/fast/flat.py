"""Flat batches: every text of a batch end to end in one row, attention kept inside each text.

Batching by exact token length (``encode_bulk``'s other path) needs no padding, but it cuts a
collection into one batch per length, and most of those batches are too small to keep a large
GPU busy (figures in docs/BENCHMARKS.md, "GPU: encoding throughput"). A flat batch holds texts
of any length, so every batch can be full; and the model builds no attention mask at all,
which also removes the check transformers makes on the device for every padding-free batch
(``find_packed_sequence_indices`` reads a device value, so the host waits for the GPU once per
batch).

How: the backbone's attention implementation is replaced, once, by one registered with
transformers' ``AttentionInterface`` that serves both kinds of call (:func:`route_flat_batches`).
A call that carries text boundaries (``cu_seq_lens_q``/``max_length_q``, the names transformers
uses for variable-length kernels) runs our variable-length attention; any other call runs the
implementation the model was loaded with, with the mask transformers built for it. Nothing is
switched per batch, so padded and flat forwards of one model may run at the same time. A flat
forward hands the model an empty 4-D attention mask (:func:`flat_marker_mask`): transformers
returns a prepared 4-D mask as it is, so no mask is built and no value is read back from the
device (``find_packed_sequence_indices`` would read one, making the host wait for the GPU once
per batch). The variable-length attention reads each layer's direction from ``module.is_causal``,
which the bi-directional patch sets, so the lower layers stay causal and the patched ones attend
both ways within each text. On CUDA GPUs with Triton it runs our packed kernel
(:mod:`bellm_st.fast.packed_attention`, several short texts per tile), otherwise, or for long texts,
PyTorch's variable-length flash kernel (``torch.nn.attention.varlen.varlen_attn``), both in half
precision; elsewhere a per-text SDPA loop gives the same result slowly (and Triton's CPU
interpreter runs the packed kernel in the tests). :data:`FLAT_ROW` is the layout
(:class:`bellm_st.module.BatchLayout`) that ``encode_bulk`` gives its batches.
"""

from __future__ import annotations

import inspect
import itertools
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from bellm_st.bidirectional import RELEASE_NOTE, attention_reach, text_config
from bellm_st.fast.packed_attention import packed_attention, packed_attention_available
from bellm_st.module import BATCH_LAYOUT, BeLLMEncoder
from bellm_st.pooling import PoolingMode
from bellm_st.tokenization import TokenizedBatch

ROUTED_PREFIX = "bellm_flat_or_"  # the routed implementation's name: this prefix, then the model's own
FLAT_FEATURE = "cu_seq_lens"  # the texts' start offsets in the row, plus its end
TEXT_OF_TOKEN = "bellm_text_of_token"  # keyword that hands the packed kernel each token's text
PACKED_LONGEST = 1024  # longest text for the packed kernel with heads of <= 64 dims (see packed_longest)
PACKED_LONGEST_WIDE_HEADS = 64  # the same for wider heads
FLAT_DTYPES = (torch.float16, torch.bfloat16)  # what the flash kernel computes in


def flat_features(batch: TokenizedBatch) -> dict[str, Any]:
    """Features of one flat row: ids, position ids restarting at each text, boundaries, text of each token."""
    lengths = batch.lengths
    boundaries = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    features: dict[str, Any] = {
        "input_ids": torch.from_numpy(batch.ids.astype(np.int64)).unsqueeze(0),
        "position_ids": torch.from_numpy(batch.position_in_text).unsqueeze(0),
        FLAT_FEATURE: torch.from_numpy(boundaries),
        "sequence_index": torch.from_numpy(batch.text_of_token),
        "max_length": int(lengths.max()),
        BATCH_LAYOUT: FLAT_ROW,
    }
    if batch.text_mask is not None:
        features["text_mask"] = torch.from_numpy(batch.text_mask.astype(np.int64)).unsqueeze(0)
    return features


def _load_varlen_kernel() -> tuple[Any, frozenset[str]] | None:
    """PyTorch's variable-length flash attention and the keywords this release's version takes."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn, frozenset(inspect.signature(varlen_attn).parameters)


# Looked up once at import, so that compiled layers trace straight to the kernel.
_VARLEN_KERNEL = _load_varlen_kernel()


def _has_sliding_layers(config: Any) -> bool:
    return bool(getattr(config, "sliding_window", None)) or "sliding_attention" in (getattr(config, "layer_types", None) or ())


def _varlen_kernel_problem(config: Any) -> str | None:
    """Why PyTorch's variable-length flash kernel cannot serve this model (``None`` when it can)."""
    if _VARLEN_KERNEL is None:
        return "this PyTorch has no torch.nn.attention.varlen"
    accepted = _VARLEN_KERNEL[1]
    if "scale" not in accepted:
        return "this PyTorch's varlen attention takes no scale (it came in later releases)"
    if _has_sliding_layers(config) and "window_size" not in accepted:
        return "the model has sliding-window layers and this PyTorch's varlen attention takes no window"
    return None


def flat_attention_unsupported(model: PreTrainedModel, device: torch.device) -> str | None:
    """Why flat batches cannot run on ``model`` here (``None`` when they can)."""
    config = text_config(model)
    routing_problem = _routing_problem(config)
    if routing_problem is not None:
        return routing_problem
    if device.type != "cuda":
        return "the variable-length flash kernel needs a CUDA device"
    if torch.version.hip is not None:
        return "the variable-length flash kernel was not verified on ROCm"
    if torch.cuda.get_device_capability(device) < (8, 0):
        return "the variable-length flash kernel needs an Ampere (compute capability 8.0) or newer GPU"
    kernel_problem = _varlen_kernel_problem(config)
    if kernel_problem is not None and not packed_attention_available(device):
        return f"{kernel_problem}, and Triton (for the packed kernel) is missing"
    if model.dtype not in FLAT_DTYPES:
        return f"the flash kernel computes in fp16 or bf16, the model is {model.dtype}"
    if configured_attention(config) != "sdpa":
        return f"the model was loaded with {configured_attention(config)!r} attention, not 'sdpa'"
    return None


def packed_longest(config: Any) -> int:
    """The longest text (tokens) for which the packed kernel beats the flash kernel, by head size.

    With 64-wide heads (SmolLM2) the packed kernel was faster up to the longest texts tried; with
    128- and 256-wide heads it was faster on sentences and slower on paragraphs, so there it
    serves sentence-length batches only (lengths in between were not measured). The
    measurements are in docs/BENCHMARKS.md ("Packed attention kernel").
    """
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return PACKED_LONGEST if head_dim <= 64 else PACKED_LONGEST_WIDE_HEADS


def use_packed_attention(model: PreTrainedModel, device: torch.device, longest: int) -> bool:
    """Whether a flat forward's attention goes to the packed kernel (:mod:`bellm_st.fast.packed_attention`).

    It does on GPUs with Triton, in fp16/bf16, for texts up to :func:`packed_longest`, and for
    any length when PyTorch's flash kernel cannot serve the model; on CPU only in Triton's
    interpreter (tests). Decided before the forward, so compiled layers see a plain keyword
    rather than a check.
    """
    if device.type == "cuda" and model.dtype not in FLAT_DTYPES:
        return False
    if not packed_attention_available(device):
        return False
    config = text_config(model)
    return _varlen_kernel_problem(config) is not None or longest <= packed_longest(config)


def _reference_attention(query, key, value, bounds, window, scaling) -> torch.Tensor:
    """The same attention as the kernel, one text at a time with SDPA: (heads, tokens, dim) in, out."""
    outputs = []
    cuts = bounds.tolist()
    for start, end in itertools.pairwise(cuts):
        positions = torch.arange(end - start, device=query.device)
        distance = positions[:, None] - positions[None, :]  # query minus key
        allowed = torch.ones_like(distance, dtype=torch.bool)
        if window[0] >= 0:
            allowed &= distance <= window[0]
        if window[1] >= 0:
            allowed &= -distance <= window[1]
        outputs.append(torch.nn.functional.scaled_dot_product_attention(
            query[:, start:end], key[:, start:end], value[:, start:end], attn_mask=allowed, scale=scaling))
    return torch.cat(outputs, dim=1)


def _kernel_attention(kernel: tuple[Any, frozenset[str]], query, key, value, bounds, longest, window, scaling):
    """PyTorch's varlen kernel on (1, heads, tokens, dim) inputs; (1, tokens, heads, dim) out.

    Only keywords this release's kernel takes are passed: grouped key/value heads are repeated
    where it has no ``enable_gqa``, and a plain causal flag stands in for ``window_size`` where
    the model needs no window (:func:`flat_attention_unsupported` refuses the other cases).
    """
    varlen_attn, accepted = kernel
    groups = query.shape[1] // key.shape[1]
    options: dict[str, Any] = {"scale": scaling}
    if "window_size" in accepted:
        options["window_size"] = window
    elif window in ((-1, 0), (-1, -1)):
        options["is_causal"] = window == (-1, 0)
    else:
        raise NotImplementedError("this PyTorch's varlen attention has no sliding window")
    if groups > 1 and "enable_gqa" in accepted:
        options["enable_gqa"] = True
    elif groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    output = varlen_attn(query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1),
                         bounds, bounds, longest, longest, **options)
    return output.unsqueeze(0)


def varlen_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract: (1, heads, tokens, dim) in, (1, tokens, heads, dim) out."""
    bounds, longest = kwargs["cu_seq_lens_q"], int(kwargs["max_length_q"])
    if query.shape[0] != 1:
        raise ValueError(f"flat batches hold one row, got {query.shape[0]}")
    if sliding_window is None and getattr(module, "sliding_window", None):
        raise RuntimeError(
            f"a sliding-window layer ({type(module).__name__}) called the attention function without its "
            f"`sliding_window` keyword, so flat batches would attend past the window {RELEASE_NOTE}"
        )
    is_causal = kwargs.get("is_causal")
    window = attention_reach(module.is_causal if is_causal is None else is_causal, sliding_window)
    text_of_token = kwargs.get(TEXT_OF_TOKEN)
    if text_of_token is not None:
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        output = packed_attention(query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1),
                                  text_of_token, bounds, scale, window, longest=longest)
        return output.unsqueeze(0), None
    groups = query.shape[1] // key.shape[1]
    if query.is_cuda and _VARLEN_KERNEL is not None and query.dtype in FLAT_DTYPES:
        return _kernel_attention(_VARLEN_KERNEL, query, key, value, bounds, longest, window, scaling), None
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    output = _reference_attention(query[0], key[0], value[0], bounds, window, scaling)
    return output.transpose(0, 1).unsqueeze(0), None


def flat_marker_mask(device: torch.device) -> torch.Tensor:
    """The attention mask a flat forward hands the model: empty, 4-D, so transformers builds none."""
    return torch.empty((1, 1, 0, 0), dtype=torch.bool, device=device)


def _is_flat_marker(attention_mask: Any) -> bool:
    return isinstance(attention_mask, torch.Tensor) and attention_mask.ndim == 4 and attention_mask.shape[-2] == 0


def configured_attention(config: Any) -> str:
    """The attention implementation the model was loaded with, also once it is routed for flat batches."""
    return config._attn_implementation.removeprefix(ROUTED_PREFIX)


def routed_attention(configured: str) -> str:
    """Register (idempotent) and name the attention that runs flat calls and hands the rest to ``configured``.

    One function per call rather than a switch per batch: whether a call is flat is read from
    its own keywords, so nothing shared changes while batches run. The mask builder of
    ``configured`` is registered under the same name, so padded calls get their usual mask.
    """
    name = ROUTED_PREFIX + configured
    if name in ALL_ATTENTION_FUNCTIONS:
        return name
    padded_attention = ALL_ATTENTION_FUNCTIONS[configured]

    def attention_forward(module: nn.Module, query, key, value, attention_mask, **kwargs):
        if "cu_seq_lens_q" in kwargs:
            return varlen_attention_forward(module, query, key, value, attention_mask, **kwargs)
        if _is_flat_marker(attention_mask):
            raise RuntimeError(
                "a flat batch reached the attention function without its text boundaries (`cu_seq_lens_q`), "
                f"so texts would see each other {RELEASE_NOTE}"
            )
        return padded_attention(module, query, key, value, attention_mask, **kwargs)

    if configured in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[configured])
    AttentionInterface.register(name, attention_forward)
    return name


def _routing_problem(config: Any) -> str | None:
    """Why a model's attention cannot be routed for flat batches on any device (``None`` when it can)."""
    if getattr(config, "attn_logit_softcapping", None):
        return "the model caps its attention logits (soft-capping), which the flat kernels do not do"
    if configured_attention(config) not in ALL_ATTENTION_FUNCTIONS:
        return (
            f"the model was loaded with {configured_attention(config)!r} attention; flat batches need one registered "
            "with transformers' AttentionInterface (for the padded calls beside them): load it with "
            "attn_implementation='sdpa'"
        )
    return None


class _RegisterRoutedAttention:
    """Forward pre-hook of a routed backbone: registers the routed attention in the running process.

    Registration is per process, but the routed name travels with the model: pickled into
    another process (sentence-transformers' multi-process pool), the model would otherwise name
    an attention transformers there does not know, and even its padded forwards would fail.
    """

    def __init__(self, configured: str):
        self.configured = configured

    def __call__(self, module: nn.Module, args: tuple) -> None:
        routed_attention(self.configured)


def route_flat_batches(model: PreTrainedModel) -> None:
    """Let ``model`` run flat batches beside padded ones, from now on (idempotent).

    The model's attention implementation is replaced once by :func:`routed_attention`, which
    runs padded calls exactly as before. A racing padded forward is safe: the old and the new
    implementation build the same mask and run the same kernel for it.
    """
    config = text_config(model)
    if config._attn_implementation.startswith(ROUTED_PREFIX):
        return
    problem = _routing_problem(config)
    if problem is not None:
        raise ValueError(f"flat batches cannot run here: {problem}")
    model.register_forward_pre_hook(_RegisterRoutedAttention(config._attn_implementation))
    config._attn_implementation = routed_attention(config._attn_implementation)


def pool_flat(
    states: torch.Tensor,
    sequence_index: torch.Tensor,
    bounds: torch.Tensor,
    text_mask: torch.Tensor | None,
    pooling: PoolingMode,
) -> torch.Tensor:
    """Reduce the ``(tokens, hidden)`` states of a flat batch (texts end to end) to ``(texts, hidden)`` in float32.

    ``sequence_index`` gives each token's text, ``bounds`` the texts' start offsets plus the end.
    """
    texts = bounds.shape[0] - 1
    if pooling == "last":  # pick the rows first: a batch's states in float32 can take gigabytes
        return states[bounds[1:].long() - 1].float()
    if pooling == "mean":
        weighted, weights = states.float(), None
    elif text_mask is None:
        raise ValueError("pooling='mean_text' needs the `text_mask` feature produced by BeLLMEncoder.preprocess")
    else:
        weights = text_mask.to(torch.float32)
        weighted = states.to(torch.float32, copy=True).mul_(weights[:, None])
    sums = torch.zeros((texts, states.shape[1]), dtype=torch.float32, device=states.device)
    sums.index_add_(0, sequence_index, weighted)
    if weights is None:
        counts = (bounds[1:] - bounds[:-1]).to(torch.float32)
    else:
        counts = torch.zeros(texts, dtype=torch.float32, device=states.device).index_add_(0, sequence_index, weights)
    return sums / counts.clamp(min=1)[:, None]


class FlatRow:
    """Every text of a batch end to end in one row (a :class:`bellm_st.module.BatchLayout`)."""

    def preprocess(self, encoder: BeLLMEncoder, texts: list[str], prompt: str | None, max_length: int) -> dict[str, Any]:
        return flat_features(encoder.tokenize_unpadded(texts, prompt, max_length))

    def embed(self, encoder: BeLLMEncoder, features: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The states as one row, and one pooled vector per text."""
        bounds, longest = features[FLAT_FEATURE], features["max_length"]
        packed = {}
        if use_packed_attention(encoder.decoder, bounds.device, longest):
            packed[TEXT_OF_TOKEN] = features["sequence_index"]
        route_flat_batches(encoder.decoder)
        outputs = encoder.auto_model(
            input_ids=features["input_ids"], position_ids=features["position_ids"], use_cache=False,
            attention_mask=flat_marker_mask(features["input_ids"].device),
            cu_seq_lens_q=bounds, cu_seq_lens_k=bounds, max_length_q=longest, max_length_k=longest, **packed,
        )
        text_mask = features.get("text_mask")
        embedding = pool_flat(outputs.last_hidden_state[0], features["sequence_index"], bounds,
                              None if text_mask is None else text_mask[0], encoder.pooling)
        return outputs.last_hidden_state, embedding

    def __repr__(self) -> str:
        return "FLAT_ROW"


FLAT_ROW = FlatRow()


def is_flat(features: dict[str, Any]) -> bool:
    return isinstance(features.get(BATCH_LAYOUT), FlatRow)
