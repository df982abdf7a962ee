"""Per-layer bi-directional attention for decoder-only transformers (the heart of BeLLM).

A decoder builds one causal mask per forward pass and hands it to every layer. To make chosen
layers bi-directional we intercept the mask *at those layers only*: a forward pre-hook reads
which key positions are real tokens from the mask the model built, asks transformers'
``masking_utils`` for the bi-directional mask of the same attention implementation (sdpa,
eager, flash), and marks the layer's attention module ``is_causal = False`` so that SDPA/flash
kernels never fall back to their built-in causal path when no mask is needed (a batch without
padding). Layers below the patched ones run untouched.

Why derive the padding from the incoming mask instead of remembering the model's 2-D
``attention_mask``: gradient checkpointing re-runs layers during backward, after other
forward passes may have happened (a contrastive loss embeds anchors, positives and negatives
separately), so any state kept between the model call and the layer call would be stale. The
mask handed to the layer is always the right one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import transformers
from torch import nn
from transformers import PreTrainedModel, masking_utils
from transformers.cache_utils import Cache

FULL_ATTENTION = "full_attention"
SLIDING_ATTENTION = "sliding_attention"

BidirectionalLayers = int | Sequence[int]

# What the patch reads from transformers' layer calls (mask keyword and shapes, the cache, the
# mask builders) can change between releases; every such change must stop with this note rather
# than give causal layers or wrong vectors.
RELEASE_NOTE = (
    f"(installed: transformers {transformers.__version__}; bellm-st is tested with the versions pyproject.toml "
    "allows, so installing one of those is the fix until this release is supported)"
)
_MASK_BUILDERS = ("create_bidirectional_mask", "create_bidirectional_sliding_window_mask")
_missing_builders = [name for name in _MASK_BUILDERS if not hasattr(masking_utils, name)]
if _missing_builders:
    raise ImportError(f"transformers.masking_utils has no {', '.join(_missing_builders)} {RELEASE_NOTE}")


def text_config(model: PreTrainedModel) -> Any:
    """The config that describes the decoder stack (multimodal models nest it)."""
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def find_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """Locate the list of decoder layers without knowing the architecture's attribute names."""
    config = text_config(model)
    num_layers = getattr(config, "num_hidden_layers", None)
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and name.split(".")[-1] == "layers" and len(module) == num_layers
    ]
    if not candidates:
        raise ValueError(
            f"could not find the {num_layers} decoder layers of {type(model).__name__}; "
            "bellm-st needs a transformers decoder whose layers live in a ModuleList named `layers`"
        )
    return min(candidates, key=lambda item: item[0].count("."))[1]


def resolve_layer_indices(num_layers: int, bidirectional_layers: BidirectionalLayers) -> tuple[int, ...]:
    """Turn ``k`` (the last k layers) or an explicit list of indices into sorted layer indices."""
    if isinstance(bidirectional_layers, (bool, str)) or not isinstance(bidirectional_layers, (int, Sequence)):
        raise TypeError(
            f"bidirectional_layers={bidirectional_layers!r} is a {type(bidirectional_layers).__name__}, which is not "
            f"accepted; give an int k (the last k layers, 0..{num_layers}; {num_layers} for all) or a list of "
            f"layer indices such as [{num_layers - 2}, {num_layers - 1}]"
        )
    if isinstance(bidirectional_layers, int):
        if not 0 <= bidirectional_layers <= num_layers:
            raise ValueError(
                f"bidirectional_layers={bidirectional_layers} but the model has {num_layers} layers; "
                f"use 0..{num_layers}"
            )
        return tuple(range(num_layers - bidirectional_layers, num_layers))
    indices = []
    for index in bidirectional_layers:
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"layer indices must be ints, got {index!r}")
        if not -num_layers <= index < num_layers:
            raise ValueError(
                f"layer index {index} is out of range for a model with {num_layers} layers; "
                f"use 0..{num_layers - 1} (or negative indices from the end)"
            )
        indices.append(index % num_layers)
    return tuple(sorted(set(indices)))


def layer_attention_type(config: Any, layer_index: int) -> str:
    """Whether a layer uses full or sliding-window attention, as the model itself decides."""
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        return layer_types[layer_index]
    return SLIDING_ATTENTION if getattr(config, "sliding_window", None) else FULL_ATTENTION


def attention_modules(layer: nn.Module) -> list[nn.Module]:
    """The modules of a layer that carry an ``is_causal`` flag read by attention kernels."""
    return [module for module in layer.modules() if hasattr(module, "is_causal")]


