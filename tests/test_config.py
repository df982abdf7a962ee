"""bellm_config.json is read strictly: each JSON value of the wrong type, unknown key or missing key is named."""

from __future__ import annotations

import json

import pytest

from bellm_st.config import AdapterFolderSettings, EncoderSettings, read_settings
from bellm_st.module import BeLLMEncoder

SAVED = {"bidirectional_layers": 2, "template": 'This sentence: "{text}" means:"', "pooling": "mean",
         "append_eos": False, "normalize": True, "max_seq_length": 512}


def write(tmp_path, content) -> str:
    path = tmp_path / "bellm_config.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return str(path)


def test_what_an_encoder_saves_reads_back_as_it_was(tiny_model, tmp_path):
    tiny_model.save(str(tmp_path))
    saved = json.loads((tmp_path / "bellm_config.json").read_text())
    assert read_settings(tmp_path / "bellm_config.json", EncoderSettings).model_dump() == saved
    assert list(saved) == BeLLMEncoder.config_keys == list(EncoderSettings.model_fields)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"normalize": "false"}, r'has "normalize": "false", which is not true or false'),
        ({"append_eos": 0}, r'has "append_eos": 0, which is not true or false'),
        ({"max_seq_length": 512.0}, r'has "max_seq_length": 512.0, which is not an int of at least 2'),
        ({"max_seq_length": True}, r'has "max_seq_length": true, which is not an int'),
        ({"bidirectional_layers": [2, "3"]}, r'has "bidirectional_layers": \[2, "3"\], which is not an int k'),
        ({"pooling": "max"}, r'has "pooling": "max", which is not one of "last", "mean", "mean_text"'),
        ({"template": None}, r'has "template": null, which is not a string'),
    ],
)
def test_a_value_of_the_wrong_type_is_named_with_what_it_should_be(tmp_path, change, message):
    with pytest.raises(ValueError, match=r"bellm_config\.json " + message + r".*; fix the file \(its keys: "):
        read_settings(write(tmp_path, {**SAVED, **change}), EncoderSettings)


def test_every_bad_key_is_named_in_one_line(tmp_path):
    settings = {key: value for key, value in SAVED.items() if key != "pooling"}
    with pytest.raises(ValueError) as refused:
        read_settings(write(tmp_path, {**settings, "normalize": "yes", "pooling_mode": "mean"}), EncoderSettings)
    message = str(refused.value)
    assert '"normalize": "yes"' in message and 'lacks "pooling"' in message and 'unknown key "pooling_mode"' in message
    assert "\n" not in message


@pytest.mark.parametrize(("content", "kind"), [("[2, \"mean\"]", "array"), ("\"mean\"", "string"), ("null", "null")])
def test_a_file_that_is_not_an_object_is_refused(tmp_path, content, kind):
    with pytest.raises(ValueError, match=rf"holds a JSON {kind} where an object of settings belongs"):
        read_settings(write(tmp_path, content), EncoderSettings)


def test_a_file_that_is_not_json_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"bellm_config\.json is not a JSON file \(Expecting .*\); fix it"):
        read_settings(write(tmp_path, "{'normalize': false}"), EncoderSettings)
    (tmp_path / "bellm_config.json").write_bytes(b'{"template": "\xff"}')
    with pytest.raises(ValueError, match=r"bellm_config\.json is not a JSON file \(.*utf-8.*\)"):
        read_settings(tmp_path / "bellm_config.json", EncoderSettings)


def test_an_adapter_folder_needs_its_base_and_may_add_prompts_and_kept_layers(tmp_path):
    with pytest.raises(ValueError, match=r'lacks "base" \(the base model: a shipped base such as smollm2-135m'):
        read_settings(write(tmp_path, SAVED), AdapterFolderSettings)
    with pytest.raises(ValueError, match=r'unknown key "base"'):  # a saved encoder's file names no base
        read_settings(write(tmp_path, {**SAVED, "base": "smollm2-135m"}), EncoderSettings)
    settings = read_settings(write(tmp_path, {**SAVED, "base": "smollm2-135m"}), AdapterFolderSettings)
    assert (settings.keep_layers, settings.prompts) == (None, {})
    with pytest.raises(ValueError, match=r'has "prompts": \{"query": 1\}, which is not an object of prompt names'):
        read_settings(write(tmp_path, {**SAVED, "base": "smollm2-135m", "prompts": {"query": 1}}),
                      AdapterFolderSettings)
