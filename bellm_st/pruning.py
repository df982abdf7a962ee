"""Layer pruning: keep the first N decoder layers and drop the rest, weights and config alike.

"Large Language Models Are Overparameterized Text Encoders" (arXiv 2410.14578) found that the
last layers of a decoder can be dropped before contrastive training at little cost (up to about
30% of them). A pruned model is an ordinary, smaller checkpoint: its config says how many layers
it has (``num_hidden_layers``, and ``layer_types`` where the model has them), so saving, loading
and exporting need no pruning-aware code. Pruning happens before the bi-directional patch, so
"the last k layers" are the last k of the layers that remain.
"""

from __future__ import annotations

from transformers import PreTrainedModel

from bellm_st.bidirectional import find_decoder_layers, text_config

# None keeps every layer (no pruning); the one home of this default.
DEFAULT_KEEP_LAYERS: int | None = None


def check_keep_layers(keep_layers: int | None, num_layers: int | None = None) -> int | None:
    """Refuse a layer count that is not a positive int, or (given the model's) more layers than it has."""
    if keep_layers is None:
        return None
    if isinstance(keep_layers, bool) or not isinstance(keep_layers, int) or keep_layers < 1:
        limit = f"1..{num_layers}" if num_layers is not None else "a positive int"
        raise ValueError(f"keep_layers={keep_layers!r} must keep at least one layer; use {limit} (or None to keep all)")
    if num_layers is not None and keep_layers > num_layers:
        raise ValueError(f"keep_layers={keep_layers} but the model has {num_layers} layers; use 1..{num_layers}")
    return keep_layers


def check_bidirectional_fits(bidirectional_layers: int | list[int], keep_layers: int | None) -> None:
    """Refuse more bi-directional layers (or a layer index) than pruning leaves, before any model loads."""
    if keep_layers is None:
        return
    if isinstance(bidirectional_layers, int) and not isinstance(bidirectional_layers, bool):
        if bidirectional_layers > keep_layers:
            raise ValueError(
                f"bidirectional_layers={bidirectional_layers} but keep_layers={keep_layers} leaves {keep_layers} "
                f"layers; use 0..{keep_layers}"
            )
    elif any(not -keep_layers <= index < keep_layers for index in bidirectional_layers):
        raise ValueError(
            f"bidirectional_layers={list(bidirectional_layers)} names layers that keep_layers={keep_layers} drops; "
            f"use indices 0..{keep_layers - 1}"
        )


def prune_layers(model: PreTrainedModel, keep_layers: int | None) -> PreTrainedModel:
    """Keep the first ``keep_layers`` decoder layers of ``model`` (in place) and make its config say so.

    The final norm stays, so the pruned model's output is the unpruned model's hidden state after
    layer ``keep_layers``, normalised as the last layer's would be. Returns ``model``; ``None``
    leaves it untouched. Prune before making layers bi-directional.
    """
    layers = find_decoder_layers(model)
    if check_keep_layers(keep_layers, len(layers)) is None or keep_layers == len(layers):
        return model
    if getattr(model, "_bellm_patch", None) is not None:
        raise ValueError("prune before making layers bi-directional (the patch holds hooks on layers by index)")
    del layers[keep_layers:]
    config = text_config(model)
    config.num_hidden_layers = keep_layers
    if getattr(config, "layer_types", None):
        config.layer_types = list(config.layer_types[:keep_layers])
    return model