def bidirectional_from_causal(incoming_mask: torch.Tensor) -> torch.Tensor:
    """The bi-directional version of the model's own 4-D causal mask, built from that mask alone.

    A query and a key belong together when the causal mask lets one of them see the other (the
    same text of a padded row, or of a packed row); keys no query may see are padding and stay
    hidden; padding queries see every real key, so no row is empty (an empty row makes some
    kernels return NaN). A handful of element-wise operations on a mask that already exists,
    with no host round trip: transformers' own builder checks ``padding_mask.all()`` on the
    device, which makes the host wait for the layers below before it may launch the rest.
    A sliding-window layer's causal mask reaches ``window - 1`` tokens back, so its
    bi-directional version reaches as far in both directions (transformers' own bi-directional
    sliding mask reaches ``window``; keeping each query inside its own text always trimmed that
    to the causal reach, so this is what padded and packed batches got before as well).
    """
    allowed = incoming_mask if incoming_mask.dtype == torch.bool else incoming_mask == 0
    allowed = allowed.any(dim=1, keepdim=True)  # (batch, 1, queries, keys): heads merged
    real_keys = allowed.any(dim=-2, keepdim=True)  # (batch, 1, 1, keys)
    together = allowed | allowed.transpose(-1, -2)
    mask = real_keys & (together | ~real_keys.transpose(-1, -2))
    if incoming_mask.dtype == torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=incoming_mask.dtype, device=mask.device).masked_fill(
        ~mask, torch.finfo(incoming_mask.dtype).min
    )


def attention_reach(is_causal: bool, sliding_window: int | None) -> tuple[int, int]:
    """How many earlier and later tokens of its own text a query sees (-1: all), as kernels take it.

    The direction rule for attention kernels that read no mask (flat batches): a causal layer
    looks back only, a bi-directional one both ways. transformers' causal sliding window lets a
    query see ``window - 1`` earlier tokens, so a bi-directional sliding layer sees as far ahead
    as behind, as :func:`bidirectional_from_causal` gives padded and packed batches.
    """
    if sliding_window is None:
        return (-1, 0) if is_causal else (-1, -1)
    reach = sliding_window - 1
    return (reach, 0) if is_causal else (reach, reach)


def running_cache(args: tuple, kwargs: dict) -> Cache | None:
    """The KV cache handed to a layer, found by its type rather than its keyword.

    transformers 5.25 renamed the layer keyword ``past_key_values`` to ``cache``; looking for a
    ``Cache`` among all arguments keeps the generation guard alive through such renames.
    """
    return next((value for value in (*args, *kwargs.values()) if isinstance(value, Cache)), None)


class _LayerHook:
    """The forward pre-hook of one bi-directional layer.

    A class rather than a closure so that a patched model pickles (sentence-transformers sends
    the model to worker processes for multi-process and multi-GPU encoding).
    """

    def __init__(self, patch: BidirectionalPatch, layer_index: int, attention_type: str):
        self.patch = patch
        self.layer_index = layer_index
        self.attention_type = attention_type

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if "attention_mask" not in kwargs:
            raise RuntimeError(
                f"layer {self.layer_index} of {type(self.patch.model).__name__} was called without an "
                f"`attention_mask` keyword, so bellm-st cannot make it bi-directional {RELEASE_NOTE}"
            )
        cache = running_cache(args, kwargs)
        if cache is not None and cache.get_seq_length(self.layer_index) > 0:
            raise RuntimeError(
                f"layer {self.layer_index} is bi-directional, so decoding with a KV cache would give wrong results; "
                "generate with the causal model (bidirectional_layers=0) or call patch.remove() first"
            )
        hidden_states = args[0] if args else kwargs["hidden_states"]
        kwargs["attention_mask"] = self.patch.bidirectional_mask(
            self.attention_type, hidden_states, kwargs["attention_mask"]
        )
        return args, kwargs


