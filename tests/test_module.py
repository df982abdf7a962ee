"""BeLLMEncoder inside sentence-transformers: round trips, prompts, pooling, padding, adapters."""

from __future__ import annotations

import warnings

import pytest
import torch
from peft import LoraConfig, get_peft_model
from sentence_transformers import SentenceTransformer

import bellm_st
from bellm_st.module import BeLLMEncoder, IdentityConfigurationWarning
from bellm_st.prompts import DEFAULT_TEMPLATE, Template

SENTENCES = ["A man is playing a guitar.", "Children are playing football in the park.", "Stocks fell."]


def test_save_then_load_gives_identical_embeddings(tiny_model, tmp_path):
    expected = tiny_model.encode(SENTENCES, convert_to_tensor=True)
    tiny_model.save(str(tmp_path))
    reloaded = SentenceTransformer(str(tmp_path), trust_remote_code=True, device="cpu")
    assert torch.equal(reloaded.encode(SENTENCES, convert_to_tensor=True), expected)
    assert reloaded[0].get_config_dict() == tiny_model[0].get_config_dict()
    assert (tmp_path / "model.safetensors").exists()
    card = (tmp_path / "README.md").read_text()
    assert "bellm" in card and "bidirectional_layers" in card


def test_lora_adapter_round_trip_and_merge(tiny_model, tmp_path):
    encoder = tiny_model[0]
    encoder.auto_model = get_peft_model(encoder.auto_model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # make the adapter do something
        for name, parameter in encoder.auto_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    expected = tiny_model.encode(SENTENCES, convert_to_tensor=True)
    tiny_model.save(str(tmp_path / "adapter-model"))
    assert (tmp_path / "adapter-model" / "adapter" / "adapter_config.json").exists()
    reloaded = SentenceTransformer(str(tmp_path / "adapter-model"), trust_remote_code=True, device="cpu")
    assert (reloaded.encode(SENTENCES, convert_to_tensor=True) - expected).abs().max() < 1e-5

    encoder.merge_adapter()
    assert not hasattr(encoder.auto_model, "peft_config")
    assert (tiny_model.encode(SENTENCES, convert_to_tensor=True) - expected).abs().max() < 1e-5
    tiny_model.save(str(tmp_path / "merged"))
    assert not (tmp_path / "merged" / "adapter").exists()
    merged = SentenceTransformer(str(tmp_path / "merged"), trust_remote_code=True, device="cpu")
    assert (merged.encode(SENTENCES, convert_to_tensor=True) - expected).abs().max() < 1e-5


def test_model_never_sees_a_chat_template(tiny_model):
    features = tiny_model.preprocess(["A man is playing a guitar."])
    tokenizer = tiny_model[0].tokenizer
    expected = tokenizer(DEFAULT_TEMPLATE.replace("{text}", "A man is playing a guitar."))["input_ids"]
    assert features["input_ids"][0].tolist() == expected


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("pooling", ["last", "mean", "mean_text"])
def test_encoding_alone_equals_encoding_in_a_padded_batch(tiny_model_dir, padding_side, pooling):
    model = bellm_st.build(tiny_model_dir, bidirectional_layers=2, pooling=pooling, device="cpu")
    model[0].tokenizer.padding_side = padding_side
    batch = model.encode(SENTENCES, batch_size=3, convert_to_tensor=True)
    for index, sentence in enumerate(SENTENCES):
        alone = model.encode([sentence], convert_to_tensor=True)[0]
        assert (alone - batch[index]).abs().max() < 1e-4


def test_mean_text_pools_only_the_sentence_tokens(tiny_model_dir):
    model = bellm_st.build(tiny_model_dir, bidirectional_layers=2, pooling="mean_text", device="cpu")
    features = model.preprocess(["A man is playing a guitar."])
    tokens = model[0].tokenizer.convert_ids_to_tokens(features["input_ids"][0][features["text_mask"][0].bool()])
    assert model[0].tokenizer.convert_tokens_to_string(tokens).strip() == "A man is playing a guitar."
    token_states = model.encode(["A man is playing a guitar."], output_value="token_embeddings")[0]
    expected = token_states[features["text_mask"][0].bool()].mean(dim=0)
    actual = model.encode(["A man is playing a guitar."], convert_to_tensor=True)[0]
    assert (actual - expected).abs().max() < 1e-5


def test_first_token_state_depends_on_the_last_word_only_when_bidirectional(tiny_model_dir):
    for layers, should_change in ((0, False), (1, True), (2, True)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", IdentityConfigurationWarning)
            model = bellm_st.build(tiny_model_dir, bidirectional_layers=layers, device="cpu")
        first = model.encode(["A man is playing a guitar."], output_value="token_embeddings")[0][0]
        other = model.encode(["A man is playing a football."], output_value="token_embeddings")[0][0]
        assert bool((first - other).abs().max() > 1e-6) == should_change, layers


def test_last_layer_only_with_last_token_pooling_is_the_causal_model_and_warns(tiny_model_dir):
    with pytest.warns(IdentityConfigurationWarning, match="exactly the causal model"):
        last_only = bellm_st.build(tiny_model_dir, bidirectional_layers=1, pooling="last", device="cpu")
    causal = bellm_st.build(tiny_model_dir, bidirectional_layers=0, pooling="last", device="cpu")
    difference = (last_only.encode(SENTENCES, convert_to_tensor=True) - causal.encode(SENTENCES, convert_to_tensor=True))
    assert difference.abs().max() < 1e-5


def test_named_prompts_use_their_own_templates(tiny_model_dir):
    model = bellm_st.build(
        tiny_model_dir,
        bidirectional_layers=2,
        query_template='The question {text} asks about:"',
        document_template='The passage {text} is about:"',
        device="cpu",
    )
    query = model.encode_query(["A man is playing a guitar."], convert_to_tensor=True)
    document = model.encode_document(["A man is playing a guitar."], convert_to_tensor=True)
    plain = model.encode(["A man is playing a guitar."], convert_to_tensor=True)
    explicit = model.encode(["A man is playing a guitar."], prompt='The question {text} asks about:"', convert_to_tensor=True)
    assert torch.equal(query, explicit)
    assert not torch.allclose(query, document) and not torch.allclose(query, plain)


def test_a_plain_prefix_prompt_goes_inside_the_template(tiny_model):
    features = tiny_model.preprocess(["a guitar"], prompt="Instruct: music. ")
    text = tiny_model[0].tokenizer.decode(features["input_ids"][0])
    assert text == DEFAULT_TEMPLATE.replace("{text}", "Instruct: music. a guitar")


def test_truncation_shortens_the_text_and_keeps_the_template(tiny_model_dir, caplog):
    model = bellm_st.build(tiny_model_dir, bidirectional_layers=2, max_seq_length=40, device="cpu")
    long_text = " ".join(["guitar football kitchen"] * 200)
    with caplog.at_level("WARNING"):
        features = model.preprocess([long_text])
    assert "truncated" in caplog.text
    ids = features["input_ids"][0].tolist()
    assert len(ids) <= 40
    decoded = model[0].tokenizer.decode(ids)
    template = Template.parse(DEFAULT_TEMPLATE)
    assert decoded.startswith(template.prefix) and decoded.endswith(template.suffix)
    assert model.encode([long_text]).shape == (1, 32)


def test_template_longer_than_the_budget_is_a_clear_error(tiny_model_dir):
    model = bellm_st.build(tiny_model_dir, bidirectional_layers=2, max_seq_length=4, device="cpu")
    with pytest.raises(ValueError, match="template alone takes"):
        model.encode(["A man is playing a guitar."])


def test_append_eos_and_normalize(tiny_model_dir):
    model = bellm_st.build(tiny_model_dir, bidirectional_layers=2, append_eos=True, normalize=True, device="cpu")
    features = model.preprocess(["A man is playing a guitar."])
    assert features["input_ids"][0, -1].item() == model[0].tokenizer.eos_token_id
    norms = model.encode(SENTENCES, convert_to_tensor=True).norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"template": "no slot here"}, ValueError, "exactly once"),
        ({"template": "{text} and {text}"}, ValueError, "exactly once"),
        ({"pooling": "max"}, ValueError, "pooling='max'"),
        ({"bidirectional_layers": 9}, ValueError, "use 0..4"),
        ({"max_seq_length": 1}, ValueError, "max_seq_length"),
    ],
)
def test_bad_settings_are_clear_errors(tiny_model_dir, kwargs, error, message):
    with pytest.raises(error, match=message):
        BeLLMEncoder(tiny_model_dir, **{"bidirectional_layers": 2, **kwargs})
