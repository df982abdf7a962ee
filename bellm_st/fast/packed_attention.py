"""Attention for flat rows of short texts, with several texts sharing one tile (a Triton kernel).

Why our own kernel: PyTorch's variable-length flash kernel gives every text at least one
128-query tile of its own, so for ~28-token sentences most of each tile computes nothing, and
that kernel took a large share of a compiled forward pass's GPU time. Flex attention with
128-token tiles spanning several texts was slower still (not profiled, but its key tiles ran far
past the few texts a query tile holds, and its mask looked up the text of every query-key pair).
Figures for all three in docs/BENCHMARKS.md ("Packed attention kernel", "Measured not to help").
Here a program takes ``BLOCK_M`` consecutive tokens of the row, whatever texts they belong to,
and only the keys from the first of those texts' start to the last one's end; the mask compares
two small vectors of text numbers. Every query needs
only its own text, so the result is the same attention as the flash kernel's, per text.

Runs on CUDA GPUs through Triton (and on CPU tensors in Triton's interpreter, which the tests
use); :func:`packed_attention_available` says whether it can run here.
"""

from __future__ import annotations

import functools
import os

import torch

# Queries per program, keys per loop step, warps; chosen on an H100 (benchmarks/attention_kernels.py):
# small tiles for sentences, larger ones once texts reach paragraphs.
SHORT_TEXT_TILES = (16, 16, 1)
TILES = (64, 16, 2)
SHORT_TEXT = 64  # longest text (tokens) for the small tiles


_OPERATOR = None  # torch.ops.bellm_st.packed_attention once loaded (compiled graphs read this global)
_INTERPRETED = False  # whether the kernel was defined for Triton's CPU interpreter (fixed at definition)


@functools.cache
def _triton():
    """Define the Triton kernel and its operator (compiled graphs trace straight to it); ``None`` without Triton."""
    global _OPERATOR, _INTERPRETED
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None

    @triton.jit
    def kernel(q_ptr, k_ptr, v_ptr, o_ptr, text_ptr, bounds_ptr, tokens, scale_log2,
               q_stride_token, q_stride_head, k_stride_token, k_stride_head,
               v_stride_token, v_stride_head, o_stride_token, o_stride_head,
               GROUPS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, LEFT: tl.constexpr, RIGHT: tl.constexpr):
        # LEFT/RIGHT: how many earlier/later tokens of its text a query sees; -1 is all of them.
        block = tl.program_id(0)
        head = tl.program_id(1).to(tl.int64)  # offsets in 64 bits: large batches of large models pass 2**31
        kv_head = head // GROUPS
        first = block * BLOCK_M
        last = tl.minimum(first + BLOCK_M, tokens) - 1
        queries = (first + tl.arange(0, BLOCK_M)).to(tl.int64)
        dims = tl.arange(0, BLOCK_D)
        query_ok = queries < tokens
        dim_ok = dims < HEAD_DIM
        query_text = tl.load(text_ptr + queries, mask=query_ok, other=-1)
        # Keys this block can need: from its first text's start to its last text's end.
        low = tl.load(bounds_ptr + tl.load(text_ptr + first))
        high = tl.load(bounds_ptr + tl.load(text_ptr + last) + 1)
        if LEFT >= 0:
            low = tl.maximum(low, first - LEFT)
        if RIGHT >= 0:
            high = tl.minimum(high, last + 1 + RIGHT)
        q = tl.load(q_ptr + queries[:, None] * q_stride_token + head * q_stride_head + dims[None, :],
                    mask=query_ok[:, None] & dim_ok[None, :], other=0.0)
        row_max = tl.full([BLOCK_M], -1.0e30, tl.float32)
        row_sum = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for start in range(low, high, BLOCK_N):
            keys = (start + tl.arange(0, BLOCK_N)).to(tl.int64)
            key_ok = keys < high
            key_text = tl.load(text_ptr + keys, mask=key_ok, other=-2)
            k = tl.load(k_ptr + keys[:, None] * k_stride_token + kv_head * k_stride_head + dims[None, :],
                        mask=key_ok[:, None] & dim_ok[None, :], other=0.0)
            scores = (tl.dot(q, tl.trans(k)) * scale_log2).to(tl.float32)  # compiled graphs pass the scale as fp64
            allowed = query_text[:, None] == key_text[None, :]
            if LEFT >= 0:
                allowed = allowed & (queries[:, None] - keys[None, :] <= LEFT)
            if RIGHT >= 0:
                allowed = allowed & (keys[None, :] - queries[:, None] <= RIGHT)
            scores = tl.where(allowed, scores, float("-inf"))
            new_max = tl.maximum(row_max, tl.max(scores, 1))
            weights = tl.exp2(scores - new_max[:, None])
            rescale = tl.exp2(row_max - new_max)
            row_sum = row_sum * rescale + tl.sum(weights, 1)
            v = tl.load(v_ptr + keys[:, None] * v_stride_token + kv_head * v_stride_head + dims[None, :],
                        mask=key_ok[:, None] & dim_ok[None, :], other=0.0)
            acc = acc * rescale[:, None] + tl.dot(weights.to(v.dtype), v)
            row_max = new_max
        acc = acc / tl.where(row_sum > 0, row_sum, 1.0)[:, None]  # rows past the end have no keys
        tl.store(o_ptr + queries[:, None] * o_stride_token + head * o_stride_head + dims[None, :],
                 acc.to(o_ptr.dtype.element_ty), mask=query_ok[:, None] & dim_ok[None, :])

    from torch.library import triton_op, wrap_triton

    @triton_op("bellm_st::packed_attention", mutates_args={})
    def operator(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, text_of_token: torch.Tensor,
                 bounds: torch.Tensor, scale: float, left: int, right: int, block_m: int, block_n: int,
                 warps: int) -> torch.Tensor:
        tokens, heads, head_dim = query.shape
        output = torch.empty_like(query, memory_format=torch.contiguous_format)
        grid = (triton.cdiv(tokens, block_m), heads)
        wrap_triton(kernel)[grid](
            query, key, value, output, text_of_token, bounds, tokens, scale * 1.4426950408889634,
            query.stride(0), query.stride(1), key.stride(0), key.stride(1),
            value.stride(0), value.stride(1), output.stride(0), output.stride(1),
            GROUPS=heads // key.shape[1], HEAD_DIM=head_dim, BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
            BLOCK_M=block_m, BLOCK_N=block_n, LEFT=left, RIGHT=right, num_warps=warps,
        )
        return output

    _OPERATOR = operator
    _INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
    return operator