class BidirectionalPatch:
    """Handle on the bi-directional layers of one model; ``remove()`` restores the causal model."""

    def __init__(self, model: PreTrainedModel, layer_indices: tuple[int, ...]):
        self.model = model
        self.layer_indices = layer_indices
        self._config = text_config(model)
        # attention type -> (mask the model built, our bi-directional mask): one build per forward.
        # One tuple per type, replaced in a single assignment, so threads sharing a model never
        # pair one batch's incoming mask with another batch's outgoing mask.
        self._last_masks: dict[str, tuple[Any, Any]] = {}
        self._hook_handles: list[torch.utils.hooks.RemovableHandle] = []
        self._saved_is_causal: list[tuple[nn.Module, bool]] = []
        layers = find_decoder_layers(model)
        for layer_index in layer_indices:
            layer = layers[layer_index]
            for module in attention_modules(layer):
                self._saved_is_causal.append((module, module.is_causal))
                module.is_causal = False
            hook = _LayerHook(self, layer_index, layer_attention_type(self._config, layer_index))
            self._hook_handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_last_masks"] = {}
        return state

    def bidirectional_mask(self, attention_type: str, hidden_states: torch.Tensor, incoming: Any) -> Any:
        """The mask a bi-directional layer uses instead of ``incoming``, built once per forward pass."""
        if incoming is None or torch.compiler.is_compiling():
            # No padding: nothing to build. Compiling: the graph computes the mask once anyway,
            # and the memo (Python object identity) would make torch.compile re-trace every step.
            return self._build_mask(attention_type, hidden_states, incoming)
        last = self._last_masks.get(attention_type)
        if last is not None and last[0] is incoming:
            return last[1]
        outgoing = self._build_mask(attention_type, hidden_states, incoming)
        self._last_masks[attention_type] = (incoming, outgoing)
        return outgoing

    def _build_mask(self, attention_type: str, hidden_states: torch.Tensor, incoming: Any) -> Any:
        if isinstance(incoming, torch.Tensor) and incoming.ndim == 4:  # padded or packed rows
            return bidirectional_from_causal(incoming)
        if incoming is not None and not isinstance(incoming, torch.Tensor):
            raise NotImplementedError(
                f"bi-directional layers do not support attention masks of type {type(incoming).__name__} "
                f"(flex attention, or a new mask type {RELEASE_NOTE}); load the model with "
                "attn_implementation='sdpa' or 'eager'"
            )
        if incoming is not None and incoming.ndim != 2:
            raise ValueError(f"unexpected attention mask of shape {tuple(incoming.shape)} {RELEASE_NOTE}")
        # No mask (no padding), or flash attention's 2-D padding mask: transformers' builder
        # gives the bi-directional equivalent (or None).
        padding = None if incoming is None else incoming.bool()
        create = (
            masking_utils.create_bidirectional_sliding_window_mask
            if attention_type == SLIDING_ATTENTION
            else masking_utils.create_bidirectional_mask
        )
        return create(config=self._config, inputs_embeds=hidden_states, attention_mask=padding)

    def remove(self) -> None:
        """Make the patched layers causal again."""
        for handle in self._hook_handles:
            handle.remove()
        for module, was_causal in self._saved_is_causal:
            module.is_causal = was_causal
        self._hook_handles.clear()
        self._saved_is_causal.clear()
        self._last_masks = {}
        if getattr(self.model, "_bellm_patch", None) is self:
            del self.model._bellm_patch


def check_is_decoder(model: PreTrainedModel) -> None:
    """Refuse encoders and encoder-decoders: they are bi-directional already, or not BeLLM's subject."""
    config = model.config
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(
            f"{type(model).__name__} is an encoder-decoder model; bellm-st turns decoder-only LLMs into encoders"
        )
    if not any(module.is_causal for module in attention_modules(model)):
        raise ValueError(
            f"{type(model).__name__} has no causal attention layers (is it an encoder such as BERT?); "
            "its attention is bi-directional already, so use it with plain sentence-transformers"
        )


def make_bidirectional(model: PreTrainedModel, bidirectional_layers: BidirectionalLayers) -> BidirectionalPatch:
    """Make the last ``k`` layers (or the listed layers) of a decoder attend in both directions.

    Padding stays masked. ``bidirectional_layers=0`` leaves the causal model as it is (the
    ablation). Calling it again replaces the previous choice. Returns a handle whose
    ``remove()`` restores the causal model.
    """
    check_is_decoder(model)
    previous = getattr(model, "_bellm_patch", None)
    if previous is not None:
        previous.remove()
    num_layers = len(find_decoder_layers(model))
    patch = BidirectionalPatch(model, resolve_layer_indices(num_layers, bidirectional_layers))
    model._bellm_patch = patch
    return patch


def bidirectional_layer_indices(model: nn.Module) -> tuple[int, ...]:
    """The layers of ``model`` that are currently bi-directional (empty for the causal model)."""
    patch = getattr(model, "_bellm_patch", None)
    return patch.layer_indices if patch is not None else ()

