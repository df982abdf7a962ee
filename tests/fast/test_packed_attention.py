"""The packed attention kernel (bellm_st.fast.packed_attention): several short texts share a tile.

Run in Triton's interpreter on CPU tensors (conftest sets TRITON_INTERPRET=1), against the
per-text SDPA reference; on the H100 ``benchmarks/attention_kernels.py`` compares it with the
flash kernel in bf16 (which the interpreter does not emulate faithfully).
"""

from __future__ import annotations

import itertools

import pytest
import torch

from bellm_st.fast import flat
from bellm_st.fast.flat import PACKED_LONGEST, PACKED_LONGEST_WIDE_HEADS, _reference_attention, use_packed_attention
from bellm_st.fast.packed_attention import packed_attention, packed_attention_available
from bellm_st.testing import tiny_backbone

pytest.importorskip("triton", reason="the packed kernel needs Triton (installed by the dev extra on Linux)")
CPU = torch.device("cpu")
# The kernel runs on CPU tensors in Triton's interpreter, which conftest turns on where there is
# no GPU (CI); on GPU machines benchmarks/attention_kernels.py and flat_agreement.py check it.
pytestmark = pytest.mark.skipif(not packed_attention_available(CPU), reason="needs Triton's CPU interpreter")


def flat_inputs(lengths, heads, kv_heads, dim, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    tokens = sum(lengths)
    query, key, value = (torch.randn(tokens, count, dim, generator=generator, dtype=torch.float32).to(dtype)
                         for count in (heads, kv_heads, kv_heads))
    bounds = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)
    text_of_token = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    return query, key, value, text_of_token, bounds


def reference(query, key, value, bounds, window, scale):
    groups = query.shape[1] // key.shape[1]
    key, value = (tensor.repeat_interleave(groups, dim=1) for tensor in (key, value))
    as_heads_first = [tensor.transpose(0, 1).float() for tensor in (query, key, value)]
    return _reference_attention(*as_heads_first, bounds, window, scale).transpose(0, 1)


@pytest.mark.parametrize("window", [(-1, -1), (-1, 0), (3, 3), (3, 0)], ids=["both", "causal", "window", "causal-window"])
@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [(4, 4, 16), (6, 2, 24)], ids=["mha", "gqa-odd-dim"])
def test_each_token_attends_to_its_own_text_only(window, heads, kv_heads, dim):
    """Texts shorter than a tile, one token long, and spanning several tiles, side by side."""
    lengths = [5, 1, 17, 40, 3, 9, 2]
    query, key, value, text_of_token, bounds = flat_inputs(lengths, heads, kv_heads, dim)
    output = packed_attention(query, key, value, text_of_token, bounds, 0.3, window, tiles=(16, 16, 1))
    expected = reference(query, key, value, bounds, window, 0.3)
    assert output.shape == query.shape
    assert torch.allclose(output, expected, atol=1e-5)


def test_half_precision_and_the_default_tiles():
    query, key, value, text_of_token, bounds = flat_inputs([30, 7, 64, 1, 90], 2, 1, 32, dtype=torch.float16)
    output = packed_attention(query, key, value, text_of_token, bounds, 0.2, (-1, -1))
    assert output.dtype == torch.float16
    assert torch.allclose(output.float(), reference(query, key, value, bounds, (-1, -1), 0.2), atol=2e-3)


def test_strided_inputs_are_read_as_they_are():
    """transformers hands (1, heads, tokens, dim) views of (tokens, heads, dim) projections."""
    query, key, value, text_of_token, bounds = flat_inputs([6, 11, 4], 4, 2, 16)
    as_module_sees = [tensor.transpose(0, 1).contiguous().transpose(0, 1) for tensor in (query, key, value)]
    assert not as_module_sees[0].is_contiguous()
    output = packed_attention(*as_module_sees, text_of_token, bounds, 0.25, (-1, 0), tiles=(16, 16, 1))
    assert torch.allclose(output, reference(query, key, value, bounds, (-1, 0), 0.25), atol=1e-5)


