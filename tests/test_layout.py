"""The method stands on its own: its files import no speed code, and an exported folder loads
without bellm-st; folders saved by earlier layouts still load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from sentence_transformers import SentenceTransformer

import bellm_st
from bellm_st.export import export_merged, method_files, package_imports
from bellm_st.loading import EXPORTED_CLASS_REF

TEXTS = ["A man is playing a guitar.", "The stock market fell sharply today.", "Hi"]
METHOD = {
    "inputs", "prompts", "tokenization", "bidirectional", "pooling", "pruning", "config", "module", "onnx_backbone"
}


def test_the_method_files_import_only_each_other():
    files = method_files()
    assert {path.stem for path in files} == METHOD
    for path in files:
        assert set(package_imports(path.read_text())) <= {f"bellm_st.{name}" for name in METHOD}, path.name


def _run_on_this_checkout(code: str) -> str:
    """What ``code`` prints in a fresh interpreter that imports this checkout's bellm_st, not another installed copy."""
    checkout = str(Path(bellm_st.__file__).parent.parent)
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [checkout, os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip()


def test_importing_the_package_loads_no_speed_code():
    code = ("import sys, bellm_st; print(sorted(name for name in sys.modules "
            "if name.startswith(('bellm_st.fast', 'bellm_st.onnx_backbone', 'onnxruntime'))))")
    assert _run_on_this_checkout(code) == "[]"


def test_the_test_models_import_without_pytest():
    """pytest is no dependency of bellm-st; only the fixtures module needs it."""
    code = textwrap.dedent("""
        import sys
        sys.modules["pytest"] = None  # importing pytest now fails
        from bellm_st.testing import build_tiny_tokenizer, tiny_backbone
        print(type(tiny_backbone()).__name__, len(build_tiny_tokenizer()))
    """)
    assert _run_on_this_checkout(code) == "LlamaModel 300"


# Runs in a fresh interpreter where `import bellm_st` fails, whatever is installed or on the path.
STANDALONE = textwrap.dedent("""
    import importlib.abc, json, sys

    class NoBellm(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "bellm_st" or name.startswith("bellm_st."):
                raise ImportError(f"{name} is blocked: this process must not use bellm-st")

    sys.meta_path.insert(0, NoBellm())
    from sentence_transformers import SentenceTransformer

    folder, texts, backend = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    model = SentenceTransformer(folder, trust_remote_code=True, device="cpu", backend=backend)
    assert not any(name.startswith("bellm_st") for name in sys.modules)
    print(json.dumps({"class": type(model[0]).__module__, "backbone": type(model[0].auto_model).__name__,
                      "vectors": model.encode(texts).tolist()}))
""")


def _run_without_bellm_st(folder: Path, backend: str, tmp_path: Path) -> dict:
    """What STANDALONE prints for ``folder``: its encoder's module, its backbone's class and the vectors of TEXTS."""
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    environment["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    result = subprocess.run([sys.executable, "-c", STANDALONE, str(folder), json.dumps(TEXTS), backend], cwd=tmp_path,
                            env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_an_exported_folder_loads_where_bellm_st_cannot_be_imported(tiny_model, tmp_path):
    tiny_model.save(str(tmp_path / "saved"))
    folder = export_merged(str(tmp_path / "saved"), tmp_path / "exported")
    expected = tiny_model.encode(TEXTS)

    modules = json.loads((folder / "modules.json").read_text())
    assert [entry["type"] for entry in modules] == [EXPORTED_CLASS_REF]
    assert {path.name for path in method_files()} <= {path.name for path in folder.glob("*.py")}
    card = (folder / "README.md").read_text()
    assert f'SentenceTransformer("{folder.name}", trust_remote_code=True)' in card
    loaded = _run_without_bellm_st(folder, "torch", tmp_path)
    assert loaded["class"].startswith("transformers_modules.")  # the folder's copy, not an installed package
    np.testing.assert_allclose(np.array(loaded["vectors"]), expected, atol=1e-5)

    with_bellm = bellm_st.load(str(folder), device="cpu")  # the installed class; nothing from the folder runs
    assert type(with_bellm[0]) is bellm_st.BeLLMEncoder
    np.testing.assert_allclose(with_bellm.encode(TEXTS), expected, atol=1e-5)


def test_an_exported_onnx_folder_runs_its_graph_where_bellm_st_cannot_be_imported(tiny_onnx_dir, tmp_path):
    folder = Path(tiny_onnx_dir)
    assert (folder / "onnx_backbone.py").is_file()
    assert 'backend="onnx", trust_remote_code=True' in (folder / "README.md").read_text()
    loaded = _run_without_bellm_st(folder, "onnx", tmp_path)
    assert loaded["class"].startswith("transformers_modules.") and loaded["backbone"] == "OnnxBackbone"
    expected = bellm_st.load(tiny_onnx_dir, device="cpu").encode(TEXTS)
    np.testing.assert_allclose(np.array(loaded["vectors"]), expected, atol=1e-5)


def test_a_folder_saved_by_the_previous_layout_still_loads(tiny_model, tmp_path):
    """Folders saved before the fast paths moved name bellm_st.module.BeLLMEncoder; that path stays."""
    tiny_model.save(str(tmp_path))
    (tmp_path / "modules.json").write_text(json.dumps(
        [{"idx": 0, "name": "0", "path": "", "type": "bellm_st.module.BeLLMEncoder"}], indent=2
    ))
    settings = json.loads((tmp_path / "bellm_config.json").read_text())
    assert set(settings) == {"bidirectional_layers", "template", "pooling", "append_eos", "normalize", "max_seq_length"}
    expected = tiny_model.encode(TEXTS)
    for loaded in (bellm_st.load(str(tmp_path), device="cpu"),
                   SentenceTransformer(str(tmp_path), trust_remote_code=True, device="cpu")):
        assert type(loaded[0]) is bellm_st.BeLLMEncoder
        np.testing.assert_allclose(loaded.encode(TEXTS), expected, atol=1e-5)
