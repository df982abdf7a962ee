"""LoRA adapters take bf16 inputs during bf16 training steps and PEFT's casting is back afterwards."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer

from transformers import AutoModel

from bellm_st.training.trainer import BF16AdapterInputsCallback


def peft_backbone(path: str):
    backbone = AutoModel.from_pretrained(path, dtype=torch.bfloat16)
    backbone = get_peft_model(backbone, LoraConfig(r=4, target_modules="all-linear"))
    adapters = [module for module in backbone.modules() if isinstance(module, BaseTunerLayer)]
    return backbone, adapters


def test_callback_turns_casting_off_for_a_step_and_back_on_after_it(tiny_model_dir):
    backbone, adapters = peft_backbone(tiny_model_dir)
    callback = BF16AdapterInputsCallback(backbone)
    assert adapters and len(callback.adapters) == len(adapters)
    callback.on_step_begin(None, None, None)
    assert not any(module.cast_input_dtype_enabled for module in adapters)
    callback.on_step_end(None, None, None)
    assert all(module.cast_input_dtype_enabled for module in adapters)


def test_a_bf16_autocast_step_without_casting_trains_fp32_adapters_like_the_casting_step(tiny_model_dir):
    ids = torch.randint(3, 300, (2, 9))

    def adapter_gradients(cast: bool):
        torch.manual_seed(0)
        backbone, adapters = peft_backbone(tiny_model_dir)
        for module in adapters:
            module.cast_input_dtype_enabled = cast
        with torch.autocast("cpu", dtype=torch.bfloat16):
            backbone(input_ids=ids).last_hidden_state.float().pow(2).mean().backward()
        return {name: parameter.grad for name, parameter in backbone.named_parameters() if parameter.requires_grad}

    with_casting, without_casting = adapter_gradients(True), adapter_gradients(False)
    assert with_casting.keys() == without_casting.keys()
    for name, gradient in without_casting.items():
        assert gradient.dtype == torch.float32  # the optimizer still updates fp32 weights
        reference = with_casting[name]
        assert (gradient - reference).norm() <= 0.05 * reference.norm() + 1e-6, name
