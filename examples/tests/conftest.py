"""The RAG examples' tests run on bellm-st's tiny random model, with the examples folder importable."""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model here is built or shipped; nothing to download
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the examples import each other as top-level modules

from bellm_st.testing.fixtures import tiny_bellm, tiny_model_dir  # noqa: E402, F401 (pytest fixtures)
