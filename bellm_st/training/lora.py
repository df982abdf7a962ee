"""LoRA adapters on the decoder of a BeLLM encoder.

BeLLM trains only low-rank adapters: the backbone stays frozen, so a trained model ships as a
few megabytes on top of a base everyone already has. The adapter wraps the backbone inside the
``BeLLMEncoder`` module, whose ``save`` writes it to ``adapter/`` (and whose ``load`` restores
it), so checkpoints and final models carry the adapter together with the BeLLM settings.
"""

from __future__ import annotations

from peft import LoraConfig, get_peft_model
from sentence_transformers import SentenceTransformer

from bellm_st.model import encoder_of


def add_lora(
    model: SentenceTransformer,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    target_modules: str | list[str] = "all-linear",
) -> int:
    """Freeze the backbone and attach a LoRA adapter to its linear layers; returns the trainable parameter count.

    The bi-directional patch lives on the decoder layers themselves, which PEFT keeps, so it
    survives the wrapping.
    """
    encoder = encoder_of(model)
    if hasattr(encoder.auto_model, "peft_config"):
        raise ValueError("the model already has a LoRA adapter; merge it (encoder.merge_adapter()) before adding another")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, bias="none")
    encoder.auto_model = get_peft_model(encoder.auto_model, config)
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
