"""The LangChain adapter's tests run on bellm-st's tiny random models, so this package tests on its own."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model here is built or shipped; nothing to download

from bellm_st.testing.fixtures import (  # noqa: E402, F401 (pytest fixtures)
    tiny_bellm,
    tiny_bellm_dir,
    tiny_model_dir,
    tiny_onnx_dir,
)
