"""Everything that only makes BeLLM faster: the same embeddings, sooner.

The method (:mod:`bellm_st.module` and the files it imports) never imports this package; the
faster batch layouts plug into :class:`bellm_st.module.BatchLayout`, the rest works on a loaded
model from outside.
"""

from bellm_st.fast.bulk import encode_bulk
from bellm_st.fast.flat import FLAT_ROW
from bellm_st.fast.kernels import (
    attention_without_cudnn,
    compile_decoder_layers,
    compile_model_layers,
    uncompile_decoder_layers,
)
from bellm_st.fast.onnx_export import export_onnx
from bellm_st.fast.packing import PackedRows
from bellm_st.fast.quantization import quantize_onnx

__all__ = [
    "FLAT_ROW",
    "PackedRows",
    "attention_without_cudnn",
    "compile_decoder_layers",
    "compile_model_layers",
    "encode_bulk",
    "export_onnx",
    "quantize_onnx",
    "uncompile_decoder_layers",
]
