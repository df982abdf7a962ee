"""One process per device (bellm_st.multi_device), run here with two CPU processes."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

import bellm_st
from bellm_st.cli import app
from bellm_st.multi_device import encode_on_devices

TEXTS = [f"text number {index} {'word ' * (index % 6)}" for index in range(23)]


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, tiny_model_dir) -> str:
    path = tmp_path_factory.mktemp("saved-for-processes")
    bellm_st.build(tiny_model_dir, bidirectional_layers=2, pooling="mean", device="cpu").save(str(path))
    return str(path)


def test_two_processes_give_the_vectors_of_one_model_in_input_order(saved_model):
    expected = bellm_st.load(saved_model, device="cpu").encode(TEXTS, normalize_embeddings=True)
    vectors = encode_on_devices(saved_model, TEXTS, ["cpu", "cpu"], batch_size=4, normalize_embeddings=True)
    assert vectors.shape == expected.shape
    np.testing.assert_allclose(vectors, expected, atol=1e-5)


def test_an_error_in_a_process_is_raised_in_the_caller(saved_model):
    with pytest.raises(ValueError, match="prompt_name='nope'"):
        encode_on_devices(saved_model, TEXTS[:3], ["cpu", "cpu"], prompt_name="nope")


@pytest.mark.parametrize("devices", [[], "cuda:0,cuda:1", ["gpu:0"]])
def test_devices_are_checked_before_any_process_starts(devices):
    with pytest.raises(ValueError, match="device"):
        encode_on_devices(None, TEXTS, devices)


def test_the_command_line_takes_a_comma_separated_device_list(saved_model, tmp_path):
    source = tmp_path / "texts.txt"
    source.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    vectors = {}
    for device in ("cpu", "cpu,cpu"):
        target = tmp_path / f"{device.replace(',', '-')}.npy"
        result = CliRunner().invoke(app, ["encode", "-f", str(source), "-o", str(target), "--model", saved_model,
                                          "--device", device, "--bulk", "--batch-size", "5"])
        assert result.exit_code == 0, result.output
        vectors[device] = np.load(target)
    np.testing.assert_allclose(vectors["cpu,cpu"], vectors["cpu"], atol=1e-5)
    refused = CliRunner().invoke(app, ["encode", "x", "--model", saved_model, "--device", "cpu,cpu", "--no-bulk"])
    assert refused.exit_code == 2 and "--no-bulk" in refused.output