def test_a_text_does_not_change_its_neighbours():
    query, key, value, text_of_token, bounds = flat_inputs([8, 8, 8], 2, 2, 16)
    changed = value.clone()
    changed[8:16] += 5.0  # the middle text's values only
    before = packed_attention(query, key, value, text_of_token, bounds, 0.25, (-1, -1), tiles=(16, 16, 1))
    after = packed_attention(query, key, changed, text_of_token, bounds, 0.25, (-1, -1), tiles=(16, 16, 1))
    assert torch.equal(before[:8], after[:8]) and torch.equal(before[16:], after[16:])
    assert not torch.allclose(before[8:16], after[8:16])


def test_heads_must_group_evenly():
    query, key, value, text_of_token, bounds = flat_inputs([4], 3, 2, 16)
    with pytest.raises(ValueError, match="not a multiple"):
        packed_attention(query, key, value, text_of_token, bounds, 0.25, (-1, -1))


def test_the_kernel_is_chosen_by_precision_head_size_and_length(monkeypatch):
    monkeypatch.setattr(flat, "packed_attention_available", lambda device: True)
    monkeypatch.setattr(flat, "_VARLEN_KERNEL", (lambda *args, **kwargs: None, frozenset({"scale", "window_size"})))
    cuda = torch.device("cuda")
    narrow = tiny_backbone("llama").to(torch.bfloat16)  # head dim 8
    wide = tiny_backbone("llama", head_dim=128).to(torch.bfloat16)
    assert use_packed_attention(narrow, cuda, 30) and use_packed_attention(wide, cuda, 30)
    assert use_packed_attention(narrow, cuda, PACKED_LONGEST) and not use_packed_attention(narrow, cuda, PACKED_LONGEST + 1)
    assert not use_packed_attention(wide, cuda, PACKED_LONGEST_WIDE_HEADS + 1)  # wide heads: flash was faster
    assert not use_packed_attention(narrow.float(), cuda, 30)  # fp32 goes to the exact stand-in


def test_long_texts_stay_packed_where_the_flash_kernel_cannot_serve_the_model(monkeypatch):
    """A PyTorch whose kernel takes no scale (or no window, for sliding layers) cannot take long batches either."""
    monkeypatch.setattr(flat, "packed_attention_available", lambda device: True)
    cuda = torch.device("cuda")
    narrow = tiny_backbone("llama").to(torch.bfloat16)
    sliding = tiny_backbone("gemma3_text").to(torch.bfloat16)
    monkeypatch.setattr(flat, "_VARLEN_KERNEL", (lambda *args, **kwargs: None, frozenset({"scale"})))
    assert use_packed_attention(sliding, cuda, PACKED_LONGEST + 1)
    assert not use_packed_attention(narrow, cuda, PACKED_LONGEST + 1)
    monkeypatch.setattr(flat, "_VARLEN_KERNEL", None)
    assert use_packed_attention(narrow, cuda, PACKED_LONGEST + 1)
    monkeypatch.setattr(flat, "packed_attention_available", lambda device: False)
    assert not use_packed_attention(narrow, cuda, 30)


def test_on_cpu_only_the_interpreter_runs_it(monkeypatch):
    assert packed_attention_available(CPU)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not packed_attention_available(CPU)


def test_index_tensors_may_be_strided():
    query, key, value, text_of_token, bounds = flat_inputs([6, 11, 4], 2, 2, 16)
    spread = torch.stack([text_of_token, text_of_token], dim=1)[:, 0]  # every other element of a buffer
    assert not spread.is_contiguous()
    output = packed_attention(query, key, value, spread, bounds, 0.25, (-1, -1), tiles=(16, 16, 1))
    assert torch.allclose(output, reference(query, key, value, bounds, (-1, -1), 0.25), atol=1e-5)