def packed_attention_available(device: torch.device) -> bool:
    """Whether the kernel runs on ``device``: Triton on a CUDA GPU, or its interpreter on CPU tensors."""
    if device.type == "cuda":
        return torch.version.hip is None and _triton() is not None
    # Checked before the kernel is defined: Triton fixes a kernel as interpreted or compiled then.
    if device.type != "cpu" or os.environ.get("TRITON_INTERPRET") != "1" or _triton() is None:
        return False
    return _INTERPRETED  # a kernel compiled for the GPU earlier in this process cannot take CPU tensors


def packed_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, text_of_token: torch.Tensor,
                     bounds: torch.Tensor, scale: float, window: tuple[int, int],
                     longest: int | None = None, tiles: tuple[int, int, int] | None = None) -> torch.Tensor:
    """Attention of each token to the tokens of its own text: (tokens, heads, dim) in and out.

    ``key``/``value`` may have fewer heads (grouped queries). ``text_of_token`` (integers)
    numbers each token's text and ``bounds`` (integers, texts + 1) holds where each text starts; ``window``
    is the (earlier, later) reach of a query within its text, -1 meaning all of it. ``longest``
    (the longest text, when known) picks the tiles; ``tiles`` (queries per program, keys per
    step, warps) sets them instead, for benchmarks.
    """
    operator = _OPERATOR  # set by packed_attention_available, called before any compiled graph runs this
    if operator is None and (operator := _triton()) is None:
        raise RuntimeError("packed attention needs Triton (pip install triton)")
    if query.shape[1] % key.shape[1]:
        raise ValueError(f"{query.shape[1]} query heads are not a multiple of {key.shape[1]} key heads")
    if query.stride(-1) != 1 or key.stride(-1) != 1 or value.stride(-1) != 1:
        query, key, value = query.contiguous(), key.contiguous(), value.contiguous()
    text_of_token, bounds = text_of_token.contiguous(), bounds.contiguous()  # read by plain offsets
    if tiles is None:
        tiles = SHORT_TEXT_TILES if longest is not None and longest <= SHORT_TEXT else TILES
    return operator(query, key, value, text_of_token, bounds, float(scale), int(window[0]), int(window[1]), *tiles)
